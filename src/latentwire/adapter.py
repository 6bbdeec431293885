"""The receiver side: latent slots Z [B, M, d_wire] -> soft tokens one frozen LLM reads.

MLP up to the model's hidden size, plus a learned position per slot and the hint embedding,
then every soft token is rescaled to the norm of that model's real token embeddings
(target_norm = FrozenLLM.embedding_stats()["mean_norm"]) times a learned scale exp(log_scale).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pooler import PairPooler, pool

INIT_STD = 0.02


def resize_rows(w: torch.Tensor, m: int) -> torch.Tensor:
    """A [n, d] table -> [m, d] by linear interpolation along n (align_corners=True).

    From 0 rows the new rows are drawn like a fresh init; from 1 row that init is added to the
    copies so the new rows do not start (and stay) identical.
    """
    n, d = w.shape
    if n == m:
        return w.clone()
    if n >= 2 and m >= 1:
        return F.interpolate(w.T[None], size=m, mode="linear", align_corners=True)[0].T
    fresh = torch.randn(m, d, dtype=w.dtype, device=w.device) * INIT_STD
    return fresh + w if n == 1 else fresh  # n == 1 broadcasts its row; n or m == 0: fresh


class Adapter(nn.Module):

    def __init__(self, d_wire: int, hidden: int, M: int, hint_buckets: int, target_norm: float):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_wire, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.pos = nn.Parameter(torch.randn(M, hidden) * INIT_STD)
        self.hint = nn.Embedding(hint_buckets, hidden)
        nn.init.normal_(self.hint.weight, std=INIT_STD)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("target_norm", torch.tensor(float(target_norm)))

    def forward(self, z: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        """z [B, M, d_wire], hint [B] bucket ids -> soft tokens [B, M, hidden]."""
        x = self.proj(z) + self.pos + self.hint(hint)[:, None]
        return F.normalize(x, dim=-1) * (self.target_norm * self.log_scale.exp())

    @torch.no_grad()
    def resize(self, M: int) -> None:
        """Interpolate the positional table to M slots (a new Parameter: rebuild the optimiser)."""
        self.pos = nn.Parameter(resize_rows(self.pos, M))


class TokenAdapter(nn.Module):
    """encoder.kind "ids": a slot's codebook ids -> the soft tokens this model reads.

    The base is frozen and not saved: the model's own input embeddings of the ids' text in its
    own tokens (`receiver_tokens`: the ids themselves where the model shares the codebook's
    tokenizer, else the text re-tokenised as the model would read it), cut to as many
    positions as ids were sent, so a receiver never reads more positions than the wire holds ids.
    Learned on top, both zero at the start, so step 0 reads exactly that text: a low-rank residual
    correction and a position per slot. (Before, each id took one position, the mean of the
    model's embeddings of its string's tokens: unreadable where the string splits, and the
    codebook's segmentation where the model's own packs the text tighter; Qwen's latent read
    0.032 F1 below the same text, docs/RESULTS.md.)

    The rating channel (`ratings` buckets, ids.rating_edges): each position also adds a learned
    embedding of its token's rating bucket (the highest of the ids its characters come from),
    zero at the start too: what the text cannot carry, which only a learned receiver can read.

    Variable-rate slots (`paired`, ids.keep): the ids come with layout bits (payload kind paired
    ids) and a position holds one id or two. Each id's base is then the mean of the model's
    embeddings of its own string's tokens (`strings`), and a pair's two are pooled into one
    position by a learned `PairPooler` (pooler.py), the plain mean at the start; the correction
    and the positions are added on top as above."""

    def __init__(self, hidden: int, M: int, rank: int = 64, ratings: int = 0, paired: bool = False):
        super().__init__()
        self.E: torch.Tensor | None = None  # set_table(): the model's input embeddings [V, hidden]
        self.to_tokens = None               # set_table(): codebook ids -> the model's own tokens
        self.to_ratings = None              # set_table(): (ids, ratings) -> a rating per own token
        self.to_strings = None              # set_table(): codebook ids -> each one's string's own tokens
        self._pieces: dict[int, list[int]] = {}  # codebook id -> its string's own tokens (as first seen)
        self._strings: dict[int, torch.Tensor] = {}  # codebook id -> their mean embedding
        self.pooler = PairPooler(hidden, rank) if paired else None
        self.delta = nn.Sequential(nn.Linear(hidden, rank), nn.GELU(), nn.Linear(rank, hidden))
        nn.init.zeros_(self.delta[2].weight)
        nn.init.zeros_(self.delta[2].bias)
        self.pos = nn.Parameter(torch.zeros(M, hidden))
        self.rating = nn.Embedding(ratings, hidden) if ratings else None
        if self.rating is not None:
            nn.init.zeros_(self.rating.weight)

    def set_table(self, embeddings: torch.Tensor, to_tokens, to_ratings=None, to_strings=None) -> None:
        self.E, self.to_tokens, self.to_ratings, self.to_strings = embeddings, to_tokens, to_ratings, to_strings
        self._pieces, self._strings = {}, {}

    def pieces(self, ids: list[int]) -> list[list[int]]:
        """Each codebook id's string alone in the model's own tokens (kept per id as first seen)."""
        new = sorted({i for i in ids if i not in self._pieces})
        if new:
            if self.to_strings is None:
                raise RuntimeError("TokenAdapter: call set_table(..., to_strings=string_reader(...)) first")
            self._pieces.update(zip(new, self.to_strings(new)))
        return [self._pieces[i] for i in ids]

    def strings(self, ids: list[int]) -> torch.Tensor:
        """[n, hidden]: each codebook id's string read alone, the mean of the model's embeddings of
        its tokens (kept per id as ids are first seen; frozen)."""
        new = sorted({i for i in ids if i not in self._strings})
        for i, toks in zip(new, self.pieces(new)):
            self._strings[i] = (self.E[torch.tensor(toks, dtype=torch.long, device=self.E.device)].float().mean(0)
                                if toks else self.E.new_zeros(self.E.shape[1], dtype=torch.float))
        return torch.stack([self._strings[i] for i in ids]).to(self.pos.device, self.pos.dtype)

    def tokens(self, ids: list[int]) -> list[int]:
        """The model's own tokens of the ids' text, cut to len(ids) positions."""
        if self.to_tokens is None:
            raise RuntimeError("TokenAdapter: call set_table(embeddings, receiver_tokens(...)) first")
        return self.to_tokens(ids)[:len(ids)]

    def built_from(self, ids: list[int], pairs: list[int] | None = None) -> list[int]:
        """Per position, the model's token it was built from (-1: a pair, or an id whose string
        takes several of the model's tokens): what the `readable` diagnostic compares with."""
        if self.pooler is None:
            return self.tokens(ids)
        out, k, pieces = [], 0, self.pieces(ids)
        while k < len(ids):
            out.append(pieces[k][0] if not pairs[k] and len(pieces[k]) == 1 else -1)
            k += 2 if pairs[k] else 1
        return out

    def forward(self, ids: torch.Tensor, ratings: list[int] | None = None,
                pairs: list[int] | None = None) -> torch.Tensor:
        """ids [n] (with the rating channel each one's rating; `paired`, each one's layout bit) ->
        soft tokens [<= n, hidden]; more than M positions (a dataset with its own larger M) read
        the slot positions interpolated to that many."""
        ids = ids.tolist()
        if self.pooler is not None:
            if pairs is None or len(pairs) != len(ids):
                raise ValueError("TokenAdapter: this adapter reads variable-rate slots (ids.keep): every id "
                                 "needs its layout bit")
            e = pool(self.pooler, self.strings(ids), pairs)
        else:
            tok = torch.tensor(self.tokens(ids), dtype=torch.long, device=self.E.device)
            e = self.E[tok].to(self.pos.device, self.pos.dtype)
        pos = self.pos if len(e) <= len(self.pos) else resize_rows(self.pos, len(e))  # a dataset's own larger M
        x = e + self.delta(e) + pos[:len(e)]
        if self.rating is None:
            return x
        if ratings is None or len(ratings) != len(ids):
            raise ValueError("TokenAdapter: this adapter reads the rating channel (ids.rating_edges): "
                             "every id needs its rating")
        own = self.to_ratings(ids, ratings)[:len(e)] if self.to_ratings else ratings[:len(e)]
        return x + self.rating(torch.tensor(own, dtype=torch.long, device=self.pos.device))

    @torch.no_grad()
    def resize(self, M: int) -> None:
        self.pos = nn.Parameter(resize_rows(self.pos, M))


def receiver_tokens(codebook_tokenizer, receiver):
    """codebook ids -> the receiver's own tokens of the same text: the ids themselves where the two
    tokenizers are one, else the decoded text re-tokenised after a space, as it follows "Context:"
    in every text prompt (the selected_text baseline reads the same tokens)."""
    rtok = receiver.tokenizer
    if codebook_tokenizer.get_vocab() == rtok.get_vocab():
        return list
    return lambda ids: rtok(" " + codebook_tokenizer.decode(ids).strip(), add_special_tokens=False)["input_ids"]


def receiver_ratings(codebook_tokenizer, receiver):
    """(codebook ids, a rating each) -> a rating for each of the receiver's own tokens of the same
    text (`receiver_tokens`): the highest rating of the ids whose characters that token overlaps
    (the ratings themselves where the two tokenizers are one)."""
    ctok, rtok = codebook_tokenizer, receiver.tokenizer
    if ctok.get_vocab() == rtok.get_vocab():
        return lambda ids, ratings: list(ratings)

    def rate(ids: list[int], ratings: list[int]) -> list[int]:
        ends = [len(ctok.decode(ids[:k + 1])) for k in range(len(ids))]  # where each id's text ends
        starts = [0, *ends[:-1]]
        full = ctok.decode(ids)
        lead = len(full) - len(full.lstrip())  # " " + full.strip(): char c is full's c - 1 + lead
        enc = rtok(" " + full.strip(), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for a, b in enc["offset_mapping"]:
            a, b = a - 1 + lead, max(b - 1 + lead, a + lead)
            out.append(max((r for r, s, e in zip(ratings, starts, ends) if e > a and s < b), default=0))
        return out
    return rate


def string_reader(codebook_tokenizer, receiver):
    """codebook ids -> each one's string alone in the receiver's own tokens (`string_tokens`; the
    two vocabularies compared once, here)."""
    if codebook_tokenizer.get_vocab() == receiver.tokenizer.get_vocab():
        return lambda ids: [[i] for i in ids]
    return lambda ids: string_tokens(codebook_tokenizer, receiver, ids)


def string_tokens(codebook_tokenizer, receiver, ids: list[int] | None = None) -> list[list[int]]:
    """For each codebook (sender) id (default: every one): the receiver's own token ids of the same
    string (itself where the two tokenizers are one)."""
    rtok = receiver.tokenizer
    ids = list(range(len(codebook_tokenizer))) if ids is None else list(ids)
    if codebook_tokenizer.get_vocab() == rtok.get_vocab():
        return [[i] for i in ids]
    tokens = codebook_tokenizer.convert_ids_to_tokens(ids)
    strings = [codebook_tokenizer.convert_tokens_to_string([t]) for t in tokens]
    return rtok(strings, add_special_tokens=False)["input_ids"] if strings else []


@torch.no_grad()
def string_table(codebook_tokenizer, receiver) -> tuple[torch.Tensor, torch.Tensor]:
    """For every codebook (sender) id: the mean of the receiver's input embeddings of its string's
    tokens [V, H], and how many receiver tokens that takes [V] (the benches' one vector a string)."""
    E = receiver.model.get_input_embeddings().weight.detach().float()
    pieces = string_tokens(codebook_tokenizer, receiver)
    out, counts = torch.zeros(len(pieces), E.shape[1]), torch.zeros(len(pieces), dtype=torch.long)
    for i, ids in enumerate(pieces):
        if ids:
            out[i], counts[i] = E[ids].mean(0), len(ids)
    return out, counts

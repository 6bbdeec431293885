"""encoder.kind ids, the default, end to end: rows -> the sender's pick (sender.py, fitted by the
`pick` stage) -> codebook ids (payload kind ids, 16 bits a slot) -> each model's TokenAdapter.

Nothing on the sender's side is trained by the curriculum: it trains the adapters only. Each
adapter's base is the receiver's own tokens of the ids' text and their embeddings (`attach`
builds it from the receiver), cut to as many positions as ids were sent, so a receiver that
shares the codebook's tokenizer reads the ids exactly and another reads the same text.

The rating channel (ids.rating_edges, off by default): the payload also carries each id's rating
bucket (the pick's answer probability, `Sender.pick`), and each adapter adds a learned embedding
per bucket (zero at the start, so its step 0 reads what the channel off reads).

Variable-rate slots (ids.keep, off by default): the sender lays more picked ids than M out in M
positions (`Sender.slots`), the payload carries a layout bit an id, and each adapter pools a pair
into one position through its learned pooler (pooler.py; `TokenAdapter` with `paired`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import pick
from .adapter import TokenAdapter, receiver_ratings, receiver_tokens, string_reader, string_tokens
from .payload import Latent, Limits
from .sender import Sender


class IdCodec(nn.Module):
    def __init__(self, params, M: int, hidden: dict[str, int], pick_dir: str | Path = "models/pick"):
        super().__init__()
        self.params, self.pick_dir, self._M = params, Path(pick_dir), M
        buckets = 2 ** params.ids.rating_bits if params.ids.rating_edges else 0  # any value the bits can hold
        paired = params.ids.keep is not None
        self.adapters = nn.ModuleDict({s: TokenAdapter(hidden[s], M, params.train.adapter_rank, buckets, paired)
                                       for s in params.models})
        self._sender: Sender | None = None
        self.readers: dict = {}                    # slot -> the attached LLM (its tokenizer: `split`)
        self.splits: dict[str, dict[int, int]] = {}  # slot -> {codebook id: its string's receiver tokens}
        self.memo: dict[str, Latent] = {}          # row id -> its latent (training rows only)

    @property
    def M(self) -> int:
        return self._M

    def M_for(self, row: dict) -> int:
        """The positions this row's latent may take: its dataset's own M, else M."""
        return self.params.positions(row.get("dataset"), self._M)

    def pick(self, row: dict):
        """What the row's latent carries (`Sender.slots`: the pick, laid out with ids.keep)."""
        return self.sender.slots(row["question"], row["context"], self.M_for(row))

    @property
    def sender(self) -> Sender:
        """The fitted pick, loaded on first use (models/pick)."""
        if self._sender is None:
            self._sender = Sender.load(self.params, self.pick_dir, self._M)
        return self._sender

    @property
    def codebook(self) -> int:
        return self.sender.codebook

    @property
    def limits(self) -> Limits:
        """What an unpacked payload's ids must satisfy here: the codebook's tokens, at most M
        (or a dataset's own larger M)."""
        return self.sender.limits(max(self.params.positions(n, self._M) for n in [None, *self.params.data.datasets]))

    def resize(self, M: int) -> None:
        self._M, self.memo = M, {}
        if self._sender is not None:
            self._sender.M = M
        for a in self.adapters.values():
            a.resize(M)

    def attach(self, llm) -> None:
        """Build the frozen string mapping codebook id -> llm's own tokens and embeddings (never saved)."""
        self.readers[llm.slot], self.splits[llm.slot] = llm, {}
        self.adapters[llm.slot].set_table(llm.model.get_input_embeddings().weight.detach(),
                                          receiver_tokens(self.sender.tokenizer, llm),
                                          receiver_ratings(self.sender.tokenizer, llm),
                                          string_reader(self.sender.tokenizer, llm))

    def split(self, slot: str, ids: list[int]) -> list[int]:
        """How many of the slot's receiver tokens each codebook id's string alone takes (a
        diagnostic: tokenised as ids are first seen, never the whole codebook)."""
        memo = self.splits[slot]
        new = sorted({i for i in ids if i not in memo})
        if new:
            memo.update(zip(new, map(len, string_tokens(self.sender.tokenizer, self.readers[slot], new))))
        return [memo[i] for i in ids]

    def latent(self, row: dict) -> Latent:
        """A training row's latent, picked once."""
        if row["id"] not in self.memo:
            self.memo[row["id"]] = self.sender.latent(self.pick(row))
        return self.memo[row["id"]]

    def train_softs(self, rows: list[dict], qat: bool):
        """Per slot the soft tokens of every row's latent, as its payload carries it (exact: no
        quantisation to train through); no extra loss."""
        lats = [self.latent(r) for r in rows]
        return {s: [self.soft(s, lat) for lat in lats] for s in self.adapters}, 0.0, {}

    def latents(self, rows: list[dict]) -> list[Latent]:
        return [self.sender.latent(self.pick(r)) for r in rows]

    def soft(self, slot: str, latent: Latent) -> torch.Tensor:
        return self.adapters[slot](torch.tensor(latent.ids, dtype=torch.long), latent.ratings, latent.pairs)

    @torch.no_grad()
    def diagnose(self, slot: str, llm, latents: list[Latent], sents: list[Latent], softs: list) -> list[dict]:
        """Per example counts: exact (the unpacked id is the sent one), readable (the model's
        nearest token to a soft token is the token it was built from, `TokenAdapter.built_from`), split (ids whose string
        alone takes more than one of the model's tokens), positions (the model's tokens of the
        ids' text, cut to the ids' count: what it reads). The nearest tokens of a batch's soft tokens come from
        one pass over the model's [V, H] embedding table per 256 of them (read from memory once,
        not once per example)."""
        if not hasattr(self, "_unit") or self._unit[0] != slot:
            E = llm.model.get_input_embeddings().weight.detach().float()
            self._unit = (slot, torch.nn.functional.normalize(E, dim=-1))
        _, E = self._unit
        flat = [s.float() for s in softs if len(s)]
        flat = torch.nn.functional.normalize(torch.cat(flat), dim=-1) if flat else E.new_zeros(0, E.shape[1])
        near = [i for chunk in flat.split(256) for i in (chunk @ E.T).argmax(-1).tolist()]
        self.split(slot, [i for latent in latents for i in latent.ids])  # the batch's new ids at once
        out, at, adapter = [], 0, self.adapters[slot]
        for latent, sent, soft in zip(latents, sents, softs):
            mine, at = near[at:at + len(soft)], at + len(soft)
            out.append({"slots": len(latent.ids), "exact": sum(a == b for a, b in zip(latent.ids, sent.ids)),
                        "readable": sum(a == b for a, b in zip(mine, adapter.built_from(latent.ids, latent.pairs))),
                        "split": sum(n > 1 for n in self.split(slot, latent.ids)),
                        "positions": len(soft)})
        return out

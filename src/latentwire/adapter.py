"""The receiver side: latent slots Z [B, M, d_wire] -> soft tokens one frozen LLM reads.

MLP up to the model's hidden size, plus a learned position per slot and the hint embedding,
then every soft token is rescaled to the norm of that model's real token embeddings
(target_norm = FrozenLLM.embedding_stats()["mean_norm"]) times a learned scale exp(log_scale).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    """encoder.kind "ids": a slot's codebook id -> the soft token this model reads.

    The base is frozen and not saved: the model's own input embedding of the id's string (the
    mean over its tokens where its tokenizer splits the string: one position all the same).
    Learned on top, both zero at the start, so step 0 reads exactly the string mapping: a
    low-rank residual correction and a position per slot."""

    def __init__(self, hidden: int, M: int, rank: int = 64):
        super().__init__()
        self.table: torch.Tensor | None = None  # set_table(); [V_codebook, hidden]
        self.delta = nn.Sequential(nn.Linear(hidden, rank), nn.GELU(), nn.Linear(rank, hidden))
        nn.init.zeros_(self.delta[2].weight)
        nn.init.zeros_(self.delta[2].bias)
        self.pos = nn.Parameter(torch.zeros(M, hidden))

    def set_table(self, table: torch.Tensor) -> None:
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [n] -> soft tokens [n, hidden]; n > M (a dataset with its own larger M) reads the
        slot positions interpolated to n."""
        if self.table is None:
            raise RuntimeError("TokenAdapter: call set_table(string_table(...)) first")
        e = self.table[ids.to(self.table.device)].to(self.pos.device, self.pos.dtype)
        pos = self.pos if len(ids) <= len(self.pos) else resize_rows(self.pos, len(ids))  # a dataset's own larger M
        return e + self.delta(e) + pos[:len(ids)]

    @torch.no_grad()
    def resize(self, M: int) -> None:
        self.pos = nn.Parameter(resize_rows(self.pos, M))


@torch.no_grad()
def string_table(codebook_tokenizer, receiver) -> tuple[torch.Tensor, torch.Tensor]:
    """For every codebook (sender) id: the receiver's input embedding of the same string (the
    mean over the receiver's tokens of it) [V, H], and how many receiver tokens that takes [V]."""
    E = receiver.model.get_input_embeddings().weight.detach().float()
    rtok = receiver.tokenizer
    if codebook_tokenizer.get_vocab() == rtok.get_vocab():
        return E, torch.ones(E.shape[0], dtype=torch.long)
    V = len(codebook_tokenizer)
    tokens = codebook_tokenizer.convert_ids_to_tokens(list(range(V)))
    strings = [codebook_tokenizer.convert_tokens_to_string([t]) for t in tokens]
    enc = rtok(strings, add_special_tokens=False)["input_ids"]
    out, counts = torch.zeros(V, E.shape[1]), torch.zeros(V, dtype=torch.long)
    for i, ids in enumerate(enc):
        if ids:
            out[i], counts[i] = E[ids].mean(0), len(ids)
    return out, counts

"""The receiver side: latent slots Z [B, M, d_wire] -> soft tokens one frozen LLM reads.

MLP up to the model's hidden size, plus a learned position per slot and the hint embedding,
then every soft token is rescaled to the norm of that model's real token embeddings
(target_norm = FrozenLLM.embedding_stats()["mean_norm"]) times a learned scale exp(log_scale).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoder import INIT_STD, resize_rows


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

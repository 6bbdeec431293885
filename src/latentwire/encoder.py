"""The sender: a prompt -> latent slots Z plus a predicted answer-length hint.

bytes -> embedding + positions -> transformer -> gated residual pooling -> Z [B, S + n*P, d_wire]
(kind "lm": a frozen model's hidden states (features.py) -> projection -> the same transformer
and pooling; the frozen model already encodes order, so no positional table is learned.)
Learned queries cross-attend to the byte features: S shared queries read by every model, then
one group of P private queries per model slot (in `slots` order). Model `slot` reads
slot_view(Z, slot) = the S shared rows followed by its own P rows, M = S + P in all.
The hint head predicts the answer-length bucket from the prompt alone, so the sender can
always compute the receiver's metadata (it never sees the gold answer).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import EncoderConfig
from .wire import split_slots

HINT_EDGES = (2, 3, 4, 5, 7, 10, 16)  # first lengths of buckets 1..7 (bucket 0: <= 1 token)
INIT_STD = 0.02


def encode_bytes(texts: list[str], max_bytes: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Byte ids (byte value + 1, 0 = pad) [B, T], mask (True = real byte), bytes cut per text.

    T is the longest text in bytes, capped at max_bytes (and at least 1).
    """
    raw = [t.encode("utf-8") for t in texts]
    T = max(1, min(max_bytes, max((len(b) for b in raw), default=0)))
    ids = torch.zeros(len(raw), T, dtype=torch.long)
    for i, b in enumerate(raw):
        b = b[:T]
        ids[i, :len(b)] = torch.tensor(list(b), dtype=torch.long) + 1
    return ids, ids > 0, [max(0, len(b) - max_bytes) for b in raw]


def hint_bucket(n_tokens: int | torch.Tensor, buckets: int) -> int | torch.Tensor:
    """Answer length (tokens) -> bucket: <=1, 2, 3, 4, 5-6, 7-9, 10-15, 16+, capped at buckets-1."""
    n = torch.as_tensor(n_tokens)
    edges = torch.tensor(HINT_EDGES, dtype=n.dtype, device=n.device)
    b = torch.bucketize(n, edges, right=True).clamp(max=buckets - 1)
    return b if isinstance(n_tokens, torch.Tensor) else int(b)


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


class LatentEncoder(nn.Module):

    def __init__(self, cfg: EncoderConfig, d_wire: int, M: int, shared_fraction: float,
                 slots: list[str], feature_dim: int | None = None):
        super().__init__()
        d = cfg.d_z
        self.cfg, self.shared_fraction, self.slots = cfg, shared_fraction, list(slots)
        self.M, (self.S, self.P) = M, split_slots(M, shared_fraction)
        if cfg.kind == "lm":
            self.feat_in = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, d))
        else:
            self.byte_emb = nn.Embedding(257, d, padding_idx=0)
            self.pos_emb = nn.Parameter(torch.randn(cfg.max_bytes, d) * INIT_STD)
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(d),
                                          enable_nested_tensor=False)
        # pooling: shared queries, then one private group per model slot
        self.shared_q = nn.Parameter(torch.randn(self.S, d) * INIT_STD)
        self.private_q = nn.ParameterDict(
            {s: nn.Parameter(torch.randn(self.P, d) * INIT_STD) for s in self.slots})
        self.attn = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.gate = nn.Linear(2 * d, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(),
                                 nn.Linear(4 * d, d))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d_wire))
        self.hint_head = nn.Linear(d, cfg.hint_buckets)

    def queries(self) -> torch.Tensor:
        return torch.cat([self.shared_q, *(self.private_q[s] for s in self.slots)])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Byte ids [B, T] or frozen features [B, T, H] -> [B, T, d_z]."""
        if self.cfg.kind == "lm":
            return self.feat_in(x)
        return self.byte_emb(x) + self.pos_emb[:x.shape[1]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (byte ids [B, T] or features [B, T, H]), mask [B, T] -> Z [B, S + n*P, d_wire],
        hint_logits [B, hint_buckets]."""
        mask = mask.clone()
        mask[:, 0] |= ~mask.any(1)  # an empty prompt attends to one pad byte instead of nothing
        pad = ~mask
        h = self.body(self.embed(x), src_key_padding_mask=pad)
        q = self.queries().expand(x.shape[0], -1, -1)
        a, _ = self.attn(q, h, h, key_padding_mask=pad, need_weights=False)
        pooled = q + torch.sigmoid(self.gate(torch.cat([q, a], -1))) * a
        Z = self.out(pooled + self.mlp(pooled))
        m = mask.unsqueeze(-1).to(h.dtype)
        hint_logits = self.hint_head((h * m).sum(1) / m.sum(1))
        return Z, hint_logits

    def slot_view(self, Z: torch.Tensor, slot: str) -> torch.Tensor:
        """The rows model `slot` reads: S shared then its P private, [B, M, d_wire]."""
        start = self.S + self.slots.index(slot) * self.P
        return torch.cat([Z[:, :self.S], Z[:, start:start + self.P]], 1)

    @torch.no_grad()
    def resize(self, M: int) -> None:
        """Change M keeping the shared/private ratio; each query group is interpolated alone.

        Makes new Parameters: build the optimiser after resizing.
        """
        self.M, (self.S, self.P) = M, split_slots(M, self.shared_fraction)
        self.shared_q = nn.Parameter(resize_rows(self.shared_q, self.S))
        for s in self.slots:
            self.private_q[s] = nn.Parameter(resize_rows(self.private_q[s], self.P))

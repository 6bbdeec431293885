"""encoder.kind bytes, the seed's sender: the context's UTF-8 bytes -> latent slots Z plus a
predicted answer-length hint, and `ByteCodec`, its side of the trip (wire values, adapters).

bytes -> embedding + positions -> transformer -> gated residual pooling -> Z [B, S + n*P, d_wire].
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

from .adapter import INIT_STD, Adapter, resize_rows
from .config import BytesConfig
from .losses import pairwise_cosine
from .payload import KIND_VALUES, Latent
from .wire import quantize, split_slots

HINT_EDGES = (2, 3, 4, 5, 7, 10, 16)  # first lengths of buckets 1..7 (bucket 0: <= 1 token)


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


class LatentEncoder(nn.Module):

    def __init__(self, cfg: BytesConfig, d_wire: int, M: int, shared_fraction: float,
                 slots: list[str]):
        super().__init__()
        d = cfg.d_z
        self.cfg, self.shared_fraction, self.slots = cfg, shared_fraction, list(slots)
        self.M, (self.S, self.P) = M, split_slots(M, shared_fraction)
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
        """Byte ids [B, T] -> [B, T, d_z]."""
        return self.byte_emb(x) + self.pos_emb[:x.shape[1]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (byte ids [B, T]), mask [B, T] -> Z [B, S + n*P, d_wire],
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


class ByteCodec(nn.Module):
    """encoder.kind bytes end to end: rows -> Z (the context's bytes through LatentEncoder) ->
    wire values (payload kind values at bytes.bits, the hint in the header) -> each model's
    Adapter. Every slot's view is S shared rows + its own P private rows."""
    codebook = 0  # continuous values: no codebook to fingerprint
    limits = None  # nor ids to bound (payload.Limits)

    def __init__(self, params, M: int, hidden: dict[str, int], target_norm: dict[str, float]):
        super().__init__()
        b = self.cfg = params.bytes
        self.encoder = LatentEncoder(b, b.d_wire, M, b.shared_fraction, list(params.models))
        self.adapters = nn.ModuleDict({s: Adapter(b.d_wire, hidden[s], M, b.hint_buckets, target_norm[s])
                                       for s in params.models})
        self.bits, self.group_size, self.max_bytes, self.hint_buckets = b.bits, b.group_size, b.max_bytes, b.hint_buckets

    @property
    def M(self) -> int:
        return self.encoder.M

    def resize(self, M: int) -> None:
        self.encoder.resize(M)
        for a in self.adapters.values():
            a.resize(M)

    def attach(self, llm) -> None:
        """Nothing to set up per receiver: the adapters are all learned."""

    def encode(self, rows: list[dict]):
        x, mask, _ = encode_bytes([r["context"] for r in rows], self.max_bytes)
        dev = self.encoder.shared_q.device
        return self.encoder(x.to(dev), mask.to(dev))

    def train_softs(self, rows: list[dict], qat: bool):
        """Per slot the soft tokens of every row, through the wire's quantisation when qat (straight-
        through), fed the sender's own predicted hint; the hint and diversity losses and logs."""
        z, hint_logits = self.encode(rows)
        hint = hint_logits.argmax(-1)
        softs = {}
        for s, a in self.adapters.items():
            view = self.encoder.slot_view(z, s)
            view = quantize(view, self.bits, self.group_size, straight_through=True) if qat else view
            softs[s] = list(a(view, hint))
        gold = torch.tensor([hint_bucket(len(r["answers"][0].split()), self.hint_buckets) for r in rows],
                            device=z.device)
        z_cos = pairwise_cosine(z)
        extra = self.cfg.hint_weight * F.cross_entropy(hint_logits, gold) + self.cfg.diversity_weight * z_cos
        return softs, extra, {"hint_acc": (hint == gold).float().mean().item(), "z_cos": z_cos.item()}

    @torch.no_grad()
    def latents(self, rows: list[dict]) -> list[Latent]:
        z, hint_logits = self.encode(rows)
        return [Latent(KIND_VALUES, self.bits, int(h), values=zi.float().cpu().numpy(), group_size=self.group_size)
                for zi, h in zip(z, hint_logits.argmax(-1))]

    def soft(self, slot: str, latent: Latent) -> torch.Tensor:
        """An unpacked latent -> the soft tokens `slot` reads [M, H]."""
        dev = self.encoder.shared_q.device
        z = torch.as_tensor(latent.values, dtype=torch.float32, device=dev)[None]
        hint = torch.tensor([latent.hint or 0], device=dev)
        return self.adapters[slot](self.encoder.slot_view(z, slot), hint)[0]

    def diagnose(self, slot: str, llm, latents: list[Latent], sents: list[Latent], softs: list) -> list[dict]:
        """Per example: the quantisation error of the unpacked values against the sent ones."""
        return [{"slots": latent.n, "max_abs_error": float(abs(latent.values - sent.values).max()) if latent.n else 0.0}
                for latent, sent in zip(latents, sents)]

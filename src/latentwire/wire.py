"""What crosses the wire: slot counts, byte accounting and the latent's quantisation.

Per model the receiver reads M = S shared + P private slots of d_wire values each.
Bytes per model    = M*d_wire*bits/8 + ceil(M*d_wire/group)*scale_bytes (ints only) + hint.
The full payload two models need carries the shared slice once and each private slice.
"""
from __future__ import annotations

import math

from .config import WireConfig


def split_slots(M: int, shared_fraction: float) -> tuple[int, int]:
    """(S, P) with S + P = M; the ratio is kept as M changes (24 + 8 at M=32, 0.75)."""
    S = round(M * shared_fraction)
    return S, M - S


def value_bytes(n_values: int, bits: int, group_size: int, scale_bytes: int) -> int:
    """Bytes for n values at `bits` precision: fp16 has no scales, ints one per group."""
    data = math.ceil(n_values * bits / 8)
    scales = 0 if bits == 16 else math.ceil(n_values / group_size) * scale_bytes
    return data + scales


def wire_bytes(M: int, w: WireConfig, bits: int | None = None, n_models: int = 1) -> dict[str, int]:
    """Byte accounting of the latent: per model, and the full payload for `n_models`."""
    bits = bits or w.bits
    S, P = split_slots(M, w.shared_fraction)
    vb = lambda slots: value_bytes(slots * w.d_wire, bits, w.group_size, w.scale_bytes)  # noqa: E731
    # Shared and private slices are quantised as separate blocks so either can be sent alone.
    per_model = vb(S) + vb(P) + w.hint_bytes
    total = vb(S) + n_models * vb(P) + w.hint_bytes
    return {"bits": bits, "shared_slots": S, "private_slots": P, "shared_bytes": vb(S),
            "private_bytes": vb(P), "hint_bytes": w.hint_bytes, "per_model": per_model,
            "total": total}


def cut_utf8(text: str, n_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits in n_bytes (character boundary)."""
    return text.encode("utf-8")[:max(n_bytes, 0)].decode("utf-8", errors="ignore")


def quantize(z, bits: int, group_size: int, straight_through: bool = False):
    """Symmetric per-group quantise-then-dequantise of one block z [B, slots, d] (fp16 casts).

    Each example's block is flattened and cut into groups of `group_size` values sharing
    one scale (max |x| / qmax), as value_bytes() counts them. With straight_through the
    gradient passes as if the rounding were the identity (quantisation-aware training).
    """
    import torch

    if bits == 16:
        out = z.half().float()
    else:
        qmax = 2 ** (bits - 1) - 1
        B, n = z.shape[0], z[0].numel()
        pad = (-n) % group_size
        flat = torch.nn.functional.pad(z.reshape(B, n), (0, pad)).reshape(B, -1, group_size)
        # the scale travels as fp16: at least fp16's smallest normal, so an all-zero group
        # (padding) keeps a non-zero scale and decodes to zeros instead of 0/0
        scale = (flat.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(2 ** -14).half().float()
        out = (torch.round(flat / scale).clamp(-qmax, qmax) * scale).reshape(B, -1)[:, :n].reshape(z.shape)
    return z + (out - z).detach() if straight_through else out

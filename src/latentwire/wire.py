"""Helpers of the wire: the shared / private slot split, UTF-8 cuts, and the quantisation that
training sees (payload.py packs the same groups into bytes; the bytes on the wire are always
len() of a payload, never a formula).

Per model the receiver of a learned sender reads M = S shared + P private slots of d_wire
values each; the payload carries the shared slice once and each model's private slice.
"""
from __future__ import annotations



def split_slots(M: int, shared_fraction: float) -> tuple[int, int]:
    """(S, P) with S + P = M; the ratio is kept as M changes (24 + 8 at M=32, 0.75)."""
    S = round(M * shared_fraction)
    return S, M - S


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

"""Slot split, byte accounting (hand-computed) and the UTF-8 cut of the equal-byte baseline."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentwire.config import WireConfig
from latentwire.wire import cut_utf8, split_slots, value_bytes, wire_bytes

W = WireConfig(d_wire=16, bits=4, group_size=32, scale_bytes=2, hint_bytes=1, shared_fraction=0.75)


@pytest.mark.parametrize("M, S, P", [(32, 24, 8), (64, 48, 16), (48, 36, 12), (16, 12, 4), (4, 3, 1)])
def test_split_slots_keeps_ratio(M, S, P):
    assert split_slots(M, 0.75) == (S, P)


@pytest.mark.parametrize("M", [1, 7, 32])
def test_split_slots_extremes(M):
    assert split_slots(M, 0.0) == (0, M)
    assert split_slots(M, 1.0) == (M, 0)


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(1, 4096), st.floats(0.0, 1.0))
def test_split_slots_property(M, fraction):
    S, P = split_slots(M, fraction)
    assert isinstance(S, int) and isinstance(P, int)
    assert S + P == M and 0 <= S <= M
    assert abs(S - M * fraction) <= 0.5


@pytest.mark.parametrize("n, bits, expected", [
    (384, 16, 768),            # 24 slots x 16 values, 2 bytes each, no scales
    (384, 8, 384 + 12 * 2),    # 12 groups of 32 -> 12 fp16 scales
    (384, 4, 192 + 12 * 2),
    (128, 16, 256),
    (128, 8, 128 + 4 * 2),
    (128, 4, 64 + 4 * 2),
    (3, 4, 2 + 2),             # 1.5 bytes round up; a partial group still needs its scale
    (33, 8, 33 + 2 * 2),       # 33 values -> 2 groups
    (0, 4, 0),
])
def test_value_bytes(n, bits, expected):
    assert value_bytes(n, bits, 32, 2) == expected


@pytest.mark.parametrize("bits, shared, private, per_model, total", [
    (16, 768, 256, 1025, 1281),   # per model 768+256+1; two models 768+2*256+1
    (8, 408, 136, 545, 681),
    (4, 216, 72, 289, 361),
])
def test_wire_bytes_two_models(bits, shared, private, per_model, total):
    assert wire_bytes(32, W, bits, n_models=2) == {
        "bits": bits, "shared_slots": 24, "private_slots": 8, "shared_bytes": shared,
        "private_bytes": private, "hint_bytes": 1, "per_model": per_model, "total": total}


def test_wire_bytes_defaults_and_model_count():
    assert wire_bytes(32, W)["bits"] == 4                      # bits from the config
    assert wire_bytes(32, W)["per_model"] == wire_bytes(32, W)["total"] == 289
    assert wire_bytes(32, W, 4, n_models=3)["total"] == 216 + 3 * 72 + 1
    w8 = WireConfig(d_wire=16, bits=8, group_size=32, scale_bytes=2, hint_bytes=1, shared_fraction=0.75)
    assert wire_bytes(32, w8)["per_model"] == 545
    none_shared = WireConfig(d_wire=16, bits=16, group_size=32, scale_bytes=2, hint_bytes=0,
                             shared_fraction=0.0)
    b = wire_bytes(32, none_shared, n_models=2)
    assert (b["shared_slots"], b["shared_bytes"], b["per_model"], b["total"]) == (0, 0, 1024, 2048)
    all_shared = WireConfig(d_wire=16, bits=16, group_size=32, scale_bytes=2, hint_bytes=1,
                            shared_fraction=1.0)
    b = wire_bytes(32, all_shared, n_models=2)
    assert (b["private_slots"], b["private_bytes"], b["per_model"], b["total"]) == (0, 0, 1025, 1025)


@pytest.mark.parametrize("text, n, cut", [
    ("café", 3, "caf"), ("café", 4, "caf"), ("café", 5, "café"), ("café", 99, "café"),
    ("東京", 2, ""), ("東京", 5, "東"), ("東京", 6, "東京"),
    ("a😀b", 4, "a"), ("a😀b", 5, "a😀"),
    ("abc", 0, ""), ("abc", -3, ""), ("", 10, ""),
])
def test_cut_utf8_examples(text, n, cut):
    assert cut_utf8(text, n) == cut


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=60), st.integers(-4, 250))
def test_cut_utf8_property(text, n):
    cut = cut_utf8(text, n)
    assert text.startswith(cut)                                # whole characters, a prefix
    assert len(cut.encode("utf-8")) <= max(n, 0)               # within budget
    if cut != text:                                            # and the longest such prefix
        assert len(text[:len(cut) + 1].encode("utf-8")) > n


def test_an_all_zero_group_decodes_to_zeros():
    import torch

    from latentwire.wire import quantize
    z = torch.zeros(2, 4, 16)
    z[0, :2] = torch.randn(2, 16)  # example 0: one real group, one all-zero (padding) group
    for bits in (8, 4):
        out = quantize(z, bits, 32)
        assert not out.isnan().any() and (out[1] == 0).all() and (out[0, 2:] == 0).all()
        assert (out[0, :2] - z[0, :2]).abs().max() < z[0, :2].abs().max() / (2 ** (bits - 1) - 1)

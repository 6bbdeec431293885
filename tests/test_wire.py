"""Slot split and the UTF-8 cut of the equal-byte baseline (the bytes themselves: test_payload.py)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentwire.wire import cut_utf8, split_slots


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

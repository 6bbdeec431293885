"""The wire format: pack/unpack round trips and every way a payload can be bad."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentwire import payload
from latentwire.payload import KIND_IDS, KIND_VALUES, Latent, PayloadError, pack, unpack

CODEBOOK = 0xBEEF


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 65535), max_size=255), hint=st.one_of(st.none(), st.integers(0, 254)),
       codebook=st.integers(0, 65535))
def test_ids_round_trip_exactly(ids, hint, codebook):
    data = pack(Latent(KIND_IDS, 16, hint, ids=ids), codebook)
    assert len(data) == 2 * len(ids) + payload.HEADER + payload.TRAILER
    back = unpack(data, codebook)
    assert back.ids == ids and back.hint == hint and back.kind == KIND_IDS


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 40), width=st.integers(1, 24), bits=st.sampled_from([16, 8, 4]),
       group=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_values_round_trip_within_the_quantisation_step(n, width, bits, group, seed):
    v = np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)
    back = unpack(pack(Latent(KIND_VALUES, bits, None, values=v, group_size=group), 0), 0)
    assert back.values.shape == (n, width)
    if n:
        step = 2 ** -10 * 4 if bits == 16 else np.abs(v).max() / (2 ** (bits - 1) - 1)
        assert np.abs(back.values - v).max() <= step * 0.51 + 1e-3


def test_ids_payload_is_two_bytes_a_slot_plus_seven():
    assert len(pack(Latent(KIND_IDS, 16, None, ids=list(range(32))), CODEBOOK)) == 71  # 2.22 B a slot


@pytest.fixture
def good() -> bytes:
    return pack(Latent(KIND_IDS, 16, None, ids=[5, 700, 49151, 0]), CODEBOOK)


def test_truncated_payloads_are_refused(good):
    for k in range(len(good)):
        with pytest.raises(PayloadError, match="truncated|does not match|checksum"):
            unpack(good[:k], CODEBOOK)


def test_every_single_bit_flip_is_caught(good):
    for i in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            with pytest.raises(PayloadError):
                unpack(bytes(bad), CODEBOOK)


def test_foreign_payloads_are_refused(good):
    with pytest.raises(PayloadError, match="another codebook"):
        unpack(good, CODEBOOK ^ 1)  # made for another codebook
    with pytest.raises(PayloadError, match="not a LatentWire payload"):
        unpack(b"GIF89a" + good, CODEBOOK)
    with pytest.raises(PayloadError, match="version 2"):
        unpack(bytes([good[0], (2 << 4) | KIND_IDS]) + good[2:], CODEBOOK)
    with pytest.raises(PayloadError, match="unknown code kind 7"):
        unpack(bytes([good[0], (1 << 4) | 7]) + good[2:], CODEBOOK)
    with pytest.raises(PayloadError, match="must be bytes"):
        unpack("not bytes", CODEBOOK)


def test_unpackable_latents_are_refused_at_pack():
    with pytest.raises(PayloadError, match="65535"):
        pack(Latent(KIND_IDS, 16, None, ids=[65536]), 0)
    with pytest.raises(PayloadError, match="255"):
        pack(Latent(KIND_IDS, 16, None, ids=[0] * 256), 0)
    with pytest.raises(PayloadError, match="hint"):
        pack(Latent(KIND_IDS, 16, 255, ids=[1]), 0)


def test_fingerprint_names_the_vocabulary():
    a = payload.fingerprint({"a": 0, "b": 1})
    assert a == payload.fingerprint({"b": 1, "a": 0})
    assert a != payload.fingerprint({"a": 1, "b": 0})

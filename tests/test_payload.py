"""The wire format: pack/unpack round trips and every way a payload can be bad."""
import binascii
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentwire import payload
from latentwire.payload import (KIND_IDS, KIND_PAIRED_IDS, KIND_RATED_IDS, KIND_VALUES, Latent, Limits, PayloadError,
                                pack, unpack)

REPO = Path(__file__).resolve().parents[1]
CODEBOOK = 0xBEEF
# SmolLM2's codebook: 49,152 ids, its first 17 special (<|im_start|> is id 1); M = 32
LIMITS = Limits(vocab_size=49152, max_slots=32, forbidden=frozenset(range(17)))


def sealed(head_and_body: bytes, codebook: int = CODEBOOK) -> bytes:
    """Any header and body with a valid CRC: what anyone who knows the public fingerprint can send."""
    return head_and_body + binascii.crc_hqx(head_and_body, codebook).to_bytes(2, "little")


def ids_payload(ids: list[int], bits: int = 16, codebook: int = CODEBOOK) -> bytes:
    head = bytes([payload.MAGIC, (payload.VERSION << 4) | KIND_IDS, len(ids), bits, payload.NO_HINT])
    return sealed(head + np.asarray(ids, dtype="<u2").tobytes(), codebook)


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


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(0, 255), rb=st.integers(1, 8), codebook=st.integers(0, 65535))
def test_rated_ids_round_trip_exactly(data, n, rb, codebook):
    ids = data.draw(st.lists(st.integers(0, 65535), min_size=n, max_size=n))
    ratings = data.draw(st.lists(st.integers(0, 2 ** rb - 1), min_size=n, max_size=n))
    sent = pack(Latent(KIND_RATED_IDS, 16, None, ids=ids, ratings=ratings, rating_bits=rb), codebook)
    assert len(sent) == payload.HEADER + 1 + 2 * n + -(-n * rb // 8) + payload.TRAILER
    back = unpack(sent, codebook, Limits(rating_bits=rb))
    assert (back.kind, back.ids, back.ratings, back.rating_bits) == (KIND_RATED_IDS, ids, ratings, rb)


def test_rated_ids_at_M_32_cost_nine_bytes_more():
    rated = Latent(KIND_RATED_IDS, 16, None, ids=list(range(32)), ratings=[k % 4 for k in range(32)], rating_bits=2)
    assert len(pack(rated, CODEBOOK)) == 71 + 1 + 8  # the ratings' bits byte + 32 x 2 bits: 2.5 B a slot


def rated_payload(ids: list[int], ratings_body: bytes, rb: int = 2) -> bytes:
    head = bytes([payload.MAGIC, (payload.VERSION << 4) | KIND_RATED_IDS, len(ids), 16, payload.NO_HINT])
    return sealed(head + bytes([rb]) + np.asarray(ids, dtype="<u2").tobytes() + ratings_body)


@pytest.mark.parametrize("data, limits, match", [
    (pack(Latent(KIND_IDS, 16, None, ids=[500, 600]), CODEBOOK), Limits(rating_bits=2),
     "carries no ratings, this receiver reads 2-bit ratings"),
    (rated_payload([500, 600], bytes([0b0111])), Limits(rating_bits=0),
     "carries 2-bit ratings, this receiver reads no ratings"),
    (rated_payload([500, 600], bytes([0b0111])), Limits(rating_bits=1), "this receiver reads 1-bit ratings"),
    (rated_payload([500, 600], bytes([0b110111])), None, "padding bits after the last rating are not zero"),
    (rated_payload([500], bytes([1, 0]), rb=9), None, "9 bits a rating, 1 to 8"),
    (rated_payload([500], b"", rb=0), None, "0 bits a rating, 1 to 8"),
    (rated_payload([500, 600], b""), None, "does not match its header"),
])
def test_ratings_the_receiver_cannot_read_are_refused(data, limits, match):
    with pytest.raises(PayloadError, match=match):
        unpack(data, CODEBOOK, limits)


def test_pack_refuses_ratings_that_do_not_fit():
    for ratings, rb, match in (([0, 4], 2, "rating 4 at slot 1 does not fit 2 bits"), ([1], 2, "1 ratings for 2 ids"),
                               (None, 2, "None ratings for 2 ids"), ([0, 0], 0, "rating_bits 0")):
        with pytest.raises(PayloadError, match=match):
            pack(Latent(KIND_RATED_IDS, 16, None, ids=[5, 6], ratings=ratings, rating_bits=rb), CODEBOOK)


@st.composite
def layouts(draw, n_max: int = 255):
    """ids with a valid layout: positions of one id or two, in any order."""
    sizes = draw(st.lists(st.sampled_from([1, 2]), max_size=n_max // 2))
    pairs = [b for k in sizes for b in ([1, 0] if k == 2 else [0])]
    return draw(st.lists(st.integers(0, 65535), min_size=len(pairs), max_size=len(pairs))), pairs


@settings(max_examples=200, deadline=None)
@given(laid=layouts(), codebook=st.integers(0, 65535))
def test_paired_ids_round_trip_exactly(laid, codebook):
    ids, pairs = laid
    sent = pack(Latent(KIND_PAIRED_IDS, 16, None, ids=ids, pairs=pairs), codebook)
    assert len(sent) == payload.HEADER + 2 * len(ids) + -(-len(ids) // 8) + payload.TRAILER
    back = unpack(sent, codebook, Limits(paired=True))
    assert (back.kind, back.ids, back.pairs) == (KIND_PAIRED_IDS, ids, pairs)
    assert back.positions == len(back.groups()) == len(ids) - sum(pairs)
    assert [i for g in back.groups() for i in g] == ids


def test_paired_ids_may_hold_more_ids_than_M_in_M_positions():
    """48 ids in 32 positions (16 pairs): within M = 32; one id more is not."""
    pairs = [1, 0] * 16 + [0] * 16
    sent = pack(Latent(KIND_PAIRED_IDS, 16, None, ids=list(range(100, 148)), pairs=pairs), CODEBOOK, LIMITS)
    assert len(sent) == 7 + 96 + 6  # 3.4 B a position
    assert unpack(sent, CODEBOOK, LIMITS).positions == 32
    with pytest.raises(PayloadError, match="33 slots, more than M = 32"):
        pack(Latent(KIND_PAIRED_IDS, 16, None, ids=list(range(100, 149)), pairs=pairs + [0]), CODEBOOK, LIMITS)


def paired_payload(ids: list[int], layout_body: bytes) -> bytes:
    head = bytes([payload.MAGIC, (payload.VERSION << 4) | KIND_PAIRED_IDS, len(ids), 16, payload.NO_HINT])
    return sealed(head + np.asarray(ids, dtype="<u2").tobytes() + layout_body)


@pytest.mark.parametrize("data, limits, match", [
    (paired_payload([500, 600, 700], bytes([0b001])), Limits(paired=False),
     "carries paired ids .*, this receiver reads one id a position"),
    (pack(Latent(KIND_IDS, 16, None, ids=[500, 600]), CODEBOOK), Limits(paired=True),
     "carries one id a position, this receiver reads paired ids"),
    (paired_payload([500, 600, 700], bytes([0b011])), None, "id 0 pairs with the next, but that one starts a pair too"),
    (paired_payload([500, 600, 700], bytes([0b100])), None, "id 2 pairs with the next, but that one does not exist"),
    (paired_payload([500, 600, 700], bytes([0b1000])), None, "padding bits after the last layout bit are not zero"),
    (paired_payload([500, 600, 700], b""), None, "does not match its header"),
    (paired_payload([500, 5, 700], bytes([0b001])), LIMITS, "id 5 at slot 1 is a special/control token"),
])
def test_layouts_the_receiver_cannot_read_are_refused(data, limits, match):
    with pytest.raises(PayloadError, match=match):
        unpack(data, CODEBOOK, limits)


def test_pack_refuses_a_layout_that_does_not_fit_its_ids():
    for pairs, match in (([1], "1 layout bits for 2 ids"), ([1, 1], "starts a pair too"), ([0, 2], "0 or 1"),
                         (None, "no layout bits")):
        with pytest.raises(PayloadError, match=match):
            pack(Latent(KIND_PAIRED_IDS, 16, None, ids=[5, 6], pairs=pairs), CODEBOOK)


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


def test_sealed_is_how_pack_checksums():
    assert ids_payload([5, 700]) == pack(Latent(KIND_IDS, 16, None, ids=[5, 700]), CODEBOOK)


@pytest.mark.parametrize("ids, bits, match", [
    ([500, 60000], 16, r"id 60000 at slot 1 is outside the codebook \[0, 49151\]"),
    ([49152], 16, r"id 49152 at slot 0 is outside the codebook \[0, 49151\]"),
    ([1, 500], 16, r"id 1 at slot 0 is a special/control token"),
    ([500, 500, 16], 16, r"id 16 at slot 2 is a special/control token"),
    ([500] * 33, 16, r"33 slots, more than M = 32"),
    ([500, 600], 8, r"bits 8, ids are 16 bits each"),
])
def test_hostile_ids_with_a_valid_crc_are_refused(ids, bits, match):
    with pytest.raises(PayloadError, match=match):
        unpack(ids_payload(ids, bits), CODEBOOK, LIMITS)


def test_ids_bits_are_checked_without_limits():
    with pytest.raises(PayloadError, match="bits 8"):
        unpack(ids_payload([5, 6], bits=8), CODEBOOK)


def test_ids_within_the_limits_pass():
    ids = [17, 49151, 500] + [100] * 29
    assert unpack(ids_payload(ids), CODEBOOK, LIMITS).ids == ids


def test_pack_refuses_what_the_receiver_would():
    for ids, match in (([60000], "id 60000 at slot 0"), ([500, 1], "id 1 at slot 1"), ([500] * 33, "more than M = 32")):
        with pytest.raises(PayloadError, match=match):
            pack(Latent(KIND_IDS, 16, None, ids=ids), CODEBOOK, LIMITS)
    with pytest.raises(PayloadError, match="bits 8"):
        pack(Latent(KIND_IDS, 8, None, ids=[500]), CODEBOOK)


SUSPECT = [0, 1, 16, 17, 49151, 49152, 60000, 65535]  # the limits' edges


@st.composite
def checksummed(draw) -> bytes:
    """Any header and body under a valid CRC: a well-formed ids, rated ids, paired ids or values
    body (ids near the limits' edges, ratings, layout bits and values any bytes) or raw bytes under
    any header."""
    shape, hint = draw(st.sampled_from(["ids", "rated", "paired", "values", "raw"])), draw(st.integers(0, 255))
    bits = draw(st.one_of(st.sampled_from([16, 8, 4]), st.integers(0, 255)))
    if shape in ("ids", "rated", "paired"):  # codebook ids, mostly 16 bits, often one of them suspect
        n = draw(st.integers(0, 40))
        ids = draw(st.lists(st.integers(17, 49151), min_size=n, max_size=n))
        if n and draw(st.sampled_from([True, True, False])):
            ids[draw(st.integers(0, n - 1))] = draw(st.one_of(st.sampled_from(SUSPECT), st.integers(0, 65535)))
        kind, body, bits = KIND_IDS, np.asarray(ids, dtype="<u2").tobytes(), draw(st.sampled_from([16, 16, 16, bits]))
        if shape == "rated":  # their ratings' bits (mostly 1 to 8), then any bytes, mostly as many as they take
            rb = draw(st.one_of(st.integers(1, 8), st.integers(0, 255)))
            size = draw(st.sampled_from([-(-n * rb // 8)] * 3 + [draw(st.integers(0, 40))]))
            kind, body = KIND_RATED_IDS, bytes([rb]) + body + draw(st.binary(min_size=size, max_size=size))
        if shape == "paired":  # their layout bits, any bytes, mostly as many as they take
            size = draw(st.sampled_from([-(-n // 8)] * 3 + [draw(st.integers(0, 8))]))
            kind, body = KIND_PAIRED_IDS, body + draw(st.binary(min_size=size, max_size=size))
    elif shape == "values":
        n, width, group = draw(st.integers(0, 40)), draw(st.integers(0, 24)), draw(st.integers(1, 64))
        bits = bits if bits in (16, 8, 4) else 16
        layout = pack(Latent(KIND_VALUES, bits, None, values=np.zeros((n, width)), group_size=group), 0)
        size = len(layout) - payload.HEADER - payload.TRAILER - 2  # after width and group
        kind, body = KIND_VALUES, bytes([width, group]) + draw(st.binary(min_size=size, max_size=size))
    else:
        kind = draw(st.one_of(st.sampled_from([KIND_IDS, KIND_RATED_IDS, KIND_PAIRED_IDS, KIND_VALUES]),
                              st.integers(0, 15)))
        n, body = draw(st.integers(0, 255)), draw(st.binary(max_size=200))
    return sealed(bytes([payload.MAGIC, (payload.VERSION << 4) | kind, n, bits, hint]) + body)


@settings(max_examples=500, deadline=None)
@given(data=checksummed())
def test_checksummed_payloads_are_refused_or_within_the_limits(data):
    """Whatever a valid CRC wraps: a latent within the limits, or a PayloadError, never another error."""
    try:
        got = unpack(data, CODEBOOK, LIMITS)
    except PayloadError:
        return
    assert got.n == data[2]
    if got.kind in (KIND_IDS, KIND_RATED_IDS, KIND_PAIRED_IDS):
        assert got.bits == 16 and got.positions == len(got.groups()) <= LIMITS.max_slots
        assert got.kind != KIND_RATED_IDS or (len(got.ratings) == got.n and max(got.ratings, default=0) < 2 ** got.rating_bits)
        assert all(0 <= i < LIMITS.vocab_size and i not in LIMITS.forbidden for i in got.ids)
        assert pack(got, CODEBOOK, LIMITS) == data  # what passes is exactly re-sendable
    else:
        assert got.kind == KIND_VALUES and got.values.shape == (got.n, data[5])


# ---------------------------------------------------------------- the real receiving paths

@pytest.fixture(scope="module")
def receiver(tmp_path_factory, tiny_models, one_thread):
    """A LatentReceiver on the tiny llama: a fitted pick (the codebook) and an untrained
    checkpoint at M = 8, as `receive` loads them."""
    import yaml
    from tiny import fit_pick

    from latentwire.config import load_params
    from latentwire.latent import LatentWire
    from latentwire.transfer import LatentReceiver

    root = tmp_path_factory.mktemp("receiver")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {s: {"source": "local", "path": str(tiny_models[s])} for s in ("llama", "qwen")}
    raw["pick"].update(spans=[6], hidden=8, epochs=1)
    raw["stage3"]["M"] = 8
    for d in raw["data"]["datasets"].values():
        d["M"] = None  # every dataset at stage3.M: the receiver accepts at most 8 slots
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    fit_pick(root, n=8)
    params = load_params(root / "params.yaml")
    LatentWire(params, 8, hidden={"llama": 32, "qwen": 32}).save(root / "ckpt")
    return LatentReceiver(params, "llama", str(root / "ckpt"), str(root / "models/pick"))


def test_sender_limits_name_the_codebook_and_its_special_tokens(receiver):
    s = receiver.lw.codec.sender
    tok, lim = s.tokenizer, s.limits()
    # the channel off (no ratings), one id a position (no layout bits)
    assert lim == receiver.lw.codec.limits == Limits(len(tok), 8, lim.forbidden, rating_bits=0, paired=False)
    assert {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<eos>", "<pad>")} <= lim.forbidden
    assert s.limits(5).max_slots == 5


def hostile(receiver) -> list[tuple[list[int], str]]:
    tok = receiver.lw.codec.sender.tokenizer
    V, start = len(tok), tok.convert_tokens_to_ids("<|im_start|>")
    return [([5, V], f"id {V} at slot 1 is outside the codebook"), ([60000], "id 60000 at slot 0"),
            ([5, 6, start], f"id {start} at slot 2 is a special/control token"),
            ([5] * 9, "9 slots, more than M = 8")]


def test_receiver_refuses_hostile_ids_with_a_payload_error(receiver):
    cb = receiver.lw.codec.codebook
    assert isinstance(receiver.receive(ids_payload([5, 6], codebook=cb), "Which river?"), str)
    for ids, match in hostile(receiver):
        with pytest.raises(PayloadError, match=match):  # not IndexError (a device assert on CUDA)
            receiver.receive(ids_payload(ids, codebook=cb), "Which river?")


def test_evaluate_refuses_hostile_ids_with_a_payload_error(receiver):
    from latentwire import evaluate
    from tiny import qa_rows

    row, cb = qa_rows(1, "squad")[0], receiver.lw.codec.codebook
    for ids, match in hostile(receiver):
        with pytest.raises(PayloadError, match=match):
            evaluate.latent_model(receiver.llm, receiver.lw, [row], {row["id"]: (ids_payload(ids, codebook=cb), None)},
                                  "ids", {}, receiver.params, [])

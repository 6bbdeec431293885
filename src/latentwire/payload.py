"""The wire format: a latent packed into bytes, and back. What crosses the wire is len(pack(...)).

    offset  size  field
    0       1     magic 0x4C ("L")
    1       1     format version (high 4 bits) | code kind (low 4 bits): 1 ids, 2 values, 3 rated ids,
                  4 paired ids
    2       1     n: slots in this payload (at most M; fewer when the context is short); kind paired
                  ids: the ids it carries (their receiver positions, at most M, are n minus its pairs)
    3       1     bits: 16 for ids (uint16 each); 16, 8 or 4 for values
    4       1     hint: the answer-length bucket, 0xFF for none
    5       ...   body
    -2      2     CRC-16/CCITT of bytes 0..-2, seeded with the codebook's fingerprint

Body of kind ids: n little-endian uint16 indices into the shared codebook (the sender's
vocabulary). Body of kind rated ids (ids.rating_edges, the rating channel): r, the bits of a
rating (1 byte), the n ids as in kind ids, then each id's rating bucket in r bits, packed
least significant bit first (ceil(n r / 8) bytes). Body of kind paired ids (ids.keep, variable-rate
slots): the n ids as in kind ids, then one layout bit an id (ceil(n / 8) bytes, least significant
bit first): 1 where the id and the next share one receiver position (a pair), 0 where it starts a
position of its own; the id after a 1 has a 0, the last id a 0, the padding 0s. Body of kind values (the continuous codes d_wire x bits of the learned senders):
width (1 byte), group size (1 byte), then fp16 values (bits 16) or, for ints, one fp16 scale
per group of `group size` values followed by the values as signed ints (int4: two a byte).

The CRC's seed is the codebook fingerprint (`fingerprint`), so a payload made for another
codebook fails the check like a garbled one; the error says both are possible.

The fingerprint is public, so a valid CRC proves nothing about the sender: a receiver passes
its `Limits` (`Sender.limits`) and `unpack` refuses ids beyond them after the CRC: bits other
than 16, more than M slots, an id outside the codebook (it would index past the adapter's
table) or one of its special/control tokens (chat markup injected into the receiver's prompt).
`pack` refuses the same when given the limits.
"""
from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass

import numpy as np

MAGIC, VERSION = 0x4C, 1
KIND_IDS, KIND_VALUES, KIND_RATED_IDS, KIND_PAIRED_IDS = 1, 2, 3, 4
ID_KINDS = (KIND_IDS, KIND_RATED_IDS, KIND_PAIRED_IDS)
NO_HINT = 0xFF
HEADER, TRAILER = 5, 2


class PayloadError(ValueError):
    """A payload that cannot be read: truncated, garbled, foreign, of an unknown version, or
    carrying ids its receiver refuses."""


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts in a payload of kind ids: at most max_slots ids (its M), each
    below vocab_size (the codebook's length) and none of `forbidden` (its special tokens); ratings
    of rating_bits bits each (0: none, kind ids; None: any); and layout bits (paired: True, kind
    paired ids, its ids in at most max_slots positions; False: none; None: either). The defaults
    are the header's own bounds."""
    vocab_size: int = 65536
    max_slots: int = 255
    forbidden: frozenset[int] = frozenset()
    rating_bits: int | None = None
    paired: bool | None = None

    def __post_init__(self):
        if not 0 < self.vocab_size <= 65536:
            raise ValueError(f"a codebook of {self.vocab_size} ids: 16-bit ids need 1 to 65536")


def check_ids(ids: list[int], bits: int, limits: Limits | None = None, positions: int | None = None) -> None:
    """PayloadError, naming the slot, unless the ids are 16 bits each and within `limits` (in at
    most M positions: `positions`, default one an id)."""
    limits = limits or Limits()
    if bits != 16:
        raise PayloadError(f"ids: bits {bits}, ids are 16 bits each")
    positions = len(ids) if positions is None else positions
    if positions > limits.max_slots:
        raise PayloadError(f"ids: {positions} slots, more than M = {limits.max_slots}")
    for k, i in enumerate(ids):
        if not 0 <= i < limits.vocab_size:
            raise PayloadError(f"ids: id {i} at slot {k} is outside the codebook [0, {limits.vocab_size - 1}]")
        if i in limits.forbidden:
            raise PayloadError(f"ids: id {i} at slot {k} is a special/control token of the codebook")


def check_ratings(ids: list[int], ratings: list[int] | None, rating_bits: int, limits: Limits | None = None) -> None:
    """PayloadError unless the ratings are one per id in rating_bits bits (kind ids: none), as
    many bits as the receiver reads."""
    want = (limits or Limits()).rating_bits
    if want is not None and want != rating_bits:
        say = lambda b: f"{b}-bit ratings" if b else "no ratings"  # noqa: E731
        raise PayloadError(f"ratings: the payload carries {say(rating_bits)}, this receiver reads {say(want)} "
                           "(ids.rating_edges: the sender's and the receiver's differ)")
    if not rating_bits:
        return
    if not 1 <= rating_bits <= 8 or ratings is None or len(ratings) != len(ids):
        raise PayloadError(f"ratings: {rating_bits} bits, {None if ratings is None else len(ratings)} ratings "
                           f"for {len(ids)} ids: 1 to 8 bits, one rating an id")
    for k, r in enumerate(ratings):
        if not 0 <= r < 2 ** rating_bits:
            raise PayloadError(f"ratings: rating {r} at slot {k} does not fit {rating_bits} bits")


def check_pairs(ids: list[int], pairs: list[int] | None, limits: Limits | None = None) -> None:
    """PayloadError unless `pairs` is a layout of the ids (one bit an id; a 1 pairs the id with
    the next, which then has a 0, as has the last) and the receiver reads layouts if there is one."""
    want = (limits or Limits()).paired
    if want is not None and want != (pairs is not None):
        say = lambda p: "paired ids (ids.keep)" if p else "one id a position"  # noqa: E731
        raise PayloadError(f"layout: the payload carries {say(pairs is not None)}, this receiver reads "
                           f"{say(want)} (ids.keep: the sender's and the receiver's differ)")
    if pairs is None:
        return
    if len(pairs) != len(ids) or any(b not in (0, 1) for b in pairs):
        raise PayloadError(f"layout: {len(pairs)} layout bits for {len(ids)} ids: one bit, 0 or 1, an id")
    for k, b in enumerate(pairs):
        if b and (k == len(pairs) - 1 or pairs[k + 1]):
            raise PayloadError(f"layout: id {k} pairs with the next, but that one "
                               + ("does not exist" if k == len(pairs) - 1 else "starts a pair too"))


@dataclass
class Latent:
    """What a payload carries: ids [n] (kind ids; kind rated ids: with ratings [n] of rating_bits
    each; kind paired ids: with a layout bit each, `pairs`) or values [n, width] (kind values)."""
    kind: int
    bits: int
    hint: int | None
    ids: list[int] | None = None
    values: np.ndarray | None = None
    group_size: int = 32
    ratings: list[int] | None = None
    rating_bits: int = 0
    pairs: list[int] | None = None

    @property
    def n(self) -> int:
        return int(self.values.shape[0]) if self.kind == KIND_VALUES else len(self.ids)

    @property
    def positions(self) -> int:
        """The receiver positions it takes: one a slot, a pair of ids one."""
        return self.n - sum(self.pairs or ())

    def groups(self) -> list[list[int]]:
        """Kind ids: the ids each receiver position reads (one, or a pair)."""
        out, k = [], 0
        while k < len(self.ids):
            two = bool(self.pairs) and self.pairs[k] == 1
            out.append(self.ids[k:k + 2] if two else [self.ids[k]])
            k += 2 if two else 1
        return out


def fingerprint(vocab: dict[str, int]) -> int:
    """16 bits that name a codebook (a tokenizer's token -> id map)."""
    blob = "\n".join(f"{t}\t{i}" for t, i in sorted(vocab.items(), key=lambda kv: kv[1]))
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:2], "little")


def _bits(values: list[int], width: int) -> bytes:
    """Each value in `width` bits, least significant bit first, packed into bytes."""
    bits = (np.asarray(values, dtype=np.uint8)[:, None] >> np.arange(width, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def _values_of(buf: bytes, n: int, width: int, what: str) -> list[int]:
    """`_bits`' inverse: n values of `width` bits; PayloadError if a padding bit is set."""
    flat = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    if flat[n * width:].any():
        raise PayloadError(f"{what}: the padding bits after the last {what.removesuffix('s')} are not zero: garbled")
    return (flat[:n * width].reshape(n, width).astype(int) << np.arange(width)).sum(1).tolist()


def _int_bytes(q: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return q.astype(np.int8).tobytes()
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)
    if len(u) % 2:
        u = np.append(u, np.uint8(0))
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()


def _ints_from(buf: bytes, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(buf, dtype=np.int8).astype(np.float32)
    u = np.frombuffer(buf, dtype=np.uint8)
    nib = np.empty(len(u) * 2, dtype=np.int16)
    nib[0::2], nib[1::2] = u & 0xF, u >> 4
    nib = np.where(nib > 7, nib - 16, nib)[:count]
    return nib.astype(np.float32)


def _values_body(values: np.ndarray, bits: int, group: int) -> bytes:
    n, width = values.shape
    if width > 255 or not 1 <= group <= 255:
        raise PayloadError(f"values: width {width} and group size {group} must fit one byte each")
    head = bytes([width, group])
    flat = values.astype(np.float32).reshape(-1)
    if bits == 16:
        return head + flat.astype("<f2").tobytes()
    qmax = 2 ** (bits - 1) - 1
    pad = (-len(flat)) % group
    groups = np.pad(flat, (0, pad)).reshape(-1, group)
    scale = np.maximum(np.abs(groups).max(1) / qmax, 2.0 ** -14).astype("<f2")
    q = np.clip(np.round(groups / scale.astype(np.float32)[:, None]), -qmax, qmax).reshape(-1)[:len(flat)]
    return head + scale.tobytes() + _int_bytes(q, bits)


def pack(latent: Latent, codebook: int, limits: Limits | None = None) -> bytes:
    """Latent -> payload bytes (`codebook`: the fingerprint of the ids' codebook, 0 for values;
    `limits`: the receiver's, for kind ids)."""
    n = latent.n
    if not 0 <= n <= 255:
        raise PayloadError(f"n = {n} slots: at most 255 fit the header")
    hint = NO_HINT if latent.hint is None else int(latent.hint)
    if latent.hint is not None and not 0 <= hint < NO_HINT:
        raise PayloadError(f"hint {hint}: must be in [0, 254] (255 means none)")
    if latent.kind in ID_KINDS:
        rb = latent.rating_bits if latent.kind == KIND_RATED_IDS else 0
        pairs = latent.pairs if latent.kind == KIND_PAIRED_IDS else None
        if latent.kind == KIND_PAIRED_IDS and pairs is None:
            raise PayloadError("paired ids: no layout bits (a latent without them is kind ids)")
        check_pairs(latent.ids, pairs, limits)
        check_ids(latent.ids, latent.bits, limits, n - sum(pairs or ()))
        check_ratings(latent.ids, latent.ratings, rb, limits)
        if latent.kind == KIND_RATED_IDS and not rb:
            raise PayloadError("rated ids: rating_bits 0 (a latent without ratings is kind ids)")
        body = np.asarray(latent.ids, dtype="<u2").tobytes()
        if rb:
            body = bytes([rb]) + body + _bits(latent.ratings, rb)
        if pairs is not None:
            body += _bits(pairs, 1)
    elif latent.kind == KIND_VALUES:
        if latent.bits not in (16, 8, 4):
            raise PayloadError(f"values: bits {latent.bits} not in (16, 8, 4)")
        body = _values_body(np.asarray(latent.values), latent.bits, latent.group_size)
    else:
        raise PayloadError(f"unknown code kind {latent.kind}")
    head = bytes([MAGIC, (VERSION << 4) | latent.kind, n, latent.bits, hint])
    crc = binascii.crc_hqx(head + body, codebook & 0xFFFF)
    return head + body + crc.to_bytes(2, "little")


def unpack(payload: bytes, codebook: int, limits: Limits | None = None) -> Latent:
    """Payload bytes -> Latent; a clear PayloadError for anything that is not a whole,
    intact payload of this format made for this codebook, or (kind ids) not within `limits`."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) < HEADER + TRAILER:
        raise PayloadError(f"payload truncated: {len(payload)} bytes, a header and checksum need "
                           f"{HEADER + TRAILER}")
    if payload[0] != MAGIC:
        raise PayloadError(f"not a LatentWire payload: first byte 0x{payload[0]:02x}, expected 0x{MAGIC:02x}")
    version, kind = payload[1] >> 4, payload[1] & 0xF
    if version != VERSION:
        raise PayloadError(f"payload format version {version}: this reader knows version {VERSION}")
    n, bits, hint = payload[2], payload[3], payload[4]
    body = payload[HEADER:-TRAILER]
    if kind == KIND_IDS:
        expected = 2 * n
    elif kind == KIND_RATED_IDS:
        if len(body) < 1:
            raise PayloadError("payload truncated: the ratings' bits are missing")
        expected = 1 + 2 * n + -(-n * body[0] // 8)
    elif kind == KIND_PAIRED_IDS:
        expected = 2 * n + -(-n // 8)
    elif kind == KIND_VALUES:
        if len(body) < 2:
            raise PayloadError("payload truncated: the values header is missing")
        width, group = body[0], body[1]
        count = n * width
        expected = 2 + (2 * count if bits == 16 else
                        2 * -(-count // max(group, 1)) + -(-count * bits // 8))
        if bits not in (16, 8, 4) or group == 0:
            raise PayloadError(f"values: bits {bits} / group size {group} are not valid")
    else:
        raise PayloadError(f"unknown code kind {kind} (version {version} knows 1 ids, 2 values, 3 rated ids, 4 paired ids)")
    if len(body) != expected:
        raise PayloadError(f"payload length {len(payload)} does not match its header "
                           f"({HEADER + expected + TRAILER} bytes for n = {n}): truncated or garbled")
    crc = int.from_bytes(payload[-TRAILER:], "little")
    if binascii.crc_hqx(payload[:-TRAILER], codebook & 0xFFFF) != crc:
        raise PayloadError("payload checksum mismatch: garbled in transit, or made with another "
                           f"codebook (this receiver's fingerprint is 0x{codebook & 0xFFFF:04x})")
    hint_v = None if hint == NO_HINT else hint
    if kind == KIND_IDS:
        ids = np.frombuffer(body, dtype="<u2").astype(int).tolist()
        check_pairs(ids, None, limits)
        check_ids(ids, bits, limits)
        check_ratings(ids, None, 0, limits)
        return Latent(KIND_IDS, bits, hint_v, ids=ids)
    if kind == KIND_PAIRED_IDS:
        ids = np.frombuffer(body[:2 * n], dtype="<u2").astype(int).tolist()
        pairs = _values_of(body[2 * n:], n, 1, "layout bits")
        check_pairs(ids, pairs, limits)
        check_ids(ids, bits, limits, n - sum(pairs))
        check_ratings(ids, None, 0, limits)
        return Latent(KIND_PAIRED_IDS, bits, hint_v, ids=ids, pairs=pairs)
    if kind == KIND_RATED_IDS:
        rb = body[0]
        ids = np.frombuffer(body[1:1 + 2 * n], dtype="<u2").astype(int).tolist()
        if not 1 <= rb <= 8:
            raise PayloadError(f"ratings: {rb} bits a rating, 1 to 8")
        ratings = _values_of(body[1 + 2 * n:], n, rb, "ratings")
        check_pairs(ids, None, limits)
        check_ids(ids, bits, limits)
        check_ratings(ids, ratings, rb, limits)
        return Latent(KIND_RATED_IDS, bits, hint_v, ids=ids, ratings=ratings, rating_bits=rb)
    width, group = body[0], body[1]
    count, data = n * width, body[2:]
    if bits == 16:
        flat = np.frombuffer(data, dtype="<f2").astype(np.float32)
    else:
        n_groups = -(-count // group)
        scale = np.frombuffer(data[:2 * n_groups], dtype="<f2").astype(np.float32)
        q = _ints_from(data[2 * n_groups:], bits, count)
        flat = (np.pad(q, (0, n_groups * group - count)).reshape(n_groups, group) * scale[:, None]).reshape(-1)[:count]
    return Latent(KIND_VALUES, bits, hint_v, values=flat.reshape(n, width), group_size=group)

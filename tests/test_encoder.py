"""Byte encoding, the latent encoder (shapes, slot views, resizing, init) and the adapter."""
import random
import string

import pytest
import torch
import torch.nn.functional as F

from latentwire.adapter import Adapter
from latentwire.config import BytesConfig
from latentwire.encoder import LatentEncoder, encode_bytes, hint_bucket

SLOTS = ["llama", "qwen"]
CFG = BytesConfig(d_z=32, layers=2, heads=4, max_bytes=64, hint_buckets=8)


def make(M=64, frac=0.75, seed=0):
    torch.manual_seed(seed)
    return LatentEncoder(CFG, d_wire=16, M=M, shared_fraction=frac, slots=SLOTS)


def random_texts(n, seed=0):
    rng = random.Random(seed)
    chars = string.ascii_letters + string.digits + " .,?é東"
    return ["".join(rng.choice(chars) for _ in range(rng.randint(5, 60))) for _ in range(n)]


def test_encode_bytes_padding_and_cuts():
    ids, mask, cut = encode_bytes(["ab", "", "é" * 4], max_bytes=6)  # é is 2 bytes
    assert ids.shape == mask.shape == (3, 6)
    assert ids[0].tolist() == [ord("a") + 1, ord("b") + 1, 0, 0, 0, 0]
    assert ids[2].tolist() == [0xC3 + 1, 0xA9 + 1] * 3
    assert mask.tolist() == [[True, True] + [False] * 4, [False] * 6, [True] * 6]
    assert cut == [0, 0, 2]
    ids, mask, cut = encode_bytes(["abc", "a"], max_bytes=100)  # T = longest text
    assert ids.shape == (2, 3) and cut == [0, 0] and mask.sum().item() == 4


def test_hint_bucket():
    lengths = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 15, 16, 100]
    assert [hint_bucket(n, 8) for n in lengths] == [0, 0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert hint_bucket(torch.tensor(lengths), 4).tolist() == [0, 0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert hint_bucket(50, 1) == 0


def test_forward_shapes_and_empty_prompt():
    enc = make()
    assert (enc.M, enc.S, enc.P) == (64, 48, 16)
    Z, hint = enc(*encode_bytes(["What is the capital of France?", ""], CFG.max_bytes)[:2])
    assert Z.shape == (2, 48 + 2 * 16, 16) and hint.shape == (2, 8)
    assert torch.isfinite(Z).all() and torch.isfinite(hint).all()


def test_slot_view_rows():
    enc = make(M=8, frac=0.75)  # S=6, P=2: rows 0-5 shared, 6-7 llama, 8-9 qwen
    Z = torch.arange(10.0)[None, :, None].expand(1, 10, 16)
    assert enc.slot_view(Z, "llama")[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert enc.slot_view(Z, "qwen")[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 8, 9]


@pytest.mark.parametrize("Ms, expect", [([64, 48, 32], (24, 8)), ([32, 64], (48, 16)),
                                        ([64, 1], (1, 0)), ([1, 32], (24, 8))])
def test_resize_keeps_split(Ms, expect):
    enc = make(M=Ms[0])
    ids, mask, _ = encode_bytes(random_texts(3), CFG.max_bytes)
    for M in Ms[1:]:
        enc.resize(M)
        S, P = enc.S, enc.P
        assert (enc.M, S + P) == (M, M)
        assert enc.shared_q.shape[0] == S and all(q.shape[0] == P for q in enc.private_q.values())
        Z, _ = enc(ids, mask)
        assert Z.shape == (3, S + 2 * P, 16) and torch.isfinite(Z).all()
        assert enc.slot_view(Z, "qwen").shape == (3, M, 16)
    assert (enc.S, enc.P) == expect


def test_resize_48_is_36_plus_12():
    enc = make(M=64)
    enc.resize(48)
    assert (enc.S, enc.P) == (36, 12)


def test_resize_interpolates_each_group():
    enc = make(M=8)  # S=6, P=2
    old_s, old_p = enc.shared_q.clone(), enc.private_q["qwen"].clone()
    enc.resize(16)  # S=12, P=4: end rows keep the old end rows (align_corners)
    torch.testing.assert_close(enc.shared_q[[0, -1]], old_s[[0, -1]])
    torch.testing.assert_close(enc.private_q["qwen"][[0, -1]], old_p[[0, -1]])
    torch.testing.assert_close(enc.private_q["qwen"][1], old_p[0] * 2 / 3 + old_p[1] / 3)


def test_gradient_reaches_byte_embedding():
    enc = make()
    ids, mask, _ = encode_bytes(random_texts(2), CFG.max_bytes)
    Z, hint = enc(ids, mask)
    (Z.square().sum() + hint.sum()).backward()
    grad = enc.byte_emb.weight.grad
    assert grad[ids[mask]].abs().sum() > 0 and grad[0].abs().sum() == 0  # pad row stays 0


def test_z_depends_on_input_at_init():
    enc = make().eval()
    ids, mask, _ = encode_bytes(random_texts(16), CFG.max_bytes)
    with torch.no_grad():
        Z, _ = enc(ids, mask)
    f = F.normalize(Z.flatten(1), dim=-1)
    cos = f @ f.T
    mean_off_diag = (cos.sum() - cos.diagonal().sum()) / (16 * 15)
    assert mean_off_diag < 0.99
    assert not torch.allclose(Z[0], Z[1])


def test_adapter_norms_shapes_and_resize():
    torch.manual_seed(0)
    ad = Adapter(d_wire=16, hidden=24, M=8, hint_buckets=8, target_norm=0.7)
    out = ad(torch.randn(3, 8, 16), torch.tensor([0, 3, 7]))
    assert out.shape == (3, 8, 24)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((3, 8), 0.7))
    with torch.no_grad():
        ad.log_scale.fill_(torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(ad(torch.randn(1, 8, 16), torch.tensor([1])).norm(dim=-1),
                               torch.full((1, 8), 1.4))
    assert "target_norm" in ad.state_dict()
    old = ad.pos.clone()
    ad.resize(4)
    assert ad.pos.shape == (4, 24)
    torch.testing.assert_close(ad.pos[[0, -1]], old[[0, -1]])
    assert ad(torch.randn(2, 4, 16), torch.tensor([0, 1])).shape == (2, 4, 24)

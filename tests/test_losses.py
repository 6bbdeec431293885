"""Losses on small hand-computed tensors (expected numbers worked out in the comments)."""
import math

import pytest
import torch

from latentwire.losses import (ce_loss, first_token_correct, hard_negative_weights, kd_loss,
                               teacher_entropy)

LN2, LN3 = math.log(2), math.log(3)


def test_ce_loss_hand_computed():
    # sample 0: uniform over 3 -> ln 3; probs [1,2,1]/4 at target 1 -> ln 2; mean = ln(6)/2
    logits = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]).log().expand(3, 2, 3)
    targets = torch.tensor([[0, 1], [0, 1], [0, 1]])
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    loss = ce_loss(logits, targets, mask)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor([0.8958797, 1.0986123, 0.0]))


def test_ce_loss_ignores_masked_targets():
    logits = torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    a = torch.tensor([[1, 2, 3], [4, 0, 1]])
    b = torch.tensor([[1, 2, 0], [4, -100, 9]])  # masked ids may be anything, even invalid
    torch.testing.assert_close(ce_loss(logits, a, mask), ce_loss(logits, b, mask))


def kd_case():
    """V=4, k=2: teacher top-2 probs [0.5, 0.25] at tokens 0, 1 -> buckets [0.5, 0.25, 0.25];
    a uniform student -> buckets [0.25, 0.25, 0.5]."""
    logits = torch.zeros(1, 1, 4)
    top_idx = torch.tensor([[[0, 1]]])
    top_logp = torch.tensor([[[0.5, 0.25]]]).log()
    return logits, top_idx, top_logp, torch.ones(1, 1, dtype=torch.bool)


def test_kd_loss_hand_computed():
    # tau=1: KL = 0.5 ln(0.5/0.25) + 0.25 ln(1) + 0.25 ln(0.25/0.5) = 0.25 ln 2
    loss = kd_loss(*kd_case(), tau=1.0)
    torch.testing.assert_close(loss, torch.tensor([0.1732868]))
    # tau=2: t = [r, .5, .5]/(1+r), s = [.5, .5, r]/(1+r), r = sqrt(.5);
    # 4 * KL = 4 * (r - .5)/(1 + r) * ln(r/.5) = 0.1681857
    torch.testing.assert_close(kd_loss(*kd_case(), tau=2.0), torch.tensor([0.1681857]))


def test_kd_loss_masked_mean():
    logits, top_idx, top_logp, _ = kd_case()
    # position 0 as above; position 1 the student equals the teacher (loss 0); position 2 masked
    same = torch.tensor([[[4.0, 2.0, 1.0, 1.0]]]).log()  # probs [.5, .25, .125, .125]
    logits = torch.cat([logits, same, torch.randn(1, 1, 4)], 1)
    top_idx = top_idx.expand(1, 3, 2)
    top_logp = top_logp.expand(1, 3, 2)
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(kd_loss(logits, top_idx, top_logp, mask, 1.0),
                               torch.tensor([0.1732868 / 2]))
    assert kd_loss(logits, top_idx, top_logp, torch.zeros_like(mask), 1.0).item() == 0.0


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_loss_zero_when_student_is_teacher(tau):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 50) * 3
    top_logp, top_idx = logits.log_softmax(-1).topk(5, -1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    loss = kd_loss(logits, top_idx, top_logp, mask, tau)
    assert loss.abs().max().item() < 1e-6


def test_kd_loss_gradient_and_full_topk_finite():
    # k = V: the remainder bucket is empty on both sides and is floored the same way
    logits = torch.randn(2, 2, 4, requires_grad=True)
    top_logp, top_idx = torch.randn(2, 2, 4).log_softmax(-1).topk(4, -1)
    loss = kd_loss(logits, top_idx, top_logp, torch.ones(2, 2, dtype=torch.bool), 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_teacher_entropy():
    # buckets [0.5, 0.25, 0.25] -> 0.5 ln 2 + 0.5 ln 4 = 1.5 ln 2; masked first position -> 0
    top_logp = torch.tensor([[0.5, 0.25], [0.9, 0.05]]).log()[:, None].expand(2, 3, 2)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    torch.testing.assert_close(teacher_entropy(top_logp, mask), torch.tensor([1.0397208, 0.0]))


def test_hard_negative_weights():
    # w = 1 + (1 - c) + H / 2 = [1, 2, 1.5, 3], mean 1.875
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0])
    entropy = torch.tensor([0.0, 0.0, 1.0, 2.0], requires_grad=True)
    w = hard_negative_weights(correct, entropy, max_entropy=2.0)
    torch.testing.assert_close(w, torch.tensor([0.5333333, 1.0666667, 0.8, 1.6]))
    assert w.mean().item() == pytest.approx(1.0)
    assert w.argmax().item() == 3  # wrong first token + most uncertain teacher
    assert not w.requires_grad


def test_first_token_correct():
    logits = torch.tensor([[[0.0, 3.0, 1.0], [9.0, 0.0, 0.0]],
                           [[2.0, 0.0, 1.0], [0.0, 9.0, 0.0]]])
    targets = torch.tensor([[1, 1], [1, 1]])  # only position 0 counts
    torch.testing.assert_close(first_token_correct(logits, targets), torch.tensor([1.0, 0.0]))

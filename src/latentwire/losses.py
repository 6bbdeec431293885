"""Training losses over the first K answer tokens. Shapes: B samples, K positions, V vocab.

Logits at position j predict target j; `mask` [B, K] is True at real answer tokens.
Every loss is per sample [B], averaged over its real positions (0 where there are none).
The KD teacher is cached as its top-k log-probs; both sides are compared as proper
distributions over k+1 buckets: the k cached tokens plus one "everything else" bucket.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6  # floor on the remainder bucket's probability (both sides, so they stay comparable)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, K] -> [B]: mean over the True positions, 0 for a sample with none."""
    return x.masked_fill(~mask, 0).sum(1) / mask.sum(1).clamp_min(1)


def ce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean cross-entropy over real positions [B]."""
    targets = targets.masked_fill(~mask, 0)  # padded targets may hold any id
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return masked_mean(ce.view_as(targets), mask)


def teacher_buckets(top_logp: torch.Tensor) -> torch.Tensor:
    """[..., k] cached top-k log-probs -> [..., k+1] with log(1 - sum p) as the last bucket."""
    rest = torch.log((1 - top_logp.exp().sum(-1)).clamp_min(EPS))
    return torch.cat([top_logp, rest[..., None]], -1)


def student_buckets(logits: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
    """[..., V] logits -> [..., k+1]: log-probs at top_idx plus the logsumexp of the rest."""
    logp = logits.float().log_softmax(-1)
    rest = logp.scatter(-1, top_idx, float("-inf")).logsumexp(-1).clamp_min(math.log(EPS))
    return torch.cat([logp.gather(-1, top_idx), rest[..., None]], -1)


def kd_loss(logits: torch.Tensor, top_idx: torch.Tensor, top_logp: torch.Tensor,
            mask: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(teacher || student) over the k+1 buckets, both tempered by tau, per sample [B]."""
    t = (teacher_buckets(top_logp.float()) / tau).log_softmax(-1)
    s = (student_buckets(logits, top_idx) / tau).log_softmax(-1)
    kl = F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    return tau ** 2 * masked_mean(kl, mask)


def teacher_entropy(top_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the k+1-bucket teacher at the first answer position [B] (0 if masked)."""
    logp = teacher_buckets(top_logp[:, 0].float()).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) * mask[:, 0]


def hard_negative_weights(first_correct: torch.Tensor, entropy: torch.Tensor,
                          max_entropy: float) -> torch.Tensor:
    """Per-sample loss weights, detached and normalised to mean 1 over the batch:

        w = 1 + (1 - first_correct) + entropy / max_entropy,   w <- w / mean(w)

    so a wrong first token and an uncertain teacher (max_entropy = log(k+1)) each add weight.
    """
    w = 1 + (1 - first_correct) + entropy / max_entropy
    return (w / w.mean()).detach()


def first_token_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where the argmax at position 0 is target 0, else 0.0 [B]."""
    return (logits[:, 0].argmax(-1) == targets[:, 0]).float()


def pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine between different examples' flattened codes z [B, ...] (differentiable).

    Near 1: one code for every input (the collapse the predecessor hit). As a loss term
    (bytes.diversity_weight) it pushes the shared constant out of Z."""
    if z.shape[0] < 2:
        return z.new_zeros(())
    f = F.normalize(z.flatten(1).float(), dim=-1)
    sim = f @ f.T
    n = f.shape[0]
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))

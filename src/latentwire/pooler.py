"""Variable-rate slots (ids.keep): one receiver position that reads two picked tokens, and the
cheap fit that teaches each receiver's pooler before the curriculum does.

`PairPooler` maps two adjacent tokens (a, b: the receiver's own embeddings of their strings,
`TokenAdapter.strings`) to one input vector:

    v = (g a + (1 - g) b) (1 + s) + W2 gelu(W1 [a; b]),   g = sigmoid(w . [a; b] + c)

It starts as the plain mean (w = 0, c = 0, s = 0, W2 = 0); a position of one token passes
through unchanged. On CPU the mean alone costs about 0.09 F1 against one token a position, the
learned pooler about 0.07 (bench/results/vrate_slots.md).

`fit` needs no backward pass through the whole receiver (issue 22's "cheap targets"): the
receiver, frozen and cut to its first `layers` layers, reads the picked tokens one a position
(the target) and the pooled positions; the loss is the pooled reading's squared error to the
target's states at that layer, relative to the target's norm, at each pooled position (against
the state at its last token) and at each token of the question and template that follows.
stage1 runs it for every receiver before its first step (train.py); the curriculum's KD + CE
then trains the pooler of each receiver a stage trains, with the rest of its adapter.
"""
from __future__ import annotations

import random

import torch
from torch import nn
from tqdm.auto import tqdm

from .receiver import Receiver


class PairPooler(nn.Module):
    """Two receiver embeddings -> one (gated mean, scaled, plus a low-rank correction)."""

    def __init__(self, hidden: int, rank: int = 64):
        super().__init__()
        self.gate = nn.Linear(2 * hidden, 1)
        self.scale = nn.Parameter(torch.zeros(()))
        self.down = nn.Linear(2 * hidden, rank)
        self.up = nn.Linear(rank, hidden, bias=False)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        nn.init.zeros_(self.up.weight)

    def forward(self, a: torch.Tensor, b: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """a, b [P, H]: each position's first and last token; pair [P] bool -> [P, H] (a where
        the position holds one token)."""
        x = torch.cat([a, b], -1)
        g = torch.sigmoid(self.gate(x))
        pooled = (g * a + (1 - g) * b) * (1 + self.scale) + self.up(nn.functional.gelu(self.down(x)))
        return torch.where(pair[:, None], pooled, a)


def pool(pooler: PairPooler, vecs: torch.Tensor, pairs: list[int]) -> torch.Tensor:
    """vecs [n, H], one an id, and their layout bits (payload kind paired ids) -> [positions, H]."""
    first, k = [], 0
    while k < len(pairs):
        first.append(k)
        k += 2 if pairs[k] else 1
    first_t = torch.tensor(first, dtype=torch.long, device=vecs.device)
    pair = torch.tensor([pairs[k] == 1 for k in first], device=vecs.device)
    return pooler(vecs[first_t], vecs[first_t + pair.long()], pair)


def truncate(llm, layers: int):
    """Keep the receiver's first `layers` decoder layers (returns what restores it)."""
    inner, cfg = llm.model.model, llm.model.config
    full, n = inner.layers, cfg.num_hidden_layers
    inner.layers, cfg.num_hidden_layers = full[:min(layers, n)], min(layers, n)

    def restore():
        inner.layers, cfg.num_hidden_layers = full, n
    return restore


def states(rec: Receiver, rests: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The last kept layer's states over each rest, through the receiver's final norm (left-padded,
    as Receiver pads), [B, T, H], and each row's left padding."""
    rests = [rec.to_llm(r) for r in rests]
    x, mask = rec.pad(rests)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)[:, len(rec.prefix_ids):]
    out = rec.llm.model.model(inputs_embeds=x, attention_mask=mask, position_ids=pos,
                              cache=rec.cache(len(rests)), use_cache=True)
    return out.last_hidden_state, [x.shape[1] - len(r) for r in rests]


def state_loss(rec: Receiver, adapter, batch: list[tuple[list[int], list[int], str]]) -> torch.Tensor:
    """Relative squared error of the pooled reading's states to the one-token-a-position reading's,
    for (ids, layout bits, question) rows; the gradient reaches the adapter's pooler only."""
    ctx = len(rec.context_ids)
    t_rests, s_rests, tails = [], [], []
    for ids, pairs, q in batch:
        vecs = adapter.strings(ids)
        t_rests.append(rec.rest(vecs, q))
        s_rests.append(rec.rest(pool(adapter.pooler, vecs, pairs), q))
        tails.append(len(t_rests[-1]) - ctx - len(ids))
    with torch.no_grad():
        t_h, t_pad = states(rec, t_rests)
    s_h, s_pad = states(rec, s_rests)
    total, n = 0.0, 0
    for k, (ids, pairs, _) in enumerate(batch):
        sizes = torch.tensor([2 if b else 1 for j, b in enumerate(pairs) if j == 0 or not pairs[j - 1]])
        ends, P, N = sizes.cumsum(0) - 1, len(sizes), len(ids)  # each position's last token
        t_idx = torch.cat([t_pad[k] + ctx + ends, t_pad[k] + ctx + N + torch.arange(tails[k])])
        s_idx = torch.cat([s_pad[k] + ctx + torch.arange(P), s_pad[k] + ctx + P + torch.arange(tails[k])])
        t, s = t_h[k, t_idx].float(), s_h[k, s_idx].float()
        total = total + (((s - t) ** 2).sum(-1) / (t ** 2).sum(-1).clamp_min(1e-6)).sum()
        n += len(t_idx)
    return total / max(n, 1)


def fit(llm, adapter, rows: list[tuple[list[int], list[int], str]], steps: int, batch: int, lr: float,
        layers: int, seed: int = 0, desc: str = "pooler") -> dict:
    """Train `adapter.pooler` on (ids, layout bits, question) rows for `steps` AdamW steps of
    `batch` rows (a seeded draw), the receiver cut to `layers` layers; -> the loss on the first
    batch before and after, and the curve every 10 steps."""
    restore = truncate(llm, layers)
    try:
        rec = Receiver(llm)  # its prefix cache from the cut model
        opt = torch.optim.AdamW(adapter.pooler.parameters(), lr=lr, weight_decay=0.0)
        rng = random.Random(seed)
        with torch.no_grad():
            start = state_loss(rec, adapter, rows[:batch]).item()
        curve = []
        for step in tqdm(range(steps), desc=desc, unit="step", disable=None):
            loss = state_loss(rec, adapter, [rows[rng.randrange(len(rows))] for _ in range(batch)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 10 == 0:
                curve.append(round(loss.item(), 5))
        with torch.no_grad():
            end = state_loss(rec, adapter, rows[:batch]).item()
    finally:
        restore()
    return {"steps": steps, "rows": len(rows), "layers": layers, "loss_first_batch": [start, end],
            "loss_every_10": curve}

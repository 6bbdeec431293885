"""Paired bootstrap confidence intervals for differences of per-example scores."""
from __future__ import annotations

import numpy as np


def paired_ci(diffs: dict[str, list[float]], seed: int = 0, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Mean per-example difference (e.g. latent F1 minus a baseline's on the same questions)
    and its percentile bootstrap CI. With several groups (datasets) each is resampled within
    itself (stratified), and the statistic is the mean over all examples pooled.
    -> {diff, lo, hi, n}."""
    groups = [np.asarray(d, dtype=float) for d in diffs.values() if len(d)]
    n = sum(len(g) for g in groups)
    if not n:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for g in groups:
        idx = rng.integers(0, len(g), size=(n_boot, len(g)))
        total += g[idx].sum(1)
    boots = total / n
    a = (1 - level) / 2
    return {"diff": float(sum(g.sum() for g in groups) / n), "lo": float(np.quantile(boots, a)),
            "hi": float(np.quantile(boots, 1 - a)), "n": int(n)}

"""Paired bootstrap confidence intervals for differences of per-example scores."""
from __future__ import annotations

import numpy as np


def paired_ci(diffs: dict[str, list[float]], seed: int = 0, n_boot: int = 2000, level: float = 0.95,
              clusters: dict[str, list[str]] | None = None) -> dict:
    """Mean per-example difference (e.g. latent F1 minus a baseline's on the same questions)
    and its percentile bootstrap CI. With several groups (datasets) each is resampled within
    itself (stratified), and the statistic is the mean over all examples pooled. With
    `clusters` (a label per example, e.g. its article) whole clusters are resampled, so that
    questions on one article count as one draw (the cluster bootstrap).
    -> {diff, lo, hi, n, clusters}."""
    keys = [k for k, d in diffs.items() if len(d)]
    n = sum(len(diffs[k]) for k in keys)
    if not n:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "clusters": 0}
    rng = np.random.default_rng(seed)
    sums, counts, n_clusters = np.zeros(n_boot), np.zeros(n_boot), 0
    for k in keys:
        d = np.asarray(diffs[k], dtype=float)
        labels = clusters[k] if clusters else list(range(len(d)))
        names = sorted(set(labels), key=str)
        index = {c: j for j, c in enumerate(names)}
        at = np.array([index[c] for c in labels])
        c_sum, c_n = np.bincount(at, d, len(names)), np.bincount(at, None, len(names))
        draw = rng.integers(0, len(names), size=(n_boot, len(names)))
        sums += c_sum[draw].sum(1)
        counts += c_n[draw].sum(1)
        n_clusters += len(names)
    boots = sums / counts
    a = (1 - level) / 2
    total = sum(float(np.sum(diffs[k])) for k in keys)
    return {"diff": total / n, "lo": float(np.quantile(boots, a)), "hi": float(np.quantile(boots, 1 - a)),
            "n": int(n), "clusters": int(n_clusters)}

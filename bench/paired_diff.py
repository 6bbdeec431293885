"""Is a latent F1 difference between two runs more than noise? A paired bootstrap over questions.

    python bench/paired_diff.py A/predictions.jsonl B/predictions.jsonl [--variant latent_ids]

Both files are `data/eval/predictions.jsonl` of an `evaluate` run on the same eval mix (e.g.
the workspace before and after a `dvc exp run`, or two `dvc exp` runs). Per model x
dataset and per model over all datasets: mean F1 of A and B, B - A, a 95 % interval of B - A
from 10,000 paired bootstrap resamples of the questions, and how many questions changed.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict


def load(path: str, variant: str) -> dict[tuple, float]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out[(r["model"], r["dataset"], r["id"])] = r[f"f1_{variant}"]
    return out


def interval(diffs: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--variant", default="latent_ids", help="prediction variant (f1_<variant> field)")
    ap.add_argument("--n-boot", type=int, default=10_000)
    args = ap.parse_args()
    a, b = load(args.a, args.variant), load(args.b, args.variant)
    if a.keys() != b.keys():
        raise SystemExit(f"the two files hold different questions ({len(a.keys() ^ b.keys())} differ)")
    groups = defaultdict(list)
    for key in sorted(a):
        groups[key[:2]].append(key)
        groups[(key[0], "all")].append(key)
    print("| model | dataset | n | F1 A | F1 B | B - A | 95 % CI | changed |\n|---|---|---|---|---|---|---|---|")
    for (model, ds), keys in sorted(groups.items()):
        d = [b[k] - a[k] for k in keys]
        lo, hi = interval(d, args.n_boot, seed=0)
        fa, fb = (sum(x[k] for k in keys) / len(keys) for x in (a, b))
        print(f"| {model} | {ds} | {len(keys)} | {fa:.3f} | {fb:.3f} | {fb - fa:+.3f} | "
              f"[{lo:+.3f}, {hi:+.3f}] | {sum(x != 0 for x in d)} |")


if __name__ == "__main__":
    main()

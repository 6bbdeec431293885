"""The pick's memory: peak RSS and wall time of the `pick` stage's feature build and fit, per pool size.

    python bench/pick_memory.py [--sizes 5000 50000] [--steps 10] [--before /tmp/pm_before/src]

For each size N: a pool of N rows, the real train-split pool (data/mix/pool.jsonl) shuffled
(seed 0) and repeated as often as N needs (copy c of a row gets " #c" on its title), so the
contexts keep their real lengths. Two processes per N, each on one thread, each its own peak:
  - build: the features computed from scratch and cached (`sender.pool_features`), then one
    epoch of `pick.fit` (the stage's params);
  - reuse: the same, the features read back from that cache (what a rerun of the stage does).
An epoch is cut to its first --steps batches (`pick.batches` shortened here, nothing else
changed): the fit's memory beyond the features is one batch's, whatever N.
--before SRC measures a second checkout's src/ the same way (`git worktree add /tmp/pm_before
<commit>`), imported through PYTHONPATH: before and after in one table.
Writes --out (markdown) and the same path with .json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def version(package: Path) -> str:
    """The commit of the checkout that holds `package` (latentwire's folder); "+" where its src/ has
    uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", "-C", str(package), *a], capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "--", "..") else "")


def child(args) -> dict:
    """One process: build or reuse the features of an N-row pool, then one epoch of the fit."""
    import torch

    torch.set_num_threads(1)
    import latentwire
    from latentwire import pick
    from latentwire.config import load_params
    from latentwire.io import peak_rss_mb, read_jsonl
    from latentwire.sender import features_key, load_embeddings, load_tokenizer, pool_features

    params = load_params(args.params)
    pp = params.pick
    tok = load_tokenizer(params)
    pool = Path(args.work) / "pool.jsonl"
    rows = read_jsonl(pool)
    package = Path(latentwire.__file__).parent
    out = {"n": len(rows), "phase": args.phase, "latentwire": str(package), "version": version(package),
           "start_mb": peak_rss_mb()}
    t0 = time.time()
    reads, labels = pool_features(rows, tok, Path(args.work) / "features.safetensors",
                                  features_key(pool, tok, pp.max_tokens), pp.max_tokens)
    out.update(tokens=sum(len(r.ids) for r in reads), features_s=round(time.time() - t0, 1),
               features_mb=peak_rss_mb())
    del rows  # the stage keeps them for its held-out tenth; here the fit holds the features alone
    E = load_embeddings(params)
    model = pick.PickModel(pp.hidden, E.shape[1])
    model.set_embeddings(E)
    whole, steps = pick.batches, []

    def first_batches(*a):  # the epoch's batches, drawn as the fit draws them, cut to --steps
        steps.append(len(b := whole(*a)))
        return b[:args.steps]

    pick.batches = first_batches
    t0 = time.time()
    out["loss"] = pick.fit(model, reads, labels, 1, pp.batch_size, pp.lr, seed=params.seed, log=lambda s: None)
    out.update(fit_s=round(time.time() - t0, 1), fit_steps=min(steps[0], args.steps), epoch_steps=steps[0],
               peak_mb=peak_rss_mb())
    return out


def measure(label: str, src: str | None, n: int, args) -> list[dict]:
    """Both phases of one pool size, each in its own process."""
    from latentwire.io import read_jsonl

    rows = read_jsonl(args.pool)
    random.Random(0).shuffle(rows)
    res = []
    with tempfile.TemporaryDirectory() as work:
        with open(Path(work) / "pool.jsonl", "w", encoding="utf-8") as f:
            for k in range(n):
                r, c = rows[k % len(rows)], k // len(rows)
                f.write(json.dumps({**r, "title": r["title"] + (f" #{c}" if c else "")}) + "\n")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
        if src:
            env["PYTHONPATH"] = src
        for phase in ("build", "reuse"):
            cmd = [sys.executable, __file__, "--child", phase, "--work", work, "--params", args.params,
                   "--steps", str(args.steps)]
            t0 = time.time()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"pick_memory: {label} N={n} {phase} failed:\n{done.stderr[-3000:]}")
            r = {"label": label, **json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": round(time.time() - t0, 1)}
            print(f"pick_memory: {r}", flush=True)
            res.append(r)
    return res


def table(results: list[dict], args) -> str:
    labels = list(dict.fromkeys(r["label"] for r in results))
    versions = {r["label"]: r["version"] for r in results}
    lines = ["# The pick's memory: the feature build and the fit, per pool size", "",
             f"`{args.command}` (one thread per process; each row its own process). N rows: the real "
             "pool shuffled and repeated; `build` computes and caches the features, `reuse` reads the "
             f"cache; then one epoch of the fit, cut to its first {args.steps} batches of "
             "pick.batch_size windows (the fit's memory beyond the features is one batch's). "
             "Versions: " + ", ".join(f"{lb} {v}" for lb, v in versions.items()) + " (+: uncommitted changes in src/; "
             "--before: another checkout's src/, `git worktree add /tmp/pm_before <commit>`).",
             "", "| N | tokens | phase | " + " | ".join(f"{lb}: features MiB / peak MiB / features s / fit s (steps)"
                                                         for lb in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    keys = list(dict.fromkeys((r["n"], r["phase"]) for r in results))
    for n, phase in keys:
        cells, tokens = [], ""
        for lb in labels:
            r = next((r for r in results if (r["label"], r["n"], r["phase"]) == (lb, n, phase)), None)
            if r is None:
                cells.append("–")
                continue
            tokens = f"{r['tokens']:,}"
            cells.append(f"{r['features_mb']:,.0f} / **{r['peak_mb']:,.0f}** / {r['features_s']} / "
                         f"{r['fit_s']} ({r['fit_steps']} of {r['epoch_steps']})")
        lines.append(f"| {n:,} | {tokens} | {phase} | " + " | ".join(cells) + " |")
    lines += ["", "MiB: ru_maxrss after the features (start: imports, tokenizer and rows, "
              + ", ".join(f"{r['label']} N={r['n']:,} {r['start_mb']:,.0f}" for r in results if r["phase"] == "build")
              + ") and at the end (peak). `reuse` reads the cache memory-mapped (safetensors): its pages "
              "count once read, in the fit's first pass over the features (their mean and std). features s: "
              "the build and the cache's write, or its read."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--steps", type=int, default=10, help="fit batches per run at most (default 10)")
    ap.add_argument("--before", help="another checkout's src/ to measure as 'before'")
    ap.add_argument("--out", default="bench/results/pick_memory.md")
    ap.add_argument("--child", choices=("build", "reuse"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.phase = args.child
        print(json.dumps(child(args)))
        return []
    args.command = "python bench/pick_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = []
    for n in args.sizes:
        for label, src in ([("before", args.before)] if args.before else []) + [("after", None)]:
            results += measure(label, src, n, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table(results, args), encoding="utf-8")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()

"""How much does the pick's held-out recall move with the seed of its fit, its GRU window, and
how many fits it averages?

    python bench/pick_seeds.py [--params params.yaml] [--windows 256 128] [--seeds 0 1 2]
                               [--members 1 2] [--ema 0 0.99] [--out bench/results/pick_seeds.md]

Each run is the `pick` stage's fit and spending choice exactly (data/mix/pool.jsonl and its cached
features, the pool's held-out tenth of titles as dev, never the eval mix; `sender.fit_pick`, then
`sender.choose_spending`'s grid of span width, run margin, support weight and coverage at
pick.dev_M), with one seed of the fit (the window order, the initialisation; members k fits from
seed + k), one GRU window (pick.CHUNK, the tokens the GRU reads in one pass; set here per run and
restored after), one number of averaged fits (pick.members) and one weight average (pick.ema);
--members and --ema default to the params'. Windows per step scale as the stage's window over this
one, so that a step holds the tokens of the stage's own step. Reported per run: the chosen
spending's mean recall over the datasets, per dataset, and the fit's wall. Run `dvc repro pick` first.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from latentwire import pick
from latentwire.config import load_params
from latentwire.io import write_text
from latentwire.sender import Sender, choose_spending, fit_pick, load_embeddings, read_pool


def one_fit(reads, labels, dev, tok, E, pp, window: int, seed: int) -> dict:
    """The stage's fit (`pp`: its params, members and ema included) and spending choice at this
    window and seed."""
    chunk, pick.CHUNK = pick.CHUNK, window
    try:
        run = dataclasses.replace(pp, batch_size=max(1, pp.batch_size * chunk // window))  # the stage's tokens a step
        t0 = time.time()
        model, loss = fit_pick(run, E, reads, labels, seed)
        fit_s = time.time() - t0
        best, _ = choose_spending(Sender(tok, model, pp.dev_M, pp.spans[0], pp.max_tokens), dev, pp.dev_M, pp.spans)
    finally:
        pick.CHUNK = chunk
    return {"window": window, "seed": seed, "members": pp.members, "ema": pp.ema, "windows_per_step": run.batch_size,
            "loss": loss, "fit_s": round(fit_s), "mean_pick_recall": best["mean_pick_recall"],
            "per_dataset": best["per_dataset"], "spending": {k: best[k] for k in ("span", "grow", "support_weight", "cover")}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--features", default="data/pick/features.safetensors")
    ap.add_argument("--windows", type=int, nargs="+", default=[256, 128], help="GRU windows (tokens)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the fit")
    ap.add_argument("--members", type=int, nargs="+", help="fits averaged (default: pick.members)")
    ap.add_argument("--ema", type=float, nargs="+", help="weight averages (default: pick.ema)")
    ap.add_argument("--out", default="bench/results/pick_seeds.md")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    pp = params.pick
    rows, tok, reads, labels, held = read_pool(params, args.pool, args.features)  # held: the stage's dev rows
    dev = [r for r, h in zip(rows, held) if h]
    fit_reads = [r for r, h in zip(reads, held) if not h]
    fit_labels = [y for y, h in zip(labels, held) if not h]
    E = load_embeddings(params)
    runs, configs = [], [(w, m, e) for w in args.windows for m in args.members or [pp.members] for e in args.ema or [pp.ema]]
    for w, m, e in configs:
        for s in args.seeds:
            runs.append(one_fit(fit_reads, fit_labels, dev, tok, E, dataclasses.replace(pp, members=m, ema=e), w, s))
            print(f"pick_seeds: {json.dumps(runs[-1])}", flush=True)
    names = sorted(runs[0]["per_dataset"])
    lines = [f"# The pick's held-out recall against the seed of its fit and its GRU window (M = {pp.dev_M}, "
             f"{len(dev)} dev rows)", "",
             f"`python bench/pick_seeds.py --windows {' '.join(map(str, args.windows))} --seeds "
             f"{' '.join(map(str, args.seeds))} --members {' '.join(str(m) for m in args.members or [pp.members])} --ema "
             f"{' '.join(str(e) for e in args.ema or [pp.ema])}`: each row is the `pick` stage's fit ({pp.epochs} epochs, lr {pp.lr}, "
             f"{len(fit_reads):,} contexts) and its spending choice on the pool's held-out tenth of titles (never the "
             "eval mix), at one seed, one GRU window, one number of averaged fits (members k from seed + k) and one "
             "moving average of each fit's weights (ema; 0: the last step's); a step holds the same tokens at every window.", "",
             "| window | members | ema | seed | windows a step | " + " | ".join(names) + " | mean | chosen spending | fit s |",
             "|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for r in runs:
        sp = r["spending"]
        lines.append(f"| {r['window']} | {r['members']} | {r['ema']} | {r['seed']} | {r['windows_per_step']} | "
                     + " | ".join(f"{r['per_dataset'][d]['pick_recall']:.3f}" for d in names)
                     + f" | **{r['mean_pick_recall']:.3f}** | span {sp['span']}, grow {sp['grow']}, "
                       f"support {sp['support_weight']}, cover {sp['cover']} | {r['fit_s']} |")
    lines += ["", "| window | members | ema | seeds | mean recall | sd over seeds | range | mean fit s |",
              "|---|---|---|---|---|---|---|---|"]
    for w, mem, e in configs:
        group = [r for r in runs if (r["window"], r["members"], r["ema"]) == (w, mem, e)]
        m, f = [r["mean_pick_recall"] for r in group], [r["fit_s"] for r in group]
        sd = statistics.stdev(m) if len(m) > 1 else float("nan")
        lines.append(f"| {w} | {mem} | {e} | {len(m)} | {statistics.mean(m):.3f} | {sd:.3f} | {min(m):.3f} – {max(m):.3f} | "
                     f"{statistics.mean(f):.0f} |")
    out = {"M": pp.dev_M, "dev_examples": len(dev), "epochs": pp.epochs, "runs": runs}
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

"""How much does the pick gain from a larger pool? One dev set, fits on pools of several sizes.

    python bench/pick_pool.py [--params params.yaml] [--sizes 5000 0] [--out bench/results/pick_pool.md]

Reads the stage's pool (data/mix/pool.jsonl: every train-split example up to data.pick_pool,
never an eval title) and its cached features. The dev set is the pool's held-out tenth of
titles, the same rows the `pick` stage reports on. For each size N (0: the whole pool) it draws
N pool rows shared out equally over the datasets as prepare-mix does (a share a dataset cannot
fill goes to the others), fits the pick on those outside the dev titles (the stage's fit and
params: epochs, lr, batch), and reports the recall at pick.dev_M on that one dev set, spending
as the stage chose (models/pick/meta.json), with the fit's wall time. Run `dvc repro pick` first.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

from latentwire.config import load_params
from latentwire.data import share_out
from latentwire.io import write_text
from latentwire.sender import Sender, fit_pick, load_embeddings, read_pool, recall


def draw(rows: list[dict], n: int, seed: int) -> list[int]:
    """Indices of n rows shared out equally over the datasets (prepare-mix's rule); n = 0: all."""
    if n <= 0 or n >= len(rows):
        return list(range(len(rows)))
    by: dict[str, list] = {}
    for k, r in enumerate(rows):
        by.setdefault(r["dataset"], []).append(SimpleNamespace(id=r["id"], k=k))
    return sorted(x.k for x in share_out(by, n, {d: 1.0 for d in by}, seed))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--features", default="data/pick/features.safetensors")
    ap.add_argument("--pick", default="models/pick", help="the stage's pick: how it spends M (meta.json)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 0], help="pool sizes to fit on (0: all)")
    ap.add_argument("--seed", type=int, default=None, help="the draw's and the fit's seed (default: params seed)")
    ap.add_argument("--out", default="bench/results/pick_pool.md")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    seed = params.seed if args.seed is None else args.seed
    pp = params.pick
    rows, tok, reads, labels, held = read_pool(params, args.pool, args.features)  # held: the stage's dev rows
    meta = json.loads((Path(args.pick) / "meta.json").read_text())
    dev = [r for r, h in zip(rows, held) if h]
    if not dev:
        raise SystemExit(f"{args.pool}: no row of the pool's held-out tenth of titles to read")
    E = load_embeddings(params)
    out = {"M": pp.dev_M, "dev_examples": len(dev), "epochs": pp.epochs, "seed": seed, "spending": meta, "sizes": []}
    for n in args.sizes:
        t0 = time.time()
        fit_on = [k for k in draw(rows, n, seed) if not held[k]]
        model, _ = fit_pick(pp, E, [reads[k] for k in fit_on], [labels[k] for k in fit_on], seed, meta["support_weight"])
        fit_s = time.time() - t0
        sender = Sender(tok, model, pp.dev_M, meta["span"], pp.max_tokens, meta["cover"], meta.get("grow"))
        res = recall(sender, dev, pp.dev_M)
        row = {"pool": n or len(rows), "fit_examples": len(fit_on),
               "per_dataset_fit": {d: sum(rows[k]["dataset"] == d for k in fit_on) for d in sorted(res)},
               "recall": res, "mean_pick_recall": sum(v["pick_recall"] for v in res.values()) / len(res),
               "fit_s": round(fit_s)}
        out["sizes"].append(row)
        print(f"pick_pool: {row}", flush=True)
    names = sorted(out["sizes"][0]["recall"])
    lines = [f"# The pick's recall against the size of its pool (M = {out['M']}, {len(dev)} dev rows)", "",
             f"`python bench/pick_pool.py --sizes {' '.join(map(str, args.sizes))}"
             f"{'' if args.seed is None else f' --seed {args.seed}'}`: each row fits the pick "
             f"({pp.epochs} epochs) on a pool of that size and reads the same dev rows (the pool's held-out tenth of "
             "titles; never the eval mix), spending as the `pick` stage chose "
             f"(span {meta['span']}, grow {meta.get('grow')}, support weight {meta['support_weight']}, "
             f"cover {meta['cover']}).", "",
             "| pool | fitted on | " + " | ".join(names) + " | mean | HotpotQA support | fit s |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    for r in out["sizes"]:
        per = " + ".join(f"{r['per_dataset_fit'][d]:,} {d}" for d in names)
        sup = r["recall"].get("hotpotqa", {}).get("support_recall")
        lines.append(f"| {r['pool']:,} | {per} | " + " | ".join(f"{r['recall'][d]['pick_recall']:.3f}" for d in names)
                     + f" | **{r['mean_pick_recall']:.3f}** | {'–' if sup is None else f'{sup:.3f}'} | {r['fit_s']} |")
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

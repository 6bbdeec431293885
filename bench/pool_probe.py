"""Can a frozen receiver read two picked tokens pooled into one position? (issue 22's ceiling)

    python bench/pool_probe.py [--slot qwen] [--n 30] [--M 32] [--out bench/results/pool_probe.md]

Learned slots that carry more than one token are only worth building if (a) more tokens help
the receiver at all and (b) it can read a pooled position. This reads the pool's held-out
tenth (train-split titles the pick stage never fitted on; never the eval mix), --n questions a
dataset, through one frozen receiver with *untrained* adapters (each id -> the receiver's own
embedding of its string, as TokenAdapter at step 0), and answers greedily:
  - tokens_M:    the pick at M positions, one token each (the latent at step 0; ~ selected_text)
  - tokens_2M:   the pick at 2M positions, one token each: what twice the tokens is worth
  - pair_mean:   the pick at about 2M tokens, adjacent pairs inside a span pooled (mean) into one
                 position, at most M positions: the untrained start of a 2-tokens-a-slot latent
  - pair_renorm: the same, each pooled vector rescaled to its tokens' mean norm
The gap tokens_2M - tokens_M bounds what any multi-token slot can add over the picked text at M
(with perfect pooling); pair_* - tokens_M is where a learned pooler would start from.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from latentwire.adapter import string_table
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.llm import load_frozen
from latentwire.metrics import f1_score
from latentwire.receiver import Receiver
from latentwire.payload import KIND_PAIRED_IDS, Latent
from latentwire.sender import Sender, is_pick_dev, pair_up, sure

VARIANTS = ("tokens_M", "tokens_2M", "pair_mean", "pair_renorm")


def positions(sender: Sender, row: dict, M: int, variant: str, keep: int = 0) -> list[list[int]]:
    """The token ids each position carries, for one variant. The pooled layouts (pair_*, vrate_*)
    hold the most picked tokens that fit in M positions; vrate_* keeps the pick's `keep`
    best-rated tokens at one position each and pools the rest in pairs (issue 22's variable rate;
    the pipeline's option ids.keep lays out the same, `Sender.slots`)."""
    r = sender.pick(row["question"], row["context"], M).read
    scores = sender.model.score(r)
    if variant == "tokens_M":
        return [[i] for i in sender.spend(r, scores, M).ids]
    if variant == "tokens_2M":
        return [[i] for i in sender.spend(r, scores, 2 * M).ids]
    keep = keep if variant.startswith("vrate") else 0
    for budget in range(2 * M, M - 1, -1):  # the most picked tokens whose layout fits in M positions
        picked = sender.spend(r, scores, budget)
        g = Latent(KIND_PAIRED_IDS, 16, None, ids=picked.ids, pairs=pair_up(picked.spans, sure(picked.spans, scores, keep))).groups()
        if len(g) <= M:
            return g
    return [[i] for i in sender.spend(r, scores, M).ids]


def held_out(pool: list[dict], n: int) -> list[dict]:
    """The first n rows a dataset of the pool's held-out tenth (never fitted on, never the eval mix)."""
    by: dict[str, list[dict]] = {}
    for r in pool:
        if is_pick_dev(r) and len(by.setdefault(r["dataset"], [])) < n:
            by[r["dataset"]].append(r)
    return [r for ds in sorted(by) for r in by[ds]]


def split(pool: list[dict], n: int, n_train: int) -> tuple[list[dict], list[dict]]:
    """held_out(pool, n) to test on, and n_train rows of the pool's train part (never its held-out
    tenth, never the eval mix) in a seeded shuffle, to train on."""
    train = [r for r in pool if not is_pick_dev(r)]
    random.Random(0).shuffle(train)
    return held_out(pool, n), train[:n_train]


def read(rec: Receiver, rows: list[dict], pos: list[list[list[int]]], softs: list[torch.Tensor],
         max_new_tokens: int, batch: int) -> dict:
    """Greedy answers from the soft tokens, scored: F1 per question, per dataset and pooled, and the
    positions and tokens a position of the layout `pos`."""
    preds = []
    for i in range(0, len(rows), batch):
        preds += rec.answer(softs[i:i + batch], [r["question"] for r in rows[i:i + batch]], max_new_tokens)
    per = [max(f1_score(p, a) for a in r["answers"]) for r, p in zip(rows, preds)]
    f1: dict[str, list[float]] = {}
    for r, x in zip(rows, per):
        f1.setdefault(r["dataset"], []).append(x)
    return {"f1": {ds: sum(x) / len(x) for ds, x in f1.items()}, "f1_pooled": sum(per) / max(len(rows), 1),
            "per_question": per, "positions": sum(len(p) for p in pos) / max(len(pos), 1),
            "tokens_per_position": sum(len(g) for p in pos for g in p) / max(sum(len(p) for p in pos), 1)}


def f1_table(variants: dict, datasets: list[str]) -> list[str]:
    """The markdown table of each variant's positions, tokens a position and F1 (per dataset, pooled)."""
    lines = ["| variant | positions | tokens / position | " + " | ".join(f"F1 {d}" for d in datasets) + " | F1 pooled |",
             "|---|---|---|" + "---|" * len(datasets) + "---|"]
    for v, res in variants.items():
        lines.append(f"| {v} | {res['positions']:.1f} | {res['tokens_per_position']:.2f} | "
                     + " | ".join(f"{res['f1'].get(d, 0.0):.3f}" for d in datasets) + f" | {res['f1_pooled']:.3f} |")
    return lines


def soft(table: torch.Tensor, pos: list[list[int]], variant: str) -> torch.Tensor:
    vecs = []
    for ids in pos:
        e = table[torch.tensor(ids)]
        v = e.mean(0)
        if variant == "pair_renorm":
            v = v / v.norm().clamp_min(1e-6) * e.norm(dim=-1).mean()
        vecs.append(v)
    return torch.stack(vecs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--slot", default="qwen", help="the receiver (a models.* slot)")
    ap.add_argument("--n", type=int, default=30, help="questions per dataset (default 30)")
    ap.add_argument("--M", type=int, default=32, help="receiver positions (default 32)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="bench/results/pool_probe.md")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    params = load_params(args.params)
    sender = Sender.load(params, args.pick, args.M)
    rows = held_out(read_jsonl(args.pool), args.n)
    llm = load_frozen(args.slot, params.models[args.slot], params.prompt, params.cache_dir)
    rec, (table, _) = Receiver(llm), string_table(sender.tokenizer, llm)
    out = {"slot": args.slot, "M": args.M, "n": len(rows), "variants": {}}
    for v in VARIANTS:
        t0 = time.time()
        pos = [positions(sender, r, args.M, v) for r in rows]
        res = {**read(rec, rows, pos, [soft(table, p, v) for p in pos], params.evaluate.max_new_tokens, args.batch),
               "wall_s": round(time.time() - t0)}
        out["variants"][v] = res
        print(f"pool_probe: {v}: pooled F1 {res['f1_pooled']:.3f} {res['f1']}", flush=True)
    dss = sorted({r["dataset"] for r in rows})
    lines = [f"# Multi-token slots: the ceiling and the untrained start ({args.slot}, M = {args.M})", "",
             f"`python bench/pool_probe.py --slot {args.slot} --n {args.n} --M {args.M}`: {len(rows)} questions of the "
             "pick pool's held-out tenth (train-split titles, never the eval mix), untrained adapters, greedy "
             "answers. See the script's docstring for the variants.", "", *f1_table(out["variants"], dss)]
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

"""Learned two-token slots: can a small pooler, trained on CPU, let a frozen receiver read two
picked tokens from one position? (issue 22, "learned slots that carry more than one token")

    python bench/pair_slots.py [--slot qwen] [--n 30] [--M 32] [--train 1000] [--steps 400] [--layers 6]
    python bench/pair_slots.py --layout vrate --keep 8    # issue 22's variable rate

bench/pool_probe.py measures the two ends, untrained: the pick at 2M tokens against the pick at M
(one position a token), and two tokens averaged into one position (about 0.1 F1 against 0.44).
This trains the pooler in between and reads the same held-out questions.

The pooler (`latentwire.pooler.PairPooler`, the pipeline's own since ids.keep) maps a pair of
adjacent picked tokens (e_a, e_b: the receiver's own embeddings of their strings,
`adapter.string_table`) to one input vector, starting as their plain mean; a position holding
one token (a separator, or the odd token at a span's end) passes through unchanged. The bench packs no
payload; the pipeline's option (ids.keep) sends each id (2 B) and one layout bit an id (payload
kind paired ids), 3.7-3.9 B a position on the eval mix at --keep 8.

The target (as `latentwire.pooler.fit`'s, over the whole string table here) needs no backward pass through the whole receiver (issue 22's "cheap targets"): the
receiver, frozen and cut to its first --layers layers, reads the picked tokens one a position
(the teacher) and the pooled positions (the student); the loss is the student's squared error to
the teacher's states at layer --layers, relative to the teacher's norm, at (a) each pooled
position against the teacher's state at the pair's last token and (b) each token of the question
and template suffix that follows. Train rows: the pick pool's train part (never its held-out
tenth, never the eval mix); test rows: --n a dataset of the held-out tenth, as pool_probe reads
them, answered greedily by the whole receiver:
  - tokens_M:     the pick at M positions, one token each (the latent at step 0; ~ selected_text)
  - tokens_2M:    the pick at 2M positions, one token each (the ceiling of any 2-token slot)
  - pair_mean:    the pooled layout, pooler at its start (the mean)
  - pair_learned: the same layout, the trained pooler

--layout vrate is issue 22's variable rate: the pick's --keep best-rated picked tokens (those it
is surest hold the answer) keep a position each, exact, and the rest are pooled in pairs, the
most picked tokens that fit in M positions (pool_probe.positions). Its variants are vrate_mean and
vrate_learned, the pooler trained on that layout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from latentwire.adapter import string_table
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.llm import load_frozen
from latentwire.pooler import PairPooler, state_loss, truncate
from latentwire.receiver import Receiver
from latentwire.sender import Sender
from latentwire.stats import paired_ci

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the pooled layout and scoring: bench/pool_probe.py's
from ledger import ci  # noqa: E402
from pool_probe import f1_table, positions, read, soft, split  # noqa: E402


def variants(layout: str) -> tuple[str, ...]:
    """The variants a run of `layout` reads: one token a position at M and 2M, the layout averaged and learned."""
    return ("tokens_M", "tokens_2M", f"{layout}_mean", f"{layout}_learned")


def contrast_pairs(layout: str) -> tuple[tuple[str, str], ...]:
    mean, learned = f"{layout}_mean", f"{layout}_learned"
    return ((learned, mean), (learned, "tokens_M"), (mean, "tokens_M"), ("tokens_2M", "tokens_M"))


def contrasts(test: list[dict], variants: dict, pairs) -> dict:
    """F1 of a minus b on the same questions, per dataset and pooled, 95 % CI resampling whole titles."""
    out = {}
    for a, b in pairs:
        d: dict[str, list[float]] = {}
        c: dict[str, list[str]] = {}
        for r, x, y in zip(test, variants[a]["per_question"], variants[b]["per_question"]):
            d.setdefault(r["dataset"], []).append(x - y)
            c.setdefault(r["dataset"], []).append(r["title"])
        out[f"{a} - {b}"] = {"pooled": paired_ci(d, clusters=c),
                             **{ds: paired_ci({ds: d[ds]}, clusters={ds: c[ds]}) for ds in sorted(d)}}
    return out


def contrast_table(contrasts: dict, datasets: list[str]) -> list[str]:
    """The markdown rows of `contrasts`' output: each contrast per dataset and pooled."""
    lines = ["| contrast | " + " | ".join(datasets) + " | pooled |", "|---|" + "---|" * (len(datasets) + 1)]
    for name, res in contrasts.items():
        lines.append(f"| {name} | " + " | ".join(ci(res[d]) for d in datasets) + f" | {ci(res['pooled'])} |")
    return lines


def pool_groups(pooler: PairPooler, table: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """[P, H]: one vector per position (a group of one or two sender ids; `table` [V, H] their strings)."""
    a = table[torch.tensor([g[0] for g in groups])]
    b = table[torch.tensor([g[-1] for g in groups])]
    return pooler(a, b, torch.tensor([len(g) == 2 for g in groups]))


def loss_for(rec: Receiver, pooler: PairPooler, table: torch.Tensor, batch: list[tuple[list[list[int]], str]]):
    """Relative squared error of the pooled reading's states to the token-a-position reading's
    (`latentwire.pooler.state_loss`, each id's vector read from `table`)."""
    reader = SimpleNamespace(strings=lambda ids: table[torch.tensor(ids)], pooler=pooler)
    layout = lambda groups: [b for g in groups for b in ([1, 0] if len(g) == 2 else [0])]  # noqa: E731
    return state_loss(rec, reader, [([i for g in groups for i in g], layout(groups), q) for groups, q in batch])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--slot", default="qwen", help="the receiver (a models.* slot)")
    ap.add_argument("--n", type=int, default=30, help="test questions per dataset (default 30)")
    ap.add_argument("--M", type=int, default=32, help="receiver positions (default 32)")
    ap.add_argument("--train", type=int, default=1000, help="train rows (default 1000)")
    ap.add_argument("--steps", type=int, default=400, help="pooler optimiser steps (default 400)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layers", type=int, default=6, help="receiver layers the target is read at (default 6)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layout", choices=("pair", "vrate"), default="pair",
                    help="pair: every picked token pooled in pairs; vrate: the --keep best-rated stay single")
    ap.add_argument("--keep", type=int, default=8, help="vrate: picked tokens kept one a position (default 8)")
    ap.add_argument("--out", default="bench/results/pair_slots.md")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    params = load_params(args.params)
    sender = Sender.load(params, args.pick, args.M)
    test, train = split(read_jsonl(args.pool), args.n, args.train)
    llm = load_frozen(args.slot, params.models[args.slot], params.prompt, params.cache_dir)
    table, _ = string_table(sender.tokenizer, llm)
    pooler = PairPooler(table.shape[1], args.rank)

    # --- train the pooler on the cut receiver
    t0 = time.time()
    pooled = f"{args.layout}_mean"  # the layout the pooler is trained and read on
    data = [(positions(sender, r, args.M, pooled, args.keep), r["question"]) for r in train]
    restore = truncate(llm, args.layers)
    rec = Receiver(llm)  # its prefix cache from the cut model
    opt = torch.optim.AdamW(pooler.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    curve = []
    with torch.no_grad():
        start = loss_for(rec, pooler, table, data[:args.batch]).item()
    bar = tqdm(range(args.steps), desc="pair pooler", unit="step", disable=None)
    for step in bar:
        idx = torch.randint(len(data), (args.batch,), generator=g).tolist()
        loss = loss_for(rec, pooler, table, [data[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    with torch.no_grad():
        end = loss_for(rec, pooler, table, data[:args.batch]).item()
    restore()
    train_s = round(time.time() - t0)
    print(f"pair_slots: loss on the first train batch {start:.4f} -> {end:.4f}, {train_s}s", flush=True)

    # --- read the held-out questions with the whole receiver
    rec = Receiver(llm)
    out = {"slot": args.slot, "M": args.M, "n": len(test), "train_rows": len(train), "steps": args.steps,
           "layers": args.layers, "layout": args.layout, "keep": args.keep if args.layout == "vrate" else 0,
           "train_s": train_s, "loss_first_batch": [start, end],
           "loss_curve_every_10": curve[::10], "variants": {}}
    learned, layouts = f"{args.layout}_learned", {}  # the learned variant reads the mean's layout
    for v in variants(args.layout):
        t0 = time.time()
        shape = pooled if v == learned else v
        if shape not in layouts:
            layouts[shape] = [positions(sender, r, args.M, shape, args.keep) for r in test]
        pos = layouts[shape]
        with torch.no_grad():
            softs = [pool_groups(pooler, table, p) if v == learned else soft(table, p, v) for p in pos]
        res = {**read(rec, test, pos, softs, params.evaluate.max_new_tokens, args.batch),
               "wall_s": round(time.time() - t0)}
        out["variants"][v] = res
        print(f"pair_slots: {v}: pooled F1 {res['f1_pooled']:.3f} {res['f1']}", flush=True)
    out["contrasts"] = contrasts(test, out["variants"], contrast_pairs(args.layout))
    dss = sorted({r["dataset"] for r in test})
    how = f" --layout vrate --keep {args.keep}" if args.layout == "vrate" else ""
    title = (f"Variable-rate slots: the {args.keep} best-rated tokens single, the rest in learned pairs"
             if args.layout == "vrate" else "Learned two-token slots")
    lines = [f"# {title} ({args.slot}, M = {args.M})", "",
             f"`python bench/pair_slots.py --slot {args.slot} --n {args.n} --M {args.M} --train {args.train} "
             f"--steps {args.steps} --layers {args.layers}{how}`: the pooler trained {args.steps} steps of {args.batch} on "
             f"{len(train)} pool train rows ({train_s} s; the target: the receiver's layer-{args.layers} states), then "
             f"{len(test)} questions of the pool's held-out tenth read by the whole receiver, greedy answers. "
             f"Relative state error on the first train batch: {start:.4f} at the start, {end:.4f} trained. "
             "See the script's docstring.", "", *f1_table(out["variants"], dss)]
    lines += ["", "Paired F1 differences on the same questions, 95 % CI resampling whole titles:", "",
              *contrast_table(out["contrasts"], dss)]
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

"""Does the pick's recall tell which way of spending M a reader answers best from?

    python bench/pick_reader.py [--params params.yaml] [--n 150] [--models qwen]
                                [--spans 3 6 12 16 24 32] [--flip-words] [--out bench/results/pick_reader.md]

The `pick` stage chooses the span width (the least tokens a picked span holds) by the pick's recall
on the pool's held-out tenth of titles: narrow spans touch more candidates, so they find the answer
more often, but hand the reader more, shorter fragments. Here the fitted pick (models/pick: its
rater, support weight, coverage and run margin) spends M = pick.dev_M positions at each span width
on n held-out pool rows per dataset (seeded sample; the pool is train-split, never the eval mix),
and each reader answers from the picked text cut to M of its tokens, as the selected_text
baseline does. Reported per width and dataset: the recall and the reader's F1, and each width's
F1 minus the stage's chosen width's, paired on the same rows, with a 95 % bootstrap CI (pooled,
stratified by dataset). Run `dvc repro pick` first.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from statistics import fmean
from pathlib import Path

from latentwire import pick, stats
from latentwire.baselines import cut_tokens, generate_text
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.llm import load_frozen
from latentwire.metrics import best_f1
from latentwire.packed import pack
from latentwire.sender import Sender, is_pick_dev


def dev_sample(pool: str, n: int, seed: int, held: bool = True) -> list[dict]:
    """n of the pick's held-out pool rows per dataset (held=False: of its train part; all where
    fewer), in a seeded order."""
    by: dict[str, list[dict]] = {}
    for r in read_jsonl(pool):
        if is_pick_dev(r) == held:
            by.setdefault(r["dataset"], []).append(r)
    rng = random.Random(seed)
    return [r for ds in sorted(by) for r in rng.sample(by[ds], min(n, len(by[ds])))]


def load_reader(params, slot: str):
    """A reader slot's frozen LLM, its linear weights packed as the baselines stage packs them (CPU)."""
    llm = load_frozen(slot, params.models[slot], params.prompt, params.cache_dir)
    if params.evaluate.prepack:
        pack(llm.model)
    return llm


def reader_f1(llm, params, texts: list[str], rows: list[dict], M: int, desc: str = "") -> list[float]:
    """The reader's F1 on each row from its picked text cut to M of the reader's tokens (greedy, as
    the selected_text baseline reads it)."""
    prompts = [llm.template.render(cut_tokens(llm, t, M), r["question"]) for t, r in zip(texts, rows)]
    preds = generate_text(llm, prompts, params.evaluate.max_new_tokens, params.evaluate.batch_size, desc,
                          params.evaluate.batch_tokens)
    return [best_f1(p, r["answers"]) for p, r in zip(preds, rows)]


def held_out(args: argparse.Namespace):
    """(params, M, the fitted pick's sender at M = pick.dev_M, args.n held-out pool rows a dataset):
    what a bench built on `held_out_args` reads."""
    params = load_params(args.params)
    M = params.pick.dev_M
    return params, M, Sender.load(params, args.pick, M), dev_sample(args.pool, args.n, params.seed)


def held_out_args(doc: str) -> argparse.ArgumentParser:
    """The arguments of a bench that reads n held-out pool rows per dataset with the fitted pick."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--n", type=int, default=150, help="held-out pool rows per dataset")
    ap.add_argument("--models", nargs="+", default=["qwen"], help="reader slots (models.*)")
    return ap


def main(argv=None) -> dict:
    ap = held_out_args(__doc__)
    ap.add_argument("--spans", type=int, nargs="+", default=[3, 6, 12, 16, 24, 32], help="span widths")
    ap.add_argument("--flip-words", action="store_true",
                    help="also spend the chosen width with pick.whole_words flipped (spans end between words, or anywhere)")
    ap.add_argument("--out", default="bench/results/pick_reader.md")
    args = ap.parse_args(argv)
    params, M, sender, rows = held_out(args)
    chosen = sender.span
    scored = []
    for r in rows:
        rd = pick.read(sender.tokenizer, r["question"], r["context"], sender.max_tokens)
        scored.append((rd, sender.model.score(rd)))
    # a variant: (width, whole words); the stage's own is (chosen, pick.whole_words)
    words = sender.whole_words
    widths = sorted({(w, words) for w in set(args.spans) | {chosen}} | ({(chosen, not words)} if args.flip_words else set()),
                    key=lambda v: (v[0], v[1] != words))
    picked: dict[tuple[int, bool], tuple[list[str], list[bool]]] = {}
    for w in widths:
        sender.span, sender.whole_words = w
        ps = [sender.spend(rd, s, M) for rd, s in scored]
        picked[w] = ([sender.decode(p.ids) for p in ps],
                     [pick.contains_answer(p.texts(r["context"]), r["answers"]) for p, r in zip(ps, rows)])
    sender.span, sender.whole_words = chosen, words
    chosen = (chosen, words)
    names = sorted({r["dataset"] for r in rows})
    out: dict = {"M": M, "n_per_dataset": args.n, "rows": len(rows), "chosen_span": label(chosen), "grow": sender.grow,
                 "support_weight": sender.model.support_weight, "cover": sender.cover, "models": {}}
    for slot in args.models:
        llm = load_reader(params, slot)
        f1: dict[int, list[float]] = {}
        for w in widths:
            t0 = time.time()
            f1[w] = reader_f1(llm, params, picked[w][0], rows, M, f"{slot} span {label(w)}")
            print(f"pick_reader: {slot} span {label(w)}: F1 {sum(f1[w]) / len(rows):.3f}, {time.time() - t0:.0f}s", flush=True)
        res = {}
        for w in widths:
            per = {ds: {"recall": fmean([h for h, r in zip(picked[w][1], rows) if r["dataset"] == ds]),
                        "f1": fmean([x for x, r in zip(f1[w], rows) if r["dataset"] == ds])} for ds in names}
            diffs = {ds: [a - b for a, b, r in zip(f1[w], f1[chosen], rows) if r["dataset"] == ds] for ds in names}
            res[label(w)] = {"per_dataset": per, "recall": fmean(picked[w][1]), "f1": fmean(f1[w]),
                      "vs_chosen": stats.paired_ci(diffs, params.seed)}
        out["models"][slot] = res
        del llm
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    write_text(args.out, table(out, names, args) + "\n")
    return out


def label(variant: tuple[int, bool]) -> str:
    """(24, True) -> "24, whole words"; (24, False) -> "24" (a span may end inside a word)."""
    return f"{variant[0]}" + (", whole words" if variant[1] else "")


def table(out: dict, names: list[str], args) -> str:
    lines = [f"# The pick's recall against a reader's F1, by span width (M = {out['M']}, {out['rows']} held-out pool rows)",
             "", f"`python bench/pick_reader.py --n {args.n} --models {' '.join(args.models)} --spans "
             f"{' '.join(map(str, args.spans))}{' --flip-words' if args.flip_words else ''}`: the fitted pick (run margin {out['grow']}, support weight "
             f"{out['support_weight']}, coverage {out['cover']}) spends M positions with spans of at least this many "
             f"tokens (\"whole words\": spans start and end between words, pick.whole_words) on {args.n} rows per dataset of the pool's held-out tenth of titles (never the eval mix); the "
             f"reader answers from the picked text cut to M of its tokens. Each cell: recall / F1. Δ F1: paired on the "
             f"same rows against the stage's width (span {out['chosen_span']}, models/pick), 95 % bootstrap CI.", ""]
    for slot, res in out["models"].items():
        lines += [f"## {slot}", "", "| span | " + " | ".join(names) + " | all | Δ F1 vs chosen [95 % CI] |",
                  "|---|" + "---|" * len(names) + "---|---|"]
        for w, r in res.items():
            ci = r["vs_chosen"]
            lines.append(f"| {w}{' (chosen)' if w == out['chosen_span'] else ''} | "
                         + " | ".join(f"{r['per_dataset'][d]['recall']:.3f} / {r['per_dataset'][d]['f1']:.3f}" for d in names)
                         + f" | {r['recall']:.3f} / **{r['f1']:.3f}** | {ci['diff']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}] |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

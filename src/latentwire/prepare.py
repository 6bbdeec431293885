"""prepare-mix stage: params.data -> data/mix/{train,eval,pool}.jsonl + metrics/data.json.

pool.jsonl: up to data.pick_pool train-split examples (never an eval title, never one of the
curriculum's dev rows) for the `pick` stage. Contexts are capped by an answer-blind rule
(data.cut_context); metrics/data.json says per dataset how many answers the cap left in.

    python -m latentwire.prepare --params params.yaml --out data/mix --metrics metrics/data.json

All datasets are read and the mix is built before anything is written; the four
outputs are then renamed into place together, so a failure leaves no partial file.
"""
from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path

from latentwire import data
from latentwire.config import load_params
from latentwire.io import atomic_path


def main(params_path="params.yaml", out_dir="data/mix", metrics_path="metrics/data.json") -> dict:
    params = load_params(params_path)
    # data.root is relative to the params file's folder (the repo root); $LATENTWIRE_DATA overrides.
    root = params.data.resolved_root(Path(params_path).resolve().parent).resolve()
    if not root.is_dir() and any(c.source == "local" for c in params.data.datasets.values()):
        raise data.DataError(f"data root {root} does not exist: set LATENTWIRE_DATA to the folder holding "
                             "squad/, hotpotqa/, natural_questions/ (or data.root in params.yaml)")
    loaded, stats = {}, {}
    for name, cfg in params.data.datasets.items():
        examples, stats[name] = data.load(name, cfg, root, params.data.max_context_chars)
        train_only = None
        if cfg.train_path or (cfg.source == "hub" and cfg.hub_train_split):
            train_only, stats[name]["train_source"] = data.load(
                name, cfg, root, params.data.max_context_chars, train=True, avoid_titles=data.gold_titles(examples))
        loaded[name] = (examples, train_only)
    train, evals, info = data.make_mix(params.data, loaded, params.seed)
    dev = data.split_dev([ex.to_dict() for ex in train], params.train.dev_examples, params.seed)[1]
    pool = data.pick_pool(params.data, loaded, params.seed, exclude=frozenset(r["id"] for r in dev))

    metrics = {name: {**info["datasets"][name], **stats[name]} for name in loaded}
    notes = info["notes"]
    for name, m in metrics.items():
        cap = params.data.datasets[name].max_context_chars or params.data.max_context_chars
        if m["context_cut"]:
            notes.append(f"{name}: {m['context_cut']} contexts capped at {cap} chars (whole paragraphs, answer-blind); "
                         f"the answer is in {m['answer_in_context']} of {m['total']}")
    metrics["pick_pool"] = {name: sum(ex.dataset == name for ex in pool) for name in loaded}
    metrics["notes"] = notes

    out_dir = Path(out_dir)
    with ExitStack() as stack:  # all three tmp files are renamed only if every write succeeded
        files = [(stack.enter_context(atomic_path(out_dir / f"{split}.jsonl")), rows)
                 for split, rows in (("train", train), ("eval", evals), ("pool", pool))]
        for tmp, rows in files:
            tmp.write_text("".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in rows),
                           encoding="utf-8")
        tmp = stack.enter_context(atomic_path(metrics_path))
        tmp.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    for name in loaded:
        m = metrics[name]
        print(f"{name:10s} total {m['total']:6d}  train {m['train']:4d}  eval {m['eval']:4d}"
              f"  eval_only {m['eval_only']!s:5s}  cut {m['context_cut']:4d}  answer in context "
              f"{m['answer_in_context_share']:.3f}  skipped {m['skipped']}")
    for note in notes:
        print("note:", note)
    return metrics


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--params", default="params.yaml", help="params file (data: section; default %(default)s)")
    parser.add_argument("--out", default="data/mix", help="folder for train.jsonl and eval.jsonl (default %(default)s)")
    parser.add_argument("--metrics", default="metrics/data.json", help="per-dataset counts (default %(default)s)")
    return parser


def run(args: argparse.Namespace) -> dict:
    return main(args.params, args.out, args.metrics)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m latentwire.prepare",
        description="Read the QA datasets in params.data (local files under data.root or $LATENTWIRE_DATA, "
                    "or the HF hub), cap long contexts (answer-blind), split by title and write the train/eval mix.")
    run(add_args(p).parse_args())

"""Where does the latent lose to the full text: on the questions whose answer the pick missed, or
on those it holds? (issues 22, 23)

    python bench/pick_hits.py [--predictions data/eval/predictions.jsonl] [--out bench/results/pick_hits.md]

Reads the committed evaluation (`data/eval/predictions.jsonl`, after `dvc repro`), spends the
fitted pick again on each eval question at its dataset's M (no LLM runs: the pick is a tokenizer
pass and a small GRU), and splits every model's F1 by whether the gold answer lies wholly inside
one picked span (`pick_recall`'s rule). Per model and dataset, for the questions the pick holds and
for those it misses: n, the full text's F1, the latent's F1 and their ratio. Nothing is tuned on
it: it reads the evaluation of the committed default, as the report does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentwire import pick
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.sender import Sender


def hits(params, pick_dir: str, rows: list[dict]) -> dict[str, bool]:
    """{eval id: whether the pick at its dataset's M holds a gold answer wholly in one span}."""
    s = Sender.load(params, pick_dir)
    out = {}
    for r in rows:
        p = s.pick(r["question"], r["context"], params.positions(r["dataset"]))
        out[r["id"]] = pick.contains_answer(p.texts(r["context"]), r["answers"])
    return out


def split(preds: list[dict], held: dict[str, bool], variant: str = "latent_ids") -> dict:
    """{model: {dataset: {"hit" | "miss": {n, text, latent}}}}: mean F1 of each part."""
    out: dict = {}
    for p in preds:
        part = out.setdefault(p["model"], {}).setdefault(p["dataset"], {}).setdefault(
            "hit" if held[p["id"]] else "miss", {"n": 0, "text": 0.0, "latent": 0.0})
        part["n"] += 1
        part["text"] += p["f1_text"]
        part["latent"] += p[f"f1_{variant}"]
    for per in out.values():
        for parts in per.values():
            for v in parts.values():
                v["text"], v["latent"] = v["text"] / v["n"], v["latent"] / v["n"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--eval", default="data/mix/eval.jsonl")
    ap.add_argument("--predictions", default="data/eval/predictions.jsonl")
    ap.add_argument("--out", default="bench/results/pick_hits.md")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    preds = read_jsonl(args.predictions)
    ids = {p["id"] for p in preds}
    held = hits(params, args.pick, [r for r in read_jsonl(args.eval) if r["id"] in ids])
    out = split(preds, held)
    lines = ["# The latent against the full text, split by whether the pick holds the answer", "",
             f"`python bench/pick_hits.py`: the committed evaluation ({args.predictions}), each question's pick "
             "spent again at its dataset's M. F1 text / latent (latent ÷ text).", "",
             "| model | dataset | pick holds it: n | text | latent | ratio | pick misses it: n | text | latent | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, per in out.items():
        for ds, parts in sorted(per.items()):
            cells = []
            for part in ("hit", "miss"):
                v = parts.get(part, {"n": 0, "text": 0.0, "latent": 0.0})
                ratio = f"{v['latent'] / v['text']:.0%}" if v["text"] else "–"
                cells += [str(v["n"]), f"{v['text']:.3f}", f"{v['latent']:.3f}", ratio]
            lines.append(f"| {model} | {ds} | " + " | ".join(cells) + " |")
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

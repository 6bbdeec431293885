"""A second pass for multi-hop questions: does the first picked sentence, read as part of the
question, lead the pick to the answer's paragraph? (issue 23: "a second pass conditioned on the
first picked span (the bridge entity)")

    python bench/pick_bridge.py [--datasets hotpotqa] [--out bench/results/pick_bridge.md]

A bridge question names one paragraph's subject and asks about another's ("the director of the
film X was born where?"): the answer's sentence shares few words with the question, but it shares
the bridge entity with the sentence the pick rates best. So the pick reads each context twice:
pass 1 as today; pass 2 with the question followed by pass 1's best sentence (its words enter the
question-match features, the GRU is the same fitted one: models/pick). The spending (span, run
margin) is the stage's; M = pick.dev_M positions. Rated:
  - the pick (pass 1), and with coverage 2 (the best token of two paragraphs first);
  - pass 2 alone; the larger of the two passes' logits per token;
  - pass 1 in the best paragraph and pass 2 elsewhere (coverage 0 and 2);
  - the pick at 2 M, a reference for what more positions would find.
Recall (the gold answer wholly inside one picked span) and, where the rows have them, the share of
supporting-fact sentences touched, on every row of the pool's held-out tenth of these datasets
(train-split titles, never the eval mix).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentwire import pick
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_text
from latentwire.sender import Sender, is_pick_dev


def best_sentence(rd: pick.Read, context: str, logits: torch.Tensor) -> tuple[str, int]:
    """The text of the context's sentence (`pick.sentences`) that holds the best-rated token's last
    character, and that token's paragraph."""
    i = int(logits.argmax())
    c = max(rd.offsets[i][1] - 1, rd.offsets[i][0])
    a, b = next(((a, b) for a, b in pick.sentences(context) if a <= c < b), (0, len(context)))
    return context[a:b].strip(), (rd.paragraph[i] if rd.paragraph else 0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--pick", default="models/pick")
    ap.add_argument("--datasets", nargs="+", default=["hotpotqa"])
    ap.add_argument("--out", default="bench/results/pick_bridge.md")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    M = params.pick.dev_M
    s = Sender.load(params, args.pick, M)
    rows = [r for r in read_jsonl(args.pool) if is_pick_dev(r) and r["dataset"] in args.datasets]
    hits: dict[str, dict[str, list]] = {}

    def spend(name: str, r: dict, rd: pick.Read, scores: torch.Tensor, cover: int = 0, m: int = M) -> None:
        old, s.cover = s.cover, cover
        p = s.spend(rd, scores.tolist(), m)
        s.cover = old
        h = hits.setdefault(name, {"pick_recall": [], "support_recall": []})
        h["pick_recall"].append(pick.contains_answer(p.texts(r["context"]), r["answers"]))
        sup = pick.touched(rd, p.spans, r.get("support", []))
        if sup is not None:
            h["support_recall"].append(sup)

    for r in rows:
        rd = pick.read(s.tokenizer, r["question"], r["context"], s.max_tokens)
        l1 = s.model.logits(rd)[:, 0]
        first, p1 = best_sentence(rd, r["context"], l1)
        l2 = s.model.logits(pick.read(s.tokenizer, r["question"] + " " + first, r["context"], s.max_tokens))[:, 0]
        para = torch.tensor(rd.paragraph) if rd.paragraph else torch.zeros(len(l1), dtype=torch.long)
        split = torch.where(para == p1, l1, l2)
        spend("the pick (pass 1)", r, rd, l1, s.cover)
        spend("the pick, coverage 2", r, rd, l1, 2)
        spend("pass 2 alone", r, rd, l2, s.cover)
        spend("max of the two passes", r, rd, torch.maximum(l1, l2), s.cover)
        spend("pass 1 in its paragraph, pass 2 elsewhere", r, rd, split, 0)
        spend("pass 1 in its paragraph, pass 2 elsewhere, coverage 2", r, rd, split, 2)
        spend(f"the pick at {2 * M} positions (reference)", r, rd, l1, s.cover, 2 * M)
    out = {"M": M, "datasets": args.datasets, "rows": len(rows),
           "variants": {n: {k: sum(v) / len(v) for k, v in h.items() if v} for n, h in hits.items()}}
    lines = [f"# A second pass with the best sentence as part of the question (M = {M}, {len(rows)} held-out pool rows)", "",
             f"`python bench/pick_bridge.py --datasets {' '.join(args.datasets)}`: see the script's docstring. The fitted "
             f"pick (span {s.span}, run margin {s.grow}), every row of the pool's held-out tenth of "
             f"{' and '.join(args.datasets)} (never the eval mix).", "",
             "| rating | recall | supporting facts touched |", "|---|---:|---:|"]
    for name, v in out["variants"].items():
        lines.append(f"| {name} | {v['pick_recall']:.3f} | {v['support_recall']:.3f} |" if "support_recall" in v
                     else f"| {name} | {v['pick_recall']:.3f} | – |")
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

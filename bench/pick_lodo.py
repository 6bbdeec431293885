"""Does the pick transfer to a dataset it never saw? Leave-one-dataset-out fits of the pick.

    python bench/pick_lodo.py [--params params.yaml] [--n 300] [--out bench/results/pick_lodo.md]

For each dataset D of the pick's pool (data/mix/pool.jsonl, train-split rows only, never the
eval mix): fit the pick on the pool's other datasets (the `pick` stage's fit, same params and
cached features), then read up to --n of D's pool rows and report, at pick.dev_M positions:
the pick's recall (gold answer wholly inside the selection), its support_recall where D has
supporting facts, and the answer-blind references on the same rows: the lexical window (the
best M-token window by question-word matches), the first M tokens and the answer in the context
at all. The pick spends its positions as the stage chose (models/pick/meta.json); without
one, with the support head off and no coverage. Run `dvc repro pick` first.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentwire import pick
from latentwire.config import load_params
from latentwire.io import write_text
from latentwire.sender import Sender, fit_pick, load_embeddings, read_pool, recall


def references(sender: Sender, rows: list[dict], M: int) -> dict[str, float]:
    """Answer-blind selections of M tokens on the same rows: the lexical window, the first M."""
    hits = {"lexical": 0, "first_M": 0, "answer_in_context": 0}
    for r in rows:
        rd = pick.read(sender.tokenizer, r["question"], r["context"], sender.max_tokens)
        T = len(rd.ids)
        for name, spans in (("lexical", pick.lexical_spans(rd, M)), ("first_M", [(0, min(M, T))])):
            hits[name] += pick.contains_answer(pick.span_texts(rd, r["context"], spans), r["answers"])
        hits["answer_in_context"] += pick.contains_answer([r["context"]], r["answers"])
    return {k: v / max(len(rows), 1) for k, v in hits.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pool", default="data/mix/pool.jsonl")
    ap.add_argument("--features", default="data/pick/features.safetensors")
    ap.add_argument("--pick", default="models/pick", help="the stage's pick: how it spends M (meta.json)")
    ap.add_argument("--n", type=int, default=300, help="rows of the left-out dataset to read (default 300)")
    ap.add_argument("--out", default="bench/results/pick_lodo.md")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    pp = params.pick
    rows, tok, reads, labels, _ = read_pool(params, args.pool, args.features)
    meta_path = Path(args.pick) / "meta.json"
    meta = (json.loads(meta_path.read_text()) if meta_path.is_file()
            else {"span": pp.spans[0], "support_weight": 0.0, "cover": 0})
    meta.setdefault("grow", None)  # a pick of before the run margin
    E = load_embeddings(params)
    out = {"M": pp.dev_M, "span": meta["span"], "grow": meta["grow"], "support_weight": meta["support_weight"], "cover": meta["cover"],
           "datasets": {}}
    for held in sorted({r["dataset"] for r in rows}):
        t0 = time.time()
        keep = [k for k, r in enumerate(rows) if r["dataset"] != held]
        # a fold without supporting facts (HotpotQA left out) trains no support head: do not spend on it
        weight = meta["support_weight"] if any(rows[k].get("support") for k in keep) else 0.0
        model, _ = fit_pick(pp, E, [reads[k] for k in keep], [labels[k] for k in keep], params.seed, weight)
        sender = Sender(tok, model, pp.dev_M, meta["span"], pp.max_tokens, meta["cover"], meta["grow"])
        test = [r for r in rows if r["dataset"] == held][:args.n]
        res = {**recall(sender, test, pp.dev_M)[held], **references(sender, test, pp.dev_M),
               "n": len(test), "fit_on": sorted({rows[k]["dataset"] for k in keep}), "support_weight": weight, "wall_s": round(time.time() - t0)}
        out["datasets"][held] = res
        print(f"pick_lodo: {held}: {res}", flush=True)
    lines = [f"# The pick on a dataset it never saw (leave-one-dataset-out, M = {out['M']})", "",
             f"`python bench/pick_lodo.py --n {args.n}`: each row fits the pick on the pool's other datasets "
             f"(span {out['span']}, grow {out['grow']}, support weight {out['support_weight']}, cover {out['cover']}, as the `pick` "
             "stage chose) and reads "
             "the left-out dataset's pool rows (train split; never the eval mix).", "",
             "| left out | fit on | n | answer in context | the pick | lexical window | first M tokens | "
             "supporting facts touched | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for ds, r in out["datasets"].items():
        sup = f"{r['support_recall']:.3f}" if "support_recall" in r else "–"
        lines.append(f"| {ds} | {' + '.join(r['fit_on'])} | {r['n']} | {r['answer_in_context']:.3f} | "
                     f"**{r['pick_recall']:.3f}** | {r['lexical']:.3f} | {r['first_M']:.3f} | {sup} | {r['wall_s']} |")
    write_text(args.out, "\n".join(lines) + "\n")
    write_text(Path(args.out).with_suffix(".json"), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

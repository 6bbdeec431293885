"""Does the tokens sender's pick improve with more scorer training data?

    python bench/scorer_scale.py [--params params.yaml] [--sizes 160 640 2560] [--steps 80]

The scorer is a linear probe on the frozen feature model's hidden states; it needs only
answer positions, no LLM forward through a receiver, so it can learn from far more examples
than the curriculum's KD cache holds. For each train-mix size N (the same title split and
sample order as prepare-mix, so smaller sets are prefixes of larger ones) this trains a fresh
scorer with `scorer_warm_start` and prints the window hit rate on the eval mix: how often the
picked window (M = stage3.M) holds a token of a gold answer. Rows "prior only" (lexical overlap,
scorer untrained) and "answer in context" (the ceiling) frame it.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import torch

from latentwire import data
from latentwire.config import load_params
from latentwire.evaluate import load_rows
from latentwire.llm import load_frozen
from latentwire.tokens import TokenSender, scorer_warm_start


@torch.no_grad()
def window_hits(snd: TokenSender, texts, answers, use_scorer: bool) -> list[float]:
    hits = []
    for t, golds in zip(texts, answers):
        _, start, W, _, _ = snd.pick(t, use_scorer)
        hits.append(float(W > 0 and any(snd.read(t, a)[3][start:start + W].sum() > 0 for a in golds)))
    return hits


def report(name: str, rows, hits) -> str:
    per = defaultdict(list)
    for r, h in zip(rows, hits):
        per[r["dataset"]].append(h)
    cells = "  ".join(f"{ds} {sum(v) / len(v):.3f}" for ds, v in sorted(per.items()))
    return f"{name:22s} all {sum(hits) / len(hits):.3f}  {cells}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval", default="data/mix/eval.jsonl")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 640, 2560])
    ap.add_argument("--steps", type=int, default=80, help="full-batch scorer steps (train: codec_steps // 10)")
    args = ap.parse_args()
    p = load_params(args.params)
    root = p.data.resolved_root(Path(args.params).resolve().parent).resolve()
    loaded = {n: data.load(n, c, root, p.data.max_context_chars)[0] for n, c in p.data.datasets.items()}
    fm = load_frozen(p.encoder.feature_model, p.models[p.encoder.feature_model], p.prompt, p.cache_dir)
    snd = TokenSender(p.encoder, p.wire.d_wire, p.stage3.M, fm.model.config.hidden_size)
    snd.llm = fm
    rows = load_rows(args.eval, None)
    texts = [fm.template.body(r["context"], r["question"]) for r in rows]
    answers = [r["answers"] for r in rows]
    ceiling = [float(any(snd.read(t, a)[3].sum() > 0 for a in g)) for t, g in zip(texts, answers)]
    print(report("answer in context", rows, ceiling))
    print(report("prior only", rows, window_hits(snd, texts, answers, use_scorer=False)))
    for n in args.sizes:
        cfg = dataclasses.replace(p.data, train_examples=n)
        train = [ex.to_dict() for ex in data.make_mix(cfg, loaded, p.seed)[0]]
        t0 = time.time()
        torch.manual_seed(p.seed)
        for m in snd.scorer:
            m.reset_parameters()
        loss = scorer_warm_start(snd, [fm.template.body(r["context"], r["question"]) for r in train],
                                 [r["answers"][0] for r in train], args.steps, log=lambda *_: None)
        hits = window_hits(snd, texts, answers, use_scorer=True)
        print(report(f"scorer N={len(train)}", rows, hits) + f"  (loss {loss:.3f}, {time.time() - t0:.0f}s)",
              flush=True)


if __name__ == "__main__":
    main()

"""Is one KD teacher better than another? Compare teacher-kd-cache outputs of the same train mix.

    python bench/teacher_kd_compare.py data/kd/qwen.safetensors OTHER/data/kd/qwen.safetensors

e.g. the qwen slot distilled from itself (the default) against a stronger teacher's cache (the
commented `teachers:` block of params.yaml, run with `dvc exp run` or in a clone). Per cache:
its examples, its teacher_hash, how often the teacher's top-1 token is the gold answer token
(teacher-forced: on the first answer token, and on every answer token) and the mean entropy of
its top-k log-probs.
"""
from __future__ import annotations

import argparse
import json

from safetensors import safe_open


def summary(path: str) -> dict:
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    top1, gold, mask = t["top_idx"][..., 0].long(), t["answer_ids"], t["answer_mask"]
    p = t["top_logp"].exp()
    return {"path": path, "n": int(meta["n"]), "ids": json.loads(meta["ids"]), "teacher_hash": meta["teacher_hash"],
            "top1_first": (top1[:, 0] == gold[:, 0]).float().mean().item(),
            "top1_all": ((top1 == gold) & mask).sum().item() / mask.sum().item(),
            "entropy": -(p * t["top_logp"]).sum(-1)[mask].mean().item()}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("caches", nargs="+", help="<slot>.safetensors files written by teacher-kd-cache")
    args = ap.parse_args(argv)
    rows = [summary(path) for path in args.caches]
    for r in rows[1:]:
        if r["ids"] != rows[0]["ids"]:
            raise SystemExit(f"{r['path']} and {rows[0]['path']} hold different train examples: "
                             f"build both caches from the same data/mix/train.jsonl")
    for r in rows:
        print(f"{r['path']}: n={r['n']} teacher_hash={r['teacher_hash'][:16]} top-1 = gold first token "
              f"{r['top1_first']:.3f}, all answer tokens {r['top1_all']:.3f}, top-k entropy {r['entropy']:.3f}")
    return rows


if __name__ == "__main__":
    main()

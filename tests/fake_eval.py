"""A small, seeded metrics/eval.json + predictions in evaluate.py's schema (report / plots tests).

The wire sizes are those of M=32 slots of 16 values (fp16 / int8 / int4 with group scales); every F1, EM,
ratio and diagnostic is a distinct random number, so a value read from the wrong key shows.
"""
from __future__ import annotations

import random

PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}
SIZES = {16: 1025, 8: 545, 4: 289}


def fake_metrics(seed: int = 0, models=("llama", "qwen"), datasets=("nq", "squad"), M: int = 32,
                 bits: int = 4) -> dict:
    rng = random.Random(seed)
    r = lambda: round(rng.random(), 6)  # noqa: E731
    wire = {name: {"bits": b, "per_model": SIZES[b], "total": SIZES[b]} for name, b in PRECISIONS.items()}
    B = wire[{16: "fp16", 8: "int8", 4: "int4"}[bits]]["per_model"]
    metrics = {"M": M, "reported_bits": bits, "equal_byte_budget": B, "wire": wire, "wall_s": {}}
    for slot in models:
        metrics[slot] = {"embedding": {"mean_norm": 0.5}}
        for ds in datasets:
            pb, pt = rng.uniform(300, 700), rng.uniform(60, 160)
            res = {"n": rng.randint(3, 50), "prompt_bytes": pb, "prompt_tokens": pt,
                   "text": {"f1": r(), "em": r()},
                   "m_token": {"f1": r(), "em": r(), "tokens": M, "bytes": rng.uniform(80, 160)},
                   "equal_byte": {"f1": r(), "em": r(), "bytes": B}}
            for name in PRECISIONS:
                res[f"latent_{name}"] = {"f1": r(), "em": r(), "distinct_ratio": r()}
            res["bytes"] = {name: {"per_model": w["per_model"], "total": w["total"],
                                   "text_over_wire": pb / w["per_model"],
                                   "text_over_wire_total": pb / w["total"]} for name, w in wire.items()}
            res["tokens_over_M"] = pt / M
            res["soft_pairwise_cosine"] = rng.uniform(-0.2, 0.95)
            res["positions"] = {"text_over_latent": rng.uniform(2, 40)}
            res["encoder_bytes_cut"] = 0
            metrics[slot][ds] = res
    return metrics


def prediction(model: str, dataset: str, id_: str, f1_text: float, f1_latent: float, prec: str = "int4") -> dict:
    return {"model": model, "dataset": dataset, "id": id_, "question": f"Question {id_}?",
            "answers": [f"gold {id_}"], "pred_text": f"text says {id_}", "f1_text": f1_text,
            f"pred_latent_{prec}": f"latent says {id_}", f"f1_latent_{prec}": f1_latent}

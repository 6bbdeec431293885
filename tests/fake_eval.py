"""metrics/eval.json + predictions as evaluate.py writes them, with seeded numbers (report / plots tests).

The shape comes from the real writer: `evaluate.main` runs once per session on the tiny models
(tests/tiny.py: a fitted tiny pick, an untrained checkpoint at M=8, two rows per dataset), for
the default sender (kind ids) and, on request, for the bytes sender. `fake_metrics` then puts a
random number in [1, 1000) in every float, so a value read from the wrong key shows, while a key
that evaluate renames is renamed here too (and a reader that still asks for the old one fails).
Integers (n, M, bits) stay as evaluate wrote them.
"""
from __future__ import annotations

import atexit
import copy
import json
import random
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("hotpotqa", "nq", "squad")


@lru_cache(maxsize=None)
def real_eval(kind: str = "ids", bits: int = 4) -> tuple[dict, list[dict]]:
    """(metrics, predictions) of one real `evaluate.main` run on the tiny models: two rows of
    each of DATASETS, encoder.kind `kind` (bytes: at bytes.bits `bits`), untrained adapters."""
    import torch

    from tiny import fit_pick, make_tiny, qa_rows

    from latentwire import evaluate
    from latentwire.config import load_params
    from latentwire.latent import LatentWire

    root = Path(tempfile.mkdtemp(prefix=f"fake_eval_{kind}_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    models = {s: make_tiny(k, root / "tiny" / k) for s, k in (("llama", "llama"), ("qwen", "qwen2"))}
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {s: {"source": "local", "path": str(p)} for s, p in models.items()}
    raw["encoder"]["kind"] = kind
    if kind == "bytes":
        raw["bytes"].update(d_z=32, layers=1, heads=2, max_bytes=64, bits=bits)
    raw["pick"].update(spans=[6], hidden=8, epochs=1)
    raw["stage3"]["M"] = 8
    for d in raw["data"]["datasets"].values():
        d["M"] = None
    raw["evaluate"].update(max_new_tokens=2, batch_size=4, bootstrap=50)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    rows = [r for k, ds in enumerate(DATASETS) for r in qa_rows(2, ds, 10 * k)]
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if kind == "ids":
            fit_pick(root, n=8)
        params = load_params(root / "params.yaml")
        LatentWire(params, 8, hidden={"llama": 32, "qwen": 32}, pick_dir=root / "models/pick").save(root / "ckpt")
        metrics = evaluate.main(str(root / "params.yaml"), str(root / "eval.jsonl"), str(root / "eval.json"),
                                str(root / "predictions.jsonl"), part="all",
                                baselines_path=str(root / "text_baselines.json"), checkpoint=str(root / "ckpt"),
                                pick_dir=str(root / "models/pick"))
    finally:
        torch.set_num_threads(threads)
    predictions = [json.loads(x) for x in (root / "predictions.jsonl").read_text().splitlines()]
    return json.loads(json.dumps(metrics)), predictions


def scramble(blob, rng: random.Random):
    """Every float in blob -> a random number in [1, 1000) (ints, strings, keys kept): far apart
    even as printed with no decimals, so that a cell read from the wrong key shows."""
    if isinstance(blob, dict):
        return {k: scramble(v, rng) for k, v in blob.items()}
    if isinstance(blob, list):
        return [scramble(v, rng) for v in blob]
    if isinstance(blob, float):
        return round(rng.uniform(1, 1000), 4)
    return blob


def fake_metrics(seed: int = 0, models=("llama", "qwen"), datasets=("nq", "squad"), kind: str = "ids",
                 bits: int = 4) -> dict:
    """The real writer's metrics for `models` x `datasets`, every float seeded anew."""
    metrics = copy.deepcopy(real_eval(kind, bits)[0])
    for slot in ("llama", "qwen"):
        if slot not in models:
            del metrics[slot]
            continue
        for ds in DATASETS:
            if ds not in datasets:
                del metrics[slot][ds]
    if "pick" in metrics:
        metrics["pick"] = {ds: v for ds, v in metrics["pick"].items() if ds in datasets}
    return scramble(metrics, random.Random(seed))


def prediction(model: str, dataset: str, id_: str, f1_text: float, f1_latent: float, kind: str = "ids") -> dict:
    """One row of predictions.jsonl as evaluate writes it (the real writer's keys), with these
    texts and F1s."""
    real = real_eval(kind)[1][0]
    latent = [k.removeprefix("pred_") for k in real if k.startswith("pred_latent_")]
    assert len(latent) == 1 and "pred_text" in real and "f1_text" in real, sorted(real)
    row = {**real, "model": model, "dataset": dataset, "id": id_, "title": id_, "question": f"Question {id_}?",
           "answers": [f"gold {id_}"], "pred_text": f"text says {id_}", "f1_text": f1_text,
           f"pred_{latent[0]}": f"latent says {id_}", f"f1_{latent[0]}": f1_latent}
    return row

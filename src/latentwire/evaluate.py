"""Evaluation: F1/EM per model x dataset, the latent beside the text baselines (baselines.py).

Two DVC stages share this module: `text-baselines` (expensive, reruns only when the models,
prompt, eval data, pick or M change) and `evaluate` (the latent, merged with the baselines
into metrics/eval.json). Both first send every eval example (`send_all`): the payload bytes
are what the equal-byte baselines get, example by example, and what the latent is decoded
from, example by example (pack -> bytes -> unpack -> the model's adapter -> at most M
positions, the question beside them as text). Reported: per model x dataset F1/EM of each
variant, the payload's measured bytes (mean, max), positions, how exactly the slots arrive,
paired bootstrap CIs of latent minus each baseline (per dataset and pooled), and the pick's
recall. Beside metrics/eval.json the latent part writes metrics/frontier.csv (model, dataset,
variant, bytes, f1, em) for `dvc plots` and `latentwire plots`.

Resume: each finished (part, model slot) unit, its metrics and predictions, is saved at once to
data/eval/partial/<part>/<slot>-<hash>.json (see `unit_path`); a killed run, rerun, reuses the
finished units and redoes only the unfinished slot. SIGTERM / SIGINT stop at once with 143 / 130
(a unit is too long to wait for; the finished ones are already on disk).

A little over 300 lines: the resume units (`unit_path`, `load_unit`, `save_unit`) stay beside
the one `main` that writes them; the text baselines live in baselines.py.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import payload, placement, stats
from .baselines import SELECTED, by_dataset, clean, evaluate_model, m_token_bytes, score
from .config import ModelConfig, Params, load_params
from .io import package_sha256, peak_rss_mb, read_jsonl, remove_temp_files, write_json, write_jsonl, write_text
from .latent import LatentWire, Receiver
from .llm import FrozenLLM, load_frozen
from .metrics import best_f1
from .packed import pack
from .signals import stop_requests

PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}
BASES = ("text", "m_token", "equal_byte", *SELECTED)


def code_name(params: Params) -> str:
    """The latent's name in the metrics: ids, or the precision of the continuous values."""
    return "ids" if params.encoder.kind == "ids" else {b: n for n, b in PRECISIONS.items()}[params.wire.bits]


@torch.no_grad()
def send_all(lw: LatentWire, rows: list[dict], bs: int) -> dict[str, tuple[bytes, payload.Latent]]:
    """Every example's payload and the latent it packs: {id: (bytes, latent)}."""
    out = {}
    for i in tqdm(range(0, len(rows), bs), desc="send", leave=False, disable=None):
        batch = rows[i:i + bs]
        for r, lat in zip(batch, lw.codec.latents(batch)):
            out[r["id"]] = (payload.pack(lat, lw.codec.codebook), lat)
    return out


@torch.inference_mode()
def latent_model(llm: FrozenLLM, lw: LatentWire, rows: list[dict], sent: dict, name: str, base: dict,
                 params: Params, predictions: list[dict]) -> dict:
    """Every answer decoded from its packed payload; per dataset F1/EM, the payload's measured
    bytes, the positions the model reads, and the codec's per-slot diagnostics."""
    rec, bs, result = Receiver(llm), params.evaluate.batch_size, {}
    M_of = dataset_M(params, rows)
    pred_rows = {(p["dataset"], p["id"]): p for p in predictions if p["model"] == llm.slot}
    variant = f"latent_{name}"
    for ds, ds_rows in by_dataset(rows).items():
        preds, n_pos, diag, flat = [], [], defaultdict(float), []
        for i in tqdm(range(0, len(ds_rows), bs), desc=f"{llm.slot}/{ds}/latent", leave=False, disable=None):
            rests = []
            for r in ds_rows[i:i + bs]:
                data, sent_latent = sent[r["id"]]
                latent = payload.unpack(data, lw.codec.codebook, lw.codec.limits)
                soft = lw.codec.soft(llm.slot, latent)
                rests.append(rec.rest(soft, r["question"]))
                n_pos.append(len(soft))
                flat.append(soft.float().reshape(-1))
                for k, v in lw.codec.diagnose(llm.slot, llm, latent, sent_latent, soft).items():
                    diag[k] = max(diag[k], v) if k.startswith("max") else diag[k] + v
            preds += [clean(t) for t in rec.generate(rests, params.evaluate.max_new_tokens)]
        for r, p in zip(ds_rows, preds):
            row = pred_rows.setdefault((ds, r["id"]), {"model": llm.slot, "dataset": ds, "id": r["id"],
                                                       "title": r.get("title", r["id"]),
                                                       "question": r["question"], "answers": r["answers"]})
            row[f"pred_{variant}"], row[f"f1_{variant}"] = p, best_f1(p, r["answers"])
        sizes = [len(sent[r["id"]][0]) for r in ds_rows]
        mean_bytes, ctx = sum(sizes) / len(sizes), base[ds]["context_bytes"]
        n_slots = max(diag.pop("slots", 0), 1)
        result[ds] = {
            variant: {**score(preds, ds_rows), "distinct_ratio": len(set(preds)) / len(preds)},
            "bytes": {name: {"per_model": mean_bytes, "max": max(sizes), "total": mean_bytes,
                             "per_slot": sum(sizes) / max(sum(n_pos), 1), "text_over_wire": ctx / mean_bytes,
                             "text_over_wire_total": ctx / mean_bytes}},
            "positions": {"latent_mean": sum(n_pos) / len(n_pos), "latent_max": max(n_pos), "M": M_of[ds],
                          "text_context_tokens": base[ds].get("context_tokens"),
                          "text_over_latent": (base[ds]["context_tokens"] / (sum(n_pos) / len(n_pos))
                                               if base[ds].get("context_tokens") else None)},
            "slots": {k: (v if k.startswith("max") else v / n_slots) for k, v in diag.items()},
            "soft_pairwise_cosine": soft_cosine(flat),
            "tokens_over_M": base[ds]["prompt_tokens"] / M_of[ds]}
    predictions[:] = [p for p in predictions if p["model"] != llm.slot] + list(pred_rows.values())
    return result


def dataset_M(params: Params, rows: list[dict]) -> dict[str, int]:
    """Each eval dataset's positions: data.datasets.<name>.M, else stage3.M."""
    cfg = params.data.datasets
    return {r["dataset"]: (cfg[r["dataset"]].M if r["dataset"] in cfg and cfg[r["dataset"]].M else params.stage3.M)
            for r in rows}


def soft_cosine(flat: list[torch.Tensor]) -> float:
    """Mean cosine between different examples' soft tokens (cut to a common length): near 1
    means one input for all (collapse)."""
    if len(flat) < 2:
        return float("nan")
    n = min(len(f) for f in flat)
    x = torch.nn.functional.normalize(torch.stack([f[:n] for f in flat]), dim=-1)
    sim = x @ x.T
    k = len(flat)
    return ((sim.sum() - sim.diagonal().sum()) / (k * (k - 1))).item()


def add_cis(per_model: dict, predictions: list[dict], slot: str, variant: str, seed: int, n_boot: int) -> None:
    """Paired bootstrap 95 % CIs of the latent's F1 minus each baseline's, per dataset (under
    <dataset>.ci) and pooled over datasets (under pooled). Resampled by title (article, or
    HotpotQA's gold pair), not by question: questions on one article are not independent."""
    preds = [p for p in predictions if p["model"] == slot and f"f1_{variant}" in p]
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for p in preds:
        by_ds[p["dataset"]].append(p)
    pooled = {}
    for base in BASES:
        if not all(f"f1_{base}" in p for p in preds):
            continue
        diffs = {ds: [p[f"f1_{variant}"] - p[f"f1_{base}"] for p in ps] for ds, ps in sorted(by_ds.items())}
        clusters = {ds: [p.get("title", p["id"]) for p in ps] for ds, ps in sorted(by_ds.items())}
        for ds, d in diffs.items():
            per_model[ds].setdefault("ci", {})[base] = stats.paired_ci({ds: d}, seed, n_boot, clusters={ds: clusters[ds]})
        pooled[base] = stats.paired_ci(diffs, seed, n_boot, clusters=clusters)
    per_model["pooled"] = {"n": len(preds), f"{variant}_f1": float(np.mean([p[f"f1_{variant}"] for p in preds])),
                           "ci": pooled}


def frontier_rows(metrics: dict, slots) -> list[dict]:
    """One row per model x dataset x variant: the bytes it sends and its F1/EM.

    bytes: latent_* the per-model wire bytes at that precision (kind ids: the mean measured
    payload); text the mean context bytes (older metrics: prompt bytes); equal_byte the byte budget of its context cut; m_token the mean
    UTF-8 bytes of its M-token context cut (empty where metrics lack that count)."""
    rows = []
    for slot in slots:
        for ds, res in sorted(metrics[slot].items()):
            if not isinstance(res, dict) or "text" not in res:
                continue  # "embedding" and other per-model entries
            for v in [*BASES, *(k for k in res if k.startswith("latent_"))]:
                if v not in res:
                    continue
                if v.startswith("latent_"):
                    nbytes = res["bytes"][v.removeprefix("latent_")]["per_model"]
                elif v == "text":
                    nbytes = res.get("context_bytes", res["prompt_bytes"])
                else:
                    nbytes = res[v].get("bytes")
                rows.append({"model": slot, "dataset": ds, "variant": v,
                             "bytes": "" if nbytes is None else nbytes,
                             "f1": res[v]["f1"], "em": res[v]["em"]})
    return rows


def write_frontier(path: str | Path, metrics: dict, slots) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["model", "dataset", "variant", "bytes", "f1", "em"],
                       lineterminator="\n")
    w.writeheader()
    w.writerows(frontier_rows(metrics, slots))
    write_text(path, buf.getvalue())


def partial_folder(part: str, baselines_path: str | Path, predictions_path: str | Path) -> Path:
    """data/eval/partial/<part>: beside the part's output (a persist: true DVC output)."""
    return Path(baselines_path if part == "text" else predictions_path).with_name("partial") / part


def unit_inputs(part: str, eval_path, checkpoint, baselines_path, pick_dir) -> list[Path]:
    """The files a unit's numbers come from: the eval file; the checkpoint unless part is text;
    the saved baselines for part latent; the fitted pick where there is one (kind ids)."""
    ckpt = [] if part == "text" else [Path(checkpoint) / "model.safetensors", Path(checkpoint) / "meta.json"]
    pick_files = [p for p in [Path(pick_dir) / "pick.safetensors"] if p.is_file()]
    return [Path(eval_path), *ckpt, *([Path(baselines_path)] if part == "latent" else []), *pick_files]


def unit_path(folder: Path, part: str, slot: str, cfg: ModelConfig, params: Params, files: list) -> Path:
    """<folder>/<slot>-<hash>.json for one (part, model slot) unit. The hash covers what the
    unit's numbers depend on: the slot's resolved model config, the prompt, wire, encoder, M,
    evaluate params, seed and slot list, and the sha256 of `files` (the eval file, for the
    latent also the checkpoint and the saved baselines) and of this package's code."""
    h = hashlib.sha256(json.dumps(
        {"part": part, "slot": slot, "model": dataclasses.asdict(cfg), "slots": list(params.models),
         **{k: dataclasses.asdict(getattr(params, k)) for k in ("prompt", "wire", "encoder", "pick", "evaluate")},
         "M": params.stage3.M, "seed": params.seed}, sort_keys=True).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    h.update(package_sha256().encode())
    return folder / f"{slot}-{h.hexdigest()[:16]}.json"


def load_unit(path: Path, slot: str, metrics: dict, predictions: list[dict]) -> bool:
    """Put a finished unit's metrics and predictions in place; False if there is none."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    metrics[slot], metrics["wall_s"] = saved["metrics"], {**metrics["wall_s"], **saved["wall_s"]}
    predictions[:] = [p for p in predictions if p["model"] != slot] + saved["predictions"]
    print(f"evaluate: {slot}: reused finished unit {path}")
    return True


def save_unit(path: Path, slot: str, part: str, metrics: dict, predictions: list[dict]) -> None:
    """Write the unit atomically; the slot's units for other settings and a killed write's temp
    files go."""
    wall = f"{part}/{slot}"
    write_json(path, {"metrics": metrics[slot], "wall_s": {wall: metrics["wall_s"][wall]},
                      "predictions": [p for p in predictions if p["model"] == slot]})
    remove_temp_files(path.parent)
    for old in path.parent.glob("*.json"):
        if old != path and old.stem.rsplit("-", 1)[0] == slot:
            old.unlink(missing_ok=True)


def load_rows(path: str, max_examples: int | None) -> list[dict]:
    rows, seen = [], defaultdict(int)
    for r in read_jsonl(path):
        if max_examples is None or seen[r["dataset"]] < max_examples:
            rows.append(r)
            seen[r["dataset"]] += 1
    return rows


def main(params_path: str = "params.yaml", eval_path: str = "data/mix/eval.jsonl",
         metrics_path: str = "metrics/eval.json",
         predictions_path: str = "data/eval/predictions.jsonl", part: str = "all",
         baselines_path: str = "data/eval/text_baselines.json", checkpoint: str = "models/stage3/best",
         frontier_path: str | None = None, pick_dir: str = "models/pick") -> dict:
    """part=text: the baselines only (-> baselines_path); part=latent: add the latent to them
    (and write frontier_path, default frontier.csv beside metrics_path)."""
    params = load_params(params_path)
    torch.manual_seed(params.seed)
    rows = load_rows(eval_path, params.evaluate.max_examples)
    M, name = params.stage3.M, code_name(params)
    lw = LatentWire.from_checkpoint(params, checkpoint, M, pick_dir) if part != "text" else \
        LatentWire(params, M, hidden={s: 1 for s in params.models}, pick_dir=pick_dir)  # the sender only
    sent = send_all(lw, rows, params.evaluate.batch_size)
    B = {i: len(data) for i, (data, _) in sent.items()}
    if part in ("text", "all"):
        selected = {r["id"]: lw.codec.selected_text(r) for r in rows} if params.encoder.kind == "ids" else None
        mean = sum(B.values()) / max(len(B), 1)
        metrics: dict = {"M": M, "reported_bits": 16 if name == "ids" else params.wire.bits, "equal_byte_budget": mean,
                         "wire": {name: {"bits": 16 if name == "ids" else params.wire.bits, "per_model": mean,
                                         "total": mean, "max": max(B.values(), default=0),
                                         "per_slot_max": (max(B.values(), default=0)) / M}}, "wall_s": {}}
        recall = lw.codec.pick_recall(rows, params.seed)
        if recall is not None:
            metrics["pick"] = recall
        predictions: list[dict] = []
    else:
        saved = json.loads(Path(baselines_path).read_text(encoding="utf-8"))
        metrics, predictions = saved["metrics"], saved["predictions"]
    partial = partial_folder(part, baselines_path, predictions_path)
    unit_files = unit_inputs(part, eval_path, checkpoint, baselines_path, pick_dir)
    for slot, cfg in placement.resolve(params).models.items():  # null device_map: auto placement
        t0 = time.time()
        unit = unit_path(partial, part, slot, cfg, params, unit_files)
        if load_unit(unit, slot, metrics, predictions):
            continue
        llm = load_frozen(slot, cfg, params.prompt, params.cache_dir)
        if params.evaluate.prepack:
            pack(llm.model)  # CPU: reorder the linear weights once (no-op on GPU)
        if part in ("text", "all"):
            metrics[slot] = evaluate_model(llm, rows, dataset_M(params, rows), B, params.evaluate.max_new_tokens,
                                           params.evaluate.batch_size, predictions, selected)
            metrics[slot]["embedding"] = llm.embedding_stats()
        if part in ("latent", "all"):
            lw.attach(llm)
            for ds, res in latent_model(llm, lw, rows, sent, name, metrics[slot], params, predictions).items():
                metrics[slot][ds].update(res)
                # here, not in the text part: data/eval/text_baselines.json stays as it was
                metrics[slot][ds]["m_token"]["bytes"] = m_token_bytes(llm, [r for r in rows if r["dataset"] == ds],
                                                                      dataset_M(params, rows)[ds])
            add_cis(metrics[slot], predictions, slot, f"latent_{name}", params.seed, params.evaluate.bootstrap)
        metrics["wall_s"][f"{part}/{slot}"] = round(time.time() - t0, 1)
        save_unit(unit, slot, part, metrics, predictions)
        print(f"evaluate ({part}): {slot} done in {time.time() - t0:.0f}s")
        del llm
    metrics.setdefault("peak_rss_mb", {})[part] = peak_rss_mb()  # this process, the whole part
    if part == "text":
        write_json(baselines_path, {"metrics": metrics, "predictions": predictions})
    else:
        write_jsonl(predictions_path, predictions)
        write_frontier(frontier_path or Path(metrics_path).with_name("frontier.csv"), metrics, params.models)
        write_json(metrics_path, metrics)
    return metrics


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--part", choices=("text", "latent", "all"), default="all",
                   help="text: baselines only (to --baselines); latent: add the latent to saved "
                        "baselines; all: both in one run (default)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--eval", default="data/mix/eval.jsonl", help="eval mix written by prepare-mix")
    p.add_argument("--checkpoint", default="models/stage3/best", help="latent checkpoint folder")
    p.add_argument("--baselines", default="data/eval/text_baselines.json",
                   help="text baselines + their predictions (written by --part text)")
    p.add_argument("--metrics", default="metrics/eval.json", help="metrics output (JSON)")
    p.add_argument("--predictions", default="data/eval/predictions.jsonl",
                   help="per-example predictions of every baseline and precision (JSONL)")
    p.add_argument("--pick", default="models/pick", help="the fitted pick (encoder.kind ids; default: %(default)s)")
    p.add_argument("--frontier", default=None,
                   help="F1 vs wire bytes per model x dataset x variant (CSV; default: frontier.csv "
                        "beside --metrics)")


def run(args: argparse.Namespace) -> None:
    partial = partial_folder(args.part, args.baselines, args.predictions)
    with stop_requests(at_once=True, message=f"evaluate ({args.part}): {{signal}}: finished units are "
                                             f"kept in {partial}, rerun to resume"):
        main(args.params, args.eval, args.metrics, args.predictions, args.part, args.baselines,
             args.checkpoint, args.frontier, args.pick)

"""The `evaluate` stage: the latent, decoded from its payload, beside the text baselines
(baselines.py, the `text-baselines` stage) -> metrics/eval.json.

    python -m latentwire evaluate --params params.yaml --checkpoint models/stage3/best --baselines data/eval/text_baselines.json

Every eval example is sent once (`send_all`: the checkpoint's codec; for encoder.kind ids the
fitted pick) and packed; its payload must weigh what the text stage's equal-byte budget measured.
Each model slot then reads every payload through `Receiver` (receiver.py, the one receive path:
unpack -> the model's adapter -> at most M positions, the question beside them as text). Reported:
per model x dataset F1/EM of each variant, the payload's measured bytes (mean, max), positions,
how exactly the slots arrive, paired bootstrap CIs of latent minus each baseline (per dataset
and pooled; clustered by title), and, carried over from the text stage, the pick's recall. Beside
metrics/eval.json it writes metrics/frontier.csv (model, dataset, variant, bytes, f1, em) for
`dvc plots` and `latentwire plots`.

Resume: each finished model slot is a unit in data/eval/partial/latent (units.py); a killed run,
rerun, redoes only the unfinished slot. SIGTERM / SIGINT stop at once with 143 / 130.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import baselines, payload, placement, stats
from .baselines import FULL, CUTS, by_dataset, code_name, dataset_M, m_token_bytes, score
from .config import Params, load_params, sender_params
from .io import peak_rss_mb, write_json, write_jsonl, write_text
from .latent import LatentWire
from .llm import FrozenLLM, load_frozen
from .metrics import best_f1
from .packed import pack
from .receiver import Receiver
from .signals import stop_requests
from .units import load_rows, load_unit, merge_predictions, save_unit, unit_path

BASES = FULL + CUTS


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
    """Every answer decoded from its packed payload (Receiver.read, Receiver.answer); per dataset
    F1/EM, the payload's measured bytes, the positions the model reads, and the codec's per-slot
    diagnostics. Folds the answers into `predictions`."""
    rec, bs, result = Receiver(llm), params.evaluate.batch_size, {}
    M_of = dataset_M(params, rows)
    variant = f"latent_{name}"
    for ds, ds_rows in by_dataset(rows).items():
        preds, n_pos, diag, flat = [], [], defaultdict(float), []
        for i in tqdm(range(0, len(ds_rows), bs), desc=f"{llm.slot}/{ds}/latent", leave=False, disable=None):
            batch = ds_rows[i:i + bs]
            latents, softs = zip(*(rec.read(lw.codec, sent[r["id"]][0]) for r in batch))
            n_pos += [len(s) for s in softs]
            flat += [s.float().reshape(-1) for s in softs]
            for d in lw.codec.diagnose(llm.slot, llm, latents, [sent[r["id"]][1] for r in batch], softs):
                for k, v in d.items():
                    diag[k] = max(diag[k], v) if k.startswith("max") else diag[k] + v
            preds += rec.answer(softs, [r["question"] for r in batch], params.evaluate.max_new_tokens)
        merge_predictions(predictions, [
            {"model": llm.slot, "dataset": ds, "id": r["id"], "title": r.get("title", r["id"]),
             "question": r["question"], "answers": r["answers"],
             f"pred_{variant}": p, f"f1_{variant}": best_f1(p, r["answers"])} for r, p in zip(ds_rows, preds)])
        sizes = [len(sent[r["id"]][0]) for r in ds_rows]
        mean_bytes, ctx = sum(sizes) / len(sizes), base[ds]["context_bytes"]
        n_ids = diag.pop("slots", 0)  # the codebook ids sent (kind values: the slots)
        n_slots = max(n_ids, 1)
        result[ds] = {
            variant: {**score(preds, ds_rows), "distinct_ratio": len(set(preds)) / len(preds)},
            "bytes": {name: {"per_model": mean_bytes, "max": max(sizes), "total": mean_bytes,
                             "per_slot": sum(sizes) / max(sum(n_pos), 1), "text_over_wire": ctx / mean_bytes,
                             "text_over_wire_total": ctx / mean_bytes}},
            "positions": {"latent_mean": sum(n_pos) / len(n_pos), "latent_max": max(n_pos), "M": M_of[ds],
                          "tokens_per_slot": n_ids / max(sum(n_pos), 1),  # ids (or slots) a receiver position
                          "text_context_tokens": base[ds].get("context_tokens"),
                          "text_over_latent": (base[ds]["context_tokens"] / (sum(n_pos) / len(n_pos))
                                               if base[ds].get("context_tokens") else None)},
            "slots": {k: (v if k.startswith("max") else v / n_slots) for k, v in diag.items()},
            "soft_pairwise_cosine": soft_cosine(flat),
            "tokens_over_M": base[ds]["prompt_tokens"] / M_of[ds]}
    return result


def check_budget(base: dict, rows: list[dict], sent: dict) -> None:
    """The equal-byte baselines were cut to the payloads the text stage measured; refuse to
    stand the latent beside them if this stage's payloads weigh otherwise."""
    for ds, ds_rows in by_dataset(rows).items():
        mean = sum(len(sent[r["id"]][0]) for r in ds_rows) / len(ds_rows)
        budget = base[ds].get("equal_byte", {}).get("bytes")
        if budget is not None and abs(mean - budget) > 1e-6:
            raise ValueError(f"{ds}: the payloads weigh {mean:.2f} B on average but the text baselines' equal-byte "
                             f"budget is {budget:.2f} B: they were measured on another pick or M; rerun "
                             "text-baselines (`dvc repro`)")

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


def main(params_path: str = "params.yaml", eval_path: str = "data/mix/eval.jsonl",
         metrics_path: str = "metrics/eval.json",
         predictions_path: str = "data/eval/predictions.jsonl", part: str = "all",
         baselines_path: str = "data/eval/text_baselines.json", checkpoint: str = "models/stage3/best",
         frontier_path: str | None = None, pick_dir: str = "models/pick") -> dict:
    """part=latent: the latent beside the saved baselines (-> metrics_path, predictions_path and
    frontier_path, default frontier.csv beside metrics_path); part=text: the text stage alone
    (baselines.main -> baselines_path); part=all: both, in one process."""
    if part in ("text", "all"):
        text = baselines.main(params_path, eval_path, baselines_path, pick_dir)
        if part == "text":
            return text
    params = load_params(params_path)
    torch.manual_seed(params.seed)
    rows = load_rows(eval_path, params.evaluate.max_examples)
    M, name = params.stage3.M, code_name(params)
    lw = LatentWire.from_checkpoint(params, checkpoint, M, pick_dir)
    sent = send_all(lw, rows, params.evaluate.batch_size)
    saved = json.loads(Path(baselines_path).read_text(encoding="utf-8"))
    metrics, predictions = saved["metrics"], saved["predictions"]
    folder = Path(predictions_path).with_name("partial") / "latent"
    files = [eval_path, Path(checkpoint) / "model.safetensors", Path(checkpoint) / "meta.json", baselines_path,
             *[f for f in [Path(pick_dir) / "pick.safetensors", Path(pick_dir) / "meta.json"] if f.is_file()]]
    for slot, cfg in placement.resolve(params).models.items():  # null device_map: auto placement
        check_budget(metrics[slot], rows, sent)
        key = {"model": dataclasses.asdict(cfg), "M": M, "seed": params.seed, "slots": list(params.models),
               "sender": sender_params(params),
               **{k: dataclasses.asdict(getattr(params, k)) for k in ("prompt", "pick", "evaluate")}}
        unit = unit_path(folder, slot, key, files)
        done = load_unit(unit)
        if done is None:
            t0 = time.time()
            llm = load_frozen(slot, cfg, params.prompt, params.cache_dir)
            if params.evaluate.prepack:
                pack(llm.model)  # CPU: reorder the linear weights once (no-op on GPU)
            lw.attach(llm)
            preds: list[dict] = []
            res = latent_model(llm, lw, rows, sent, name, metrics[slot], params, preds)
            for ds in res:  # here, not in the text stage: its file stays as it was
                res[ds]["m_token_bytes"] = m_token_bytes(llm, [r for r in rows if r["dataset"] == ds],
                                                         dataset_M(params, rows)[ds])
            done = {"metrics": res, "predictions": preds, "wall_s": round(time.time() - t0, 1)}
            save_unit(unit, done)
            print(f"evaluate: {slot} done in {time.time() - t0:.0f}s")
            del llm
        for ds, res in done["metrics"].items():
            metrics[slot][ds]["m_token"]["bytes"] = res.pop("m_token_bytes")
            metrics[slot][ds].update(res)
        merge_predictions(predictions, done["predictions"])
        metrics["wall_s"][f"latent/{slot}"] = done["wall_s"]
        add_cis(metrics[slot], predictions, slot, f"latent_{name}", params.seed, params.evaluate.bootstrap)
    metrics.setdefault("peak_rss_mb", {})["latent"] = peak_rss_mb()  # this process, the whole part
    write_jsonl(predictions_path, predictions)
    write_frontier(frontier_path or Path(metrics_path).with_name("frontier.csv"), metrics, params.models)
    write_json(metrics_path, metrics)
    return metrics


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--part", choices=("latent", "all"), default="latent",
                   help="latent: the latent beside the saved --baselines (the evaluate stage, default); "
                        "all: first the text baselines (the text-baselines stage, `baselines`), then the latent")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--eval", default="data/mix/eval.jsonl", help="eval mix written by prepare-mix")
    p.add_argument("--checkpoint", default="models/stage3/best", help="latent checkpoint folder")
    p.add_argument("--baselines", default="data/eval/text_baselines.json",
                   help="text baselines + their predictions (written by the `baselines` command)")
    p.add_argument("--metrics", default="metrics/eval.json", help="metrics output (JSON)")
    p.add_argument("--predictions", default="data/eval/predictions.jsonl",
                   help="per-example predictions of every baseline and precision (JSONL)")
    p.add_argument("--pick", default="models/pick", help="the fitted pick (encoder.kind ids; default: %(default)s)")
    p.add_argument("--frontier", default=None,
                   help="F1 vs wire bytes per model x dataset x variant (CSV; default: frontier.csv "
                        "beside --metrics)")


def run(args: argparse.Namespace) -> None:
    partial = Path(args.predictions).with_name("partial") / "latent"
    with stop_requests(at_once=True, message=f"evaluate: {{signal}}: finished units are "
                                             f"kept in {partial}, rerun to resume"):
        main(args.params, args.eval, args.metrics, args.predictions, args.part, args.baselines,
             args.checkpoint, args.frontier, args.pick)

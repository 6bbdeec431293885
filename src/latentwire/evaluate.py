"""Evaluation: F1/EM per model x dataset, the latent beside three text baselines.

Two DVC stages share this module: `text-baselines` (expensive, reruns only when the models,
prompt, eval data or byte budget change) and `evaluate` (the latent at fp16/int8/int4, merged
with the baselines into metrics/eval.json).

Baselines, all with the same prompt template and greedy decoding:
  text        the full context;
  m_token     the context cut to M tokens of that model's tokenizer (M = stage3.M);
  equal_byte  the context cut to B UTF-8 bytes, B = the latent's wire bytes per model.
The question is always sent whole, so both cut baselines get a little more than their budget.
Beside metrics/eval.json the latent part writes metrics/frontier.csv (model, dataset, variant,
bytes, f1, em: one row per model x dataset x variant) for `dvc plots` and `latentwire plots`.

Resume: each finished (part, model slot) unit, its metrics and predictions, is saved at once to
data/eval/partial/<part>/<slot>-<hash>.json (see `unit_path`); a killed run, rerun, reuses the
finished units and redoes only the unfinished slot. SIGTERM / SIGINT stop at once with 143 / 130
(a unit is too long to wait for; the finished ones are already on disk).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from . import placement
from .config import ModelConfig, Params, load_params
from .io import package_sha256, read_jsonl, remove_temp_files, write_json, write_jsonl, write_text
from .latent import LatentWire, Receiver
from .llm import FrozenLLM, load_frozen
from .losses import pairwise_cosine
from .metrics import best_em, best_f1
from .signals import stop_requests
from .wire import cut_utf8, wire_bytes

PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}
VARIANTS = ("text", "m_token", "equal_byte", *(f"latent_{name}" for name in PRECISIONS))


def clean(text: str) -> str:
    """The answer is the first non-empty line of the generation."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


@torch.inference_mode()
def generate_text(llm: FrozenLLM, prompts: list[str], max_new_tokens: int, batch_size: int,
                  desc: str = "") -> list[str]:
    """Batched greedy generation, longest prompts first to limit padding.

    Every template prompt opens with the same prefix (chat scaffolding, instruction, one-shot
    example: about a third of a full-text prompt's tokens). As in `Receiver`, its key/value
    cache is computed once and copied per batch, and each batch runs only its prompts' rest,
    padded between the prefix and the rest (the attention mask skips the pads; positions
    follow the mask). A batch whose prompts do not all tokenise to the prefix's ids first
    runs in full, left-padded."""
    tok = llm.tokenizer
    rec = Receiver(llm)
    P = len(rec.prefix_ids)
    prefix = rec.prefix_ids.tolist()
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    out: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False,
                      disable=None, unit="batch"):
        idx = order[start:start + batch_size]
        cached = P > 0 and all(ids[i][:P] == prefix and len(ids[i]) > P for i in idx)
        head = prefix if cached else []
        rest = [ids[i][len(head):] for i in idx]
        T = max(len(r) for r in rest)
        input_ids = torch.full((len(idx), len(head) + T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for j, r in enumerate(rest):
            input_ids[j, :len(head)], mask[j, :len(head)] = torch.tensor(head, dtype=torch.long), 1
            input_ids[j, len(head) + T - len(r):], mask[j, len(head) + T - len(r):] = torch.tensor(r), 1
        extra = {"cache": rec.cache(len(idx))} if cached else {}
        gen = llm.model.generate(input_ids=input_ids.to(llm.device), attention_mask=mask.to(llm.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=llm.stop_ids(),
                                 pad_token_id=tok.pad_token_id, **extra)
        texts = tok.batch_decode(gen[:, input_ids.shape[1]:], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = clean(t)
    return out


def cut_tokens(llm: FrozenLLM, text: str, n: int) -> str:
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return llm.tokenizer.decode(ids)


def text_variants(llm: FrozenLLM, row: dict, M: int, B: int) -> dict[str, str]:
    """The prompt of each text baseline for one example."""
    t, q, c = llm.template, row["question"], row["context"]
    return {"text": t.render(c, q), "m_token": t.render(cut_tokens(llm, c, M), q),
            "equal_byte": t.render(cut_utf8(c, B), q)}


def score(preds: list[str], rows: list[dict]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {"f1": sum(best_f1(p, r["answers"]) for p, r in zip(preds, rows)) / n,
            "em": sum(best_em(p, r["answers"]) for p, r in zip(preds, rows)) / n}


def by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["dataset"]].append(r)
    return dict(sorted(out.items()))


def evaluate_model(llm: FrozenLLM, rows: list[dict], M: int, B: int, max_new_tokens: int,
                   batch_size: int, predictions: list[dict]) -> dict:
    """The three text baselines for one model, per dataset; appends per-example predictions."""
    result = {}
    for ds, ds_rows in by_dataset(rows).items():
        variants = [text_variants(llm, r, M, B) for r in ds_rows]
        bodies = [llm.template.body(r["context"], r["question"]) for r in ds_rows]
        res = {"n": len(ds_rows),
               "prompt_bytes": sum(len(b.encode("utf-8")) for b in bodies) / len(bodies),
               "prompt_tokens": sum(len(llm.tokenizer(b, add_special_tokens=False)["input_ids"])
                                    for b in bodies) / len(bodies)}
        preds = {}
        for name in ("text", "m_token", "equal_byte"):
            preds[name] = generate_text(llm, [v[name] for v in variants], max_new_tokens,
                                        batch_size, desc=f"{llm.slot}/{ds}/{name}")
            res[name] = score(preds[name], ds_rows)
        res["m_token"]["tokens"], res["equal_byte"]["bytes"] = M, B
        result[ds] = res
        for i, r in enumerate(ds_rows):
            predictions.append({"model": llm.slot, "dataset": ds, "id": r["id"],
                                "question": r["question"], "answers": r["answers"],
                                **{f"pred_{k}": v[i] for k, v in preds.items()},
                                **{f"f1_{k}": best_f1(v[i], r["answers"]) for k, v in preds.items()}})
    return result


def m_token_bytes(llm: FrozenLLM, rows: list[dict], M: int) -> float:
    """Mean UTF-8 bytes of the M-token context cut (the m_token baseline's bytes on the frontier)."""
    return sum(len(cut_tokens(llm, r["context"], M).encode("utf-8")) for r in rows) / max(len(rows), 1)


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Mean cosine between different examples' flattened Z: near 1 means one code for all."""
    return pairwise_cosine(z).item() if z.shape[0] >= 2 else float("nan")


@torch.inference_mode()
def encode_all(lw: LatentWire, template, rows: list[dict], bs: int) -> dict:
    """The sender, once for every receiver: per dataset Z, the predicted hint and the number
    of prompts the encoder had to cut."""
    out = {}
    for ds, ds_rows in by_dataset(rows).items():
        texts = [template.body(r["context"], r["question"]) for r in ds_rows]
        zs, hints, cut = [], [], 0
        for i in tqdm(range(0, len(texts), bs), desc=f"encode/{ds}", leave=False, disable=None):
            z, hint_logits, n_cut = lw.encode(texts[i:i + bs])
            zs.append(z)
            hints.append(hint_logits.argmax(-1))
            cut += sum(c > 0 for c in n_cut)
        out[ds] = (torch.cat(zs), torch.cat(hints), cut)
    return out


@torch.inference_mode()
def latent_model(llm: FrozenLLM, lw: LatentWire, rows: list[dict], encoded: dict, base: dict,
                 wire: dict, params: Params, predictions: list[dict]) -> dict:
    """Latent F1/EM at each precision per dataset, byte accounting and collapse diagnostics."""
    rec, bs, result = Receiver(llm), params.evaluate.batch_size, {}
    pred_rows = {(p["dataset"], p["id"]): p for p in predictions if p["model"] == llm.slot}
    for ds, ds_rows in by_dataset(rows).items():
        z, hint, cut = encoded[ds]
        res = {}
        for name, bits in PRECISIONS.items():
            preds = []
            for i in range(0, len(ds_rows), bs):
                soft = lw.soft_tokens(z[i:i + bs], hint[i:i + bs], llm.slot, bits)
                preds += [clean(t) for t in rec.generate(soft, params.evaluate.max_new_tokens)]
            res[f"latent_{name}"] = {**score(preds, ds_rows), "distinct_ratio": len(set(preds)) / len(preds)}
            for r, p in zip(ds_rows, preds):
                row = pred_rows.setdefault((ds, r["id"]), {"model": llm.slot, "dataset": ds, "id": r["id"],
                                                           "question": r["question"], "answers": r["answers"]})
                row[f"pred_latent_{name}"], row[f"f1_latent_{name}"] = p, best_f1(p, r["answers"])
        text_bytes, text_tokens = base[ds]["prompt_bytes"], base[ds]["prompt_tokens"]
        res["bytes"] = {name: {"per_model": wire[bits]["per_model"], "total": wire[bits]["total"],
                               "text_over_wire": text_bytes / wire[bits]["per_model"],
                               "text_over_wire_total": text_bytes / wire[bits]["total"]}
                        for name, bits in PRECISIONS.items()}
        res["tokens_over_M"] = text_tokens / lw.M
        res["z_pairwise_cosine"] = mean_pairwise_cosine(z)
        res["encoder_bytes_cut"] = cut
        result[ds] = res
    predictions[:] = [p for p in predictions if p["model"] != llm.slot] + list(pred_rows.values())
    return result


def frontier_rows(metrics: dict, slots) -> list[dict]:
    """One row per model x dataset x variant: the bytes it sends and its F1/EM.

    bytes: latent_* the per-model wire bytes at that precision; text the mean prompt bytes
    (question + context); equal_byte the byte budget of its context cut; m_token the mean
    UTF-8 bytes of its M-token context cut (empty where metrics lack that count)."""
    rows = []
    for slot in slots:
        for ds, res in sorted(metrics[slot].items()):
            if not isinstance(res, dict) or "text" not in res:
                continue  # "embedding" and other per-model entries
            for v in VARIANTS:
                if v not in res:
                    continue
                if v.startswith("latent_"):
                    nbytes = res["bytes"][v.removeprefix("latent_")]["per_model"]
                elif v == "text":
                    nbytes = res["prompt_bytes"]
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


def unit_inputs(part: str, eval_path, checkpoint, baselines_path) -> list[Path]:
    """The files a unit's numbers come from: the eval file; the checkpoint unless part is text;
    the saved baselines for part latent."""
    ckpt = [] if part == "text" else [Path(checkpoint) / "model.safetensors", Path(checkpoint) / "meta.json"]
    return [Path(eval_path), *ckpt, *([Path(baselines_path)] if part == "latent" else [])]


def unit_path(folder: Path, part: str, slot: str, cfg: ModelConfig, params: Params, files: list) -> Path:
    """<folder>/<slot>-<hash>.json for one (part, model slot) unit. The hash covers what the
    unit's numbers depend on: the slot's resolved model config, the prompt, wire, encoder, M,
    evaluate params, seed and slot list, and the sha256 of `files` (the eval file, for the
    latent also the checkpoint and the saved baselines) and of this package's code."""
    h = hashlib.sha256(json.dumps(
        {"part": part, "slot": slot, "model": dataclasses.asdict(cfg), "slots": list(params.models),
         **{k: dataclasses.asdict(getattr(params, k)) for k in ("prompt", "wire", "encoder", "evaluate")},
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
         frontier_path: str | None = None) -> dict:
    """part=text: the baselines only (-> baselines_path); part=latent: add the latent to them.

    The latent part also writes frontier_path (default: frontier.csv beside metrics_path)."""
    params = load_params(params_path)
    torch.manual_seed(params.seed)
    rows = load_rows(eval_path, params.evaluate.max_examples)
    M = params.stage3.M
    wire = {bits: wire_bytes(M, params.wire, bits, n_models=len(params.models)) for bits in (16, 8, 4)}
    B = wire[params.wire.bits]["per_model"]
    if part in ("text", "all"):
        metrics: dict = {"M": M, "reported_bits": params.wire.bits, "equal_byte_budget": B,
                         "wire": {name: wire[bits] for name, bits in PRECISIONS.items()}, "wall_s": {}}
        predictions: list[dict] = []
    else:
        saved = json.loads(Path(baselines_path).read_text(encoding="utf-8"))
        metrics, predictions = saved["metrics"], saved["predictions"]
    lw, encoded, partial = None, None, partial_folder(part, baselines_path, predictions_path)
    unit_files = unit_inputs(part, eval_path, checkpoint, baselines_path)
    models = placement.resolve(params).models  # null device_map: auto placement
    fm = params.encoder.feature_model if params.encoder.kind != "bytes" else None
    if fm:  # the feature model first: it encodes for every receiver
        models = {s: models[s] for s in sorted(models, key=lambda s: s != fm)}
    for slot, cfg in models.items():
        t0 = time.time()
        unit = unit_path(partial, part, slot, cfg, params, unit_files)
        if load_unit(unit, slot, metrics, predictions):
            continue
        llm = load_frozen(slot, cfg, params.prompt, params.cache_dir)
        if part in ("text", "all"):
            metrics[slot] = evaluate_model(llm, rows, M, B, params.evaluate.max_new_tokens,
                                           params.evaluate.batch_size, predictions)
            metrics[slot]["embedding"] = llm.embedding_stats()
        if part in ("latent", "all"):
            if lw is None:
                meta = json.loads((Path(checkpoint) / "meta.json").read_text(encoding="utf-8"))
                lw = LatentWire(params, M, hidden=meta["hidden"], target_norm={s: 1.0 for s in params.models})
                lw.load(checkpoint)
                lw.eval()
                if fm:  # the feature model's own unit may have been reused: then load it here
                    lw.attach(llm if slot == fm else load_frozen(fm, models[fm], params.prompt,
                                                                 params.cache_dir))
                encoded = encode_all(lw, llm.template, rows, params.evaluate.batch_size)
                lw.featurizer = None  # free the feature model
                if params.encoder.kind == "tokens":
                    lw.encoder.llm = None
            for ds, res in latent_model(llm, lw, rows, encoded, metrics[slot], wire, params,
                                        predictions).items():
                metrics[slot][ds].update(res)
                # here, not in the text part: data/eval/text_baselines.json stays as it was
                metrics[slot][ds]["m_token"]["bytes"] = m_token_bytes(llm, [r for r in rows if r["dataset"] == ds], M)
        metrics["wall_s"][f"{part}/{slot}"] = round(time.time() - t0, 1)
        save_unit(unit, slot, part, metrics, predictions)
        print(f"evaluate ({part}): {slot} done in {time.time() - t0:.0f}s")
        del llm
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
    p.add_argument("--frontier", default=None,
                   help="F1 vs wire bytes per model x dataset x variant (CSV; default: frontier.csv "
                        "beside --metrics)")


def run(args: argparse.Namespace) -> None:
    partial = partial_folder(args.part, args.baselines, args.predictions)
    with stop_requests(at_once=True, message=f"evaluate ({args.part}): {{signal}}: finished units are "
                                             f"kept in {partial}, rerun to resume"):
        main(args.params, args.eval, args.metrics, args.predictions, args.part, args.baselines,
             args.checkpoint, args.frontier)

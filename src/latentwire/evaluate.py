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
from . import payload, pick, stats
from .sender import Sender
from .signals import stop_requests
from .wire import cut_utf8, wire_bytes

PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}
SELECTED = ("selected_text", "selected_equal_byte")  # encoder.kind ids: the pick as plain text
VARIANTS = ("text", "m_token", "equal_byte", *SELECTED, "latent_ids", *(f"latent_{name}" for name in PRECISIONS))


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


def text_variants(llm: FrozenLLM, row: dict, M: int, B: int, selected: str | None = None) -> dict[str, str]:
    """The prompt of each text baseline for one example; with `selected` (the picked tokens
    as text, encoder.kind ids) also selected_text (cut to M of this model's tokens) and
    selected_equal_byte (cut to B bytes)."""
    t, q, c = llm.template, row["question"], row["context"]
    out = {"text": t.render(c, q), "m_token": t.render(cut_tokens(llm, c, M), q),
           "equal_byte": t.render(cut_utf8(c, B), q)}
    if selected is not None:
        out["selected_text"] = t.render(cut_tokens(llm, selected, M), q)
        out["selected_equal_byte"] = t.render(cut_utf8(selected, B), q)
    return out


def score(preds: list[str], rows: list[dict]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {"f1": sum(best_f1(p, r["answers"]) for p, r in zip(preds, rows)) / n,
            "em": sum(best_em(p, r["answers"]) for p, r in zip(preds, rows)) / n}


def by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["dataset"]].append(r)
    return dict(sorted(out.items()))


def evaluate_model(llm: FrozenLLM, rows: list[dict], M: int, B, max_new_tokens: int,
                   batch_size: int, predictions: list[dict], selected: dict | None = None) -> dict:
    """The text baselines for one model, per dataset; appends per-example predictions.
    B: the equal-byte budget, one int or per example id (the measured payload, kind ids);
    selected: the picked text per example id (kind ids: adds the SELECTED baselines)."""
    result = {}
    budget = (lambda r: B[r["id"]]) if isinstance(B, dict) else (lambda r: B)  # noqa: E731
    names = ("text", "m_token", "equal_byte") + (SELECTED if selected is not None else ())
    for ds, ds_rows in by_dataset(rows).items():
        variants = [text_variants(llm, r, M, budget(r), selected and selected[r["id"]]) for r in ds_rows]
        bodies = [llm.template.body(r["context"], r["question"]) for r in ds_rows]
        res = {"n": len(ds_rows),
               "prompt_bytes": sum(len(b.encode("utf-8")) for b in bodies) / len(bodies),
               "prompt_tokens": sum(len(llm.tokenizer(b, add_special_tokens=False)["input_ids"])
                                    for b in bodies) / len(bodies)}
        preds = {}
        for name in names:
            preds[name] = generate_text(llm, [v[name] for v in variants], max_new_tokens,
                                        batch_size, desc=f"{llm.slot}/{ds}/{name}")
            res[name] = score(preds[name], ds_rows)
        res["m_token"]["tokens"] = M
        res["equal_byte"]["bytes"] = sum(budget(r) for r in ds_rows) / len(ds_rows)
        res["context_bytes"] = sum(len(r["context"].encode("utf-8")) for r in ds_rows) / len(ds_rows)
        res["question_bytes"] = sum(len(r["question"].encode("utf-8")) for r in ds_rows) / len(ds_rows)
        if selected is not None:
            cuts = [cut_tokens(llm, selected[r["id"]], M) for r in ds_rows]
            res["selected_text"]["bytes"] = sum(len(c.encode("utf-8")) for c in cuts) / len(cuts)
            res["selected_text"]["tokens"] = M
            res["selected_equal_byte"]["bytes"] = res["equal_byte"]["bytes"]
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


@torch.inference_mode()
def latent_ids_model(llm: FrozenLLM, lw: LatentWire, rows: list[dict], sent: dict, codebook: int,
                     base: dict, params: Params, predictions: list[dict]) -> dict:
    """encoder.kind ids: every answer decoded from the packed payload bytes (unpack -> ids ->
    this model's adapter -> at most M positions, the question beside them as text). Per
    dataset: F1/EM, the measured payload bytes, positions, and how exactly the slots arrive."""
    rec, bs, result = Receiver(llm), params.evaluate.batch_size, {}
    adapter, split = lw.adapters[llm.slot], lw.split[llm.slot]
    E = torch.nn.functional.normalize(llm.model.get_input_embeddings().weight.detach().float(), dim=-1)
    pred_rows = {(p["dataset"], p["id"]): p for p in predictions if p["model"] == llm.slot}
    for ds, ds_rows in by_dataset(rows).items():
        preds, n_pos, exact, readable, n_split, n_slots = [], [], 0, 0, 0, 0
        for i in tqdm(range(0, len(ds_rows), bs), desc=f"{llm.slot}/{ds}/latent", leave=False, disable=None):
            rests = []
            for r in ds_rows[i:i + bs]:
                wire_bytes_, picked = sent[r["id"]]
                ids = torch.tensor(payload.unpack(wire_bytes_, codebook).ids, dtype=torch.long)
                soft = adapter(ids)
                rests.append(rec.rest(soft, r["question"]))
                n_pos.append(len(ids))
                n_slots += len(ids)
                exact += sum(a == b for a, b in zip(ids.tolist(), picked))
                n_split += int((split[ids] > 1).sum())
                if len(ids):  # the model's nearest token to each soft token spells the sent string
                    near = (torch.nn.functional.normalize(soft.float(), dim=-1) @ E.T).argmax(-1).tolist()
                    readable += sum(llm.tokenizer.decode([a]) == lw.codebook_strings[b]
                                    for a, b in zip(near, ids.tolist()))
            preds += [clean(t) for t in rec.generate(rests, params.evaluate.max_new_tokens)]
        for r, p in zip(ds_rows, preds):
            row = pred_rows.setdefault((ds, r["id"]), {"model": llm.slot, "dataset": ds, "id": r["id"],
                                                       "question": r["question"], "answers": r["answers"]})
            row["pred_latent_ids"], row["f1_latent_ids"] = p, best_f1(p, r["answers"])
        sizes = [len(sent[r["id"]][0]) for r in ds_rows]
        mean_bytes = sum(sizes) / len(sizes)
        ctx = base[ds]["context_bytes"]
        result[ds] = {
            "latent_ids": {**score(preds, ds_rows), "distinct_ratio": len(set(preds)) / len(preds)},
            "bytes": {"ids": {"per_model": mean_bytes, "max": max(sizes), "total": mean_bytes,
                              "per_slot": sum(sizes) / max(sum(n_pos), 1),
                              "text_over_wire": ctx / mean_bytes, "text_over_wire_total": ctx / mean_bytes}},
            "positions": {"latent_mean": sum(n_pos) / len(n_pos), "latent_max": max(n_pos), "M": lw.M},
            "slots": {"exact": exact / max(n_slots, 1), "readable": readable / max(n_slots, 1),
                      "split": n_split / max(n_slots, 1)},
            "tokens_over_M": base[ds]["prompt_tokens"] / lw.M}
    predictions[:] = [p for p in predictions if p["model"] != llm.slot] + list(pred_rows.values())
    return result


def pick_metrics(sender: Sender, rows: list[dict], M: int, seed: int) -> dict:
    """Per dataset: pick_recall (the gold answer wholly inside one picked span) beside the same
    figure for the M-token cut, the lexical prior alone and a random M-token window."""
    out: dict[str, dict] = {}
    for ds, ds_rows in by_dataset(rows).items():
        hits = defaultdict(int)
        for k, r in enumerate(ds_rows):
            p, c, a = sender.pick(r["question"], r["context"]), r["context"], r["answers"]
            T = len(p.read.ids)
            for name, spans in (("pick_recall", p.spans), ("m_token_cut", [(0, min(M, T))] if T else []),
                                ("lexical", pick.lexical_spans(p.read, M)),
                                ("random", pick.random_spans(T, M, seed + k))):
                hits[name] += pick.contains_answer(pick.span_texts(p.read, c, spans), a)
        out[ds] = {"n": len(ds_rows), **{k: v / len(ds_rows) for k, v in hits.items()}}
    return out


def add_cis(per_model: dict, predictions: list[dict], slot: str, seed: int) -> None:
    """Paired bootstrap 95 % CIs of latent minus each baseline's F1, per dataset (under
    <dataset>.ci) and pooled over datasets (under pooled)."""
    preds = [p for p in predictions if p["model"] == slot and "f1_latent_ids" in p]
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for p in preds:
        by_ds[p["dataset"]].append(p)
    pooled = {}
    for base in ("text", "m_token", "equal_byte", *SELECTED):
        diffs = {ds: [p["f1_latent_ids"] - p[f"f1_{base}"] for p in ps] for ds, ps in sorted(by_ds.items())}
        for ds, d in diffs.items():
            per_model[ds].setdefault("ci", {})[base] = stats.paired_ci({ds: d}, seed)
        pooled[base] = stats.paired_ci(diffs, seed)
    per_model["pooled"] = {"n": len(preds), "latent_ids_f1": sum(p["f1_latent_ids"] for p in preds) / max(len(preds), 1),
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
            for v in VARIANTS:
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


def unit_inputs(part: str, eval_path, checkpoint, baselines_path, pick_dir=None) -> list[Path]:
    """The files a unit's numbers come from: the eval file; the checkpoint unless part is text;
    the saved baselines for part latent; the fitted pick (kind ids)."""
    ckpt = [] if part == "text" else [Path(checkpoint) / "model.safetensors", Path(checkpoint) / "meta.json"]
    pick_files = [Path(pick_dir) / "pick.safetensors"] if pick_dir else []
    return [Path(eval_path), *ckpt, *([Path(baselines_path)] if part == "latent" else []), *pick_files]


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
         frontier_path: str | None = None, pick_dir: str = "models/pick") -> dict:
    """part=text: the baselines only (-> baselines_path); part=latent: add the latent to them.

    The latent part also writes frontier_path (default: frontier.csv beside metrics_path)."""
    params = load_params(params_path)
    torch.manual_seed(params.seed)
    rows = load_rows(eval_path, params.evaluate.max_examples)
    M = params.stage3.M
    ids_kind = params.encoder.kind == "ids"
    sender = sent = selected = None
    if ids_kind:  # every example's payload, once: the equal-byte budget is its measured length
        sender = Sender.load(params, pick_dir, M)
        sent = {}
        for r in tqdm(rows, desc="send", leave=False, disable=None):
            p = sender.pick(r["question"], r["context"])
            sent[r["id"]] = (payload.pack(payload.Latent(payload.KIND_IDS, 16, None, ids=p.ids), sender.codebook), p.ids)
        selected = {i: sender.decode(ids) for i, (_, ids) in sent.items()}
        B = {i: len(b) for i, (b, _) in sent.items()}
        mean = sum(B.values()) / max(len(B), 1)
        wire = {"ids": {"bits": 16, "per_slot_max": 2 + (payload.HEADER + payload.TRAILER) / M,
                        "per_model": mean, "total": mean, "max": max(B.values(), default=0)}}
        reported = 16
    else:
        wire_by_bits = {bits: wire_bytes(M, params.wire, bits, n_models=len(params.models)) for bits in (16, 8, 4)}
        B = wire_by_bits[params.wire.bits]["per_model"]
        wire = {name: wire_by_bits[bits] for name, bits in PRECISIONS.items()}
        reported = params.wire.bits
    if part in ("text", "all"):
        metrics: dict = {"M": M, "reported_bits": reported,
                         "equal_byte_budget": wire["ids"]["per_model"] if ids_kind else B, "wire": wire, "wall_s": {}}
        if ids_kind:
            metrics["pick"] = pick_metrics(sender, rows, M, params.seed)
        predictions: list[dict] = []
    else:
        saved = json.loads(Path(baselines_path).read_text(encoding="utf-8"))
        metrics, predictions = saved["metrics"], saved["predictions"]
    lw, encoded, partial = None, None, partial_folder(part, baselines_path, predictions_path)
    unit_files = unit_inputs(part, eval_path, checkpoint, baselines_path, pick_dir if ids_kind else None)
    models = placement.resolve(params).models  # null device_map: auto placement
    fm = params.encoder.feature_model if params.encoder.kind in ("lm", "tokens") else None
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
                                           params.evaluate.batch_size, predictions, selected)
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
                if not ids_kind:
                    encoded = encode_all(lw, llm.template, rows, params.evaluate.batch_size)
                lw.featurizer = None  # free the feature model
                if params.encoder.kind == "tokens":
                    lw.encoder.llm = None
            if ids_kind:
                lw.set_table(sender.tokenizer, llm)
                lw.codebook_strings = [sender.tokenizer.decode([i]) for i in range(len(sender.tokenizer))]
                latent = latent_ids_model(llm, lw, rows, sent, sender.codebook, metrics[slot], params, predictions)
            else:
                latent = latent_model(llm, lw, rows, encoded, metrics[slot], wire_by_bits, params, predictions)
            for ds, res in latent.items():
                metrics[slot][ds].update(res)
                # here, not in the text part: data/eval/text_baselines.json stays as it was
                metrics[slot][ds]["m_token"]["bytes"] = m_token_bytes(llm, [r for r in rows if r["dataset"] == ds], M)
            if ids_kind:
                add_cis(metrics[slot], predictions, llm.slot, params.seed)
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

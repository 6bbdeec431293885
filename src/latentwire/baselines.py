"""The text baselines: what each model answers when it reads (a cut of) the context as text,
and the `text-baselines` stage that measures them.

    python -m latentwire baselines --params params.yaml --eval data/mix/eval.jsonl --out data/eval/text_baselines.json

Every variant has the same template and greedy decoding; only the context part differs:
  text                 the full context;
  m_token              the context cut to M tokens of that model's tokenizer (M = the dataset's own
                       data.datasets.<name>.M, else stage3.M);
  equal_byte           the context cut to B UTF-8 bytes, B = that example's payload, measured
                       (encoder.kind ids: the fitted pick's ids packed; bytes: its fixed size);
  selected_text        the sender's picked tokens as plain text, cut to M of the model's tokens
                       (the code's ceiling at equal positions; senders with a pick only);
  selected_equal_byte  the picked text cut to B bytes (question-aware extractive compression).
The question travels whole beside the context part in every variant, as beside the latent.

The stage picks every eval example once (payload bytes, picked text, the pick's recall), then per
model slot answers the full text and the cuts as two resume units (units.py): the full text's
unit is keyed without M and the pick, and on the code it runs alone (FULL_TEXT_CODE), so
`dvc exp run -S stage3.M=16` or a change to pick.py reuses it and reruns the cuts alone. It
imports no encoder and no checkpoint: it reads the fitted pick only.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import payload, pick, placement
from .config import Params, load_params, sender_params
from .io import peak_rss_mb, write_json
from .llm import FrozenLLM, length_batches, load_frozen
from .metrics import best_em, best_f1
from .packed import pack
from .receiver import Receiver, clean
from .sender import Picked, Sender
from .signals import stop_requests
from .units import load_rows, load_unit, merge_predictions, save_unit, unit_path
from .wire import cut_utf8, split_slots

SELECTED = ("selected_text", "selected_equal_byte")
PRECISIONS = {"fp16": 16, "int8": 8, "int4": 4}


def code_name(params: Params) -> str:
    """The latent's name in the metrics: ids, or the precision of the continuous values."""
    return "ids" if params.encoder.kind == "ids" else {b: n for n, b in PRECISIONS.items()}[params.bytes.bits]


def generate_text(llm: FrozenLLM, prompts: list[str], max_new_tokens: int, batch_size: int,
                  desc: str = "", batch_tokens: int | None = None) -> list[str]:
    """Batched greedy generation, longest prompts first to limit padding (`length_batches`).

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
    out: list[str] = [""] * len(prompts)
    rest_len = [len(i) - P if i[:P] == prefix else len(i) for i in ids]  # what a batch runs past the cache
    for idx in tqdm(length_batches(rest_len, batch_size, batch_tokens), desc=desc, leave=False,
                    disable=None, unit="batch"):
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


FULL, CUTS = ("text",), ("m_token", "equal_byte", *SELECTED)
# the modules the full text's answers depend on: its resume unit is keyed on these alone
# (tests/test_evaluate.py traces the full-text path: it runs no function of ours elsewhere)
FULL_TEXT_CODE = ("baselines", "config", "io", "llm", "metrics", "packed", "placement", "receiver", "units",
                  "wire")


def evaluate_model(llm: FrozenLLM, rows: list[dict], M, B, max_new_tokens: int, batch_size: int,
                   predictions: list[dict], selected: dict | None = None, names=FULL + CUTS,
                   batch_tokens: int | None = None) -> dict:
    """The text baselines `names` for one model, per dataset; folds per-example predictions
    into `predictions` (one row per model, dataset and id).
    M: positions, one int or per dataset name;
    B: the equal-byte budget, one int or per example id (the measured payload bytes);
    selected: the picked text per example id (a sender with a pick: the SELECTED baselines).
    With "text" in names also the prompt's and context's mean size (they depend on no M)."""
    result = {}
    budget = (lambda r: B[r["id"]]) if isinstance(B, dict) else (lambda r: B)  # noqa: E731
    names = [n for n in names if selected is not None or n not in SELECTED]
    M_of = lambda ds: M[ds] if isinstance(M, dict) else M  # noqa: E731
    groups = by_dataset(rows)
    # every prompt of every dataset and baseline in one length-sorted generation: fewer, fuller
    # batches than one generation per dataset and baseline (Qwen's cuts: 245 -> 208 s, the same answers)
    prompts = {}
    for ds, ds_rows in groups.items():
        variants = [text_variants(llm, r, M_of(ds), budget(r), selected and selected[r["id"]]) for r in ds_rows]
        prompts.update({(ds, name): [v[name] for v in variants] for name in names})
    flat = generate_text(llm, [p for ps in prompts.values() for p in ps], max_new_tokens, batch_size,
                         desc=f"{llm.slot}/{'+'.join(names)}", batch_tokens=batch_tokens)
    answers, at = {}, 0
    for key, ps in prompts.items():
        answers[key], at = flat[at:at + len(ps)], at + len(ps)
    for ds, ds_rows in groups.items():
        m = M_of(ds)
        res: dict = {"n": len(ds_rows)}
        preds = {name: answers[ds, name] for name in names}
        for name in names:
            res[name] = score(preds[name], ds_rows)
        if "text" in names:
            bodies = [llm.template.body(r["context"], r["question"]) for r in ds_rows]
            n_tokens = lambda t: len(llm.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
            res.update({"prompt_bytes": sum(len(b.encode("utf-8")) for b in bodies) / len(bodies),
                        "prompt_tokens": sum(map(n_tokens, bodies)) / len(bodies),
                        "context_tokens": sum(n_tokens(r["context"]) for r in ds_rows) / len(ds_rows),
                        "context_bytes": sum(len(r["context"].encode("utf-8")) for r in ds_rows) / len(ds_rows),
                        "question_bytes": sum(len(r["question"].encode("utf-8")) for r in ds_rows) / len(ds_rows)})
        if "m_token" in names:
            res["m_token"]["tokens"] = m
        if "equal_byte" in names:
            res["equal_byte"]["bytes"] = sum(budget(r) for r in ds_rows) / len(ds_rows)
        if "selected_text" in names:
            cuts = [cut_tokens(llm, selected[r["id"]], m) for r in ds_rows]
            res["selected_text"]["bytes"] = sum(len(c.encode("utf-8")) for c in cuts) / len(cuts)
            res["selected_text"]["tokens"] = m
        if "selected_equal_byte" in names:
            res["selected_equal_byte"]["bytes"] = sum(budget(r) for r in ds_rows) / len(ds_rows)
        result[ds] = res
        merge_predictions(predictions, [
            {"model": llm.slot, "dataset": ds, "id": r["id"], "title": r.get("title", r["id"]),
             "question": r["question"], "answers": r["answers"],
             **{f"pred_{k}": v[i] for k, v in preds.items()},
             **{f"f1_{k}": best_f1(v[i], r["answers"]) for k, v in preds.items()}}
            for i, r in enumerate(ds_rows)])
    return result


def m_token_bytes(llm: FrozenLLM, rows: list[dict], M: int) -> float:
    """Mean UTF-8 bytes of the M-token context cut (the m_token baseline's bytes on the frontier)."""
    return sum(len(cut_tokens(llm, r["context"], M).encode("utf-8")) for r in rows) / max(len(rows), 1)


# ---------------------------------------------------------------- the stage

def dataset_M(params: Params, rows: list[dict]) -> dict[str, int]:
    """Each eval dataset's positions: data.datasets.<name>.M, else stage3.M."""
    return {r["dataset"]: params.positions(r["dataset"]) for r in rows}


@dataclasses.dataclass
class Sent:
    """The sender's side of every eval example, computed once: the payload's bytes per id (the
    equal-byte budget), and with a pick the picked text per id and the pick's recall."""
    nbytes: dict[str, int]
    selected: dict[str, str] | None = None
    recall: dict | None = None


def send_all(params: Params, rows: list[dict], pick_dir: str | Path) -> Sent:
    """kind ids: every row picked once at its dataset's M by the fitted pick (models/pick); with
    ids.keep the payload's bytes are those of the variable-rate layout (`Sender.slots`), its
    picked text still the pick at M tokens.
    kind bytes: the payload has one size for every row (M slots of d_wire values, packed), so
    the budget is that size, measured by packing zeros of the codec's shape."""
    M_of = dataset_M(params, rows)
    if params.encoder.kind != "ids":
        w = params.bytes
        S, P = split_slots(params.stage3.M, w.shared_fraction)
        zeros = np.zeros((S + P * len(params.models), w.d_wire), np.float32)
        size = len(payload.pack(payload.Latent(payload.KIND_VALUES, w.bits, 0, values=zeros,
                                               group_size=w.group_size), 0))
        return Sent({r["id"]: size for r in rows})
    sender = Sender.load(params, pick_dir, params.stage3.M)
    picks = [sender.pick(r["question"], r["context"], M_of[r["dataset"]])
             for r in tqdm(rows, desc="pick", leave=False, disable=None)]
    limits = sender.limits(max(M_of.values()))
    sent = picks if sender.keep is None else [sender.slots(r["question"], r["context"], M_of[r["dataset"]])
                                              for r in rows]  # ids.keep: the payload lays out more ids
    nbytes = {r["id"]: len(payload.pack(sender.latent(p), sender.codebook, limits)) for r, p in zip(rows, sent)}
    return Sent(nbytes, {r["id"]: sender.decode(p.ids) for r, p in zip(rows, picks)},
                pick_report(rows, picks, [M_of[r["dataset"]] for r in rows], params.seed))


def pick_report(rows: list[dict], picks: list[Picked], Ms: list[int], seed: int) -> dict:
    """Per dataset: the share of questions whose gold answer lies wholly inside the picked
    tokens, beside the M-token cut, the lexical prior alone and a random window of M; the
    share whose answer is in the context at all (answer_in_context, the ceiling); and, where
    rows have supporting facts, the share of those sentences the pick touches (support_recall)."""
    out: dict[str, dict] = {}
    for k, (r, p, M) in enumerate(zip(rows, picks, Ms)):
        c, a, T = r["context"], r["answers"], len(p.read.ids)
        hits = out.setdefault(r["dataset"], {"n": 0, "M": M, "answer_in_context": 0, "pick_recall": 0,
                                             "m_token_cut": 0, "lexical": 0, "random": 0})
        hits["n"] += 1
        hits["answer_in_context"] += pick.contains_answer([c], a)
        for name, spans in (("pick_recall", p.spans), ("m_token_cut", [(0, min(M, T))] if T else []),
                            ("lexical", pick.lexical_spans(p.read, M)),
                            ("random", pick.random_spans(T, M, seed + k))):
            hits[name] += pick.contains_answer(pick.span_texts(p.read, c, spans), a)
        sup = pick.touched(p.read, p.spans, r.get("support", []))
        if sup is not None:
            hits["support_recall"] = hits.get("support_recall", 0.0) + sup
    return {ds: {k: (v / h["n"] if k not in ("n", "M") else v) for k, v in h.items()} for ds, h in sorted(out.items())}


def main(params_path: str = "params.yaml", eval_path: str = "data/mix/eval.jsonl",
         out_path: str = "data/eval/text_baselines.json", pick_dir: str = "models/pick") -> dict:
    """Every text baseline of every model slot -> out_path ({"metrics", "predictions"}), with the
    resume units in data/eval/partial/text beside it."""
    params = load_params(params_path)
    torch.manual_seed(params.seed)
    rows = load_rows(eval_path, params.evaluate.max_examples)
    M, M_of, ids = params.stage3.M, dataset_M(params, rows), params.encoder.kind == "ids"
    sent = send_all(params, rows, pick_dir)
    sizes, bits = list(sent.nbytes.values()), 16 if ids else params.bytes.bits
    mean = sum(sizes) / max(len(sizes), 1)
    metrics: dict = {"M": M, "reported_bits": bits, "equal_byte_budget": mean,
                     "wire": {code_name(params): {"bits": bits, "per_model": mean, "total": mean,
                                                                   "max": max(sizes, default=0),
                                                                   "per_slot_max": max(sizes, default=0) / M}},
                     "wall_s": {}}
    if sent.recall is not None:
        metrics["pick"] = sent.recall
    predictions: list[dict] = []
    folder = Path(out_path).with_name("partial") / "text"
    ev = dataclasses.asdict(params.evaluate)
    pick_files = [p for p in [Path(pick_dir) / "pick.safetensors", Path(pick_dir) / "meta.json"] if p.is_file()]
    for slot, cfg in placement.resolve(params).models.items():  # null device_map: auto placement
        common = {"model": dataclasses.asdict(cfg), "prompt": dataclasses.asdict(params.prompt), "evaluate": ev}
        full = unit_path(folder, f"{slot}-full", common, [eval_path], code=FULL_TEXT_CODE)
        cuts = unit_path(folder, f"{slot}-cuts", {**common, "M": M, "M_of": M_of, "seed": params.seed,
                                                  "sender": sender_params(params),
                                                  "pick": dataclasses.asdict(params.pick)},
                         [eval_path, *pick_files])
        done = {part: load_unit(path) for part, path in (("full", full), ("cuts", cuts))}
        llm = None
        for part, path, names in (("full", full, FULL), ("cuts", cuts, CUTS)):
            if done[part] is None:
                t0 = time.time()
                if llm is None:
                    llm = load_frozen(slot, cfg, params.prompt, params.cache_dir)
                    if params.evaluate.prepack:
                        pack(llm.model)  # CPU: reorder the linear weights once (no-op on GPU)
                preds: list[dict] = []
                res = evaluate_model(llm, rows, M_of, sent.nbytes, params.evaluate.max_new_tokens,
                                     params.evaluate.batch_size, preds, sent.selected, names,
                                     params.evaluate.batch_tokens)
                if part == "full":
                    res["embedding"] = llm.embedding_stats()
                done[part] = {"metrics": res, "predictions": preds, "wall_s": round(time.time() - t0, 1)}
                save_unit(path, done[part])
                print(f"baselines: {slot} {part} done in {time.time() - t0:.0f}s")
        metrics[slot] = done["full"]["metrics"]
        for ds, res in done["cuts"]["metrics"].items():
            metrics[slot][ds].update(res)
        for part in ("full", "cuts"):
            merge_predictions(predictions, done[part]["predictions"])
            metrics["wall_s"][f"text-{part}/{slot}"] = done[part]["wall_s"]
        del llm
    metrics["peak_rss_mb"] = {"text": peak_rss_mb()}
    write_json(out_path, {"metrics": metrics, "predictions": predictions})
    return metrics


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--eval", default="data/mix/eval.jsonl", help="eval mix written by prepare-mix")
    p.add_argument("--out", default="data/eval/text_baselines.json",
                   help="the baselines' metrics and per-example predictions (JSON; default: %(default)s)")
    p.add_argument("--pick", default="models/pick", help="the fitted pick (encoder.kind ids; default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    partial = Path(args.out).with_name("partial") / "text"
    with stop_requests(at_once=True, message=f"baselines: {{signal}}: finished units are kept in {partial}, "
                                             "rerun to resume"):
        main(args.params, args.eval, args.out, args.pick)

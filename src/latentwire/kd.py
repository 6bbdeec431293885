"""`teacher-kd-cache` stage: the teachers' next-token distributions over the gold answers.

For every training example the teacher reads the full text prompt, `template.render(context,
question)`, followed by the gold answer (answers[0] + eos, cut to kd.K_max tokens), teacher-forced.
For each answer position j < K_max we keep the top kd.k log-probs (tau 1) of the teacher's
distribution predicting answer token j, and their token ids. Training distils the latent-fed
student towards these without ever running the teacher again.

Teachers: params.teachers[slot], or the slot's own model (the same frozen LLM reading the text).
Each teacher reads through a `Receiver`: the template prefix opening every prompt comes from its
key/value cache, computed once (about a fifth of the train mix's prompt tokens).
All teachers get the same token ids, tokenized by the student slot's tokenizer with the student's
template, and the cache stores token *ids*, so a teacher must have exactly the student's vocabulary:
`check_vocab` compares `tokenizer.get_vocab()` (token -> id), not the model names, and refuses a
teacher that differs, naming the slot, the teacher and the differing tokens.
With several teachers we average their *probabilities* over the full vocabulary and only then take
the top-k. Why: the mean of probabilities is a proper mixture distribution (it sums to one, and a
token that one confident teacher likes keeps its mass); averaging log-probs (a geometric mean)
does not sum to one and lets one teacher's near-zero veto a token, and averaging per-teacher top-k
lists would drop tokens that only some teachers rank highly and leave the "rest" bucket undefined.
All teachers of a slot are held in memory at once, each on its own device (placement.py:
`teacher_device_map.<slot>`, a teacher's own `device_map`, or auto placement on the GPUs).

`teacher_hash` (sha256 of the teachers' identities and files' sha256, the template, kd.tau and kd.k)
is part of the cache key, so changing a teacher rebuilds the cache; it is written to
data/kd/<slot>.json and to metrics/train/<stage>.json (run.teacher_hash).

Output per slot that some curriculum stage trains (`Params.trained_slots`: stageN.slots; a slot
no stage trains keeps its untrained adapter and needs no teacher): data/kd/<slot>.safetensors with
  top_idx     int32   [N, K_max, k]   token ids, best first
  top_logp    float32 [N, K_max, k]   their log-probs (rows past the answer are zeros)
  answer_ids  int64   [N, K_max]      the gold answer tokens, padded with the pad id
  answer_mask bool    [N, K_max]      True on real answer tokens
and header metadata {key, ids, n, k, K_max}; `key` (see cache_key) lets a rerun reuse the file
and lets training refuse a stale cache. data/kd/<slot>.json repeats the metadata plus wall time.

Resume: every finished batch is written at once (atomically) to data/kd/<slot>.partial/ with the
cache key; a killed build rerun with the same key reuses those batches and computes the rest, and
the folder is deleted when <slot>.safetensors is written. SIGTERM / SIGINT finish the batch in
progress, save it and exit with 143 / 130.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from .config import ModelConfig, Params, load_params, teachers_of
from .io import atomic_path, read_jsonl, remove_temp_files, sha256_of, write_json
from .llm import PromptTemplate, build_template, length_batches, load_frozen, model_folder
from .placement import resolve as auto_place
from .receiver import Receiver
from .signals import StopRequest, stop_requests

TENSORS = ("top_idx", "top_logp", "answer_ids", "answer_mask")


def identity(cfg: ModelConfig) -> dict:
    """What makes a model's log-probs what they are (not where it is cached)."""
    return {"source": cfg.source, "hub_id": cfg.hub_id, "path": cfg.path,
            "gguf_sha256": cfg.gguf_sha256, "dtype": cfg.dtype}


def files_sha256(cfg: ModelConfig, cache_dir: str | None = None) -> str:
    """What the model's files are: the verified GGUF sha256 (gguf-pypi), a sha256 over a local
    folder's files, or the hub snapshot's commit (a git hash of every file; only config.json is
    fetched to resolve it, and HF_HUB_OFFLINE reads the local cache)."""
    if cfg.source == "gguf-pypi":
        return cfg.gguf_sha256
    if cfg.source == "hub":
        from huggingface_hub import snapshot_download
        return "commit:" + Path(snapshot_download(cfg.hub_id, allow_patterns=["config.json"])).name
    folder = Path(model_folder(cfg, cache_dir))
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(folder)}\0{sha256_of(f)}\n".encode())
    return h.hexdigest()


def teacher_hash(params: Params, slot: str, template: PromptTemplate) -> str:
    """sha256 of the slot's teachers (identity + files' sha256), the template, kd.tau and kd.k:
    it changes whenever the distribution the student is distilled towards changes. (The cache
    stores tau-1 log-probs and tau is applied in training, so tau here only makes a tau change
    visible and rebuild the cache, as asked for in the scale issue.)"""
    parts = {"teachers": [{**identity(t), "files_sha256": files_sha256(t, params.cache_dir)}
                          for t in teachers_of(params, slot)],
             "prefix": template.prefix, "suffix": template.suffix,
             "tau": params.kd.tau, "k": params.kd.k}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def cache_key(params: Params, slot: str, template: PromptTemplate, train_path: str | Path,
              t_hash: str | None = None) -> str:
    """sha256 of everything the cache depends on: the teacher hash (teachers, their files,
    template, tau, k), the student slot, K_max and the train file's bytes. Training recomputes
    it and passes it to load_cache."""
    parts = {"teacher_hash": t_hash or teacher_hash(params, slot, template),
             "slot": slot, "student": identity(params.models[slot]),
             "K_max": params.kd.K_max, "train_sha256": sha256_of(train_path)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def check_vocab(slot: str, i: int, name: str, teacher_tok, student_tok) -> None:
    """Refuse teacher i of `slot` unless its vocabulary (token -> id) is the student's."""
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv == sv:
        return
    only_t, only_s = sorted(set(tv) - set(sv)), sorted(set(sv) - set(tv))
    moved = sorted(t for t in set(tv) & set(sv) if tv[t] != sv[t])
    raise ValueError(
        f"teachers.{slot}[{i}] ({name}): its tokenizer's vocabulary differs from models.{slot}'s "
        f"({len(tv)} vs {len(sv)} tokens; {len(only_t)} only in the teacher {only_t[:5]}, "
        f"{len(only_s)} only in the student {only_s[:5]}, {len(moved)} with other ids {moved[:5]}). "
        f"The KD cache stores token ids, so a teacher must share the student's tokenizer exactly "
        f"(same family, e.g. a larger Qwen2.5 for the qwen slot)")


def load_cache(path: str | Path, expected_key: str | None = None) -> dict:
    """The cache's tensors plus 'ids' and 'key'. ValueError naming the file if it is truncated,
    corrupted, incomplete or (with expected_key) built for other teachers/data/settings."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            out = {name: f.get_tensor(name) for name in TENSORS}
        ids = json.loads(meta["ids"])
        n, k, K_max = int(meta["n"]), int(meta["k"]), int(meta["K_max"])
    except Exception as e:  # SafetensorError, OSError, a missing tensor or metadata field
        raise ValueError(f"{path}: unreadable KD cache ({type(e).__name__}: {e}); delete it and "
                         f"rerun teacher-kd-cache") from None
    shapes = {"top_idx": (n, K_max, k), "top_logp": (n, K_max, k),
              "answer_ids": (n, K_max), "answer_mask": (n, K_max)}
    bad = [name for name, shape in shapes.items() if tuple(out[name].shape) != shape]
    if bad or len(ids) != n:
        raise ValueError(f"{path}: KD cache is inconsistent with its header (n={n}, k={k}, "
                         f"K_max={K_max}): {bad or 'ids'}")
    if expected_key is not None and meta.get("key") != expected_key:
        raise ValueError(f"{path}: KD cache is stale: key {meta.get('key')} != expected "
                         f"{expected_key} (teachers, template, kd.k, kd.K_max or the train file "
                         f"changed); rerun teacher-kd-cache")
    return {**out, "ids": ids, "key": meta["key"]}


def answer_tokens(tokenizer, answer: str, K_max: int) -> list[int]:
    """The gold answer's tokens, then eos (the answer ends there), cut to K_max."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return (ids + [tokenizer.eos_token_id])[:K_max]


@torch.inference_mode()
def teacher_logp(readers, prompts: list[list[int]], answers: list[list[int]], K_max: int,
                 pad_id: int) -> torch.Tensor:
    """[B, K_max, V] log-probs of the teacher mixture predicting answer token j at [:, j].

    Each teacher reads through its `Receiver`: the template prefix (the same ids opening every
    prompt) comes from the key/value cache computed once, and a batch runs only the rest of its
    prompts; a batch whose prompts do not all open with the prefix's ids runs whole. Layout:
    the rests left-padded so they all end at column P, then answer[:K_max-1] right-padded. Row
    j's prediction sits at column P-1+j, so the last K_max columns are exactly the ones we need
    (logits_to_keep). position_ids come from the mask, so padding does not shift positions.
    """
    logps = []
    for rec in readers:
        head = rec.prefix_ids.tolist()
        cached = bool(head) and all(p[:len(head)] == head and len(p) > len(head) for p in prompts)
        rests = [p[len(head):] if cached else p for p in prompts]
        B, P = len(rests), max(len(p) for p in rests)
        ids = torch.full((B, P + K_max - 1), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, a) in enumerate(zip(rests, answers)):
            seq = p + a[:K_max - 1]
            ids[i, P - len(p):P - len(p) + len(seq)] = torch.tensor(seq)
            mask[i, P - len(p):P - len(p) + len(seq)] = 1
        if cached:
            mask = torch.cat([torch.ones(B, len(head), dtype=torch.long), mask], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1] - ids.shape[1]:]
        dev = rec.llm.device
        extra = {"cache": rec.cache(B), "use_cache": True} if cached else {}
        logits = rec.llm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                               logits_to_keep=K_max, **extra).logits
        logps.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    V = min(lp.shape[-1] for lp in logps)  # bigger family members may pad the vocab further
    # log of the mean probability; exactly the teacher's log-probs when there is one teacher
    mixture = torch.logsumexp(torch.stack([lp[..., :V] for lp in logps]), dim=0)
    return mixture - math.log(len(logps))


def read_partial(folder: Path, key: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The batches a killed build with this key finished: row -> (top_idx, top_logp). Chunks
    of another key (stale) or unreadable ones are deleted."""
    done = {}
    remove_temp_files(folder)
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as c:
                if (c.metadata() or {}).get("key") != key:
                    raise ValueError("stale")
                rows, top_idx, top_logp = (json.loads(c.metadata()["rows"]), c.get_tensor("top_idx"),
                                           c.get_tensor("top_logp"))
            done.update({r: (top_idx[j], top_logp[j]) for j, r in enumerate(rows)})
        except Exception:  # noqa: BLE001 - a chunk we cannot trust is recomputed
            f.unlink(missing_ok=True)
    return done


def build_slot(params: Params, slot: str, tokenizer, template: PromptTemplate, rows: list[dict],
               key: str, out_path: Path, t_hash: str = "", stop: StopRequest | None = None) -> dict:
    """Run the slot's teachers over every example (resuming from <slot>.partial/) and write the
    cache atomically. `stop` set (SIGTERM/SIGINT): exit after saving the batch in progress."""
    t0 = time.time()
    k, K_max, bs = params.kd.k, params.kd.K_max, params.kd.batch_size
    teachers = []
    for i, cfg in enumerate(teachers_of(auto_place(params, teachers=True), slot)):
        where = model_folder(cfg, params.cache_dir)  # the tokenizer first: refuse before the weights
        check_vocab(slot, i, cfg.hub_id or where, AutoTokenizer.from_pretrained(where), tokenizer)
        teachers.append(load_frozen(f"{slot}.teacher{i}", cfg, params.prompt, params.cache_dir))
    readers = [Receiver(t) for t in teachers]  # each teacher's prefix cache, computed once
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [tokenizer(template.render(r["context"], r["question"]),
                         add_special_tokens=False)["input_ids"] for r in rows]
    answers = [answer_tokens(tokenizer, r["answers"][0], K_max) for r in rows]
    N = len(rows)
    top_idx = torch.zeros(N, K_max, k, dtype=torch.int32)
    top_logp = torch.zeros(N, K_max, k, dtype=torch.float32)
    answer_ids = torch.full((N, K_max), pad_id, dtype=torch.int64)
    answer_mask = torch.zeros(N, K_max, dtype=torch.bool)
    for i, a in enumerate(answers):
        answer_ids[i, :len(a)], answer_mask[i, :len(a)] = torch.tensor(a), True
    # similar lengths share a batch, long prompts in small ones (llm.length_batches)
    batches = length_batches([len(p) for p in prompts], bs, params.kd.batch_tokens)
    partial = out_path.with_name(f"{slot}.partial")
    done, n_batches = read_partial(partial, key), len(batches)
    reused = sum(all(i in done for i in idx) for idx in batches)
    if reused:
        print(f"teacher-kd-cache: {slot}: resumed {reused}/{n_batches} batches from {partial}")
    for b, idx in enumerate(tqdm(batches, desc=f"kd/{slot}", leave=False, disable=None, unit="batch")):
        if all(i in done for i in idx):  # the same batch as before the kill: the same numbers
            top_idx[idx] = torch.stack([done[i][0] for i in idx])
            top_logp[idx] = torch.stack([done[i][1] for i in idx])
            continue
        logp = teacher_logp(readers, [prompts[i] for i in idx], [answers[i] for i in idx],
                            K_max, pad_id)
        values, indices = logp.topk(k, dim=-1)
        keep = answer_mask[idx].unsqueeze(-1)
        top_logp[idx] = values.where(keep, 0.0)
        top_idx[idx] = indices.to(torch.int32).where(keep, 0)
        with atomic_path(partial / f"{b:08d}.safetensors") as tmp:
            save_file({"top_idx": top_idx[idx], "top_logp": top_logp[idx]}, str(tmp),
                      metadata={"key": key, "rows": json.dumps(idx)})
        if stop:
            stop.exit(f"teacher-kd-cache: {stop.name} at {slot} batch {b + 1}/{n_batches}: saved "
                      f"{partial}, rerun to resume")
    meta = {"key": key, "ids": json.dumps([r["id"] for r in rows]), "n": str(N), "k": str(k),
            "K_max": str(K_max), "teacher_hash": t_hash}
    tensors = {"top_idx": top_idx, "top_logp": top_logp, "answer_ids": answer_ids,
               "answer_mask": answer_mask}
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    info = {**meta, "ids": json.loads(meta["ids"]), "teachers": [t.name for t in teachers],
            "devices": [str(t.device) for t in teachers], "wall_s": round(time.time() - t0, 1)}
    write_json(out_path.with_suffix(".json"), info)
    shutil.rmtree(partial, ignore_errors=True)
    return info


def main(params_path: str = "params.yaml", train_path: str = "data/mix/train.jsonl",
         out_dir: str = "data/kd") -> dict:
    params = load_params(params_path)
    torch.manual_seed(params.seed)
    rows = read_jsonl(train_path)
    result, trained = {}, params.trained_slots()
    remove_temp_files(out_dir)  # a write SIGKILLed half-way leaves its temp file
    for slot, cfg in params.models.items():
        if slot not in trained:
            print(f"teacher-kd-cache: {slot}: no stage trains it (stageN.slots): no cache")
            continue
        # the student's tokenizer and template: cheap to load, and all the key needs
        tokenizer = AutoTokenizer.from_pretrained(model_folder(cfg, params.cache_dir))
        template = build_template(tokenizer, params.prompt)
        t_hash = teacher_hash(params, slot, template)
        key = cache_key(params, slot, template, train_path, t_hash)
        out_path = Path(out_dir) / f"{slot}.safetensors"
        try:
            load_cache(out_path, key)
            shutil.rmtree(out_path.with_name(f"{slot}.partial"), ignore_errors=True)  # a kill's leftover
            print(f"teacher-kd-cache: {slot}: reused {out_path} (key {key[:12]})")
            result[slot] = {"path": str(out_path), "key": key, "teacher_hash": t_hash, "reused": True}
            continue
        except ValueError:
            pass  # missing, stale or broken: build it
        with stop_requests() as stop:  # SIGTERM/SIGINT: save the batch in progress, exit 143/130
            info = build_slot(params, slot, tokenizer, template, rows, key, out_path, t_hash, stop)
        print(f"teacher-kd-cache: {slot}: wrote {out_path} ({info['n']} examples, "
              f"{info['wall_s']:.0f}s)")
        result[slot] = {"path": str(out_path), "key": key, "teacher_hash": t_hash, "reused": False,
                        "wall_s": info["wall_s"]}
    return result


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--train", default="data/mix/train.jsonl", help="train mix written by prepare-mix")
    p.add_argument("--out", default="data/kd", help="output folder: <slot>.safetensors + <slot>.json (and <slot>.partial/, the "
                        "finished batches of a killed build, until the slot is done)")


def run(args: argparse.Namespace) -> None:
    main(args.params, args.train, args.out)

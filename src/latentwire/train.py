"""One curriculum stage: train the shared encoder + adapters against cached teachers.

    python -m latentwire train stage2

stage1 starts from scratch; stageN starts from models/stage{N-1}/best (resized to this
stage's M). Every optimiser step trains the one encoder on the stage's model slots (<stage>.slots,
default every one; losses summed with train.model_weights); a slot left out keeps the previous
stage's adapter and costs no forward pass (nor a KD cache: teacher-kd-cache builds one for a
slot some stage trains). One AdamW trains them all at train.lr, or, with train.receiver_lr
embedding, each receiver's adapter at its own (`receiver_lrs`). The rows are the train mix
(KD + CE) plus <stage>.pool_rows rows of the pick's train-split pool, which have no KD target
(CE only). With variable-rate slots (ids.keep) stage1 first fits every receiver's pooler to
the receiver's own middle-layer states (pooler.py, `fit_poolers`). The stage writes
models/<stage>/{best,last}/ (safetensors + meta.json) and metrics/train/<stage>.json + a
per-step curve CSV for `dvc plots`; the same steps go to dvclive/<stage>/ (dvclive; it never
writes a dvc.yaml or saves an experiment).
A killed stage resumes from models/<stage>/last when rerun with the same params; SIGTERM or
SIGINT finishes the optimiser step, saves models/<stage>/last and exits with 143 / 130.

Why one file of ~420 lines: `Stage` is one object whose state (model, optimiser, scheduler,
step, K, best, curve) every part reads and writes, setup, the loss, fit / validate and
save / resume; split across modules that state would have to be passed around instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from . import launch, placement, pooler
from .config import Params, load_params, sender_params
from .data import split_dev
from .io import (atomic_dir, atomic_path, package_sha256, peak_rss_mb, read_jsonl, restore_dir, sha256_of,
                 write_json, write_text)
from .kd import answer_tokens, cache_key, load_cache, teacher_hash
from .latent import LatentWire
from .llm import load_frozen
from .losses import ce_loss, first_token_correct, hard_negative_weights, kd_loss, teacher_entropy
from .receiver import Receiver
from .sender import is_pick_dev
from .signals import StopRequest, stop_requests

PREVIOUS = {"stage1": None, "stage2": "stage1", "stage3": "stage2"}
logging.getLogger("dvclive").setLevel(logging.ERROR)  # quiet: no dvclive notices in the stage log


def balanced_batches(rows: list[dict], batch_size: int, seed: int) -> list[list[dict]]:
    """One epoch: each dataset shuffled (seeded), then interleaved so every batch mixes them."""
    rng = random.Random(seed)
    pools = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        pools.setdefault(r["dataset"], []).append(r)
    for p in pools.values():
        rng.shuffle(p)
    order, queues = [], [list(p) for _, p in sorted(pools.items())]
    while any(queues):  # round-robin weighted by what is left, so the mix stays even
        for q in sorted(queues, key=len, reverse=True):
            if q:
                order.append(q.pop())
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pool_sample(path: Path, n: int, seed: int, exclude: set[str], key: str = "pool_rows") -> list[dict]:
    """n rows of the pick's train-split pool in a seeded shuffle: never its held-out tenth (the
    pool benches test there), never a train-mix row, never an eval title (the pool has none)."""
    if n == 0:
        return []
    rows = sorted((r for r in read_jsonl(path) if not is_pick_dev(r) and r["id"] not in exclude),
                  key=lambda r: r["id"])
    if len(rows) < n:
        raise ValueError(f"{path}: {key} = {n}, but only {len(rows)} rows of its train part can be used")
    random.Random(seed).shuffle(rows)
    return rows[:n]


def log_live(live, row: dict) -> None:
    """One curve row -> dvclive/<stage>/plots/metrics/*.tsv at the row's own step."""
    if live is None:  # not rank 0
        return
    live.step = row["step"]
    for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
            live.log_metric(k, v)
    live.next_step()


def run_key(params: Params, stage: str, prev_meta: dict | None, kd_keys: dict) -> str:
    """What the resumable state depends on (params, the previous stage, the KD caches and this
    package's code: state saved before a bug fix is not resumed); a mismatch starts afresh."""
    blob = json.dumps({"stage": getattr(params, stage).__dict__, "train": params.train.__dict__,
                       "sender": sender_params(params),
                       "seed": params.seed, "prev": (prev_meta or {}).get("run_key"),
                       "kd": kd_keys, "code": package_sha256()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def set_deterministic(on: bool) -> None:
    """train.deterministic: deterministic kernels only (README, "Determinism"). Before CUDA
    starts: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its first handle."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.cuda.OutOfMemoryError is a RuntimeError)."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


def load_models(params: Params):
    """The frozen models, placed (null device_maps -> the GPUs; unchanged on CPU), and where."""
    placed = placement.resolve(params)
    llms = {s: load_frozen(s, c, params.prompt, params.cache_dir) for s, c in placed.models.items()}
    return llms, placement.describe(placed, llms)


def load_teachers(params: Params, llms: dict, root: Path, slots: list[str]):
    """Per trained slot the KD cache ({example id: row}, tensors), its cache key and the teacher hash."""
    kd, keys, hashes = {}, {}, {}
    for s in slots:
        llm = llms[s]
        hashes[s] = teacher_hash(params, s, llm.template)
        keys[s] = cache_key(params, s, llm.template, root / "data/mix/train.jsonl", hashes[s])
        path = root / "data/kd" / f"{s}.safetensors"
        if not path.is_file():
            raise ValueError(f"{path}: no KD cache for slot {s!r}, which this stage trains: rerun "
                             "teacher-kd-cache with these params (it builds one for each slot a stage trains)")
        cache = load_cache(path, keys[s])
        kd[s] = ({i: n for n, i in enumerate(cache["ids"])}, cache)
    return kd, keys, hashes


def receiver_lrs(model, params: Params) -> dict[str, float]:
    """train.receiver_lr embedding: each ids receiver's learning rate, train.lr x the mean |coordinate|
    of its input embeddings over the codebook model's (ids.feature_model). AdamW moves a parameter
    about lr a step whatever its gradient, and an adapter's correction is added to the model's own
    embeddings, so one lr moves a receiver with 7x smaller embeddings (Qwen's 0.0136 against
    SmolLM2's 0.099) 7x further against what it reads; the codebook model's own stays at train.lr.
    {} under shared (every parameter at train.lr)."""
    if params.train.receiver_lr == "shared":
        return {}
    scale = {s: a.E.abs().mean().item() for s, a in model.codec.adapters.items()}
    return {s: params.train.lr * (v / scale[params.ids.feature_model]) for s, v in scale.items()}


def make_optimizer(model, tp, sc, n_train: int, lrs: dict[str, float] | None = None):
    """AdamW and a cosine schedule spanning every optimiser step of every epoch of the stage; with
    `lrs` (`receiver_lrs`) each of those receivers' adapters is a parameter group at its own lr,
    the rest at tp.lr; -> (optimiser, scheduler, total steps, batches per epoch)."""
    per_epoch = math.ceil(n_train / tp.batch_size)
    total = math.ceil(sc.epochs * per_epoch / tp.grad_accum)
    total = min(total, tp.max_steps) if tp.max_steps is not None else total
    groups = [{"params": list(model.codec.adapters[s].parameters()), "lr": lr} for s, lr in (lrs or {}).items()]
    own = {id(p) for g in groups for p in g["params"]}
    rest = [p for p in model.parameters() if id(p) not in own]
    groups = ([{"params": rest}] if rest else []) + groups
    opt = torch.optim.AdamW(groups, lr=tp.lr, weight_decay=tp.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(tp.warmup_frac * total), max(total, 1))
    return opt, sched, total, per_epoch


class Stage:
    """State and steps of one curriculum stage (litgpt-style setup / fit / validate)."""

    def __init__(self, params: Params, stage: str, root: Path):
        self.params, self.stage, self.root = params, stage, root
        self.sc, self.out = params.stage(stage), root / "models" / stage
        set_deterministic(params.train.deterministic)
        torch.manual_seed(params.seed)
        mix = read_jsonl(root / "data/mix/train.jsonl")
        self.train_rows, self.dev_rows = split_dev(mix, params.train.dev_examples, params.seed)
        self.pool_rows = pool_sample(root / "data/mix/pool.jsonl", self.sc.pool_rows, params.seed,
                                     {r["id"] for r in mix})
        self.train_rows += self.pool_rows
        self.ce_only = {r["id"] for r in self.pool_rows}  # no teacher entry: CE on answers[0] + eos
        # one process, or one rank of `accelerate launch` (launch.py): each rank takes its share
        # of every micro-batch; the scheduler steps once per optimiser step on every rank
        self.acc = Accelerator(step_scheduler_with_optimizer=False)
        self.resolved = dataclasses.asdict(params)  # before an out-of-memory retry changes the batch
        self.llms, self.placement = load_models(params)
        self.slots = self.sc.slots or list(self.llms)  # the slots this stage trains (and validates)
        self.receivers = {s: Receiver(llm) for s, llm in self.llms.items() if s in self.slots}
        self.kd, keys, self.teacher_hash = load_teachers(params, self.llms, root, self.slots)
        self.model = LatentWire(params, self.sc.M, self.llms, pick_dir=root / "models" / "pick")
        prev = PREVIOUS[stage]
        self.prev_meta = self.model.load(root / "models" / prev / "best") if prev else None
        pick_file = root / "models" / "pick" / "pick.safetensors"  # kind ids: the pick the ids come from
        keys["pick"] = sha256_of(pick_file) if pick_file.is_file() else None
        self.key = run_key(params, stage, self.prev_meta, keys)
        self.receiver_lrs = receiver_lrs(self.model, params)  # {} under train.receiver_lr shared
        opt, sched, self.total_steps, self.batches_per_epoch = make_optimizer(
            self.model, params.train, self.sc, len(self.train_rows), self.receiver_lrs)
        # self.net: the model as trained (DistributedDataParallel across ranks, else self.model)
        self.net, self.opt, self.sched = self.acc.prepare(self.model, opt, sched)
        self.step, self.K, self.best, self.curve, self.events = 0, self.sc.K, None, [], []
        self.poolers: dict = {}  # fit_poolers' report (stage1 with ids.keep)
        self.resumed_from = self.try_resume()

    # ------------------------------------------------------------ data -> tensors
    def targets(self, slot: str, rows: list[dict]):
        """The rows' KD cache entries; a pool row (CE only) gets its answer tokens and has_kd False."""
        index, cache = self.kd[slot]
        missing = [r["id"] for r in rows if r["id"] not in index and r["id"] not in self.ce_only]
        if missing:
            raise ValueError(f"data/kd/{slot}.safetensors: no teacher entry for ids {missing[:3]}: "
                             "rerun teacher-kd-cache")
        has = torch.tensor([r["id"] in index for r in rows])
        idx = torch.tensor([index.get(r["id"], 0) for r in rows])
        t = {k: cache[k][idx].clone() for k in ("top_idx", "top_logp", "answer_ids", "answer_mask")}
        tok, K = self.llms[slot].tokenizer, t["answer_ids"].shape[1]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # as kd.py pads
        for j in (~has).nonzero().flatten().tolist():
            a = answer_tokens(tok, rows[j]["answers"][0], K)
            t["answer_ids"][j], t["answer_mask"][j] = pad, False
            t["answer_ids"][j, :len(a)], t["answer_mask"][j, :len(a)] = torch.tensor(a), True
            t["top_idx"][j], t["top_logp"][j] = 0, 0.0
        t["has_kd"] = has
        return t

    def slot_loss(self, slot: str, logits, t: dict, logs: dict) -> torch.Tensor:
        """KD (hard-negative weighted) + CE for one model slot; its numbers go to `logs`."""
        p, sc = self.params, self.sc
        kd = kd_loss(logits, t["top_idx"].long(), t["top_logp"].float(), t["answer_mask"], p.kd.tau)
        ce = ce_loss(logits, t["answer_ids"], t["answer_mask"])
        first = first_token_correct(logits, t["answer_ids"])
        has = t["has_kd"].to(kd.dtype)  # a pool row has no teacher: its KD term is zero
        w = (hard_negative_weights(first, teacher_entropy(t["top_logp"].float(), t["answer_mask"]) * has,
                                   math.log(p.kd.k + 1)) if p.train.hard_negative
             else torch.ones_like(kd))
        logs.update({f"{slot}/ce": ce.mean().item(), f"{slot}/first_acc": first.mean().item()})
        if has.any():
            logs[f"{slot}/kd"] = (kd * has).sum().item() / has.sum().item()
        return p.train.model_weights.get(slot, 1.0) * (sc.kd * (w * kd * has).mean() + sc.ce * ce.mean())

    def losses(self, rows: list[dict], K: int) -> tuple[torch.Tensor, dict]:
        """Summed loss over model slots and the per-slot numbers for the curves: each model reads
        its soft tokens where the context goes, the question beside them as text."""
        softs, extra, logs = self.net(rows, self.params.bytes.qat)
        total = extra
        for slot, rec in self.receivers.items():
            t = self.targets(slot, rows)
            rests = [rec.rest(s, r["question"]) for s, r in zip(softs[slot], rows)]
            logits = rec.answer_logits(rests, t["answer_ids"][:, :K])
            t = {k: (v if k == "has_kd" else v[:, :K]).to(logits.device) for k, v in t.items()}
            total = total + self.slot_loss(slot, logits, t, logs)
        return total, logs

    # ------------------------------------------------------------ fit / validate
    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        bs, agg = self.params.train.batch_size, {}
        for i in range(0, len(self.dev_rows), bs):
            rows = self.dev_rows[i:i + bs]
            loss, logs = self.losses(rows, self.K)
            for k, v in {"loss": loss.item(), **logs}.items():
                agg[k] = agg.get(k, 0.0) + v * len(rows) / len(self.dev_rows)
        self.model.train()
        agg["first_acc"] = sum(agg[f"{s}/first_acc"] for s in self.slots) / len(self.slots)
        return agg

    def adapt_K(self, dev_acc: float) -> None:
        """Adaptive K: one more answer token per threshold crossed, never down, capped at K_max."""
        crossed = sum(dev_acc >= t for t in self.params.train.K_thresholds)
        self.K = max(self.K, min(self.sc.K + crossed, self.params.kd.K_max))

    def start_live(self, Live):
        """dvclive for this stage's curves; training goes on without it if it cannot start
        (e.g. a git repository without a commit yet)."""
        try:
            return Live(dir=str(self.root / "dvclive" / self.stage), dvcyaml=False, save_dvc_exp=False)
        except Exception as e:  # noqa: BLE001 - live curves are a convenience, never a failure
            print(f"{self.stage}: dvclive disabled: {e}")
            return None

    def keep_if_best(self, dev: dict, epoch: int) -> None:
        """Save models/<stage>/best when dev first-token accuracy (then dev loss) improves."""
        if self.best is not None and (dev["first_acc"], -dev["loss"]) <= (self.best["dev_first_acc"],
                                                                          -self.best["dev_loss"]):
            return
        self.best = {"step": self.step, "epoch": epoch,  # 1-based; 0: the stage's starting point
                     "dev_first_acc": dev["first_acc"], "dev_loss": dev["loss"]}
        if self.acc.is_main_process:
            with atomic_dir(self.out / "best") as best:
                self.model.save(best, {"stage": self.stage, "step": self.step, "run_key": self.key,
                                       "K": self.K})

    def fit(self, stop: StopRequest | None = None) -> None:
        """Train to total_steps; `stop` set (SIGTERM/SIGINT): save last/ after this step and exit."""
        tp = self.params.train
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step",
                   disable=None if self.acc.is_main_process else True)
        from dvclive import Live  # not at the top: __main__ imports every module, dvclive pulls in dvc

        live = self.start_live(Live) if self.acc.is_main_process else None  # rank 0 logs
        for row in self.curve:  # a resumed stage replays its saved steps: the log stays whole
            log_live(live, row)
        if self.needs_poolers():
            self.fit_poolers()
            self.save_last()  # a kill after this resumes with the fitted poolers
        if self.step == 0 and self.best is None:  # the starting point competes for best too
            self.keep_if_best(self.validate(), 0)
        while self.step < self.total_steps:
            epoch, within = divmod(self.step * tp.grad_accum, self.batches_per_epoch)
            batches = balanced_batches(self.train_rows, tp.batch_size, self.params.seed + epoch)
            micro = [batches[(within + i) % len(batches)] for i in range(tp.grad_accum)]
            out = self.accumulate_or_shrink(micro)
            if out is None:
                continue  # out of memory: the same step again in smaller micro-batches
            loss, logs = out
            self.acc.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            self.step += 1
            row = {"step": self.step, "loss": loss.item(), "K": self.K,
                   "lr": self.sched.get_last_lr()[0], **logs}
            if self.step % tp.eval_every == 0 or self.step == self.total_steps:
                dev = self.validate()
                row.update({"dev_loss": dev["loss"], "dev_first_acc": dev["first_acc"]})
                self.adapt_K(dev["first_acc"])
                self.keep_if_best(dev, epoch + 1)
            self.curve.append(row)
            log_live(live, row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", K=self.K)
            stopping = self.stop_requested(stop)
            if stopping or self.step % tp.save_every == 0 or self.step == self.total_steps:
                self.save_last()
            if stopping:
                bar.close()
                stop.exit(f"{self.stage}: {stop.name} at step {self.step}: saved {self.out / 'last'}, "
                          "rerun to resume")
        bar.close()
        if live is not None:
            live.end()

    def needs_poolers(self) -> bool:
        """stage1 (the one that starts from scratch) with variable-rate slots, not fitted yet."""
        p = self.params
        return (PREVIOUS[self.stage] is None and p.encoder.kind == "ids" and p.ids.keep is not None
                and p.ids.pooler_steps > 0 and not self.poolers and self.step == 0)

    def fit_poolers(self) -> None:
        """ids.keep: fit every receiver's pooler (each model slot, trained by a stage or not) on
        ids.pooler_rows rows of the pick's train-split pool, laid out at their dataset's
        positions (stage3.M), to the receiver's own states at layer ids.pooler_layers (pooler.py)."""
        p, codec = self.params, self.model.codec
        rows = pool_sample(self.root / "data/mix/pool.jsonl", p.ids.pooler_rows, p.seed + 1,
                           {r["id"] for r in self.train_rows + self.dev_rows}, "ids.pooler_rows")
        laid = [codec.sender.slots(r["question"], r["context"], p.positions(r["dataset"]))
                for r in tqdm(rows, desc="pooler rows", leave=False, disable=None)]
        data = [(q.ids, q.pairs, r["question"]) for q, r in zip(laid, rows)]
        for slot, llm in self.llms.items():
            t0 = time.time()
            self.poolers[slot] = {**pooler.fit(llm, codec.adapters[slot], data, p.ids.pooler_steps,
                                               p.train.batch_size, p.train.lr, p.ids.pooler_layers, p.seed,
                                               desc=f"{self.stage}: {slot} pooler"),
                                  "wall_s": round(time.time() - t0, 1)}
            print(f"{self.stage}: {slot} pooler: state loss on the first batch "
                  f"{self.poolers[slot]['loss_first_batch'][0]:.4f} -> {self.poolers[slot]['loss_first_batch'][1]:.4f}, "
                  f"{self.poolers[slot]['wall_s']:.0f}s")

    def stop_requested(self, stop: StopRequest | None) -> bool:
        """A signal on any rank stops every rank after the same step (one tiny all-reduce)."""
        if stop is None or self.acc.num_processes == 1:
            return bool(stop)
        return self.acc.reduce(torch.tensor(float(bool(stop)), device=self.acc.device), "sum").item() > 0

    def accumulate(self, micro: list[list[dict]]) -> tuple[torch.Tensor, dict]:
        """One optimiser step's gradients over the micro-batches. Each rank takes its share of
        every micro-batch; accelerate syncs the gradients across ranks on the last one only.
        The loss and logs returned are the last micro-batch's, averaged over ranks."""
        acc = self.acc
        self.opt.zero_grad(set_to_none=True)
        for i, rows in enumerate(micro):
            rows = rows[acc.process_index::acc.num_processes] or rows[:1]
            with nullcontext() if i == len(micro) - 1 else acc.no_sync(self.net):
                loss, logs = self.losses(rows, self.K)
                acc.backward(loss / len(micro))
        if acc.num_processes > 1:
            loss = acc.reduce(loss.detach(), "mean")
            logs = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item() for k, v in logs.items()}
        return loss, logs

    def accumulate_or_shrink(self, micro: list[list[dict]]) -> tuple[torch.Tensor, dict] | None:
        """`accumulate`, or None after an out-of-memory error: then memory is freed, the
        micro-batch halved and the accumulation doubled (the effective batch is unchanged,
        exactly for even batch sizes) and the event logged; the caller retries the step."""
        try:
            return self.accumulate(micro)
        except RuntimeError as e:
            if not is_oom(e) or self.params.train.batch_size < 2:
                raise
        # outside the except block, so the traceback's tensors are already released
        tp = self.params.train  # fit and validate read the micro-batch size from here
        event = {"event": "out_of_memory", "step": self.step, "old_batch": tp.batch_size,
                 "new_batch": math.ceil(tp.batch_size / 2), "old_accum": tp.grad_accum,
                 "new_accum": tp.grad_accum * 2}
        self.opt.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        tp.batch_size, tp.grad_accum = event["new_batch"], event["new_accum"]
        self.batches_per_epoch = math.ceil(len(self.train_rows) / tp.batch_size)
        self.events.append(event)
        print(f"{self.stage}: out of memory at step {self.step}: micro-batch "
              f"{event['old_batch']} -> {event['new_batch']}, grad_accum {event['old_accum']} -> "
              f"{event['new_accum']}")
        return None

    # ------------------------------------------------------------ resumable state
    def save_last(self) -> None:
        """Everything needed to resume: weights, optimiser, scheduler, step, K, curve."""
        if not self.acc.is_main_process:
            return  # rank 0 writes; every rank holds the same state
        opt = {f"{i}.{k}": v for i, s in self.opt.state_dict()["state"].items()
               for k, v in s.items() if torch.is_tensor(v)}
        with atomic_dir(self.out / "last") as last:  # the four files replace the old ones together
            self.model.save(last, {"stage": self.stage, "step": self.step, "run_key": self.key})
            with atomic_path(last / "optimizer.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in opt.items()}, str(tmp))
            write_json(last / "state.json", {"run_key": self.key, "step": self.step, "K": self.K,
                                             "best": self.best, "curve": self.curve, "poolers": self.poolers,
                                             "sched": self.sched.state_dict(), "events": self.events})

    def saved_state(self) -> dict | None:
        """models/<stage>/last/state.json if this very run saved it (the same run_key)."""
        try:
            state = json.loads((self.out / "last" / "state.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return state if state.get("run_key") == self.key else None

    def try_resume(self) -> int | None:
        restore_dir(self.out / "best")  # after a kill in the middle of a folder swap (io.atomic_dir)
        last = restore_dir(self.out / "last")
        state = self.saved_state()
        if state is None or state["step"] >= self.total_steps + 1:
            return None  # none, or params changed since: start afresh
        self.model.load(last)
        opt_state = self.opt.state_dict()
        flat = load_file(str(last / "optimizer.safetensors"))
        for i in (i for group in opt_state["param_groups"] for i in group["params"]):
            keys = [k for k in flat if k.split(".", 1)[0] == str(i)]
            opt_state["state"][i] = {k.split(".", 1)[1]: flat[k] for k in keys}
        self.opt.load_state_dict(opt_state)
        self.sched.load_state_dict(state["sched"])
        for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr  # the optimiser's own lr is not in the scheduler's state
        self.step, self.K, self.best, self.curve = state["step"], state["K"], state["best"], state["curve"]
        self.poolers = state.get("poolers", {})
        self.events = state.get("events", []) + [{"resumed_at_step": self.step}]
        print(f"{self.stage}: resumed from {last} at step {self.step}")
        return self.step


def main(stage: str, params_path: str = "params.yaml", root: str = ".") -> dict:
    t0 = time.time()
    params, root = load_params(params_path), Path(root)
    st = Stage(params, stage, root)
    with stop_requests() as stop:  # SIGTERM/SIGINT: finish the step, save last/, exit 143/130
        st.fit(stop)
    st.acc.wait_for_everyone()
    if not st.acc.is_main_process:  # rank 0 writes the checkpoints and metrics
        st.acc.end_training()
        return {}
    if st.best is None:  # zero steps (epochs: 0): the starting point is the best we have
        with atomic_dir(st.out / "best") as best:
            st.model.save(best, {"stage": stage, "step": 0, "run_key": st.key, "K": st.K})
    metrics = {"M": st.sc.M, "steps": st.step, "K_final": st.K, "best": st.best,
               "final": {k: v for k, v in (st.curve[-1] if st.curve else {}).items()},
               "K_schedule": [{"step": r["step"], "K": r["K"]} for r in st.curve
                              if r is st.curve[0] or r["K"] != st.curve[st.curve.index(r) - 1]["K"]],
               "train_examples": len(st.train_rows), "pool_rows": len(st.pool_rows), "slots": st.slots,
               "dev_examples": len(st.dev_rows),
               **({"receiver_lrs": st.receiver_lrs} if st.receiver_lrs else {}),
               **({"poolers": st.poolers} if st.poolers else {}),
               "events": st.events, "wall_s": round(time.time() - t0, 1), "peak_rss_mb": peak_rss_mb(),
               "run": run_info(st, root)}
    cols = sorted({k for r in st.curve for k in r}, key=lambda k: (k != "step", k))
    write_text(root / "metrics/train" / f"{stage}_curve.csv",
               ",".join(cols) + "\n" + "".join(",".join(str(r.get(c, "")) for c in cols) + "\n"
                                               for r in st.curve))
    write_json(root / "metrics/train" / f"{stage}.json", metrics)
    print(f"{stage}: {st.step} steps, best dev first-token acc "
          f"{(st.best or {}).get('dev_first_acc', float('nan')):.3f}, {metrics['wall_s']:.0f}s")
    st.acc.end_training()
    return metrics


def run_info(st: Stage, root: Path) -> dict:
    """What produced this stage, under one key: resolved params, versions, placement, hashes."""
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "latentwire"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"params": st.resolved, "versions": versions,
            "placement": st.placement, "processes": st.acc.num_processes,
            "teacher_hash": st.teacher_hash,
            "data_sha256": sha256_of(root / "data/mix/train.jsonl")}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=list(PREVIOUS), help="curriculum stage (reads params <stage>.*)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--root", default=".", help="the workspace: reads data/mix, data/kd and models/pick there, "
                   "writes models/<stage> and metrics/train there (default: the project; bench/ledger.py "
                   "gives each lever its own)")


def run(args: argparse.Namespace) -> None:
    # several GPUs (or LATENTWIRE_PROCESSES=N): re-run this command under `accelerate launch`
    if not launch.relaunch(["train", args.stage, "--params", args.params, "--root", args.root]):
        main(args.stage, args.params, args.root)

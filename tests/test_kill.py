"""Kill matrix on the default sender (ids): teacher-kd-cache, a curriculum stage and both evaluate parts, each run as its
CLI (`python -m latentwire ...`) in a subprocess on the tiny models, stopped mid-run by SIGTERM
or SIGKILL, then rerun. The rerun must say it resumed, and its outputs must equal those of an
uninterrupted run bit for bit: on CPU with one thread every kernel used here is deterministic,
the resumed work is split into the same batches / steps as before, and what the rerun reuses
(KD batches, the optimiser state, finished evaluation units) is stored losslessly.

The kill moment: a sitecustomize.py (on the child's PYTHONPATH, only in these tests) makes each
unit of work sleep LATENTWIRE_TEST_DELAY seconds, and the test polls the stage's durable
progress (KD chunks, last/state.json, evaluation units) and signals as soon as some is on disk,
so the signal lands while work is left."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from test_train import rows
from tiny import fit_pick

REPO = Path(__file__).resolve().parents[1]

HOOKS = '''
import os, time
if os.environ.get("LATENTWIRE_TEST_DELAY"):
    from latentwire import baselines, evaluate, kd, train

    def slow(owner, name, delay=float(os.environ["LATENTWIRE_TEST_DELAY"])):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            time.sleep(delay)
            return real(*a, **k)
        setattr(owner, name, wrapper)

    for owner, name in ((kd, "teacher_logp"), (train.Stage, "accumulate"),
                        (baselines, "generate_text"), (evaluate, "latent_model")):
        slow(owner, name)
'''

COMMANDS = {
    "kd": ["teacher-kd-cache", "--params", "params.yaml", "--train", "data/mix/train.jsonl", "--out", "data/kd"],
    "train": ["train", "stage1", "--params", "params.yaml"],
    "text": ["baselines", "--params", "params.yaml", "--eval", "data/mix/eval.jsonl",
             "--out", "data/eval/text_baselines.json"],
    "latent": ["evaluate", "--params", "params.yaml", "--eval", "data/mix/eval.jsonl",
               "--checkpoint", "models/stage1/best", "--baselines", "data/eval/text_baselines.json",
               "--metrics", "metrics/eval.json", "--predictions", "data/eval/predictions.jsonl",
               "--frontier", "metrics/frontier.csv"],
}
OUTPUTS = {  # what each command writes: removed before it runs
    "kd": ["data/kd"], "train": ["models/stage1", "metrics/train", "dvclive"],
    "text": ["data/eval"], "latent": ["metrics/eval.json", "metrics/frontier.csv",
                                      "data/eval/predictions.jsonl", "data/eval/partial/latent"],
}
DELAY = {"kd": 0.1, "train": 0.2, "text": 0.1, "latent": 0.6}  # seconds per unit of work


def progress(project: Path, stage: str) -> bool:
    """Some of the stage's work is durable (and more is left)."""
    if stage == "kd":
        return len(list((project / "data/kd/llama.partial").glob("*.safetensors"))) >= 3
    if stage == "train":
        try:
            return json.loads((project / "models/stage1/last/state.json").read_text())["step"] >= 2
        except (OSError, ValueError, KeyError):
            return False
    return any((project / "data/eval/partial" / stage).glob("llama-*.json"))


def env(project: Path, delay: float = 0.0) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(project / "hooks"), str(REPO / "src")]),
            "LATENTWIRE_TEST_DELAY": str(delay) if delay else "", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cli(project: Path, stage: str, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "latentwire", *COMMANDS[stage]], cwd=project,
                            env=env(project, delay), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def outputs(project: Path, stage: str) -> dict:
    """Everything the stage wrote that must not depend on the kill (wall times and events aside)."""
    def tensors(path):
        with safe_open(str(path), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    def no_wall(obj):
        return ({k: no_wall(v) for k, v in obj.items() if k not in ("wall_s", "peak_rss_mb")}
                if isinstance(obj, dict) else obj)

    if stage == "kd":
        return {s: tensors(project / f"data/kd/{s}.safetensors") for s in ("llama", "qwen")}
    if stage == "train":
        m = json.loads((project / "metrics/train/stage1.json").read_text())
        return {"curve": (project / "metrics/train/stage1_curve.csv").read_text(),
                "metrics": {k: m[k] for k in ("steps", "K_final", "best", "final", "K_schedule")},
                **{f: tensors(project / "models/stage1" / f) for f in
                   ("best/model.safetensors", "last/model.safetensors", "last/optimizer.safetensors")},
                "best_meta": (project / "models/stage1/best/meta.json").read_text()}
    if stage == "text":
        return no_wall(json.loads((project / "data/eval/text_baselines.json").read_text()))
    return {"metrics": no_wall(json.loads((project / "metrics/eval.json").read_text())),
            "predictions": (project / "data/eval/predictions.jsonl").read_text(),
            "frontier": (project / "metrics/frontier.csv").read_text()}


def leftovers(project: Path) -> list[Path]:
    """Temp files and folders of the atomic writes (io.atomic_path / atomic_dir)."""
    return [p for p in project.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (dict, tuple, list)):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_models):
    """A tiny project after one uninterrupted run of the four commands, in order: the inputs of
    each stage and the reference outputs (one process, to pay for the imports once)."""
    root = tmp_path_factory.mktemp("kill") / "base"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])},
                     "qwen": {"source": "local", "path": str(tiny_models["qwen"])}}
    raw["pick"].update(spans=[4], hidden=8, epochs=2)  # the default sender (ids)
    raw["kd"] = {"k": 4, "K_max": 3, "batch_size": 2}  # 10 batches a slot
    raw["train"] = {"batch_size": 4, "dev_examples": 4, "eval_every": 2, "save_every": 2, "lr": 3e-3}
    raw["stage1"] = {"M": 8, "epochs": 2, "K": 1, "kd": 1.0, "ce": 1.0}  # 16 rows / 4 x 2 = 8 steps
    raw["stage3"] = {"M": 8, "epochs": 1, "K": 1}
    raw["evaluate"] = {"max_new_tokens": 3, "batch_size": 2, "max_examples": None}
    (root / "data/mix").mkdir(parents=True)
    (root / "hooks").mkdir()
    (root / "hooks/sitecustomize.py").write_text(HOOKS)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    for split, rs in (("train", rows(12, "squad") + rows(8, "nq")), ("eval", rows(3, "squad") + rows(3, "nq"))):
        (root / f"data/mix/{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    fit_pick(root)
    code = ("import json, sys\nfrom latentwire.__main__ import main\n"
            "for argv in json.loads(sys.argv[1]):\n    if main(argv):\n        sys.exit(1)")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(list(COMMANDS.values()))], cwd=root,
                       env=env(root), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root


def fresh(base: Path, where: Path, stage: str) -> Path:
    shutil.copytree(base, where)
    for out in OUTPUTS[stage]:
        p = where / out
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return where


@pytest.mark.parametrize("stage", ["kd", "train", "text", "latent"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_stage_resumes_to_the_same_outputs(base, tmp_path, stage, sig):
    expected = outputs(base, stage)
    project = fresh(base, tmp_path / "p", stage)
    proc = cli(project, stage, DELAY[stage])
    deadline = time.time() + 120
    while proc.poll() is None and not progress(project, stage) and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"{stage} ended before the kill:\n{proc.communicate()[0][-3000:]}"
    proc.send_signal(sig)
    killed, _ = proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL), killed[-3000:]
    if sig == signal.SIGTERM:  # a clean stop: one line that says what was saved, no temp files
        assert "SIGTERM" in killed and "rerun to resume" in killed, killed[-3000:]
        assert not leftovers(project)

    again = finish(cli(project, stage))
    assert not leftovers(project)  # what a SIGKILL left half-written is gone after the rerun
    if stage == "kd":
        assert not (project / "data/kd/llama.partial").exists()  # deleted once the slot is written
        assert "teacher-kd-cache: llama: resumed" in again
        if sig == signal.SIGTERM:  # every batch before the signal was kept
            b = killed.split("SIGTERM at llama batch ")[1].split("/")[0]
            assert f"llama: resumed {b}/10 batches" in again
    elif stage == "train":
        state = killed.split("SIGTERM at step ")[1].split(":")[0] if sig == signal.SIGTERM else None
        assert "stage1: resumed from models/stage1/last at step " + (state or "") in again, again[-3000:]
    else:  # evaluate: the finished slot is reused, only the other one is computed
        assert f"reused finished unit data/eval/partial/{stage}/llama-" in again, again[-3000:]
        assert f"reused finished unit data/eval/partial/{stage}/qwen-" not in again
    assert same(outputs(project, stage), expected)

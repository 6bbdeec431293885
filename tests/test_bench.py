"""bench/ scripts must not rot: each one runs here in seconds, on the tiny models or the committed
metrics (bench/latency.py, bench/pick_lodo.py and bench/pool_probe.py run in test_ids.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from tiny import bench, qa_rows

REPO = Path(__file__).resolve().parents[1]


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def kd_caches(tmp_path_factory, tiny_models, one_thread) -> Path:
    """teacher-kd-cache on the tiny models: data/kd/{llama,qwen}.safetensors of one train mix."""
    from latentwire import kd

    root = tmp_path_factory.mktemp("kd")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {slot: {"source": "local", "path": str(path)} for slot, path in tiny_models.items()}
    raw["kd"] = {"k": 4, "K_max": 3, "batch_size": 4}
    for stage in ("stage1", "stage2", "stage3"):  # every receiver trained: a cache per slot
        raw[stage]["slots"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows(6, "squad")))
    kd.main(str(root / "params.yaml"), str(root / "train.jsonl"), str(root / "kd"))
    return root / "kd"


def rewrite(src: Path, dst: Path, change) -> str:
    """A copy of a KD cache with change(tensors, metadata) applied."""
    with safe_open(str(src), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)
    return str(dst)


def test_teacher_kd_compare_on_caches_of_the_tiny_models(kd_caches, tmp_path, capsys):
    compare = bench("teacher_kd_compare")
    llama, qwen = str(kd_caches / "llama.safetensors"), str(kd_caches / "qwen.safetensors")

    def perfect(t, meta):  # a teacher whose top-1 is always the gold token
        t["top_idx"][..., 0] = t["answer_ids"]
    oracle = rewrite(kd_caches / "qwen.safetensors", tmp_path / "oracle.safetensors", perfect)
    rows = compare.main([llama, qwen, oracle])
    out = capsys.readouterr().out
    for r, slot in zip(rows, ("llama", "qwen")):
        side = json.loads((kd_caches / f"{slot}.json").read_text())
        assert r["n"] == 6 and r["teacher_hash"] == side["teacher_hash"]
        t = load_file(str(kd_caches / f"{slot}.safetensors"))  # counted here example by example
        hits = [int(t["top_idx"][i, 0, 0]) == int(t["answer_ids"][i, 0]) for i in range(len(t["answer_ids"]))]
        assert r["top1_first"] == pytest.approx(sum(hits) / len(hits)) and r["entropy"] > 0
        assert f"{r['path']}: n=6 teacher_hash={r['teacher_hash'][:16]} top-1 = gold first token" in out
    assert rows[2]["top1_first"] == rows[2]["top1_all"] == 1.0 and rows[2]["entropy"] == rows[1]["entropy"]

    def shuffled(t, meta):
        meta["ids"] = json.dumps(json.loads(meta["ids"])[::-1])
    other = rewrite(kd_caches / "qwen.safetensors", tmp_path / "other.safetensors", shuffled)
    with pytest.raises(SystemExit, match="hold different train examples"):
        compare.main([qwen, other])


def results(ev: dict) -> list[dict]:
    """The model x dataset results of a metrics/eval.json."""
    return [r for slot in ("llama", "qwen") for r in ev[slot].values() if isinstance(r, dict) and "text" in r]


@pytest.fixture
def sweep(tmp_path, monkeypatch) -> Path:
    """A git + DVC repo whose tags hold the committed metrics/eval.json: m32 as it is, m16 as if
    from `-S stage3.M=16` (positions 16 where they were 32, half the bytes, latent F1 0.5), and
    empty without it."""
    from dvc.repo import Repo

    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(tmp_path)
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "ci@example.com")
    git(tmp_path, "config", "user.name", "ci")
    Repo.init(str(tmp_path))
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "empty")
    git(tmp_path, "tag", "empty")
    ev = json.loads((REPO / "metrics/eval.json").read_text())
    (tmp_path / "metrics").mkdir()
    for tag in ("m32", "m16"):
        if tag == "m16":
            for r in results(ev):
                if r["positions"]["M"] == 32:
                    r["positions"]["M"], r["bytes"]["ids"]["per_model"] = 16, r["bytes"]["ids"]["per_model"] / 2
                r["latent_ids"]["f1"] = 0.5
        (tmp_path / "metrics/eval.json").write_text(json.dumps(ev))
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-qm", tag)
        git(tmp_path, "tag", tag)
    return tmp_path


def test_frontier_table_reads_the_evaluate_metrics_of_each_revision(sweep):
    """The default sender's metrics (latent_ids, bytes.ids): the KeyError this script once hit."""
    table = bench("frontier_table")
    committed = json.loads((REPO / "metrics/eval.json").read_text())
    rows = table.main(["--names", "m32", "m16", "--out", "out"])
    assert len(rows) == 2 * len(results(committed))
    for r in rows:
        want = committed[r["model"]][r["dataset"]]
        assert r["code"] == "ids" and r["text_f1"] == want["text"]["f1"]
        assert r["context_bytes"] == want["context_bytes"] and r["m_token_bytes"] == want["m_token"]["bytes"]
        if r["rev"] == "m32":
            assert r["M"] == want["positions"]["M"] and r["latent_f1"] == want["latent_ids"]["f1"]
            assert r["wire_bytes"] == want["bytes"]["ids"]["per_model"]
        else:
            assert r["M"] in (16, 64) and r["latent_f1"] == 0.5  # hotpotqa_distractor keeps its own M
    assert [(r["model"], r["dataset"], r["M"]) for r in rows] == sorted((r["model"], r["dataset"], r["M"]) for r in rows)
    md = (sweep / "out/frontier.md").read_text().splitlines()
    assert md[0].startswith("| rev | M | model | dataset |") and len(md) == 2 + len(rows)
    assert "| m16 | 16 | qwen | squad |" in "\n".join(md)
    assert json.loads((sweep / "out/frontier.json").read_text()) == rows
    assert (sweep / "out/frontier.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match=r"empty: no metrics/eval.json"):
        table.main(["--names", "m32", "empty", "--out", "out"])


def test_gpu_check_dry_run_prepares_a_copy_with_every_stage(tmp_path):
    """ALLOW_CPU=1 DRY=1: the copy's params (data.root absolute, the overrides, validated) and its
    stages, which are those of dvc.yaml in order (the stage list it once lacked `pick` from)."""
    env = {**os.environ, "ALLOW_CPU": "1", "DRY": "1", "KEEP": "1", "PY": sys.executable,
           "LATENTWIRE_DATA": str(tmp_path), "TMPDIR": str(tmp_path)}
    r = subprocess.run([str(REPO / "bench/gpu_check.sh"), "stage3.M=16", "train.batch_size=2"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    stages = []
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        stages += [f"{name}@{key}" for key in stage["foreach"]] if "foreach" in stage else [name]
    assert f"gpu_check: would run {' '.join(stages)}\n" in r.stdout
    (work,) = tmp_path.glob("latentwire-gpu-check.*")
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params["data"]["root"] == str(tmp_path) and params["stage3"]["M"] == 16
    assert params["train"]["batch_size"] == 2
    assert not (work / "data").exists() and not (work / "metrics").exists()  # nothing ran

    bad = subprocess.run([str(REPO / "bench/gpu_check.sh"), "stage3.nope=1"], env={**env, "KEEP": "0"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown key(s) ['params.stage3.nope']" in bad.stderr


def test_ledger_zeroes_only_the_receiver_parts_it_names(tmp_path):
    import torch

    ledger = bench("ledger")
    src = tmp_path / "best"
    src.mkdir()
    state = {"codec.adapters.qwen.pos": torch.ones(4, 3), "codec.adapters.qwen.delta.0.weight": torch.ones(2, 3),
             "codec.adapters.qwen.delta.2.weight": torch.ones(3, 2), "codec.adapters.qwen.delta.2.bias": torch.ones(3)}
    save_file(state, str(src / "model.safetensors"))
    (src / "meta.json").write_text("{}")
    ledger.copy_checkpoint(src, tmp_path / "pos", ("pos",))
    got = load_file(str(tmp_path / "pos/model.safetensors"))
    assert got["codec.adapters.qwen.pos"].abs().sum() == 0 and got["codec.adapters.qwen.delta.2.bias"].sum() == 3
    ledger.copy_checkpoint(src, tmp_path / "both", ("pos", "delta"))
    got = load_file(str(tmp_path / "both/model.safetensors"))
    assert [k for k, v in got.items() if v.abs().sum() > 0] == ["codec.adapters.qwen.delta.0.weight"]
    assert (tmp_path / "both/meta.json").is_file() and load_file(str(src / "model.safetensors"))["codec.adapters.qwen.pos"].sum() == 12
    (src / "optimizer.safetensors").write_bytes(b"resume state")  # a last/ folder: not a checkpoint to read
    ledger.copy_checkpoint(src, tmp_path / "copy", ())
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["meta.json", "model.safetensors"]
    assert all(v.sum() > 0 for v in load_file(str(tmp_path / "copy/model.safetensors")).values())
    save_file({"encoder.layer.weight": torch.ones(2)}, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="no .*pos"):
        ledger.copy_checkpoint(src, tmp_path / "none", ("pos",))


def test_ledger_tables_only_levers_measured_against_this_default(tmp_path):
    ledger = bench("ledger")
    answers = tmp_path / "predictions.jsonl"
    answers.write_text('{"model": "qwen", "dataset": "squad", "id": "a", "f1_latent_ids": 0.5}\n')
    measured = {"lever": "adaptive_K", "default": ledger.default_key(answers)}
    assert ledger.current(measured, answers)
    assert not ledger.current({"lever": "adaptive_K"}, answers)  # a result from before the key was kept
    answers.write_text('{"model": "qwen", "dataset": "squad", "id": "a", "f1_latent_ids": 0.0}\n')  # a new repro
    assert not ledger.current(measured, answers)


def test_ledger_contribution_reads_with_the_lever_minus_without():
    ledger = bench("ledger")
    default = [{"model": "qwen", "dataset": ds, "id": f"{ds}{i}", "title": f"t{i % 3}", "f1_latent_ids": 0.5}
               for ds in ("squad", "nq") for i in range(6)]
    run = [{**p, "f1_latent_ids": 0.75 if p["dataset"] == "squad" else 0.5} for p in default]
    removed = ledger.contribution(default, run, added=False)["qwen"]   # the run lacks the lever: it did better
    added = ledger.contribution(default, run, added=True)["qwen"]      # the run has the lever
    assert removed["squad"]["diff"] == -0.25 and added["squad"]["diff"] == 0.25 and added["nq"]["diff"] == 0
    assert added["pooled"]["diff"] == 0.125 and added["pooled"]["changed"] == 6 and added["pooled"]["clusters"] == 6
    with pytest.raises(ValueError, match="other questions"):
        ledger.contribution(default, run[1:], added=True)
    # another sender's latent has another column (the byte encoder's: its precision)
    codes = [{k: v for k, v in p.items() if k != "f1_latent_ids"} | {"f1_latent_int4": 0.0} for p in default]
    paired = ledger.contribution(default, codes, added=True, columns=("f1_latent_ids", "f1_latent_int4"))["qwen"]
    assert paired["pooled"]["diff"] == -0.5 and paired["pooled"]["n"] == 12
    with pytest.raises(ValueError, match="other questions"):  # read under the default's column: no answers
        ledger.contribution(default, codes, added=True)


def test_ledger_reads_each_runs_latent_column(tmp_path):
    ledger = bench("ledger")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["root"] = str((REPO / raw["data"]["root"]).resolve())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert ledger.variant(tmp_path) == "f1_latent_ids"
    for k, v in ledger.BYTES.items():  # the byte encoder's levers' own overrides
        ledger.set_key(raw, k, v)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert ledger.variant(tmp_path) == f"f1_latent_int{raw['bytes']['bits']}"
    assert {ledger.LEVERS[n].against for n in ("deeper_byte_encoder", "shared_private")} == {"byte_encoder"}

"""The curriculum on tiny models: kd cache -> stage1 (M=8) -> stage2 (M=6) -> stage3 (M=4) ->
latent evaluation; resume after an interrupted stage; refusal of a mismatched checkpoint."""
import json
import re
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from latentwire import evaluate, kd, train
from latentwire.config import load_params
from latentwire.latent import LatentWire
from tiny import fit_pick

REPO = Path(__file__).resolve().parents[1]
WORDS = "river city king war year music team school book film ship moon".split()


def rows(n: int, dataset: str):
    out = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 5 + 3) % len(WORDS)]
        out.append({"id": f"{dataset}-{i}", "dataset": dataset, "title": f"t{i}",
                    "question": f"What is the {a}?", "context": f"The {a} is the {b}. Number {i}.",
                    "answers": [f"the {b}"]})
    return out


@pytest.fixture(params=["ids", "bytes"])
def project(request, tmp_path, tiny_models):
    """A tiny project with the default sender (ids: the pick stage has run) or the seed's (bytes)."""
    return make_project(tmp_path, tiny_models, request.param)


def make_project(tmp_path: Path, tiny_models: dict, kind: str, train: dict | None = None) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])},
                     "qwen": {"source": "local", "path": str(tiny_models["qwen"])}}
    raw["encoder"]["kind"] = kind
    raw["bytes"].update(d_z=32, layers=1, heads=2, max_bytes=96, hint_buckets=4, d_wire=8)
    if kind == "bytes":  # the byte encoder reads every dataset at stage3.M (config.py says so)
        for d in raw["data"]["datasets"].values():
            d["M"] = None
    raw["pick"].update(spans=[4], hidden=8, epochs=2)
    raw["kd"] = {"k": 4, "K_max": 3, "batch_size": 4}
    raw["train"] = {"batch_size": 4, "dev_examples": 4, "eval_every": 2, "save_every": 1,
                    "lr": 3e-3, **(train or {})}
    raw["stage1"] = {"M": 8, "epochs": 1, "K": 1, "kd": 1.0, "ce": 0.0}
    raw["stage2"] = {"M": 6, "epochs": 1, "K": 1, "kd": 1.0, "ce": 1.0}
    raw["stage3"] = {"M": 4, "epochs": 1, "K": 2, "kd": 1.0, "ce": 1.0}
    raw["evaluate"] = {"max_new_tokens": 3, "batch_size": 4, "max_examples": None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "data/mix").mkdir(parents=True)
    for split, rs in (("train", rows(12, "squad") + rows(8, "nq")), ("eval", rows(3, "squad") + rows(3, "nq"))):
        (tmp_path / f"data/mix/{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    if kind == "ids":
        fit_pick(tmp_path)
    return tmp_path


def run_stage(project: Path, stage: str, monkeypatch) -> dict:
    monkeypatch.chdir(project)
    return train.main(stage, "params.yaml", ".")


def test_curriculum_end_to_end(project, monkeypatch):
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    m1 = run_stage(project, "stage1", monkeypatch)
    # 16 train rows / batch 4 = 4 steps; dev validated at steps 2 and 4
    assert m1["steps"] == 4 and m1["M"] == 8 and m1["best"]["step"] in (2, 4)
    curve = (project / "metrics/train/stage1_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and len(curve) == 5 and "llama/kd" in curve[0]
    live = (project / "dvclive/stage1/plots/metrics/loss.tsv").read_text().splitlines()
    assert live[0] == "step\tloss" and [r.split("\t")[0] for r in live[1:]] == ["1", "2", "3", "4"]
    assert not list(project.rglob("dvc.yaml"))  # dvclive never writes one
    assert json.loads((project / "models/stage1/best/meta.json").read_text())["M"] == 8
    m2 = run_stage(project, "stage2", monkeypatch)  # starts from stage1's best, resized 8 -> 6
    assert m2["M"] == 6
    m3 = run_stage(project, "stage3", monkeypatch)
    assert m3["M"] == 4
    meta = json.loads((project / "models/stage3/best/meta.json").read_text())
    assert meta["M"] == 4 and meta["slots"] == ["llama", "qwen"]

    evaluate.main("params.yaml", part="text")
    metrics = evaluate.main("params.yaml", part="latent")
    ids = meta["kind"] == "ids"
    name = "ids" if ids else "int4"
    preds = [json.loads(l) for l in (project / "data/eval/predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(f"pred_latent_{name}" in p and "pred_text" in p for p in preds)
    for slot in ("llama", "qwen"):
        for ds in ("nq", "squad"):
            res = metrics[slot][ds]
            mine = [p for p in preds if p["model"] == slot and p["dataset"] == ds]
            # the latent's score is its examples' own, and its distinct ratio counts their answers
            assert res[f"latent_{name}"]["f1"] == pytest.approx(sum(p[f"f1_latent_{name}"] for p in mine) / 3)
            assert res[f"latent_{name}"]["distinct_ratio"] == len({p[f"pred_latent_{name}"] for p in mine}) / 3
            # the payload: ids 2 B a slot (<= 4 slots) + 7; bytes 4 slots x 8 values at int4 + a scale + 9
            assert res["bytes"][name]["max"] <= (2 * 4 + 7 if ids else 5 + 2 + 2 + 16 + 2)
            assert res["equal_byte"]["bytes"] == res["bytes"][name]["per_model"]
            assert res["positions"]["latent_max"] <= 4
            assert res["tokens_over_M"] == pytest.approx(res["prompt_tokens"] / 4)
            assert 0 < res["m_token"]["bytes"] <= max(len(r["context"].encode()) for r in rows(3, ds))
            assert ("selected_text" in res) == ids
    frontier = (project / "metrics/frontier.csv").read_text().splitlines()
    assert frontier[0] == "model,dataset,variant,bytes,f1,em" and len(frontier) == 1 + 2 * 2 * (6 if ids else 4)


def kill_and_resume(project: Path, monkeypatch, check=None) -> dict:
    """stage1 afresh, its 3rd optimiser step interrupted (`check(optimiser)` at every step before),
    then rerun: -> the resumed run's metrics."""
    calls, real_step = {"n": 0}, torch.optim.AdamW.step

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if check:
            check(self)
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    for p in ("models/stage1", "metrics/train"):  # models/pick stays: the ids sender's pick
        shutil.rmtree(project / p)
    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_stage(project, "stage1", monkeypatch)
    state = json.loads((project / "models/stage1/last/state.json").read_text())
    assert state["step"] == 2  # saved every step: steps 1 and 2 are durable
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    return run_stage(project, "stage1", monkeypatch)


def test_stage_resumes_after_interruption(project, monkeypatch):
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    full = run_stage(project, "stage1", monkeypatch)
    ref = (project / "models/stage1/best/model.safetensors").read_bytes()

    resumed = kill_and_resume(project, monkeypatch)
    assert resumed["events"] == [{"resumed_at_step": 2}]
    assert resumed["steps"] == full["steps"]
    assert resumed["final"]["loss"] == pytest.approx(full["final"]["loss"], rel=1e-4)
    live = (project / "dvclive/stage1/plots/metrics/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in live[1:]] == ["1", "2", "3", "4"]  # steps 1-2 replayed on resume
    assert (project / "models/stage1/best/model.safetensors").read_bytes() == ref


def test_receiver_lr_embedding_trains_each_receiver_at_its_embeddings_scale(tmp_path, tiny_models, monkeypatch):
    """train.receiver_lr embedding: a receiver whose embeddings are 10x smaller (a copy of the tiny
    qwen, its embeddings scaled) trains at 1/10 of the codebook model's lr, which stays train.lr, and
    its adapter moves that much less; a killed stage resumes its per-receiver optimiser exactly."""
    from safetensors.torch import load_file, save_file

    small = tmp_path / "qwen_small"
    shutil.copytree(tiny_models["qwen"], small)
    state = load_file(str(small / "model.safetensors"))
    key = next(k for k in state if k.endswith("embed_tokens.weight"))
    save_file({**state, key: state[key] * 0.1}, str(small / "model.safetensors"), metadata={"format": "pt"})
    scale = {s: load_file(str(f / "model.safetensors"))[key].abs().mean().item()
             for s, f in (("llama", tiny_models["llama"]), ("qwen", small))}
    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p", {**tiny_models, "qwen": small}, "ids", {"receiver_lr": "embedding"})
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    full = run_stage(project, "stage1", monkeypatch)
    assert full["receiver_lrs"]["llama"] == 3e-3
    assert full["receiver_lrs"]["qwen"] == pytest.approx(3e-3 * scale["qwen"] / scale["llama"], rel=1e-5)
    assert 0.05 < scale["qwen"] / scale["llama"] < 0.2
    last = load_file(str(project / "models/stage1/last/model.safetensors"))
    moved = {s: last[f"codec.adapters.{s}.pos"].abs().max().item()  # from zero: Adam moves each coordinate
             for s in ("llama", "qwen")}                            # about its lr a step
    assert moved["qwen"] / moved["llama"] == pytest.approx(scale["qwen"] / scale["llama"], rel=0.5)
    ref = (project / "models/stage1/best/model.safetensors").read_bytes()

    def groups(opt):  # one group per receiver, llama's first, at the schedule's peak
        assert [g["initial_lr"] for g in opt.param_groups] == pytest.approx(
            [3e-3, 3e-3 * scale["qwen"] / scale["llama"]], rel=1e-5)

    resumed = kill_and_resume(project, monkeypatch, check=groups)
    assert resumed["events"] == [{"resumed_at_step": 2}]
    assert (project / "models/stage1/best/model.safetensors").read_bytes() == ref


def test_mismatched_checkpoint_is_refused(project, monkeypatch):
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    run_stage(project, "stage1", monkeypatch)
    params = load_params("params.yaml")
    hidden = {"llama": 32, "qwen": 32}
    if params.encoder.kind == "ids":  # another codebook; the byte encoder's knobs are not its own
        params.bytes.d_z = 64
        LatentWire(params, 8, hidden=hidden).load(project / "models/stage1/best")
        params.ids.feature_model, expected = "qwen", "feature_model: checkpoint 'llama' != params 'qwen'"
    else:
        params.bytes.d_z, expected = 64, "d_z: checkpoint 32 != params 64"
    lw = LatentWire(params, 8, hidden=hidden, target_norm={"llama": 1.0, "qwen": 1.0})
    with pytest.raises(ValueError, match=re.escape(expected)):
        lw.load(project / "models/stage1/best")


def test_deterministic_flag_reaches_torch(project, monkeypatch):
    """train.deterministic: true turns on torch's deterministic algorithms (and cuBLAS's
    workspace setting, cudnn) in the stage's setup; training still runs on CPU."""
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"].update(deterministic=True, max_steps=1)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        st = train.Stage(load_params("params.yaml"), "stage1", project)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        st.fit()
        assert st.step == 1
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.mark.parametrize("train_section, match", [
    ({"determinstic": True}, r"unknown key\(s\) \['params.train.determinstic'\]"),
    ({"deterministic": "yes"}, r"params.train.deterministic: expected bool"),
])
def test_deterministic_key_is_checked(tmp_path, train_section, match):
    from latentwire.config import ConfigError
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(train_section)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=match):
        load_params(tmp_path / "p.yaml")
    assert load_params(REPO / "params.yaml").train.deterministic is False


def test_state_saved_by_other_code_is_not_resumed(project, monkeypatch):
    """A bug fix reruns the stage under DVC; its old last/ must not be resumed."""
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    params = load_params("params.yaml")
    key = train.run_key(params, "stage1", None, {"llama": "k"})
    monkeypatch.setattr(train, "package_sha256", lambda: "other code")
    assert train.run_key(params, "stage1", None, {"llama": "k"}) != key


def test_stage_trains_its_slots_on_pool_rows(project, monkeypatch):
    """<stage>.slots: a slot left out keeps the previous stage's adapter (no gradient, no weight
    decay) and is not validated; <stage>.pool_rows: rows of the pool's train part join the train
    rows, CE only (answers[0] + eos, no KD term), never a train-mix row or the pick's dev tenth."""
    from safetensors.torch import load_file
    from latentwire.adapter import resize_rows
    from latentwire.sender import is_pick_dev
    monkeypatch.chdir(project)
    pool = rows(12, "squad")[:4] + [dict(r, id=f"pool-{i}", title=f"p{i}") for i, r in enumerate(rows(30, "nq"))]
    (project / "data/mix/pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    usable = [r for r in pool[4:] if not is_pick_dev(r)]
    assert 8 <= len(usable) < 30  # the fixture's titles hold some pick-dev rows: they must stay out
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["stage2"].update(slots=["llama"], pool_rows=8, kd=1.0, ce=1.0)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    run_stage(project, "stage1", monkeypatch)
    m2 = run_stage(project, "stage2", monkeypatch)
    assert m2["train_examples"] == 16 + 8 and m2["pool_rows"] == 8 and m2["slots"] == ["llama"]
    assert m2["steps"] == 6  # 24 rows / batch 4
    curve = (project / "metrics/train/stage2_curve.csv").read_text().splitlines()[0].split(",")
    assert "llama/ce" in curve and not [c for c in curve if c.startswith("qwen/")]
    before = load_file(project / "models/stage1/best/model.safetensors")
    after = load_file(project / "models/stage2/last/model.safetensors")
    same = {k: torch.equal(v, resize_rows(before[k], 6) if k.endswith(".pos") else before[k])
            for k, v in after.items() if k in before}
    # qwen: stage1's weights (its slot positions resized to M = 6), untouched; llama: trained
    qwen, llama = [k for k in same if ".qwen." in k], [k for k in same if ".llama." in k]
    assert qwen and all(same[k] for k in qwen)
    assert llama and not all(same[k] for k in llama)

    st = train.Stage(load_params("params.yaml"), "stage2", project)
    drawn = {r["id"] for r in st.pool_rows}
    assert drawn <= {r["id"] for r in usable} and len(drawn) == 8  # no mix row, no pick-dev row
    batch = [st.pool_rows[0], st.train_rows[0]]
    t = st.targets("llama", batch)
    tok = st.llms["llama"].tokenizer
    want = kd.answer_tokens(tok, batch[0]["answers"][0], 3)
    assert t["has_kd"].tolist() == [False, True]
    assert t["answer_ids"][0, :len(want)].tolist() == want and t["answer_mask"][0].sum() == len(want)
    # a pool row's loss is its CE alone: the KD term sees only rows with a teacher
    logits = torch.randn(2, 3, len(tok))
    logs: dict = {}
    sc = st.sc
    whole = st.slot_loss("llama", logits, t, logs)
    only_pool = st.slot_loss("llama", logits[:1], {k: v[:1] for k, v in t.items()}, {})
    ce0 = train.ce_loss(logits[:1], t["answer_ids"][:1], t["answer_mask"][:1]).mean()
    assert only_pool.item() == pytest.approx(sc.ce * ce0.item(), rel=1e-5)
    assert whole.item() > sc.ce * train.ce_loss(logits, t["answer_ids"], t["answer_mask"]).mean().item()


def test_a_receiver_no_stage_trains_needs_no_kd_cache(project, monkeypatch):
    """The default's curriculum trains SmolLM2's receiver alone: teacher-kd-cache builds no Qwen
    cache, every stage trains without one, and Qwen's adapter stays at its start (the correction's
    last layer and the slot positions at zero: the picked text's own embeddings)."""
    from safetensors.torch import load_file
    monkeypatch.chdir(project)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for stage in ("stage1", "stage2", "stage3"):
        raw[stage]["slots"] = ["llama"]
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    assert list(kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")) == ["llama"]
    assert not (project / "data/kd/qwen.safetensors").exists()
    for stage in ("stage1", "stage2", "stage3"):
        assert run_stage(project, stage, monkeypatch)["slots"] == ["llama"]
    w = load_file(project / "models/stage3/best/model.safetensors")
    qwen = {k: v for k, v in w.items() if ".qwen." in k}
    llama = {k: v for k, v in w.items() if ".llama." in k}
    if raw["encoder"]["kind"] == "ids":
        assert qwen and all(not v.any() for k, v in qwen.items() if k.endswith(".pos") or ".delta.2." in k)
        assert any(v.any() for k, v in llama.items() if k.endswith(".pos") or ".delta.2." in k)
    # a stage told to train Qwen without its cache says which file to build
    raw["stage3"]["slots"] = None
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"qwen\.safetensors"):
        run_stage(project, "stage3", monkeypatch)


def test_stage_slots_and_pool_rows_are_checked(tmp_path):
    from latentwire.config import ConfigError
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["stage3"]["slots"] = ["gemma"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"stage3.slots: no such model slot 'gemma'"):
        load_params(tmp_path / "p.yaml")
    (tmp_path / "pool.jsonl").write_text(json.dumps(rows(1, "nq")[0]) + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl: pool_rows = 5, but only [01] rows"):
        train.pool_sample(tmp_path / "pool.jsonl", 5, 0, set())

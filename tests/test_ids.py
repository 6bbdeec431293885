"""encoder.kind ids (the default) on the tiny models: the pick stage, the curriculum, the
evaluation from payload bytes, the budget every variant shares, and send | receive."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from latentwire import baselines, evaluate, kd, pick, sender, train
from latentwire.config import load_params
from latentwire.latent import Receiver
from latentwire.llm import load_frozen
from tiny import qa_rows as rows  # answer in the third sentence of each context

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("ids")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])},
                     "qwen": {"source": "local", "path": str(tiny_models["qwen"])}}
    assert raw["encoder"]["kind"] == "ids"  # the default sender
    raw["pick"].update(spans=[6], hidden=8, epochs=3)
    raw["kd"] = {"k": 4, "K_max": 3, "batch_size": 4}
    raw["train"].update(batch_size=4, dev_examples=4, eval_every=2, save_every=1, lr=3e-3)
    raw["stage1"] = {"M": 12, "epochs": 1, "K": 1, "kd": 1.0, "ce": 0.0}
    raw["stage2"] = {"M": 10, "epochs": 1, "K": 1, "kd": 1.0, "ce": 1.0}
    raw["stage3"] = {"M": 8, "epochs": 1, "K": 2, "kd": 1.0, "ce": 1.0}
    raw["evaluate"] = {"max_new_tokens": 3, "batch_size": 4, "max_examples": None}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "data/mix").mkdir(parents=True)
    splits = {"train": rows(8, "squad") + rows(4, "nq"), "eval": rows(3, "squad", 20) + rows(3, "nq", 30),
              "pool": rows(40, "squad", 100)}
    for split, rs in splits.items():
        (root / f"data/mix/{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return root


@pytest.fixture(scope="module")
def trained(project, one_thread):
    import os
    old = os.getcwd()
    os.chdir(project)
    try:
        pm = sender.main("params.yaml")
        kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
        for stage in ("stage1", "stage2", "stage3"):
            train.main(stage, "params.yaml", ".")
        evaluate.main("params.yaml", part="text")
        metrics = evaluate.main("params.yaml", part="latent")
    finally:
        os.chdir(old)
    return pm, metrics


def test_pick_stage_fits_and_reuses_its_features(project, trained):
    pm, _ = trained
    assert pm["pool"] == 40 and pm["train_examples"] + pm["dev_examples"] == 40
    assert (project / "models/pick/pick.safetensors").is_file()
    # the features are computed once: a second fit reads them back, and fits the same model
    again = sender.main(str(project / "params.yaml"), str(project / "data/mix/pool.jsonl"),
                        str(project / "data/pick/features.safetensors"), str(project / "models/pick2"),
                        str(project / "pick2.json"))
    assert again["loss"] == pm["loss"]
    a = (project / "models/pick/pick.safetensors").read_bytes()
    assert a == (project / "models/pick2/pick.safetensors").read_bytes()


def test_latent_is_decoded_from_measured_payloads(trained):
    _, m = trained
    assert m["wire"]["ids"]["bits"] == 16
    for slot in ("llama", "qwen"):
        for ds in ("squad", "nq"):
            res = m[slot][ds]
            # 8 slots at most: 2 bytes each + 7 of header and checksum
            assert res["bytes"]["ids"]["max"] <= 2 * 8 + 7
            assert res["positions"]["latent_max"] <= 8
            assert res["equal_byte"]["bytes"] == res["bytes"]["ids"]["per_model"]
            assert res["slots"]["exact"] == 1.0
            assert set(res["ci"]) == {"text", "m_token", "equal_byte", "selected_text", "selected_equal_byte"}
        assert m[slot]["pooled"]["n"] == 6
    assert set(m["pick"]) == {"squad", "nq"} and m["pick"]["squad"]["n"] == 3


def test_every_variant_carries_the_same_question_and_template(project, trained):
    p = load_params(project / "params.yaml")
    llm = load_frozen("qwen", p.models["qwen"], p.prompt)
    row = rows(1, "squad")[0]
    v = baselines.text_variants(llm, row, 4, 23, selected="The river Seine")
    tail = f"\nQuestion: {row['question']}" + llm.template.suffix
    head = llm.template.prefix + "Context: "
    for name, prompt in v.items():
        assert prompt.startswith(head) and prompt.endswith(tail), name
    assert set(v) == {"text", "m_token", "equal_byte", "selected_text", "selected_equal_byte"}
    assert len(v["equal_byte"][len(head):-len(tail)].encode()) <= 23
    # the latent's receiver puts the very same question text after its slots
    rec = Receiver(llm)
    slots = torch.zeros(3, llm.model.config.hidden_size)
    rest = rec.rest(slots, row["question"])
    tail_ids = llm.tokenizer(tail, add_special_tokens=False)["input_ids"]
    want = llm.model.get_input_embeddings()(torch.tensor(tail_ids))
    assert torch.equal(rest[-len(tail_ids):], want)
    assert len(rest) == len(rec.context_ids) + 3 + len(tail_ids)


@pytest.mark.parametrize("M", [1, 2, 5, 8, 13, 32])
def test_at_most_M_positions_whatever_the_context(project, trained, M):
    p = load_params(project / "params.yaml")
    s = sender.Sender.load(p, project / "models/pick", M)
    long = " ".join(r["context"] for r in rows(12, "x"))
    for ctx in (long, "Short one.", long.replace(". ", " ")):
        got = s.pick("Which river flows through Paris?", ctx)
        assert 0 < len(got.ids) <= M
        # the separators between spans are counted: ids = span tokens + one per gap
        gaps = sum(1 for a, b in zip(got.spans, got.spans[1:]) if a[1] < b[0])
        assert len(got.ids) == sum(b - a for a, b in got.spans) + gaps


def test_pick_recall_on_a_hand_made_example(project, trained):
    p = load_params(project / "params.yaml")
    tok = sender.load_tokenizer(p)
    ctx = "Paris is the capital of France. The Seine flows through Paris."
    r = pick.read(tok, "Which river flows through Paris?", ctx)
    second = [i for i, s in enumerate(r.sentence) if s == 1]
    first = [i for i, s in enumerate(r.sentence) if s == 0]
    assert first and second and r.sentence == sorted(r.sentence)
    span2, span1 = [(second[0], second[-1] + 1)], [(first[0], first[-1] + 1)]
    assert pick.contains_answer(pick.span_texts(r, ctx, span2), ["Seine"])
    assert not pick.contains_answer(pick.span_texts(r, ctx, span1), ["Seine"])
    # an answer cut in two by the span's end is not inside it
    assert not pick.contains_answer(pick.span_texts(r, ctx, [(second[0], second[0] + 1)]), ["The Seine flows"])
    assert pick.contains_answer(["the  SEINE flows"], ["The Seine"])  # case and spacing ignored


def test_send_receive_across_processes_matches_the_evaluation(project, trained):
    row = rows(3, "squad", 20)[0]
    env_cmd = [sys.executable, "-m", "latentwire"]
    sent = subprocess.run(env_cmd + ["send", "-q", row["question"], "-c", row["context"], "--out", "-"],
                          cwd=project, capture_output=True, check=True)
    assert 7 < len(sent.stdout) <= 2 * 8 + 7
    got = subprocess.run(env_cmd + ["receive", "-m", "qwen", "-q", row["question"]], cwd=project,
                         input=sent.stdout, capture_output=True, check=True)
    preds = [json.loads(x) for x in (project / "data/eval/predictions.jsonl").read_text().splitlines()]
    want = next(p["pred_latent_ids"] for p in preds if p["model"] == "qwen" and p["id"] == row["id"])
    assert got.stdout.decode().strip() == want
    bad = subprocess.run(env_cmd + ["receive", "-m", "qwen", "-q", "x"], cwd=project,
                         input=sent.stdout[:-1], capture_output=True)
    assert bad.returncode == 1 and b"does not match its header" in bad.stderr


def test_python_api_round_trip(project, trained, monkeypatch):
    from latentwire.transfer import load_receiver, load_sender
    monkeypatch.chdir(project)
    s, r = load_sender(), load_receiver(slot="llama")
    row = rows(3, "nq", 30)[1]
    data = s.send(row["question"], row["context"])
    assert isinstance(data, bytes)
    preds = [json.loads(x) for x in (project / "data/eval/predictions.jsonl").read_text().splitlines()]
    want = next(p["pred_latent_ids"] for p in preds if p["model"] == "llama" and p["id"] == row["id"])
    assert r.receive(data, row["question"]) == want
    with pytest.raises(ValueError, match="context is empty"):
        s.send("q?", "  ")


def test_latency_benchmark_runs_on_the_tiny_models(project, trained, tmp_path):
    """bench/latency.py must not rot: it runs here in seconds and writes every field."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("latency", REPO / "bench" / "latency.py")
    latency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency)
    out = tmp_path / "latency.json"
    r = latency.main(["--params", str(project / "params.yaml"), "--eval", str(project / "data/mix/eval.jsonl"),
                      "--checkpoint", str(project / "models/stage3/best"), "--pick", str(project / "models/pick"),
                      "--n", "4", "--threads", "1", "--out", str(out), "--long", "nq", "--n-long", "2"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r)) and out.with_suffix(".md").is_file()
    assert r["n"] == 3 and r["threads"] == 1 and r["payload_bytes_mean"] <= 2 * 8 + 7  # the 3 squad rows
    long = r["long"]["nq"]  # the long dataset alone, at batch 1
    assert long["n"] == 2 and set(long["models"]["qwen"]) == {"batch1"} and "nq" in out.with_suffix(".md").read_text()
    assert r["packed_linears"] == {"llama": 15, "qwen": 15}  # timed as evaluate runs them (evaluate.prepack)
    for slot in ("llama", "qwen"):
        assert set(r["models"][slot]) == {"batch1"}  # 4 prompts: no batch of 8
        for b in ("batch1",):
            m = r["models"][slot][b]
            assert set(m) >= {"text_ttft_ms", "latent_sender_ms", "latent_unpack_adapter_ms", "latent_prefill_ms",
                              "latent_trip_ms", "trip_over_text", "token_compression", "break_even_receivers"}
            # the trip is the sum of its parts, batch by batch
            assert m["latent_trip_ms"]["median"] >= m["latent_prefill_ms"]["median"]
            assert m["token_compression"] > 1  # the tiny contexts are longer than M=8 slots
    assert r["all_receivers_batch1"]["trip_ms"] > 0


def test_inputs_are_blind_to_the_answers(project, trained):
    """The same examples with other answer strings give byte-identical payloads and prompts
    for every variant: no input is built with the answer."""
    from latentwire.latent import LatentWire
    p = load_params(project / "params.yaml")
    lw = LatentWire.from_checkpoint(p, project / "models/stage3/best", 8, project / "models/pick")
    a = rows(3, "squad", 20) + rows(3, "nq", 30)
    b = [{**r, "answers": ["zz " + r["answers"][0][::-1], "another"]} for r in a]
    sent_a, sent_b = evaluate.send_all(lw, a, 4), evaluate.send_all(lw, b, 4)
    assert {k: v[0] for k, v in sent_a.items()} == {k: v[0] for k, v in sent_b.items()}
    llm = load_frozen("qwen", p.models["qwen"], p.prompt)
    for ra, rb in zip(a, b):
        sa, sb = lw.codec.selected_text(ra), lw.codec.selected_text(rb)
        assert sa == sb
        B = len(sent_a[ra["id"]][0])
        assert baselines.text_variants(llm, ra, 8, B, sa) == baselines.text_variants(llm, rb, 8, B, sb)


def test_a_dataset_with_its_own_M_gets_that_many_positions(project, trained):
    from latentwire.latent import LatentWire
    p = load_params(project / "params.yaml")
    p.data.datasets["long"] = dataclasses.replace(next(iter(p.data.datasets.values())), M=20)
    lw = LatentWire.from_checkpoint(p, project / "models/stage3/best", 8, project / "models/pick")
    long_ctx = " ".join(r["context"] for r in rows(8, "x"))
    row = {**rows(1, "long")[0], "context": long_ctx}
    short = {**rows(1, "squad")[0], "context": long_ctx}
    (la, lb) = lw.codec.latents([row, short])
    assert len(la.ids) == 20 and len(lb.ids) == 8
    llm = load_frozen("llama", p.models["llama"], p.prompt)
    lw.attach(llm)
    assert lw.codec.soft("llama", la).shape[0] == 20  # slot positions interpolated past the trained M


def test_pick_lodo_benchmark_runs_on_the_tiny_models(project, trained, tmp_path):
    """bench/pick_lodo.py must not rot: each dataset left out once, read by a pick fitted on the rest."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pick_lodo", REPO / "bench" / "pick_lodo.py")
    lodo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lodo)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(12, "squad", 100) + rows(12, "nq", 200)))
    out = tmp_path / "lodo.md"
    r = lodo.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--features",
                   str(tmp_path / "f.safetensors"), "--pick", str(project / "models/pick"), "--n", "5", "--out", str(out)])
    assert set(r["datasets"]) == {"squad", "nq"}
    for held, other in (("squad", "nq"), ("nq", "squad")):
        res = r["datasets"][held]
        assert res["n"] == 5 and res["fit_on"] == [other] and res["answer_in_context"] == 1.0
        assert set(res) >= {"pick_recall", "lexical", "first_M"}
    assert "| squad | nq | 5 |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r

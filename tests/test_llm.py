"""Frozen LLM loading (local folder and the hub code path), prompt templates, GGUF parts."""
import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch

import tiny  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from latentwire.config import GGUFPart, ModelConfig, PromptConfig
from latentwire.llm import (ModelError, assemble_gguf, build_template, cache_root,
                            gguf_part_paths, load_frozen, model_folder)
from transformers import AutoTokenizer

PROMPT = PromptConfig(instruction="Answer with a span.",
                      example_context="The Eiffel Tower was completed in 1889.",
                      example_question="When was the Eiffel Tower completed?", example_answer="1889")
CONTEXT, QUESTION = "The Seine flows through Paris.", "Which river flows through Paris?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizers(tiny_models):
    return {k: AutoTokenizer.from_pretrained(p) for k, p in tiny_models.items()}


# ---------------------------------------------------------------- load_frozen

@pytest.mark.parametrize("kind", ["llama", "qwen"])
@pytest.mark.parametrize("source", ["local", "hub"])
def test_load_frozen(tiny_models, kind, source):
    folder = str(tiny_models[kind])
    cfg = (ModelConfig(source="local", path=folder) if source == "local"
           else ModelConfig(source="hub", hub_id=folder))  # a folder: the real from_pretrained path
    llm = load_frozen(kind, cfg, PROMPT)
    model, tok = llm.model, llm.tokenizer
    assert llm.slot == kind and llm.name == folder
    assert model.config.model_type == {"llama": "llama", "qwen": "qwen2"}[kind]
    params = list(model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.dtype == torch.float32 for p in params) and llm.device == torch.device("cpu")
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None
    if kind == "llama":  # the tiny llama tokenizer has no pad token: eos stands in
        assert tok.pad_token == tok.eos_token == "<eos>"
    else:
        assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
    stops = llm.stop_ids()
    assert tok.eos_token_id in stops and tok.convert_tokens_to_ids("<|im_end|>") in stops
    assert None not in stops and stops == sorted(set(stops))
    # the template is the model's chat template
    assert llm.template.prefix.startswith("<|im_start|>system\nAnswer with a span.<|im_end|>\n")

    w = model.get_input_embeddings().weight.detach().double()
    rows = [sum(x * x for x in row) ** 0.5 for row in w.tolist()]
    flat = w.flatten().tolist()
    mean = sum(flat) / len(flat)
    std = (sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)) ** 0.5
    stats = llm.embedding_stats()
    assert stats["mean_norm"] == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    assert stats["std"] == pytest.approx(std, rel=1e-5)
    assert stats["mean_norm"] > 0.5  # a real random init, not zeros


def test_load_frozen_dtype(tiny_models):
    llm = load_frozen("llama", ModelConfig(source="local", path=str(tiny_models["llama"]),
                                           dtype="bfloat16"), PROMPT)
    assert {p.dtype for p in llm.model.parameters()} == {torch.bfloat16}
    assert isinstance(llm.embedding_stats()["std"], float)


def test_load_missing_folder(tmp_path):
    missing = tmp_path / "no_model_here"
    with pytest.raises(ModelError) as e:
        load_frozen("llama", ModelConfig(source="local", path=str(missing)), PROMPT)
    assert "models.llama" in str(e.value) and str(missing) in str(e.value)


# ---------------------------------------------------------------- prompt template

def chat(tok, prompt: PromptConfig, context: str, question: str) -> str:
    messages = [{"role": "system", "content": prompt.instruction}]
    if prompt.example_context:
        messages += [{"role": "user", "content": f"Context: {prompt.example_context}\n"
                                                 f"Question: {prompt.example_question}"},
                     {"role": "assistant", "content": prompt.example_answer}]
    messages.append({"role": "user", "content": f"Context: {context}\nQuestion: {question}"})
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("kind", ["llama", "qwen"])
@pytest.mark.parametrize("shot", [True, False])
def test_chat_template(tokenizers, kind, shot):
    tok = tokenizers[kind]
    prompt = PROMPT if shot else PromptConfig(instruction=PROMPT.instruction, example_context="")
    t = build_template(tok, prompt)
    body = t.body(CONTEXT, QUESTION)
    assert body == f"Context: {CONTEXT}\nQuestion: {QUESTION}"
    assert t.prefix + body + t.suffix == t.render(CONTEXT, QUESTION) == chat(tok, prompt, CONTEXT, QUESTION)
    assert t.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert ("1889" in t.prefix) == shot and "\x00" not in t.prefix + t.suffix


def test_plain_template_without_chat(tokenizers):
    expected = ("Answer with a span.\n\n"
                "Context: The Eiffel Tower was completed in 1889.\n"
                "Question: When was the Eiffel Tower completed?\nAnswer: 1889\n\n"
                f"Context: {CONTEXT}\nQuestion: {QUESTION}\nAnswer:")
    off = PromptConfig(**{**PROMPT.__dict__, "use_chat_template": False})
    t = build_template(tokenizers["qwen"], off)
    assert t.render(CONTEXT, QUESTION) == expected
    assert t.suffix == "\nAnswer:" and t.render(CONTEXT, QUESTION).endswith("Answer:")

    no_chat = AutoTokenizer.from_pretrained(tokenizers["llama"].name_or_path)
    no_chat.chat_template = None  # a base model: the plain template even if asked for chat
    assert build_template(no_chat, PROMPT).render(CONTEXT, QUESTION) == expected
    zero = build_template(no_chat, PromptConfig(instruction="Answer with a span.", example_context=""))
    assert zero.render(CONTEXT, QUESTION) == f"Answer with a span.\n\nContext: {CONTEXT}\nQuestion: {QUESTION}\nAnswer:"


# ---------------------------------------------------------------- GGUF parts from PyPI packages

PART1, PART2 = b"GGUF\x03\x00" + bytes(range(200)), b"tail-part" * 50


@pytest.fixture
def fake_pkg(tmp_path, monkeypatch):
    """An installed-looking package holding two GGUF parts; importing it would fail the test."""
    name = "latentwire_fake_gguf_pkg"
    pkg = tmp_path / "site" / name
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the GGUF package must not be imported')\n")
    (pkg / "data" / "part01.bin").write_bytes(PART1)
    (pkg / "data" / "part02.bin").write_bytes(PART2)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield name, pkg
    sys.modules.pop(name, None)


def gguf_cfg(name, files, sha=None, data=b""):
    return ModelConfig(source="gguf-pypi", hub_id="tiny/gguf",
                       gguf=[GGUFPart(package=name, file=f) for f in files],
                       gguf_sha256=sha or hashlib.sha256(data).hexdigest())


def test_gguf_part_paths_without_import(fake_pkg):
    name, pkg = fake_pkg
    cfg = gguf_cfg(name, ["data/part02.bin", "data/part01.bin"], sha="0" * 64)
    paths = gguf_part_paths(cfg)
    assert [p.resolve() for p in paths] == [(pkg / "data/part02.bin").resolve(),
                                            (pkg / "data/part01.bin").resolve()]
    assert name not in sys.modules


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_assemble_gguf_concatenates_in_order(fake_pkg, tmp_path, order):
    name, _ = fake_pkg
    blobs = {1: PART1, 2: PART2}
    data = b"".join(blobs[i] for i in order)
    cfg = gguf_cfg(name, [f"data/part0{i}.bin" for i in order], data=data)
    out = tmp_path / "cache" / "gguf" / "model.gguf"
    assert assemble_gguf(cfg, out) == out
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf"]  # no temp file left
    assert name not in sys.modules


def test_assemble_single_part_in_place(fake_pkg, tmp_path):
    name, pkg = fake_pkg
    out = tmp_path / "cache" / "gguf" / "model.gguf"
    got = assemble_gguf(gguf_cfg(name, ["data/part01.bin"], data=PART1), out)
    assert got.resolve() == (pkg / "data/part01.bin").resolve() and not out.exists()


def test_assemble_wrong_sha(fake_pkg, tmp_path):
    name, pkg = fake_pkg
    cfg = gguf_cfg(name, ["data/part01.bin", "data/part02.bin"], data=PART2 + PART1)  # wrong order
    out = tmp_path / "cache" / "gguf" / "model.gguf"
    with pytest.raises(ModelError) as e:
        assemble_gguf(cfg, out)
    msg = str(e.value)
    assert "gguf_sha256" in msg and cfg.gguf_sha256 in msg
    assert "part01.bin" in msg and "part02.bin" in msg and str(pkg) in msg
    assert hashlib.sha256(PART1 + PART2).hexdigest() in msg  # what the files really hash to
    assert not out.exists()


def test_missing_package_or_part(fake_pkg):
    name, _ = fake_pkg
    with pytest.raises(ModelError, match="'latentwire_no_such_gguf_pkg' is not installed"):
        gguf_part_paths(gguf_cfg("latentwire_no_such_gguf_pkg", ["data/part01.bin"], sha="0" * 64))
    with pytest.raises(ModelError, match=f"part03.bin: GGUF part missing from package '{name}'"):
        gguf_part_paths(gguf_cfg(name, ["data/part01.bin", "data/part03.bin"], sha="0" * 64))
    assert name not in sys.modules


def test_converted_cache_is_reused(tiny_models, tmp_path):
    """A GGUF already converted (keyed by its sha256) loads without its packages installed."""
    cfg = gguf_cfg("latentwire_no_such_gguf_pkg", ["x.gguf"], sha="ab" * 32)
    folder = tmp_path / "models" / ("ab" * 8)
    shutil.copytree(tiny_models["llama"], folder)
    assert model_folder(cfg, str(tmp_path)) == str(folder)
    llm = load_frozen("llama", cfg, PROMPT, cache_dir=str(tmp_path))
    assert llm.name == "tiny/gguf" and len(llm.tokenizer) == llm.model.config.vocab_size
    with pytest.raises(ModelError, match="not installed"):  # a different sha: not cached
        model_folder(gguf_cfg("latentwire_no_such_gguf_pkg", ["x.gguf"], sha="cd" * 32), str(tmp_path))


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTWIRE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.delenv("LATENTWIRE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "latentwire"
    assert cache_root("~/c") == tmp_path / "home" / "c"

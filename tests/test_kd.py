"""teacher-kd-cache: the cached top-k equals a direct teacher forward; key, reuse, load_cache."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from latentwire import kd
from latentwire import llm as llm_module
from latentwire.config import load_params
from latentwire.llm import load_frozen
from latentwire.receiver import Receiver

REPO = Path(__file__).resolve().parents[1]
K, K_MAX = 8, 4

ROWS = [  # prompt lengths differ (left padding inside a batch); answers cut, exact and short
    {"id": "a", "dataset": "squad", "title": "Paris", "question": "Which river flows through Paris?",
     "context": "Paris is the capital of France. The Seine flows through Paris.",
     "answers": ["The Seine flows through Paris and then into the sea", "Seine"]},
    {"id": "b", "dataset": "squad", "title": "Nile", "question": "Which is the longest river?",
     "context": "The Nile is often said to be the longest river on Earth.", "answers": ["Nile"]},
    {"id": "c", "dataset": "nq", "title": "Moon", "question": "Who was first on the Moon?",
     "context": "The first man on the Moon was Neil Armstrong in July 1969, followed by Buzz "
                "Aldrin. The light bulb was improved by Thomas Edison.",
     "answers": ["Neil Armstrong"]},
    {"id": "d", "dataset": "squad", "title": "Tokyo", "question": "Capital of France?",
     "context": "Tokyo is the capital of Japan, and Paris of France.", "answers": ["Paris"]},
    {"id": "e", "dataset": "hotpotqa", "title": "War", "question": "When did the war end?",
     "context": "In which year did the Second World War end? It ended in 1945.", "answers": ["1945"]},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import make_tiny
    root = tmp_path_factory.mktemp("tiny")
    return {kind: make_tiny(kind, root / kind) for kind in ("llama", "qwen2")}


def setup(tmp_path: Path, tiny, teachers=None, rows=ROWS, k=K, batch_tokens=1400, slots="every") -> tuple[Path, Path]:
    """A params file over both tiny models; slots: what every stage trains ("every": null, both
    slots get a cache; "default": params.yaml's own stageN.slots)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {"llama": {"source": "local", "path": str(tiny["llama"])},
                     "qwen": {"source": "local", "path": str(tiny["qwen2"])}}
    if slots != "default":
        for stage in ("stage1", "stage2", "stage3"):
            raw[stage]["slots"] = None if slots == "every" else slots
    raw["teachers"] = teachers or {}
    raw["kd"] = {"k": k, "K_max": K_MAX, "batch_size": 3, "batch_tokens": batch_tokens}
    tmp_path.mkdir(parents=True, exist_ok=True)
    params, train = tmp_path / "params.yaml", tmp_path / "train.jsonl"
    params.write_text(yaml.safe_dump(raw))
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return params, train


@pytest.mark.parametrize("dtype,atol,cap", [(torch.float64, 1e-5, 1400), (torch.float32, 1e-4, 1400),
                                            (torch.float64, 1e-5, 1)])
def test_cache_matches_a_direct_teacher_forward(tmp_path, tiny, monkeypatch, dtype, atol, cap):
    # The tiny models' large init (logits ~20) makes float32 rounding between differently shaped
    # forwards (padded batch vs one unpadded row) ~1e-5; in float64 only the final float32 cast
    # is left, so 1e-5 checks the positions and masks, not the kernels.
    monkeypatch.setitem(llm_module.DTYPES, "float32", dtype)
    params_path, train = setup(tmp_path, tiny, batch_tokens=cap)
    sizes, logp = [], kd.teacher_logp
    monkeypatch.setattr(kd, "teacher_logp", lambda t, prompts, *a: sizes.append(len(prompts)) or logp(t, prompts, *a))
    cached, cache = [], Receiver.cache
    monkeypatch.setattr(Receiver, "cache", lambda self, B: cached.append(B) or cache(self, B))
    out = kd.main(str(params_path), str(train), str(tmp_path / "kd"))
    # kd.batch_tokens: the 5 prompts (~100 tokens) go in threes under 1,400 tokens, alone under 1;
    # every batch reads the template prefix from its cache
    assert sizes == ([3, 2] if cap == 1400 else [1] * 5) * 2 and cached == sizes
    params = load_params(params_path)
    for slot in ("llama", "qwen"):
        llm = load_frozen(slot, params.models[slot], params.prompt)
        path = tmp_path / "kd" / f"{slot}.safetensors"
        cache = kd.load_cache(path, kd.cache_key(params, slot, llm.template, train))
        assert out[slot]["key"] == cache["key"] and not out[slot]["reused"]
        assert cache["ids"] == [r["id"] for r in ROWS]
        n = len(ROWS)
        assert cache["top_idx"].shape == (n, K_MAX, K) and cache["top_idx"].dtype == torch.int32
        assert cache["top_logp"].shape == (n, K_MAX, K) and cache["top_logp"].dtype == torch.float32
        assert cache["answer_ids"].shape == (n, K_MAX) and cache["answer_ids"].dtype == torch.int64
        assert cache["answer_mask"].shape == (n, K_MAX) and cache["answer_mask"].dtype == torch.bool
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["key"] == cache["key"] and side["n"] == str(n) and "wall_s" in side
        tok = llm.tokenizer
        for i, row in enumerate(ROWS):
            ans = (tok(row["answers"][0], add_special_tokens=False)["input_ids"]
                   + [tok.eos_token_id])[:K_MAX]
            mask = cache["answer_mask"][i]
            assert mask.tolist() == [j < len(ans) for j in range(K_MAX)]
            assert cache["answer_ids"][i, :len(ans)].tolist() == ans
            assert (cache["answer_ids"][i, len(ans):] == tok.pad_token_id).all()
            assert (cache["top_logp"][i, ~mask] == 0).all() and (cache["top_idx"][i, ~mask] == 0).all()
            prompt = tok(llm.template.render(row["context"], row["question"]),
                         add_special_tokens=False)["input_ids"]
            with torch.no_grad():  # one unpadded forward of prompt + answer, by hand
                logits = llm.model(torch.tensor([prompt + ans])).logits[0]
            for j in range(len(ans)):
                logp = torch.log_softmax(logits[len(prompt) + j - 1], dim=-1)
                values, _ = logp.topk(K)
                stored = cache["top_logp"][i, j]
                torch.testing.assert_close(stored, values.float(), atol=atol, rtol=0)
                torch.testing.assert_close(logp[cache["top_idx"][i, j].long()].float(), stored,
                                           atol=atol, rtol=0)
                assert stored.exp().sum() <= 1 + 1e-6
        assert cache["answer_mask"][0].all() and not cache["answer_mask"][3].all()  # cut, padded


def test_rerun_reuses_and_changes_rebuild(tmp_path, tiny, capsys):
    params_path, train = setup(tmp_path, tiny)
    out_dir = tmp_path / "kd"
    first = kd.main(str(params_path), str(train), str(out_dir))
    path = out_dir / "llama.safetensors"
    mtime = path.stat().st_mtime_ns
    again = kd.main(str(params_path), str(train), str(out_dir))
    assert again["llama"]["reused"] and again["qwen"]["reused"]
    assert path.stat().st_mtime_ns == mtime and "reused" in capsys.readouterr().out
    assert not [p for p in out_dir.iterdir() if p.name.endswith(".tmp")]
    # a different k: a new key, a rebuilt file
    params_path, _ = setup(tmp_path, tiny, k=K // 2)
    rebuilt = kd.main(str(params_path), str(train), str(out_dir))
    assert not rebuilt["llama"]["reused"] and rebuilt["llama"]["key"] != first["llama"]["key"]
    assert kd.load_cache(path)["top_idx"].shape[-1] == K // 2
    # a different train file: a new key
    _, train = setup(tmp_path, tiny, rows=ROWS[:3], k=K // 2)
    moved = kd.main(str(params_path), str(train), str(out_dir))
    assert not moved["llama"]["reused"] and moved["llama"]["key"] != rebuilt["llama"]["key"]
    assert len(kd.load_cache(path)["ids"]) == 3


def test_only_a_slot_some_stage_trains_gets_a_cache(tmp_path, tiny, capsys):
    """The default trains SmolLM2's receiver alone (stageN.slots [llama]): no Qwen cache is built,
    and one stage that trains Qwen is enough for it to get one."""
    params_path, train = setup(tmp_path, tiny, slots="default")
    assert load_params(params_path).trained_slots() == ["llama"]
    out = kd.main(str(params_path), str(train), str(tmp_path / "kd"))
    assert list(out) == ["llama"] and not (tmp_path / "kd" / "qwen.safetensors").exists()
    assert "qwen: no stage trains it" in capsys.readouterr().out
    raw = yaml.safe_load(params_path.read_text())
    raw["stage2"]["slots"] = ["qwen"]
    params_path.write_text(yaml.safe_dump(raw))
    assert load_params(params_path).trained_slots() == ["llama", "qwen"]
    out = kd.main(str(params_path), str(train), str(tmp_path / "kd"))
    assert out["llama"]["reused"] and not out["qwen"]["reused"]
    assert len(kd.load_cache(tmp_path / "kd" / "qwen.safetensors")["ids"]) == len(ROWS)


def test_load_cache_refuses_truncated_and_stale(tmp_path, tiny):
    params_path, train = setup(tmp_path, tiny, rows=ROWS[:2])
    out = kd.main(str(params_path), str(train), str(tmp_path / "kd"))
    path = tmp_path / "kd" / "llama.safetensors"
    kd.load_cache(path, out["llama"]["key"])
    with pytest.raises(ValueError, match="llama.safetensors.*stale"):
        kd.load_cache(path, "0" * 64)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 10])
    with pytest.raises(ValueError, match="llama.safetensors.*unreadable"):
        kd.load_cache(path, out["llama"]["key"])
    path.write_bytes(data[:5])
    with pytest.raises(ValueError, match="llama.safetensors"):
        kd.load_cache(path)
    # the stage rebuilds a broken cache instead of reusing it
    again = kd.main(str(params_path), str(train), str(tmp_path / "kd"))
    assert not again["llama"]["reused"] and again["qwen"]["reused"]
    kd.load_cache(path, out["llama"]["key"])


def test_two_identical_teachers_equal_one(tmp_path, tiny):
    one_params, train = setup(tmp_path / "one", tiny)
    teacher = {"source": "local", "path": str(tiny["llama"])}
    two_params, _ = setup(tmp_path / "two", tiny, teachers={"llama": [teacher, teacher]})
    one = kd.main(str(one_params), str(train), str(tmp_path / "one" / "kd"))
    two = kd.main(str(two_params), str(train), str(tmp_path / "two" / "kd"))
    assert one["llama"]["key"] != two["llama"]["key"]  # the teachers are part of the key
    a = kd.load_cache(tmp_path / "one" / "kd" / "llama.safetensors")
    b = kd.load_cache(tmp_path / "two" / "kd" / "llama.safetensors")
    torch.testing.assert_close(b["top_logp"], a["top_logp"], atol=1e-5, rtol=0)
    assert torch.equal(a["top_idx"], b["top_idx"]) and torch.equal(a["answer_ids"], b["answer_ids"])
    assert os.path.exists(tmp_path / "two" / "kd" / "llama.json")

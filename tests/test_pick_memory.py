"""The pick's features at scale: bench/pick_memory.py must not rot (each pool size in its own
process, on the tiny models), the pool's reads are views into one features cache (no copy, no
Python object per token), and that cache holds what any process would compute."""
import importlib.util
from concurrent import futures
import itertools
import json
from pathlib import Path

import torch
import yaml

from latentwire import pick, sender
from tiny import qa_rows

REPO = Path(__file__).resolve().parents[1]


class Chars:
    """A stand-in tokenizer: one token per character."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False, split_special_tokens=False):
        out = {"input_ids": [ord(c) % 97 for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


def test_pick_memory_benchmark_runs_on_the_tiny_models(tmp_path, tiny_models):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"] = {"llama": {"source": "local", "path": str(tiny_models["llama"])},
                     "qwen": {"source": "local", "path": str(tiny_models["qwen"])}}
    raw["pick"].update(hidden=8, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows(6, "squad")))
    spec = importlib.util.spec_from_file_location("pick_memory", REPO / "bench" / "pick_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "pick_memory.md"
    res = bench.main(["--params", str(tmp_path / "params.yaml"), "--pool", str(tmp_path / "pool.jsonl"),
                      "--sizes", "9", "--steps", "2", "--out", str(out)])  # 9 rows: the pool repeated
    build, reuse = res
    assert (build["n"], build["phase"], reuse["phase"]) == (9, "build", "reuse")
    for r in res:
        assert r["peak_mb"] >= r["features_mb"] > 0 and r["fit_steps"] == min(2, r["epoch_steps"])
    # the cache holds what the build computed: the same fit
    assert build["tokens"] == reuse["tokens"] > 0 and build["loss"] == reuse["loss"]
    assert "| 9 |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == res


def test_the_pool_reads_are_views_into_one_cache(tmp_path):
    rows = qa_rows(5, "squad")
    path = tmp_path / "features.safetensors"
    fresh, y = sender.pool_features(rows, Chars(), path, "k", 512)
    reused, y2 = sender.pool_features(rows, Chars(), path, "k", 512)
    for reads, labels in ((fresh, y), (reused, y2)):
        assert {r.features.dtype for r in reads} == {torch.float16}
        for field in ([r.features for r in reads], [r.ids for r in reads], labels):
            assert len({t.untyped_storage().data_ptr() for t in field}) == 1  # one tensor, cut in rows
    for a, b, ya, yb in zip(fresh, reused, y, y2):
        assert torch.equal(a.features, b.features) and torch.equal(a.ids, b.ids) and torch.equal(ya, yb)
        assert torch.equal(a.q_ids, b.q_ids)


def test_overlap_scores_do_not_depend_on_the_order_of_the_question_words():
    """The cache's key is the pool, pick.py, the codebook and max_tokens, so a context's features
    must be the same in every process, whatever order a set of words iterates in there
    (PYTHONHASHSEED): a sum of three idfs in two orders differs in its last bit, and a tie
    between two sentences' ranks broke either way."""
    units = [{"a", "b", "c"}, {"c"}, {"c"}]  # idf: a and b in one unit, c in all three
    assert len({tuple(pick._bm25(units, list(p))[0]) for p in itertools.permutations("abc")}) == 1


def test_worker_processes_compute_the_cache_one_process_would(monkeypatch):
    """The pool's features are read in chunks by one process a core: chunk after chunk in order,
    the same cache, field for field, as one process reading every row."""
    rows = qa_rows(7, "squad")
    alone = sender.compute_features(rows, Chars(), "k", 512)  # one chunk: read here
    monkeypatch.setattr(sender, "FEATURE_CHUNK", 2)  # four chunks, over the cores' processes
    monkeypatch.setattr(sender.os, "sched_getaffinity", lambda pid: {0, 1})
    pools = []

    class Counted(futures.ProcessPoolExecutor):  # the chunks really go to worker processes
        def __init__(self, workers, **kw):
            pools.append(workers)
            super().__init__(workers, **kw)
    monkeypatch.setattr(futures, "ProcessPoolExecutor", Counted)
    spread = sender.compute_features(rows, Chars(), "k", 512)
    assert pools == [2]
    assert alone.keys() == spread.keys()
    for k in alone:
        assert torch.equal(alone[k], spread[k]), k
    assert len(alone["lengths"]) == 7 and alone["lengths"].min() > 0

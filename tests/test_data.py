"""Readers, validation, context cut, split, mix and the prepare-mix stage."""
import gzip
import inspect
import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentwire import data, prepare
from latentwire.config import DataConfig, DatasetConfig
from latentwire.data import DataError, Example
from latentwire.metrics import contains_answer

SQUAD = "squad/dev-v1.1.43-articles.json"
HOTPOT = "hotpotqa/camera_ready_nd8_dev_sample100.json"
HOTPOT_TRAIN = "hotpotqa/hotpot_distractor_multisource_2k.json.gz"
NQ = "natural_questions/nq-open-oracle.jsonl.gz"
REPO = Path(__file__).resolve().parents[1]


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def squad_json(qas, context="Paris is the capital of France. It lies on the Seine.", version="1.1"):
    return {"version": version, "data": [{"title": "Paris", "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(id="q1", question="What is the capital of France?", answers=("Paris",), **kw):
    return {"id": id, "question": question, "answers": [{"text": a, "answer_start": 0} for a in answers], **kw}


def hotpot_official(id="h1", answer="Seine"):
    return {"_id": id, "question": "Which river flows through the capital of France?", "answer": answer,
            "supporting_facts": [["Paris", 0], ["Seine", 1]],
            "context": [["Lyon", ["Lyon is a city.", " It is in France."]],
                        ["Paris", ["Paris is the capital of France."]],
                        ["Seine", ["The Seine is a river.", " It flows through Paris."]],
                        ["Rhone", ["The Rhone is a river."]]]}


def hotpot_hub(id="h2"):
    row = hotpot_official(id)
    ctx = row.pop("context")
    row.pop("_id")
    return {"id": id, **row, "type": "bridge", "level": "easy",
            "supporting_facts": {"title": ["Paris", "Seine"], "sent_id": [0, 1]},
            "context": {"title": [t for t, _ in ctx], "sentences": [s for _, s in ctx]}}


# ----------------------------------------------------------------------------- real files

def test_squad_real(shared_data):
    exs, skipped = data.read_file(shared_data / SQUAD, name="squad")
    assert len(exs) == 9849 and not skipped
    assert len({ex.title for ex in exs}) == 43
    assert len({ex.id for ex in exs}) == len(exs)
    assert all(ex.answers and all(a.strip() for a in ex.answers) for ex in exs)
    in_ctx = sum(any(a in ex.context for a in ex.answers) for ex in exs)
    assert in_ctx / len(exs) > 0.99
    assert exs[0].dataset == "squad" and exs[0].title == "Super_Bowl_50" and "Denver Broncos" in exs[0].answers


def test_hotpot_sample_real(shared_data):
    exs, skipped = data.read_file(shared_data / HOTPOT, name="hotpotqa")  # auto -> hotpot-sample
    assert len(exs) == 100 and not skipped
    ex = exs[0]
    assert ex.title == "Hot Pixel | PlayStation Portable" and ex.answers == ["video game"]
    assert ex.context.count("\n") == 1  # distractors: 0 -> the two gold paragraphs
    assert "Hot Pixel: Hot Pixel is a puzzle video game" in ex.context
    assert "handheld game console developed by Sony Computer Entertainment. Development" in ex.context
    with_d, _ = data.read_file(shared_data / HOTPOT, "hotpot-sample", "hotpotqa", distractors=8)
    assert with_d[0].context.count("\n") == 9 and with_d[0].title == ex.title
    assert all(a.strip() for ex in exs for a in ex.answers)


def test_nq_oracle_real(shared_data):
    exs, skipped = data.read_file(shared_data / NQ, name="nq")
    assert len(exs) == 2655 and not skipped
    assert len({ex.id for ex in exs}) == 2655
    assert all(ex.answers and all(a.strip() for a in ex.answers) and ex.title for ex in exs)
    assert exs[0].question == "who got the first nobel prize in physics"
    assert exs[0].title == "List of Nobel laureates in Physics"


# ----------------------------------------------------------------------------- small hand-made inputs

def test_squad_v2_skips_unanswerable(tmp_path):
    obj = squad_json([qa("a"), qa("b", answers=(), is_impossible=True, plausible_answers=[{"text": "Lyon"}]),
                      qa("c", answers=(), is_impossible=False), qa("d", answers=("", " ")),
                      qa("e", answers=("Paris", "Paris", "the Seine"), is_impossible=False)], version="v2.0")
    exs, skipped = data.read_file(write(tmp_path / "v2.json", obj))
    assert [ex.id for ex in exs] == ["a", "e"]
    assert exs[1].answers == ["Paris", "the Seine"]
    assert skipped == Counter(unanswerable=2, no_answer=1)


def test_squad_bom_and_crlf(tmp_path):
    path = tmp_path / "bom.json"
    text = json.dumps(squad_json([qa()], context="Paris is\r\nthe capital.")).replace(", ", ",\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (ex,), _ = data.read_file(path)
    assert ex.context == "Paris is\nthe capital."


def test_hotpot_official_and_hub_schema(tmp_path):
    for rows in ([hotpot_official()], [hotpot_hub()]):
        path = write(tmp_path / "hp.json", rows)
        (ex,), skipped = data.read_file(path, name="hp")
        assert not skipped and ex.dataset == "hp" and ex.answers == ["Seine"]
        assert ex.title == "Paris | Seine"
        assert sorted(ex.context.split("\n")) == [
            "Paris: Paris is the capital of France.", "Seine: The Seine is a river. It flows through Paris."]
        (ex2,), _ = data.read_file(path, "hotpot", distractors=1)
        assert "Lyon: Lyon is a city. It is in France." in ex2.context and "Rhone" not in ex2.context
        assert data.read_file(path, "hotpot", distractors=1)[0][0].context == ex2.context  # deterministic


def make_hub(monkeypatch, rows):
    import datasets
    calls = []

    def fake(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def test_squad_hub(monkeypatch):
    rows = [{"id": "s1", "title": "Paris", "context": "Paris is the capital of France.",
             "question": "Capital of France?", "answers": {"text": ["Paris", "Paris"], "answer_start": [0, 0]}},
            {"id": "s2", "title": "Paris", "context": "Paris is the capital of France.",
             "question": "Capital of Spain?", "answers": {"text": [], "answer_start": []}}]
    calls = make_hub(monkeypatch, rows)
    cfg = DatasetConfig(source="hub", hub_id="rajpurkar/squad", hub_split="validation")
    exs, stats = data.load("squad", cfg, Path("/nonexistent"), 1200)
    assert calls == [("rajpurkar/squad", None, "validation")]
    assert [(ex.id, ex.title, ex.answers) for ex in exs] == [("s1", "Paris", ["Paris"])]
    assert stats["skipped"] == {"unanswerable": 1} and stats["source"] == "hub:rajpurkar/squad[validation]"


def test_hotpot_hub(monkeypatch):
    make_hub(monkeypatch, [hotpot_hub("h1"), hotpot_hub("h2")])
    cfg = DatasetConfig(source="hub", hub_id="hotpotqa/hotpot_qa", hub_config="distractor", distractors=2)
    exs, stats = data.load("hotpotqa", cfg, Path("/nonexistent"), 1200)
    assert [ex.id for ex in exs] == ["h1/d2", "h2/d2"] and all(ex.context.count("\n") == 3 for ex in exs)
    assert exs[0].title == "Paris | Seine" and stats["source"] == "hub:hotpotqa/hotpot_qa/distractor[validation]"


def test_nq_hub_needs_context(monkeypatch):
    make_hub(monkeypatch, [{"question": "who wrote hamlet", "answer": ["Shakespeare"]}])
    cfg = DatasetConfig(source="hub", hub_id="nq_open", format="nq-oracle")
    with pytest.raises(DataError, match=r"hub nq_open\[validation\]: row 0: .*oracle context"):
        data.load_hub(cfg, "nq")
    make_hub(monkeypatch, [{"id": "n1", "question": "who wrote hamlet", "answer": ["Shakespeare"],
                           "context": "Hamlet is a play by Shakespeare.", "title": "Hamlet"}])
    (ex,), _ = data.load_hub(cfg, "nq")
    assert (ex.id, ex.title, ex.answers) == ("n1", "Hamlet", ["Shakespeare"])


# ----------------------------------------------------------------------------- cut, split, mix

def test_cut_context_is_answer_blind_whole_paragraphs_first():
    paras = ["Alpha: " + "a" * 50 + ".", "Beta: " + "b" * 50 + ".", "Gamma: " + "c" * 50 + "."]
    text = "\n".join(paras)
    assert data.cut_context(text, len(text)) is text
    assert data.cut_context(text, 130) == "\n".join(paras[:2])  # whole paragraphs from the start
    one = "First sentence here. Second one is longer than that. Third."
    assert data.cut_context(one, 40) == "First sentence here."  # the last sentence end that fits
    assert data.cut_context("word " * 30, 64) == ("word " * 13).strip()  # no sentence end: a word
    # the signature takes text alone, and the result never depends on where an answer is
    assert list(inspect.signature(data.cut_context).parameters) == ["context", "max_chars"]


def test_load_caps_answer_blind_and_counts_answers_left(shared_data):
    cfg = DatasetConfig(path=SQUAD)
    exs, stats = data.load("squad", cfg, shared_data, 1200)
    raw, _ = data.read_file(shared_data / SQUAD)
    assert stats["context_cut"] == sum(len(ex.context) < len(r.context) for ex, r in zip(exs, raw)) > 0
    assert max(len(ex.context) for ex in exs) <= 1200
    assert all(r.context.startswith(ex.context) for ex, r in zip(exs, raw))  # a prefix: no window
    in_ctx = sum(contains_answer(ex.context, ex.answers) for ex in exs)  # as whole words
    assert stats["answer_in_context"] == in_ctx < len(exs) == 9849  # some answers were cut away


def test_answers_never_change_the_context(shared_data, tmp_path):
    """Inputs are built without the answer: the same file with other answer strings loads to
    byte-identical contexts (cap included)."""
    obj = json.loads((shared_data / SQUAD).read_text(encoding="utf-8"))
    for art in obj["data"]:
        for par in art["paragraphs"]:
            for q in par["qas"]:
                for a in q["answers"]:
                    a["text"] = "zz " + a["text"][::-1]
    other = write(tmp_path / "other.json", obj)
    a, _ = data.load("squad", DatasetConfig(path=SQUAD), shared_data, 300)
    b, _ = data.load("squad", DatasetConfig(path=str(other)), tmp_path, 300)
    assert [ex.context for ex in a] == [ex.context for ex in b]
    assert [ex.answers for ex in a] != [ex.answers for ex in b]


def test_hotpot_support_spans_are_the_supporting_sentences(shared_data):
    exs, _ = data.read_file(shared_data / HOTPOT_TRAIN, name="hotpotqa", distractors=8)
    assert len(exs) == 2769 and all(ex.support for ex in exs)
    raw = json.loads(gzip.decompress((shared_data / HOTPOT_TRAIN).read_bytes()))
    for ex, r in list(zip(exs, raw))[:200]:
        paras = dict((t, s) for t, s in r["context"])
        want = sorted(paras[t][k].strip() for t, k in r["supporting_facts"] if paras[t][k].strip())
        assert sorted(ex.context[a:b] for a, b in ex.support) == want
        assert ex.id == r["_id"] + "/d8" and ex.context.count("\n") == len(r["context"]) - 1
    sample, _ = data.read_file(shared_data / HOTPOT, name="hotpotqa")
    assert sample[0].context[slice(*sample[0].support[0])].startswith("Hot Pixel is a puzzle video game")


def test_hotpot_train_source_groups_titles_and_keeps_eval_apart(shared_data):
    cfg = DatasetConfig(path=HOTPOT, train_path=HOTPOT_TRAIN)
    evals, _ = data.load("hotpotqa", cfg, shared_data, 2000)
    train, stats = data.load("hotpotqa", cfg, shared_data, 2000, train=True, avoid_titles=data.gold_titles(evals))
    assert len(train) == 2769 and stats["source"] == HOTPOT_TRAIN
    # overlapping gold titles share one split title, so a split by title never separates them
    by_gold: dict = {}
    for ex, r in zip(train, json.loads(gzip.decompress((shared_data / HOTPOT_TRAIN).read_bytes()))):
        for t, _ in r["supporting_facts"]:
            by_gold.setdefault(t, set()).add(ex.title)
    assert all(len(titles) == 1 for titles in by_gold.values())
    tr, ev = data.split_by_title(train, 0.2)
    assert not {ex.title for ex in tr} & {ex.title for ex in ev}
    # a train record naming an eval gold title is dropped
    poisoned, stats = data.load("hotpotqa", cfg, shared_data, 2000, train=True,
                                avoid_titles=frozenset([train[0].title]))
    assert stats["skipped"]["gold_title_in_eval"] >= 1 and len(poisoned) < len(train)


def test_pick_pool_leaves_out_the_curriculum_dev_rows(shared_data):
    cfg = DataConfig(train_examples=40, pick_pool=300, datasets={"squad": DatasetConfig(path=SQUAD)})
    loaded = {"squad": (data.load("squad", cfg.datasets["squad"], shared_data, 1200)[0], None)}
    train, _, _ = data.make_mix(cfg, loaded, seed=0)
    dev = data.split_dev([ex.to_dict() for ex in train], 8, 0)[1]
    dev_ids = frozenset(r["id"] for r in dev)
    assert dev_ids <= {ex.id for ex in data.pick_pool(cfg, loaded, 0)}  # a prefix of the same shuffle
    pool = data.pick_pool(cfg, loaded, 0, exclude=dev_ids)
    assert len(pool) == 300 and not dev_ids & {ex.id for ex in pool}


def test_split_by_title(shared_data):
    exs, _ = data.read_file(shared_data / SQUAD)
    train, evals = data.split_by_title(exs, 0.2)
    assert len(train) + len(evals) == len(exs) and train and evals
    assert not {ex.title for ex in train} & {ex.title for ex in evals}
    train2, evals2 = data.split_by_title(list(reversed(exs)), 0.2)
    assert {ex.id for ex in evals2} == {ex.id for ex in evals}
    nq, _ = data.read_file(shared_data / NQ)
    tr, ev = data.split_by_title(nq, 0.2)
    assert not {ex.title for ex in tr} & {ex.title for ex in ev}
    assert 0.1 < len(ev) / len(nq) < 0.3


def test_shares_largest_remainder():
    assert data.shares(256, {"a": 1.0, "b": 1.0}) == {"a": 128, "b": 128}
    assert data.shares(10, {"a": 1.0, "b": 1.0, "c": 1.0}) == {"a": 4, "b": 3, "c": 3}
    assert data.shares(7, {"a": 2.0, "b": 1.0, "c": 0.0}) == {"a": 5, "b": 2, "c": 0}
    assert data.shares(5, {}) == {}


def test_make_mix(shared_data):
    cfg = DataConfig(train_examples=50, datasets={
        "squad": DatasetConfig(path=SQUAD, max_eval=20), "hotpotqa": DatasetConfig(path=HOTPOT, max_eval=100),
        "nq": DatasetConfig(path=NQ, weight=3.0, max_eval=10)})
    loaded = {n: (data.load(n, c, shared_data, 1200)[0], None) for n, c in cfg.datasets.items()}
    train, evals, info = data.make_mix(cfg, loaded, seed=0)
    d = info["datasets"]
    assert d["hotpotqa"] == {"total": 100, "eval_only": True, "train": 0, "eval": 100, "train_shortfall": 0}
    assert "hotpotqa: eval_only: 100 < min_train_pool (500)" in info["notes"]
    assert (d["squad"]["train"], d["nq"]["train"], d["squad"]["eval"], d["nq"]["eval"]) == (12, 38, 20, 10)
    assert not {(ex.dataset, ex.title) for ex in train} & {(ex.dataset, ex.title) for ex in evals}
    assert len({ex.id for ex in train + evals}) == len(train) + len(evals)
    again = data.make_mix(cfg, {n: (list(reversed(v)), None) for n, (v, _) in loaded.items()}, seed=0)
    assert [ex.id for ex in again[0]] == [ex.id for ex in train] and [ex.id for ex in again[1]] == [ex.id for ex in evals]
    assert [ex.id for ex in data.make_mix(cfg, loaded, seed=1)[0]] != [ex.id for ex in train]
    capped = data.make_mix(cfg, loaded, seed=0, max_examples=3)[2]["datasets"]
    assert [capped[n]["eval"] for n in ("squad", "hotpotqa", "nq")] == [3, 3, 3]
    cfg.train_examples = 5000  # nq's share, 3750, is more than its train pool: take all, record the rest
    short = data.make_mix(cfg, loaded, seed=0)[2]["datasets"]
    assert short["squad"]["train"] == 1250 and short["squad"]["train_shortfall"] == 0
    assert short["nq"]["train"] + short["nq"]["train_shortfall"] == 3750 and short["nq"]["train_shortfall"] > 0


def test_example_roundtrip():
    ex = Example("i", "d", "t", "q?", "ctx", ["a", "b"])
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex
    with pytest.raises(DataError, match="answers"):
        Example.from_dict({"id": "i", "dataset": "d", "title": "t", "question": "q", "context": "c"})


# ----------------------------------------------------------------------------- bad input

def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"title": "x",, }\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 2, column 17"):
        data.read_file(path)
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"question": "q", "answers": ["a"], "context": "a"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: malformed JSON at line 1, column 14"):
        data.read_file(jl)


def test_missing_answers(tmp_path):
    obj = squad_json([qa("a"), {"id": "b", "question": "Where?"}])
    with pytest.raises(DataError, match=r"m\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing field 'answers'"):
        data.read_file(write(tmp_path / "m.json", obj))
    with pytest.raises(DataError, match=r"q\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"):
        data.read_file(write(tmp_path / "q.json", squad_json([{"id": "a", "answers": []}])))
    with pytest.raises(DataError, match=r"h\.json: \[0\]: missing field 'answer'"):
        data.read_file(write(tmp_path / "h.json", [{k: v for k, v in hotpot_official().items() if k != "answer"}]))
    jl = tmp_path / "n.jsonl"
    jl.write_text(json.dumps({"question": "q", "ctxs": [{"title": "t", "text": "a"}]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"n\.jsonl: line 1: missing field 'answer'"):
        data.read_file(jl)


def test_empty_context(tmp_path):
    with pytest.raises(DataError, match=r"e\.json: data\[0\]\.paragraphs\[0\]: field 'context' is empty"):
        data.read_file(write(tmp_path / "e.json", squad_json([qa()], context="  ")))
    jl = tmp_path / "e.jsonl"
    jl.write_text(json.dumps({"question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": ""}]}) + "\n")
    with pytest.raises(DataError, match=r"e\.jsonl: line 1: field 'context' is empty"):
        data.read_file(jl)


def test_non_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    raw = json.dumps(squad_json([qa()])).encode("utf-8")
    path.write_bytes(raw[:40] + "é".encode("latin-1") + raw[40:])
    with pytest.raises(DataError, match=r"latin1\.json: not UTF-8 at byte offset 40"):
        data.read_file(path)


def test_truncated_gzip(tmp_path, shared_data):
    raw = (shared_data / NQ).read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot read"):
        data.read_file(path)
    path.write_bytes(gzip.compress(b'{"question": "q", "answers": ["a"]\n'))  # whole gzip, bad JSON line
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: line 1: malformed JSON"):
        data.read_file(path)


def test_unknown_format(tmp_path):
    with pytest.raises(DataError, match=r"u\.json: cannot detect the format"):
        data.read_file(write(tmp_path / "u.json", {"rows": []}))


VALID = json.dumps(squad_json([qa("a", answers=("Paris", "Paris, France")), qa("b", answers=(), is_impossible=True),
                               qa("c", question="Où coule la Seine ?", answers=("Seine",))],
                              context="Paris — the capital of France — lies on the Seine.", version="v2.0"),
                   ensure_ascii=False).encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.integers(0, len(VALID)).map(lambda n: ("cut", n, 0)),
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, len(VALID) - 1), st.sampled_from(b'{}[]",:0 \\\xff\xc3')),
))
def test_mutated_squad_is_valid_or_data_error(mutation):
    kind, i, v = mutation
    raw = VALID[:i] if kind == "cut" else VALID[:i] + bytes([VALID[i] ^ v if kind == "flip" else v]) + VALID[i + 1:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        path.write_bytes(raw)
        try:
            exs, skipped = data.read_file(path)
        except DataError as e:
            assert "m.json" in str(e)
            return
    for ex in exs:
        assert isinstance(ex, Example) and ex.context and ex.question and ex.id is not None
        assert ex.answers and all(isinstance(a, str) and a for a in ex.answers)
    assert all(isinstance(k, str) and n > 0 for k, n in skipped.items())


# ----------------------------------------------------------------------------- prepare-mix stage

def tmp_params(tmp_path, root, **datasets_override) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["data"].update(root=str(root), train_examples=10)
    for name, ds in raw["data"]["datasets"].items():
        ds["max_eval"] = 4
        ds.update(datasets_override.get(name, {}))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_prepare_main(tmp_path, shared_data, monkeypatch):
    monkeypatch.delenv("LATENTWIRE_DATA", raising=False)
    out, metrics_path = tmp_path / "mix", tmp_path / "metrics" / "data.json"
    m = prepare.main(tmp_params(tmp_path, shared_data), out, metrics_path)
    assert json.loads(metrics_path.read_text()) == m
    train = [Example.from_dict(json.loads(line)) for line in (out / "train.jsonl").read_text().splitlines()]
    evals = [Example.from_dict(json.loads(line)) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert Counter(ex.dataset for ex in train) == {"squad": 3, "hotpotqa": 4, "nq": 3}
    assert Counter(ex.dataset for ex in evals) == {"squad": 4, "hotpotqa": 4, "hotpotqa_distractor": 4, "nq": 4}
    assert (m["squad"]["total"], m["hotpotqa"]["total"], m["nq"]["total"]) == (9849, 100 + 2769, 2655)
    assert m["hotpotqa_distractor"]["eval_only"] is True and m["hotpotqa"]["eval_only"] is False
    assert m["squad"]["skipped"] == {} and m["squad"]["context_cut"] > 0 and m["squad"]["source"] == SQUAD
    assert m["hotpotqa"]["train_source"]["source"] == HOTPOT_TRAIN
    # the HotpotQA eval questions are the sample's; its train records never share a gold title with them
    sample = {ex.id for ex in data.read_file(shared_data / HOTPOT)[0]}
    assert {ex.id for ex in evals if ex.dataset == "hotpotqa"} <= sample
    assert not {ex.id for ex in train} & sample
    assert {ex.id.removesuffix("/d8") for ex in evals if ex.dataset == "hotpotqa_distractor"} <= sample
    pool = [json.loads(line) for line in (out / "pool.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in pool} == {"squad", "hotpotqa", "nq"}
    assert all(r["support"] for r in pool if r["dataset"] == "hotpotqa")
    assert max(len(ex.context) for ex in train + evals if ex.dataset in ("squad", "nq")) <= 2000
    assert not list(out.glob(".*.tmp")) and not list(metrics_path.parent.glob(".*.tmp"))


def test_prepare_writes_nothing_on_failure(tmp_path, shared_data, monkeypatch):
    monkeypatch.delenv("LATENTWIRE_DATA", raising=False)
    out, metrics_path = tmp_path / "mix", tmp_path / "metrics" / "data.json"
    bad = tmp_params(tmp_path, shared_data, nq={"path": "natural_questions/missing.jsonl.gz"})
    with pytest.raises(DataError, match="missing.jsonl.gz: cannot read"):
        prepare.main(bad, out, metrics_path)
    assert not out.exists() or not any(out.iterdir())
    assert not metrics_path.exists()
    monkeypatch.setenv("LATENTWIRE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="LATENTWIRE_DATA"):
        prepare.main(tmp_params(tmp_path, shared_data), out, metrics_path)
    assert not (out / "train.jsonl").exists()

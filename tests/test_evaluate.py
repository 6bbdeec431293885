"""The evaluate stage on tiny random models: baselines' prompts, batched greedy decoding, scoring."""
import json

import pytest

import tiny  # noqa: F401  (sets HF_HUB_OFFLINE before transformers is imported)
from latentwire import baselines, evaluate, llm, packed
from latentwire.baselines import clean, cut_tokens, evaluate_model, generate_text, score, text_variants
from latentwire.config import ModelConfig, PromptConfig
from latentwire.llm import load_frozen

PROMPT = PromptConfig(instruction="Answer the question with a short span copied from the context.",
                      example_context="The Eiffel Tower was completed in 1889.",
                      example_question="When was the Eiffel Tower completed?", example_answer="1889")
LONG = ("Paris is the capital and most populous city of France. It lies on the river Seine "
        "in the north of the country, and the Eiffel Tower stands on the Champ de Mars.")
UNICODE = "Le café crème coûte cher à Köln; 東京 est loin, Привет! " * 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llms(tiny_models):
    return {k: load_frozen(k, ModelConfig(source="local", path=str(p)), PROMPT)
            for k, p in tiny_models.items()}


def ntok(llm, text):
    return len(llm.tokenizer(text, add_special_tokens=False)["input_ids"])


def context_of(llm, prompt):
    """The context inside a rendered prompt's body (the template's prefix/suffix stripped)."""
    t = llm.template
    assert prompt.startswith(t.prefix) and prompt.endswith(t.suffix)
    body = prompt[len(t.prefix):len(prompt) - len(t.suffix)]
    assert body.startswith("Context: ")
    return body[len("Context: "):body.rindex("\nQuestion: ")]


@pytest.mark.parametrize("raw, answer", [
    ("Paris", "Paris"), ("  Paris \n", "Paris"), ("\n\n  the Seine\nQuestion: more", "the Seine"),
    ("a\r\nb", "a"), ("", ""), (" \n \t\n", ""),
])
def test_clean(raw, answer):
    assert clean(raw) == answer


@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_cut_tokens(llms, kind):
    llm = llms[kind]
    total = ntok(llm, LONG)
    assert total > 12
    cuts = [cut_tokens(llm, LONG, n) for n in range(total + 2)]
    assert cuts[0] == "" and cuts[total] == cuts[total + 1] == LONG
    for n, cut in enumerate(cuts):
        assert LONG.startswith(cut) and ntok(llm, cut) <= n
    assert all(len(a) < len(b) for a, b in zip(cuts[:total], cuts[1:total + 1]))  # one token each


@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_text_variants(llms, kind):
    llm, M, B = llms[kind], 8, 40
    row = {"question": "Where is Köln?", "context": UNICODE}
    v = text_variants(llm, row, M, B)
    assert set(v) == {"text", "m_token", "equal_byte"}
    assert v["text"] == llm.template.render(UNICODE, row["question"])
    for name in ("m_token", "equal_byte"):
        assert len(v[name]) < len(v["text"])
        assert v[name].endswith(f"\nQuestion: {row['question']}" + llm.template.suffix)  # whole question
    eb = context_of(llm, v["equal_byte"])
    assert UNICODE.startswith(eb) and B - 4 < len(eb.encode("utf-8")) <= B
    mt = context_of(llm, v["m_token"])
    assert UNICODE.startswith(mt) and 0 < ntok(llm, mt) <= M
    # a budget larger than the context keeps all of it
    assert text_variants(llm, row, 10_000, 10_000) == {k: v["text"] for k in v}


def reference(llm, prompts, max_new_tokens):
    """Each prompt alone (no padding at all), straight through HF generate."""
    out = []
    for p in prompts:
        enc = llm.tokenizer(p, return_tensors="pt", add_special_tokens=False)
        gen = llm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=llm.stop_ids(), pad_token_id=llm.tokenizer.pad_token_id)
        out.append(clean(llm.tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)))
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_generate_text_order_and_batching(llms, kind):
    llm = llms[kind]
    # short, long, medium: not in generate_text's internal (longest-first) order
    prompts = [llm.template.render(c, q) for c, q in [
        ("Rome.", "What?"), (LONG, "Which river flows through Paris?"),
        ("Berlin is the capital of Germany.", "Which city?"), ("Tokyo is in Japan.", "Where is Tokyo?")]]
    want = reference(llm, prompts, 6)
    assert len(set(want)) >= 3, want  # distinct answers, so a mix-up of the order would show
    for bs in (1, 3, 4):
        assert generate_text(llm, prompts, 6, bs) == want
    assert generate_text(llm, prompts[::-1], 6, 3) == want[::-1]
    assert generate_text(llm, [], 6, 3) == []


def test_length_batches_cap_rows_and_tokens():
    lengths = [1300, 40, 1250, 200, 60, 1400, 210, 50, 45]
    bs = llm.length_batches(lengths, 4, 2800)
    assert sorted(i for b in bs for i in b) == list(range(len(lengths)))  # every prompt once
    assert [lengths[b[0]] for b in bs] == sorted((lengths[b[0]] for b in bs), reverse=True)  # longest first
    # rows x the batch's longest (its first) <= 2800, and at most 4 rows
    assert [[lengths[i] for i in b] for b in bs] == [[1400, 1300], [1250, 210], [200, 60, 50, 45], [40]]
    assert all(len(b) * max(lengths[i] for i in b) <= 2800 or len(b) == 1 for b in bs)
    assert [len(b) for b in llm.length_batches(lengths, 4)] == [4, 4, 1]  # no token cap: rows alone
    assert llm.length_batches([5000], 4, 100) == [[0]]  # a prompt over the cap still runs, alone


@pytest.mark.parametrize("kind", ["llama", "qwen"])
def test_generate_text_token_batches_give_the_same_answers(llms, kind, monkeypatch):
    llm = llms[kind]
    prompts = [llm.template.render(c, q) for c, q in [("Rome.", "What?"), (LONG, "Which river flows through Paris?"),
                                                      ("Tokyo is in Japan.", "Where is Tokyo?")]]
    P = len(evaluate.Receiver(llm).prefix_ids)
    rest = [len(llm.tokenizer(p, add_special_tokens=False)["input_ids"]) - P for p in prompts]
    assert rest[1] >= 2 * max(rest[0], rest[2])  # so a cap of the long rest sends it alone, the short two together
    calls = []
    real = evaluate.Receiver.cache
    monkeypatch.setattr(evaluate.Receiver, "cache", lambda self, b: calls.append(b) or real(self, b))
    assert generate_text(llm, prompts, 6, 3, batch_tokens=rest[1]) == reference(llm, prompts, 6)
    assert calls == [1, 2]  # without the cap: one batch of 3


def test_generate_text_reuses_the_prefix_cache_and_falls_back_without_it(llms, monkeypatch):
    llm = llms["qwen"]
    prompts = [llm.template.render(c, q) for c, q in [("Rome.", "What?"), (LONG, "Which river?"),
                                                      ("Tokyo is in Japan.", "Where is Tokyo?")]]
    calls = []
    real = evaluate.Receiver.cache
    monkeypatch.setattr(evaluate.Receiver, "cache", lambda self, b: calls.append(b) or real(self, b))
    assert generate_text(llm, prompts, 6, 2) == reference(llm, prompts, 6)
    assert calls == [2, 1]  # both batches ran from the copied prefix cache
    calls.clear()
    raw = prompts[:1] + ["Plain text, no template prefix: the"]  # one prompt without it: no cache
    assert generate_text(llm, raw, 6, 2) == reference(llm, raw, 6)
    assert calls == []


ROWS = [
    {"id": "s1", "dataset": "squad", "question": "Which river flows through Paris?",
     "context": "The Seine flows through Paris. " + LONG, "answers": ["the Seine", "Seine"]},
    {"id": "n1", "dataset": "nq", "question": "Who wrote Hamlet?",
     "context": "Hamlet is a tragedy written around the year 1600 by William Shakespeare.",
     "answers": ["William Shakespeare"]},
    {"id": "s2", "dataset": "squad", "question": "Where does the Eiffel Tower stand?",
     "context": LONG, "answers": ["Champ de Mars", "on the Champ de Mars"]},
]


def test_evaluate_model_tiny(llms, monkeypatch):
    llm, M, B = llms["llama"], 8, 60
    calls = []  # the prompts of each generation: what the model was given to answer
    real = baselines.generate_text
    monkeypatch.setattr(baselines, "generate_text", lambda llm_, prompts, *a, **k:
                        calls.append(list(prompts)) or real(llm_, prompts, *a, **k))
    earlier = {"model": "qwen", "dataset": "squad", "id": "s1", "pred_text": "x"}  # another model's row stays
    predictions = [dict(earlier)]
    res = evaluate_model(llm, ROWS, M, B, max_new_tokens=4, batch_size=2, predictions=predictions)
    assert sorted(res) == ["nq", "squad"] and len(predictions) == 1 + len(ROWS)
    for ds, rows in (("squad", [ROWS[0], ROWS[2]]), ("nq", [ROWS[1]])):
        r = res[ds]
        bodies = [f"Context: {x['context']}\nQuestion: {x['question']}" for x in rows]
        assert r["n"] == len(rows)
        assert r["prompt_bytes"] == pytest.approx(sum(len(b.encode()) for b in bodies) / len(rows))
        assert r["prompt_tokens"] == pytest.approx(sum(ntok(llm, b) for b in bodies) / len(rows))
        assert r["prompt_tokens"] < r["prompt_bytes"]  # BPE merges: fewer tokens than bytes
        for name in ("text", "m_token", "equal_byte"):  # the scores are the examples' own, averaged
            mine = [p for p in predictions[1:] if p["dataset"] == ds]
            assert r[name]["f1"] == pytest.approx(sum(p[f"f1_{name}"] for p in mine) / len(mine))
    # one generation for every dataset and baseline (fewer, fuller batches), in which each example
    # was asked once per baseline, from its own context cut to M tokens / B bytes (every context
    # here is longer than both), not only reported M and B
    assert len(calls) == 1
    asked = sorted((p[p.rindex("\nQuestion: ") + len("\nQuestion: "):len(p) - len(llm.template.suffix)],
                    context_of(llm, p)) for p in calls[0])
    want = sorted((x["question"], cut) for x in ROWS for cut in
                  (x["context"], cut_tokens(llm, x["context"], M), x["context"].encode()[:B].decode()))
    assert asked == want
    assert predictions[0] == earlier and len(predictions) == 1 + len(ROWS)
    assert [(p["dataset"], p["id"]) for p in predictions[1:]] == [("nq", "n1"), ("squad", "s1"), ("squad", "s2")]
    for p in predictions[1:]:
        row = next(r for r in ROWS if r["id"] == p["id"])
        assert p["model"] == "llama" and p["question"] == row["question"] and p["answers"] == row["answers"]
        for name in ("text", "m_token", "equal_byte"):
            assert p[f"f1_{name}"] == baselines.best_f1(p[f"pred_{name}"], row["answers"])


def test_evaluate_model_scores_each_baseline(llms, monkeypatch):
    """An oracle reader that answers only when the gold answer is in the context it was sent:
    the answer late in a long context survives the text baseline, not the two cut ones."""
    llm, B = llms["qwen"], 30
    M = ntok(llm, "The Seine flows")  # s1's first words, in this tokenizer's tokens
    assert M < ntok(llm, LONG) // 2  # s2's answer ends LONG: far past M
    golds = {r["question"]: r["answers"] for r in ROWS}
    calls = []

    def oracle(llm_, prompts, max_new_tokens, batch_size, desc="", batch_tokens=None):
        calls.append((desc, max_new_tokens, batch_size, len(prompts)))
        out = []
        for p in prompts:
            question = p[p.rindex("\nQuestion: ") + len("\nQuestion: "):len(p) - len(llm.template.suffix)]
            seen = [a for a in golds[question] if a in context_of(llm, p)]
            out.append(seen[0] if seen else "no idea")
        return out

    monkeypatch.setattr(baselines, "generate_text", oracle)
    predictions = []
    res = evaluate_model(llm, ROWS, M, B, max_new_tokens=5, batch_size=7, predictions=predictions)
    # one generation: 3 examples x 3 baselines, with the stage's max_new_tokens and batch size
    assert calls == [("qwen/text+m_token+equal_byte", 5, 7, 9)]
    # squad: s1's answer opens its context (kept by every cut); s2's is past M tokens / 30 bytes
    assert res["squad"]["text"] == {"f1": 1.0, "em": 1.0}
    assert res["squad"]["m_token"] == {"f1": 0.5, "em": 0.5, "tokens": M}
    assert res["squad"]["equal_byte"] == {"f1": 0.5, "em": 0.5, "bytes": B}
    assert res["nq"]["text"] == {"f1": 1.0, "em": 1.0}
    assert res["nq"]["equal_byte"] == {"f1": 0.0, "em": 0.0, "bytes": B}
    assert res["nq"]["m_token"] == {"f1": 0.0, "em": 0.0, "tokens": M}
    s2 = next(p for p in predictions if p["id"] == "s2")
    assert (s2["pred_text"], s2["f1_text"], s2["pred_equal_byte"], s2["f1_equal_byte"]) == \
        ("Champ de Mars", 1.0, "no idea", 0.0)


def test_score():
    rows = [{"answers": ["Paris"]}, {"answers": ["a big dog", "dog"]}, {"answers": ["red car"]},
            {"answers": ["Seine"]}]
    preds = ["the paris.", "Dog", "the red bus", "Loire"]
    s = score(preds, rows)
    assert s["em"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)  # "red bus" vs "red car": P = R = 1/2
    assert score([], []) == {"f1": 0.0, "em": 0.0}


def test_main_text_baselines(tiny_models, tmp_path):
    """The text-baselines stage on two tiny models: params file in, metrics + predictions out."""
    params = tmp_path / "params.yaml"
    params.write_text(f"""
models:
  llama: {{source: local, path: "{tiny_models['llama']}"}}
  qwen: {{source: hub, hub_id: "{tiny_models['qwen']}"}}
prompt: {{example_context: "The Eiffel Tower was completed in 1889.",
          example_question: "When?", example_answer: "1889"}}
encoder: {{kind: bytes}}
bytes: {{d_z: 32, layers: 1, heads: 2, max_bytes: 64}}
stage3: {{M: 32}}
evaluate: {{max_new_tokens: 3, batch_size: 2, max_examples: 1}}
""", encoding="utf-8")
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    baselines = tmp_path / "b" / "text_baselines.json"
    metrics = evaluate.main(str(params), str(eval_path), str(tmp_path / "m.json"), str(tmp_path / "p.jsonl"),
                            part="text", baselines_path=str(baselines))
    saved = json.loads(baselines.read_text(encoding="utf-8"))
    assert saved["metrics"] == metrics
    # the byte sender's payload: 5 header + width, group + 16 fp16 scales + 512 int4 values + CRC
    assert metrics["M"] == 32 and metrics["equal_byte_budget"] == 5 + 2 + 32 + 256 + 2
    for slot in ("llama", "qwen"):
        assert metrics[slot]["squad"]["n"] == metrics[slot]["nq"]["n"] == 1  # max_examples
        assert metrics[slot]["squad"]["equal_byte"]["bytes"] == 297
        assert "selected_text" not in metrics[slot]["squad"]  # no pick: no selected baselines
        assert metrics[slot]["embedding"]["mean_norm"] > 0
    assert sorted((p["model"], p["id"]) for p in saved["predictions"]) == [
        ("llama", "n1"), ("llama", "s1"), ("qwen", "n1"), ("qwen", "s1")]


def test_a_new_M_reuses_the_full_text(tiny_models, tmp_path, monkeypatch):
    """The full text depends on no M: after `-S stage3.M=...` the text stage answers only the
    cuts again, and the full text's answers and numbers are the saved ones."""
    from latentwire import baselines as bl
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    calls = []
    real = bl.generate_text
    monkeypatch.setattr(bl, "generate_text", lambda llm, prompts, *a, desc="", **k:
                        calls.append(desc) or real(llm, prompts, *a, desc=desc, **k))
    out = {}
    for M in (16, 8):
        params = tmp_path / "params.yaml"
        params.write_text(f"""
models:
  llama: {{source: local, path: "{tiny_models['llama']}"}}
encoder: {{kind: bytes}}
bytes: {{d_z: 32, layers: 1, heads: 2, max_bytes: 64}}
stage3: {{M: {M}}}
evaluate: {{max_new_tokens: 3, batch_size: 2}}
""", encoding="utf-8")
        calls.clear()
        out[M] = bl.main(str(params), str(eval_path), str(tmp_path / "b" / "text_baselines.json"))
        ran = {name for c in calls for name in c.rsplit("/", 1)[1].split("+")}
        assert ran == ({"text", "m_token", "equal_byte"} if M == 16 else {"m_token", "equal_byte"}), calls
    for ds in ("squad", "nq"):
        assert out[8]["llama"][ds]["text"] == out[16]["llama"][ds]["text"]
        assert out[8]["llama"][ds]["m_token"]["tokens"] == 8 and out[16]["llama"][ds]["m_token"]["tokens"] == 16
    assert out[8]["equal_byte_budget"] < out[16]["equal_byte_budget"]  # the byte payload shrinks with M
    units = sorted(f.name.rsplit("-", 1)[0] for f in (tmp_path / "b" / "partial" / "text").glob("*.json"))
    assert units == ["llama-cuts", "llama-full"]  # the M=16 cuts' unit is gone, the full text's kept


def test_the_byte_budget_is_a_real_payload(tiny_models, tmp_path):
    """kind bytes: the text stage measures the budget without the encoder (a packed block of
    zeros of the codec's shape); it must weigh what the encoder's own payload weighs."""
    from latentwire import baselines as bl
    from latentwire.config import load_params
    from latentwire.latent import LatentWire
    from latentwire import payload
    params = tmp_path / "params.yaml"
    params.write_text(f"""
models:
  llama: {{source: local, path: "{tiny_models['llama']}"}}
  qwen: {{source: local, path: "{tiny_models['qwen']}"}}
encoder: {{kind: bytes}}
bytes: {{d_z: 32, layers: 1, heads: 2, max_bytes: 64, bits: 8, shared_fraction: 0.75}}
stage3: {{M: 12}}
""", encoding="utf-8")
    p = load_params(params)
    lw = LatentWire(p, 12, hidden={"llama": 8, "qwen": 8})
    real = {r["id"]: len(payload.pack(lat, lw.codec.codebook)) for r, lat in zip(ROWS, lw.codec.latents(ROWS))}
    assert bl.send_all(p, ROWS, tmp_path / "no-pick").nbytes == real


def test_text_baselines_packed_and_dense_answer_alike(tiny_models, tmp_path, monkeypatch):
    """evaluate.prepack swaps the kernel, not the answers: every prediction as with dense nn.Linear."""
    swapped = []
    monkeypatch.setattr(baselines, "pack", lambda model: swapped.append(packed.pack(model)))
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    predictions = {}
    for prepack in (True, False):
        params = tmp_path / f"params-{prepack}.yaml"
        params.write_text(f"""
models:
  llama: {{source: local, path: "{tiny_models['llama']}"}}
  qwen: {{source: local, path: "{tiny_models['qwen']}"}}
encoder: {{kind: bytes}}
bytes: {{d_z: 32, layers: 1, heads: 2, max_bytes: 64}}
stage3: {{M: 4}}
evaluate: {{max_new_tokens: 4, batch_size: 2, prepack: {str(prepack).lower()}}}
""", encoding="utf-8")
        out = tmp_path / str(prepack)
        evaluate.main(str(params), str(eval_path), str(out / "m.json"), str(out / "p.jsonl"), part="text",
                      baselines_path=str(out / "text_baselines.json"))
        predictions[prepack] = json.loads((out / "text_baselines.json").read_text(encoding="utf-8"))["predictions"]
    assert swapped == [15, 15]  # both models, every linear; none with prepack false
    assert len(predictions[True]) == 2 * len(ROWS)
    assert predictions[True] == predictions[False]


def test_the_full_text_runs_only_the_code_its_resume_unit_is_keyed_on(llms):
    """The full text's unit hash covers baselines.FULL_TEXT_CODE only (a pick change reuses
    it): every function of ours that answering the full text runs lives in those modules."""
    import sys
    from pathlib import Path
    ran = set()
    package = Path(baselines.__file__).parent

    def tracer(frame, event, arg):
        f = Path(frame.f_code.co_filename)
        if f.parent == package:
            ran.add(f.stem)

    llm = llms["qwen"]
    sys.setprofile(tracer)
    try:
        evaluate_model(llm, ROWS, 8, 60, max_new_tokens=3, batch_size=2, predictions=[], names=baselines.FULL)
    finally:
        sys.setprofile(None)
    assert {"baselines", "receiver", "llm", "metrics"} <= ran  # the tracer saw the path
    assert ran <= set(baselines.FULL_TEXT_CODE), ran - set(baselines.FULL_TEXT_CODE)


def test_unit_keys_follow_only_their_code(tmp_path, monkeypatch):
    """A copy of the package: an edit to pick.py keeps the full text's unit and moves every
    other unit's; an edit to receiver.py moves the full text's too."""
    import shutil
    from pathlib import Path
    from latentwire import io, units
    copy = tmp_path / "latentwire"
    shutil.copytree(Path(io.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(io, "__file__", str(copy / "io.py"))  # package_sha256 reads this folder
    keys = lambda: (units.unit_path(tmp_path, "q-full", {"a": 1}, [], code=baselines.FULL_TEXT_CODE),  # noqa: E731
                    units.unit_path(tmp_path, "q-cuts", {"a": 1}, []))
    full, cuts = keys()
    (copy / "pick.py").write_text((copy / "pick.py").read_text() + "\n# edited\n")
    assert keys()[0] == full and keys()[1] != cuts
    (copy / "receiver.py").write_text((copy / "receiver.py").read_text() + "\n# edited\n")
    assert keys()[0] != full
    with pytest.raises(ValueError, match="no_such_module"):
        io.package_sha256(("baselines", "no_such_module"))

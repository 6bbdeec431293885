"""encoder.kind ids (the default) on the tiny models: the pick stage, the curriculum, the
evaluation from payload bytes, the budget every variant shares, and send | receive."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import yaml

from latentwire import baselines, evaluate, payload, pick, sender
from latentwire.config import load_params
from latentwire.receiver import Receiver
from latentwire.llm import load_frozen
from tiny import bench, ids_project, run_ids_pipeline, qa_rows as rows  # answer in each context's third sentence

@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_models):
    return ids_project(tmp_path_factory.mktemp("ids"), tiny_models)


@pytest.fixture(scope="module")
def trained(project, one_thread):
    return run_ids_pipeline(project)


def test_pick_stage_fits_and_reuses_its_features(project, trained):
    pm, _ = trained
    assert pm["pool"] == 40 and pm["dev_examples"] > 0
    # on its held-out titles the fitted pick finds every answer at pick.dev_M
    assert pm["dev_recall"]["squad"]["pick_recall"] == 1.0
    assert (project / "models/pick/pick.safetensors").is_file()
    # the features are computed once: a second fit reads them back, and fits the same model
    again = sender.main(str(project / "params.yaml"), str(project / "data/mix/pool.jsonl"),
                        str(project / "data/pick/features.safetensors"), str(project / "models/pick2"),
                        str(project / "pick2.json"))
    assert again["loss"] == pm["loss"]
    a = (project / "models/pick/pick.safetensors").read_bytes()
    assert a == (project / "models/pick2/pick.safetensors").read_bytes()


def test_latent_is_decoded_from_measured_payloads(project, trained):
    _, m = trained
    s = sender.Sender.load(load_params(project / "params.yaml"), project / "models/pick", 8)
    eval_rows = [json.loads(x) for x in (project / "data/mix/eval.jsonl").read_text().splitlines()]
    for slot in ("llama", "qwen"):
        for ds in ("squad", "nq"):
            res = m[slot][ds]
            # the payloads again, from the sender's own send(): what the bytes and the budget report
            sizes = [len(s.send(r["question"], r["context"])) for r in eval_rows if r["dataset"] == ds]
            assert res["bytes"]["ids"]["per_model"] == pytest.approx(sum(sizes) / len(sizes))
            assert res["bytes"]["ids"]["max"] == max(sizes) <= 2 * 8 + 7  # 8 slots of 2 bytes + 7
            assert res["equal_byte"]["bytes"] == res["selected_equal_byte"]["bytes"] == pytest.approx(sum(sizes) / len(sizes))
            # every slot the receiver reads is one id of the payload: 2 bytes a position + 7
            assert res["bytes"]["ids"]["per_model"] == pytest.approx(2 * res["positions"]["latent_mean"] + 7)
            assert res["slots"]["exact"] == 1.0
            if slot == "llama":  # the codebook's own tokenizer: one id a position
                assert res["positions"]["tokens_per_slot"] == 1.0
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
        # the ids spell the context's text at the picked spans (spacing aside), and each gap between
        # spans takes a position: the separator (here " ", the first token of " ..." in the tiny
        # codebook's tokens, which split it)
        nospace = lambda t: "".join(t.split())  # noqa: E731
        assert nospace(s.decode(got.ids)) == nospace("".join(got.texts(ctx)))
        assert got.ids.count(s.sep_id) >= len(got.spans) - 1


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


HELD_OUT = rows(4, "squad", 300) + rows(4, "nq", 400)  # in no pool, train or eval file


def check_pick(s: sender.Sender, held: list[dict]) -> None:
    """The fitted pick on rows it never saw: it rates the answer's tokens above the others on
    every row (AUC, ties half: a constant rating scores 0.5, a reversed one about 0), and its M
    positions hold the whole answer on more rows than the first M tokens do (on none: the
    answer is in the third sentence). Not yet on most rows: spans_for can trim the best token
    off its own span (test_pick.py, test_a_later_span_never_trims_the_best_token_away)."""
    found = first = 0
    for r in held:
        rd = pick.read(s.tokenizer, r["question"], r["context"], s.max_tokens)
        y = pick.answer_labels(rd, r["context"], r["answers"]).tolist()
        scores = s.model.score(rd)
        pos, neg = [x for x, t in zip(scores, y) if t == 1], [x for x, t in zip(scores, y) if t == 0]
        auc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
        assert auc > 0.9, (r["id"], auc)
        found += pick.contains_answer(s.pick(r["question"], r["context"]).texts(r["context"]), r["answers"])
        first += pick.contains_answer(pick.span_texts(rd, r["context"], [(0, s.M)]), r["answers"])
    assert found > first == 0, (found, first)


def test_the_fitted_pick_finds_the_answer_on_rows_it_never_saw(project, trained):
    check_pick(sender.Sender.load(load_params(project / "params.yaml"), project / "models/pick", 8), HELD_OUT)


@pytest.mark.parametrize("broken", ["constant", "reversed"])
def test_a_constant_or_reversed_pick_fails_that_check(project, trained, monkeypatch, broken):
    real = pick.Ensemble.score  # the sender's rater
    fake = {"constant": lambda self, r: [0.0] * len(r.ids),
            "reversed": lambda self, r: [-x for x in real(self, r)]}[broken]
    monkeypatch.setattr(pick.Ensemble, "score", fake)
    s = sender.Sender.load(load_params(project / "params.yaml"), project / "models/pick", 8)
    with pytest.raises(AssertionError):
        check_pick(s, HELD_OUT)


def test_pick_whole_words_reaches_the_sender_from_params(project, trained):
    """pick.whole_words: off (the default) a span may end inside a word; on, every span of every
    held-out row starts and ends between words, and the sender spends no more than M."""
    p = load_params(project / "params.yaml")
    assert p.pick.whole_words is False and sender.Sender.load(p, project / "models/pick", 8).whole_words is False
    on = dataclasses.replace(p, pick=dataclasses.replace(p.pick, whole_words=True))
    s = sender.Sender.load(on, project / "models/pick", 8)
    assert s.whole_words
    for r in HELD_OUT:
        picked = s.pick(r["question"], r["context"])
        w = picked.read.word
        assert len(picked.ids) <= 8
        assert all((a == 0 or w[a - 1] != w[a]) and (b == len(w) or w[b - 1] != w[b]) for a, b in picked.spans)


def test_a_receiver_with_another_vocabulary_reads_the_ids_text_in_its_own_tokens(project, trained):
    """The tiny qwen's tokenizer is not the codebook's (tests/tiny.py), as Qwen's is not SmolLM2's:
    its base for a row of ids is its own embeddings of the ids' text in its own tokens, the tokens
    the selected_text baseline reads, cut to as many positions as ids were sent; evaluate counts
    the ids whose string alone it splits. The llama receiver (the codebook's own) reads the ids."""
    from latentwire.latent import LatentWire
    from latentwire.baselines import text_variants
    p = load_params(project / "params.yaml")
    lw = LatentWire.from_checkpoint(p, project / "models/stage3/best", 8, project / "models/pick")
    codebook = lw.codec.sender.tokenizer
    split = {}
    for slot in ("llama", "qwen"):
        llm = load_frozen(slot, p.models[slot], p.prompt)
        lw.attach(llm)
        adapter, E = lw.codec.adapters[slot], llm.model.get_input_embeddings().weight.detach()
        with torch.no_grad():  # step 0 of the learned correction: the embeddings of the tokens alone
            adapter.delta[2].weight.zero_(); adapter.delta[2].bias.zero_(); adapter.pos.zero_()
        split[slot] = 0
        for r in rows(3, "squad", 20):
            ids = lw.codec.pick(r).ids
            tok = adapter.tokens(ids)
            if slot == "llama":
                assert tok == ids
            else:  # the picked text's prompt holds the same tokens, after "Context:"
                prompt = text_variants(llm, r, len(ids), 10, lw.codec.sender.decode(ids))["selected_text"]
                theirs = llm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
                assert any(theirs[k:k + len(tok)] == tok for k in range(len(theirs))), (tok, theirs)
            with torch.no_grad():
                torch.testing.assert_close(adapter(torch.tensor(ids)), E[tok].float())
            for i in ids:  # the diagnostics' count of each id's string in this tokenizer's tokens
                theirs = llm.tokenizer(codebook.decode([i]), add_special_tokens=False)["input_ids"]
                assert lw.codec.split(slot, [i]) == [len(theirs)]
                split[slot] += len(theirs) > 1
    assert split["llama"] == 0 and split["qwen"] > 0, split
    assert codebook.get_vocab() != llm.tokenizer.get_vocab()  # qwen: other ids for the same strings
    _, m = trained
    assert m["llama"]["squad"]["slots"]["split"] == 0 < m["qwen"]["squad"]["slots"]["split"]


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
    latency = bench("latency")
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
    text_a, text_b = (baselines.send_all(p, x, project / "models/pick") for x in (a, b))
    assert text_a.nbytes == text_b.nbytes == {k: len(v[0]) for k, v in sent_a.items()}
    for ra, rb in zip(a, b):
        sa, sb = text_a.selected[ra["id"]], text_b.selected[rb["id"]]
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
    lodo = bench("pick_lodo")
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


def test_pick_pool_benchmark_runs_on_the_tiny_models(project, trained, tmp_path):
    """bench/pick_pool.py must not rot: one dev set read by a pick fitted per pool size, the
    smaller pool drawn equally from each dataset and holding no dev title."""
    pool_bench = bench("pick_pool")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(30, "squad", 100) + rows(30, "nq", 200)))
    out = tmp_path / "pool.md"
    r = pool_bench.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--features",
                         str(tmp_path / "f.safetensors"), "--pick", str(project / "models/pick"), "--sizes", "20", "0",
                         "--out", str(out)])
    small, whole = r["sizes"]
    assert 0 < r["dev_examples"] < 20 and (small["pool"], whole["pool"]) == (20, 60)
    assert whole["fit_examples"] == 60 - r["dev_examples"]  # every row outside the dev titles
    assert set(small["per_dataset_fit"]) == {"squad", "nq"} and max(small["per_dataset_fit"].values()) <= 10
    assert set(small["recall"]) == set(whole["recall"]) == {"squad", "nq"}
    assert "| 60 |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r
    assert r["seed"] == load_params(project / "params.yaml").seed
    other = pool_bench.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--features",
                             str(tmp_path / "f.safetensors"), "--pick", str(project / "models/pick"), "--sizes", "20",
                             "--seed", "3", "--out", str(tmp_path / "pool3.md")])
    assert other["seed"] == 3 and "--seed 3" in (tmp_path / "pool3.md").read_text()
    assert set(other["sizes"][0]["per_dataset_fit"]) == {"squad", "nq"} and other["sizes"][0]["pool"] == 20


def test_pick_seeds_benchmark_reproduces_the_stage_and_restores_the_window(project, trained, tmp_path):
    """bench/pick_seeds.py must not rot: at the stage's window and seed it is the stage's own fit and
    spending choice; another seed fits another model; a run at another window leaves pick.CHUNK as it was."""
    pm, _ = trained
    seeds = bench("pick_seeds")
    out = tmp_path / "seeds.md"
    window = pick.CHUNK
    r = seeds.main(["--params", str(project / "params.yaml"), "--pool", str(project / "data/mix/pool.jsonl"),
                    "--features", str(project / "data/pick/features.safetensors"), "--windows", str(window), "16",
                    "--seeds", "0", "1", "--out", str(out)])
    assert pick.CHUNK == window
    runs = {(x["window"], x["seed"]): x for x in r["runs"]}
    assert set(runs) == {(window, 0), (window, 1), (16, 0), (16, 1)}
    stage = runs[(window, 0)]  # params seed 0: the stage's run
    assert stage["loss"] == pm["loss"] and stage["per_dataset"] == pm["dev_recall"]
    assert runs[(window, 1)]["loss"] != stage["loss"] and runs[(16, 0)]["loss"] != stage["loss"]
    assert runs[(16, 0)]["windows_per_step"] == runs[(window, 0)]["windows_per_step"] * window // 16
    assert (stage["members"], stage["ema"]) == (pm["members"], pm["ema"])  # the stage's averaged fits, by default
    assert f"| {window} | {pm['members']} | {pm['ema']} | 2 |" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text()) == r


def test_pick_reader_benchmark_spends_the_fitted_pick_at_each_width(project, trained, tmp_path):
    """bench/pick_reader.py must not rot: it reads only the pick's held-out pool rows, its recall at
    the stage's own width is the stage's recall on those rows, and each width is paired with it."""
    reader = bench("pick_reader")
    out = tmp_path / "reader.md"
    params = load_params(project / "params.yaml")
    s = sender.Sender.load(params, project / "models/pick", params.pick.dev_M)
    pool = sender.read_jsonl(project / "data/mix/pool.jsonl")
    dev = [r for r in pool if sender.is_pick_dev(r)]
    assert 0 < len(dev) < len(pool)
    r = reader.main(["--params", str(project / "params.yaml"), "--pool", str(project / "data/mix/pool.jsonl"),
                     "--pick", str(project / "models/pick"), "--n", "100", "--models", "qwen", "--spans", "1",
                     "--flip-words", "--out", str(out)])
    assert r["rows"] == len(dev) and r["chosen_span"] == str(params.pick.spans[0]) == "6"
    res = r["models"]["qwen"]
    assert set(res) == {"1", "6", "6, whole words"}
    assert res["6"]["recall"] == sender.recall(s, dev, params.pick.dev_M)["squad"]["pick_recall"]
    s.whole_words = True
    assert res["6, whole words"]["recall"] == sender.recall(s, dev, params.pick.dev_M)["squad"]["pick_recall"]
    assert res["1"]["vs_chosen"]["n"] == len(dev)  # paired on the same rows
    assert "| 6 (chosen) |" in out.read_text() and "| 6, whole words |" in out.read_text()


def test_receiver_base_benchmark_reads_both_bases_on_held_out_rows(project, trained, tmp_path):
    """bench/receiver_base.py must not rot: it reads the pick's held-out pool rows only; for the
    codebook's own model (llama) the two bases are one input, so the same answers; the other
    vocabulary (qwen) splits some ids' strings and reads its own tokens within the ids' count."""
    base = bench("receiver_base")
    out = tmp_path / "base.md"
    pool = sender.read_jsonl(project / "data/mix/pool.jsonl")
    dev = [r for r in pool if sender.is_pick_dev(r)]
    r = base.main(["--params", str(project / "params.yaml"), "--pool", str(project / "data/mix/pool.jsonl"),
                   "--pick", str(project / "models/pick"), "--n", "100", "--models", "llama", "qwen", "--out", str(out)])
    assert r["rows"] == len(dev) > 0
    llama, qwen = r["models"]["llama"], r["models"]["qwen"]
    assert llama["f1"]["mean"] == llama["f1"]["tokens"] and llama["split_ids"] == 0
    assert llama["positions"]["tokens"] == llama["positions"]["mean"]
    assert qwen["split_ids"] > 0 and qwen["positions"]["tokens"] <= qwen["positions"]["mean"] <= r["M"]
    assert qwen["tokens_minus_mean"]["n"] == qwen["tokens_minus_text"]["n"] == len(dev)  # paired on the same rows
    assert "## qwen" in out.read_text()


def test_pool_probe_benchmark_runs_on_the_tiny_models(project, trained, tmp_path):
    """bench/pool_probe.py must not rot: every variant within M positions, the pooled ones
    carrying about two tokens a position, twice the tokens at twice the positions."""
    probe = bench("pool_probe")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(60, "squad", 100) + rows(60, "nq", 300)))
    out = tmp_path / "probe.md"
    r = probe.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--pick", str(project / "models/pick"),
                    "--slot", "llama", "--n", "3", "--M", "6", "--out", str(out)])
    v = r["variants"]
    assert r["n"] == 6 and set(v) == set(probe.VARIANTS)
    assert v["tokens_M"]["tokens_per_position"] == v["tokens_2M"]["tokens_per_position"] == 1.0
    assert v["tokens_M"]["positions"] <= 6 < v["tokens_2M"]["positions"] <= 12
    for pooled in ("pair_mean", "pair_renorm"):
        assert v[pooled]["positions"] <= 6 and 1.5 <= v[pooled]["tokens_per_position"] <= 2.0
    assert "| pair_mean |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r


def test_variable_rate_layout_keeps_the_best_rated_tokens_single_and_pairs_the_rest():
    """ids.keep's layout (sender.sure, sender.pair_up): the pick's best-rated picked tokens take a
    position each, the other tokens of a span go in adjacent pairs, a gap between spans takes a
    separator, and a token is never paired across spans."""
    spans, ids = [(0, 5), (7, 10)], pick.lay_out(list(range(10, 20)), [(0, 5), (7, 10)], 0)
    scores = [0.1, 0.2, 0.9, 0.3, 0.1, 0.0, 0.0, 0.8, 0.1, 0.2]
    laid = lambda pairs: payload.Latent(payload.KIND_PAIRED_IDS, 16, None, ids=ids, pairs=pairs).groups()  # noqa: E731
    assert sender.sure(spans, scores, 2) == {2, 7}
    assert laid(sender.pair_up(spans)) == [[10, 11], [12, 13], [14], [0], [17, 18], [19]]
    assert laid(sender.pair_up(spans, sender.sure(spans, scores, 2))) == [[10, 11], [12], [13, 14], [0], [17], [18, 19]]


def test_a_paired_adapter_starts_as_the_mean_of_each_pair():
    """TokenAdapter with `paired` (ids.keep): a pair's position is the mean of its two ids' string
    embeddings at the start (a single id's is its own), before the correction and positions (zero)."""
    from latentwire.adapter import TokenAdapter

    E = torch.randn(20, 8)
    a = TokenAdapter(8, 4, rank=2, paired=True)
    a.set_table(E, list, to_strings=lambda ids: [[i] if i != 7 else [3, 4] for i in ids])
    out = a(torch.tensor([1, 2, 7, 5, 6]), pairs=[1, 0, 0, 1, 0])
    want = torch.stack([(E[1] + E[2]) / 2, (E[3] + E[4]) / 2, (E[5] + E[6]) / 2])
    assert torch.allclose(out, want, atol=1e-6)
    assert a.built_from([1, 2, 7, 5, 6], [1, 0, 0, 1, 0]) == [-1, -1, -1]  # pairs, and a split string
    assert a.built_from([9], [0]) == [9]
    with pytest.raises(ValueError, match="every id needs its layout bit"):
        a(torch.tensor([1, 2]))


def test_variable_rate_pipeline_reads_more_tokens_than_positions(tiny_models, tmp_path_factory, one_thread):
    """ids.keep end to end on the tiny models: stage1 fits both receivers' poolers first (each lowers
    its state error), the payload is kind paired ids (2 B an id + a layout bit + 7), and every
    receiver reads more ids than positions, within M."""
    def edit(raw):
        raw["ids"].update(keep=2, pooler_steps=6, pooler_rows=16, pooler_layers=1)
    root = ids_project(tmp_path_factory.mktemp("vrate"), tiny_models, edit)
    _, m = run_ids_pipeline(root)
    s1 = json.loads((root / "metrics/train/stage1.json").read_text())
    for slot in ("llama", "qwen"):
        start, end = s1["poolers"][slot]["loss_first_batch"]
        assert end < start and s1["poolers"][slot]["rows"] == 16
    # stage1 rerun with the same params resumes from its last/ (saved after the fit too): no second fit
    from latentwire import train
    again = train.Stage(load_params(root / "params.yaml"), "stage1", root)
    assert again.resumed_from is not None and set(again.poolers) == {"llama", "qwen"} and not again.needs_poolers()
    s = sender.Sender.load(load_params(root / "params.yaml"), root / "models/pick", 8)
    eval_rows = [json.loads(x) for x in (root / "data/mix/eval.jsonl").read_text().splitlines()]
    for ds in ("squad", "nq"):
        sent = [payload.unpack(s.send(r["question"], r["context"]), s.codebook, s.limits())
                for r in eval_rows if r["dataset"] == ds]
        assert all(lat.kind == payload.KIND_PAIRED_IDS and lat.positions <= 8 < lat.n for lat in sent)
        n = [lat.n for lat in sent]
        assert m["llama"][ds]["bytes"]["ids"]["per_model"] == pytest.approx(sum(2 * k + -(-k // 8) + 7 for k in n) / len(n))
        for slot in ("llama", "qwen"):
            pos = m[slot][ds]["positions"]
            assert pos["latent_max"] <= 8 and pos["tokens_per_slot"] == pytest.approx(sum(n) / len(n) / pos["latent_mean"])
            assert m[slot][ds]["slots"]["exact"] == 1.0


@pytest.mark.parametrize("layout", ["pair", "vrate"])
def test_pair_slots_benchmark_trains_the_pooler_from_the_mean(project, trained, tmp_path, layout):
    """bench/pair_slots.py must not rot: its pooler starts as the plain mean of a pair (a single
    token passes unchanged), training lowers the state error it is trained on, and every pooled
    variant carries more than one token a position within M (about two with every token paired;
    fewer with --layout vrate, whose best-rated tokens stay single)."""
    import torch

    ps = bench("pair_slots")
    table = torch.randn(10, 8)
    start = ps.pool_groups(ps.PairPooler(8, rank=4), table, [[1, 2], [3], [4, 5]])
    assert torch.allclose(start, torch.stack([(table[1] + table[2]) / 2, table[3], (table[4] + table[5]) / 2]))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(60, "squad", 100) + rows(60, "nq", 300)))
    out = tmp_path / "pairs.md"
    r = ps.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--pick", str(project / "models/pick"),
                 "--slot", "llama", "--n", "3", "--M", "6", "--train", "16", "--steps", "6", "--batch", "4",
                 "--layers", "1", "--lr", "0.01", "--out", str(out), "--layout", layout, "--keep", "2"])
    v = r["variants"]
    assert r["n"] == 6 and set(v) == set(ps.variants(layout)) and r["keep"] == (2 if layout == "vrate" else 0)
    assert r["loss_first_batch"][1] < r["loss_first_batch"][0]
    assert v["tokens_M"]["positions"] <= 6 < v["tokens_2M"]["positions"] <= 12
    least = 1.5 if layout == "pair" else 1.1
    for pooled in (f"{layout}_mean", f"{layout}_learned"):
        assert v[pooled]["positions"] <= 6 and least <= v[pooled]["tokens_per_position"] <= 2.0
    if layout == "vrate":  # two of a row's p <= 6 positions hold one token each: at most 2p - 2 tokens
        assert v["vrate_mean"]["tokens_per_position"] <= 2 - 2 / 6 + 1e-9
    assert f"| {layout}_learned |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r


def test_highlight_benchmark_aligns_the_ratings_and_starts_at_the_text(project, trained, tmp_path):
    """bench/highlight.py must not rot: each receiver token (another tokenizer's) takes the rating
    of the sender tokens its characters overlap, and nothing else's; the rating embedding starts at
    zero, so a reader with it reads exactly the text's embeddings; the run writes every variant."""
    import torch

    hl = bench("highlight")
    p = load_params(project / "params.yaml")
    s = sender.Sender.load(p, project / "models/pick", 8)
    qwen = load_frozen("qwen", p.models["qwen"], p.prompt)
    line = " the tower stands in paris"
    enc = s.tokenizer(line, add_special_tokens=False, return_offsets_mapping=True)
    ids, at = enc["input_ids"], line.index("tower")
    rating = [3 if a < at + 5 and b > at else 0 for a, b in enc["offset_mapping"]]  # the tokens of "tower"
    tok, got = hl.receiver_ratings(s, qwen)(ids, rating)
    text = [qwen.tokenizer.decode([t]) for t in tok]
    assert len(got) == len(tok) and set(got) == {0, 3}
    assert "".join(t for t, b in zip(text, got) if b == 3).strip().lower() == "tower", (text, got)
    E = torch.randn(50, 6)
    plain, marked = hl.Reader(E, 8, 4, 4, False), hl.Reader(E, 8, 4, 4, True)
    assert torch.equal(plain([1, 2, 3], [0, 3, 1]), E[[1, 2, 3]]) and torch.equal(marked([1, 2, 3], [0, 3, 1]), E[[1, 2, 3]])
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(60, "squad", 100) + rows(60, "nq", 300)))
    out = tmp_path / "hl.md"
    r = hl.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--pick", str(project / "models/pick"),
                 "--slot", "qwen", "--n", "3", "--M", "6", "--train", "16", "--steps", "2", "--batch", "4",
                 "--out", str(out)])
    assert r["n"] == 6 and set(r["variants"]) == set(hl.VARIANTS) and len(r["contrasts"]) == len(hl.CONTRASTS)
    assert "| highlight_only |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r


def test_pick_attention_maps_the_lm_onto_the_senders_tokens(project, trained, tmp_path):
    """bench/pick_attention.py must not rot: a sender token takes the attention of the LM tokens its
    characters overlap, and no other's; the "gru" row is the fitted pick's own recall on the same rows."""
    pa = bench("pick_attention")
    m = pa.overlap([(0, 3), (3, 7), (7, 7)], [(0, 2), (2, 5), (5, 7)])
    assert m.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    params = load_params(project / "params.yaml")
    s = sender.Sender.load(params, project / "models/pick", params.pick.dev_M)
    dev = [r for r in sender.read_jsonl(project / "data/mix/pool.jsonl") if sender.is_pick_dev(r)]
    out = tmp_path / "attn.md"
    r = pa.main(["--params", str(project / "params.yaml"), "--pool", str(project / "data/mix/pool.jsonl"),
                 "--pick", str(project / "models/pick"), "--slot", "qwen", "--train", "5", "--n", "100", "--out", str(out)])
    assert r["dev_rows"] == len(dev) and r["train_rows"] == 5
    assert r["recall"]["gru (the pick)"]["squad"] == sender.recall(s, dev, params.pick.dev_M)["squad"]["pick_recall"]
    assert len(r["recall"]) == 1 + len(pa.TOPS) + len(pa.BLEND_TOPS) * len(pa.WEIGHTS)
    assert "| attn top 1 |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r


def test_pick_bridge_reads_the_best_sentence_into_the_question(project, trained, tmp_path):
    """bench/pick_bridge.py must not rot: pass 1 is the fitted pick as the stage spends it; the
    sentence read into the question is the one that holds the best-rated token."""
    pb = bench("pick_bridge")
    params = load_params(project / "params.yaml")
    s = sender.Sender.load(params, project / "models/pick", params.pick.dev_M)
    dev = [r for r in sender.read_jsonl(project / "data/mix/pool.jsonl") if sender.is_pick_dev(r)]
    r0 = dev[0]
    rd = pick.read(s.tokenizer, r0["question"], r0["context"])
    logits = torch.zeros(len(rd.ids))
    logits[len(rd.ids) - 2] = 1.0  # a token of the last sentence
    text, para = pb.best_sentence(rd, r0["context"], logits)
    assert r0["context"].rstrip().endswith(text) and text.startswith("Number") and para == 0
    r = pb.main(["--params", str(project / "params.yaml"), "--pool", str(project / "data/mix/pool.jsonl"),
                 "--pick", str(project / "models/pick"), "--datasets", "squad", "--out", str(tmp_path / "bridge.md")])
    assert r["rows"] == len(dev) and len(r["variants"]) == 7
    assert r["variants"]["the pick (pass 1)"]["pick_recall"] == sender.recall(s, dev, params.pick.dev_M)["squad"]["pick_recall"]


def test_pick_hits_splits_the_evaluation_by_the_picks_own_recall(project, trained, tmp_path):
    """bench/pick_hits.py must not rot: its questions the pick holds are the evaluation's pick_recall
    share, dataset by dataset, and each part's F1 is the mean over that part's questions."""
    ph = bench("pick_hits")
    preds = [{"model": "m", "dataset": "d", "id": i, "f1_text": t, "f1_latent_ids": x}
             for i, t, x in (("a", 1.0, 0.5), ("b", 0.5, 0.0), ("c", 0.25, 0.75))]
    assert ph.split(preds, {"a": True, "b": False, "c": True}) == {"m": {"d": {
        "hit": {"n": 2, "text": 0.625, "latent": 0.625}, "miss": {"n": 1, "text": 0.5, "latent": 0.0}}}}
    out = tmp_path / "hits.md"
    r = ph.main(["--params", str(project / "params.yaml"), "--pick", str(project / "models/pick"),
                 "--eval", str(project / "data/mix/eval.jsonl"),
                 "--predictions", str(project / "data/eval/predictions.jsonl"), "--out", str(out)])
    recall = json.loads((project / "metrics/eval.json").read_text())["pick"]
    for model, per in r.items():
        for ds, parts in per.items():
            n = {k: v["n"] for k, v in parts.items()}
            assert n.get("hit", 0) / sum(n.values()) == pytest.approx(recall[ds]["pick_recall"]), (model, ds)
    assert "| qwen | squad |" in out.read_text()


def test_highlight_seeds_runs_each_named_run_once(project, trained, tmp_path):
    """bench/highlight_seeds.py must not rot: a run's name sets its spending, steps and seed; the
    seed moves the training; a run whose JSON is there is read, not rerun; a bad name is refused."""
    hs = bench("highlight_seeds")
    assert hs.parse("whole_250_seed1") == (True, None, 250, 1) and hs.parse("cut3_150_seed0") == (False, 3, 150, 0)
    for bad in ("half_150_seed0", "cut_x_seed0", "cut3_150"):
        with pytest.raises(ValueError, match="cut|whole"):
            hs.parse(bad)
    assert hs.pairs(["cut_150_seed0", "cut3_150_seed0", "cut3_250_seed0", "cut3_250_seed1", "whole3_150_seed0"]) == [
        ("cut3_150_seed0", "cut_150_seed0"), ("cut3_250_seed0", "cut3_150_seed0"), ("cut3_250_seed1", "cut3_250_seed0"),
        ("whole3_150_seed0", "cut3_150_seed0")]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(60, "squad", 100) + rows(60, "nq", 300)))
    d = tmp_path / "seeds"
    argv = ["--params", str(project / "params.yaml"), "--pool", str(pool), "--pick", str(project / "models/pick"),
            "--slot", "qwen", "--n", "3", "--M", "6", "--dir", str(d),
            "--runs", "cut_2_seed0", "cut_2_seed1", "whole_2_seed0", "cut1_2_seed0"]
    text = hs.main(argv)
    runs = {n: json.loads((d / f"{n}.json").read_text()) for n in ("cut_2_seed0", "cut_2_seed1", "whole_2_seed0", "cut1_2_seed0")}
    loss = {n: r["variants"]["trained"]["loss_first_last_20"] for n, r in runs.items()}
    assert loss["cut_2_seed0"] != loss["cut_2_seed1"]
    assert "`whole_2_seed0` | whole words | the stage's | 2 (16) | 0 |" in text and "cut_2_seed1 - cut_2_seed0" in text
    assert "--span 1`" in (d / "cut1_2_seed0.md").read_text() and "cut1_2_seed0 - cut_2_seed0" in text
    before = (d / "cut_2_seed0.json").stat().st_mtime_ns
    assert hs.main(argv) == text and (d / "cut_2_seed0.json").stat().st_mtime_ns == before


def test_the_receiver_reads_its_payload(project, trained):
    """Receiver.read + Receiver.answer are the one receive path (evaluate, transfer, bench): with
    the adapter's learned correction at zero, the soft tokens are exactly the receiver's own
    embeddings of the ids in the payload, and the answer's logits are those of reading the
    picked tokens as text. A receiver deaf to its payload (zeros, a constant, another row's
    slots) fails here."""
    from latentwire.latent import LatentWire
    from latentwire.receiver import Receiver
    p = load_params(project / "params.yaml")
    lw = LatentWire.from_checkpoint(p, project / "models/stage3/best", 8, project / "models/pick")
    llm = load_frozen("llama", p.models["llama"], p.prompt)  # the codebook's own tokenizer
    lw.attach(llm)
    a = lw.codec.adapters["llama"]
    with torch.no_grad():
        a.delta[2].weight.zero_(), a.delta[2].bias.zero_(), a.pos.zero_()
    rec, E = Receiver(llm), llm.model.get_input_embeddings().weight
    r1, r2 = rows(3, "squad", 20)[0], rows(3, "nq", 30)[1]
    sent = evaluate.send_all(lw, [r1, r2], 2)
    q, answer = r1["question"], torch.tensor([llm.tokenizer(" " + r1["answers"][0])["input_ids"][:2]])
    logits = {}
    for r in (r1, r2):
        latent, soft = rec.read(lw.codec, sent[r["id"]][0])
        assert latent.ids == sent[r["id"]][1].ids and torch.allclose(soft, E[latent.ids])
        logits[r["id"]] = rec.answer_logits([rec.rest(soft, q)], answer)
    as_text = rec.answer_logits([rec.rest(E[sent[r1["id"]][1].ids], q)], answer)
    assert torch.allclose(logits[r1["id"]], as_text, atol=1e-5)
    assert not torch.allclose(logits[r1["id"]], logits[r2["id"]], atol=1e-3)  # another payload, another reading


def test_the_features_cache_is_hit_and_keyed_on_what_it_reads(project, trained, monkeypatch, tmp_path):
    """The pick stage's features: an unchanged rerun computes none (counted, not compared by
    bytes), and each thing they are read from (the pool, pick.max_tokens, the codebook's
    tokenizer) recomputes them."""
    calls = []
    real = sender.compute_features
    monkeypatch.setattr(sender, "compute_features", lambda rows, *a: calls.append(len(rows)) or real(rows, *a))
    base = yaml.safe_load((project / "params.yaml").read_text())

    def run(raw, pool):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        calls.clear()
        sender.main(str(tmp_path / "params.yaml"), str(pool), str(tmp_path / "features.safetensors"),
                    str(tmp_path / "pick"), str(tmp_path / "pick.json"))
        return list(calls)

    pool, fewer = project / "data/mix/pool.jsonl", tmp_path / "pool.jsonl"
    fewer.write_text("".join(pool.read_text().splitlines(keepends=True)[:-1]))
    assert run(base, pool) == [40]  # no cache yet
    assert run(base, pool) == []    # unchanged: every feature read back
    assert run({**base, "pick": {**base["pick"], "max_tokens": 64}}, pool) == [40]
    assert run(base, fewer) == [39]
    assert run({**base, "ids": {"feature_model": "qwen"}}, pool) == [40]  # its own vocabulary


def test_receiver_parts_benchmark_zeroes_each_part_of_the_trained_adapter(project, trained, tmp_path):
    """bench/receiver_parts.py must not rot: each variant holds the checkpoint's adapter with
    exactly the parts it names at zero (untrained: the picked text's own embeddings), and the run
    reads every variant on the held-out pool rows."""
    from safetensors.torch import load_file

    rp = bench("receiver_parts")
    p = load_params(project / "params.yaml")
    state = load_file(project / "models/stage3/best/model.safetensors")
    want = {k.removeprefix("codec.adapters.qwen."): v for k, v in state.items() if ".qwen." in k}
    E, ids = torch.randn(50, want["pos"].shape[1]), [5, 9, 11]
    assert want["pos"].any() and want["delta.2.weight"].any()  # trained: both parts moved
    for v, zero in rp.VARIANTS.items():
        reader = rp.reader_from(state, "qwen", E, 8, p.train.adapter_rank, zero)
        got = reader.adapter.state_dict()
        assert got["pos"].any() == ("pos" not in zero) and got["delta.2.weight"].any() == ("delta" not in zero)
        assert torch.equal(got["delta.0.weight"], want["delta.0.weight"])  # the first layer is kept
        if v == "untrained":
            assert torch.equal(reader(ids, [0, 0, 0]), E[ids])
    with pytest.raises(ValueError, match="no adapter for slot 'gemma'"):
        rp.reader_from(state, "gemma", E, 8, p.train.adapter_rank, ())
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows(60, "squad", 100) + rows(60, "nq", 300)))
    out = tmp_path / "rp.md"
    r = rp.main(["--params", str(project / "params.yaml"), "--pool", str(pool), "--pick", str(project / "models/pick"),
                 "--checkpoint", str(project / "models/stage3/best"), "--slot", "qwen", "--n", "3", "--M", "8",
                 "--text", "--out", str(out)])
    assert r["n"] == 6 and set(r["variants"]) == set(rp.VARIANTS) | {"text", "text_trained"}
    assert len(r["contrasts"]) == len(rp.CONTRASTS) + len(rp.TEXT_CONTRASTS)
    assert "| pos_only |" in out.read_text() and json.loads(out.with_suffix(".json").read_text()) == r


def test_pick_telegraphic_thins_extra_positions_back_to_M(project, trained, tmp_path):
    """bench/pick_telegraphic.py must not rot: at extra 0 it is the pick as the sender spends it;
    with extra positions what it sends still fits M sender tokens, and it drops only stopwords and
    punctuation outside each span's run, lowest-rated first."""
    tg = bench("pick_telegraphic")
    params = load_params(project / "params.yaml")
    M = params.pick.dev_M
    s = sender.Sender.load(params, project / "models/pick", M)
    dev = [r for r in sender.read_jsonl(project / "data/mix/pool.jsonl") if sender.is_pick_dev(r)]
    thinned = dropped = 0
    for r in dev:
        rd = pick.read(s.tokenizer, r["question"], r["context"])
        scores = s.model.score(rd)
        assert tg.telegraphic(s, rd, scores, M, 0)[0] == s.decode(s.spend(rd, scores, M).ids)
        text, _, covered, kept = tg.telegraphic(s, rd, scores, M, 4)
        if text != tg.telegraphic(s, rd, scores, M, 0)[0]:  # thinned: it fits M as the sender tokenises it
            thinned += 1
            assert len(s.tokenizer(text, add_special_tokens=False)["input_ids"]) <= M
            dropped += covered - kept
        spans = pick.spans_for(scores, rd.sentence, M + 4, s.span, rd.paragraph, s.cover, s.grow)
        drop = tg.droppable(rd, scores, spans, s.grow or 0.0)
        assert [scores[i] for i in drop] == sorted(scores[i] for i in drop)
        for i in drop:
            a, b = next(sp for sp in spans if sp[0] <= i < sp[1])
            assert scores[i] < max(scores[a:b]) - (s.grow or 0.0)
            assert rd.features[i, tg.STOP] > 0 or rd.features[i, tg.PUNCT] > 0
    assert thinned and dropped  # the extra positions changed what is sent, by dropping tokens
    r = tg.main(["--params", str(project / "params.yaml"), "--pool", str(project / "data/mix/pool.jsonl"),
                 "--pick", str(project / "models/pick"), "--n", "100", "--models", "qwen", "--extra", "4",
                 "--out", str(tmp_path / "tg.md")])
    assert r["rows"] == len(dev) and set(r["recall"]) == {0, 4}
    assert r["recall"][0]["squad"] == sender.recall(s, dev, M)["squad"]["pick_recall"]
    assert r["models"]["qwen"][0]["vs_pick"]["diff"] == 0 and r["models"]["qwen"][4]["vs_pick"]["n"] == len(dev)

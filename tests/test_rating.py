"""The rating channel (ids.rating_edges) on the tiny models: the pick's answer probability of each
sent id travels as a bucket beside it (payload kind rated ids), and each receiver's adapter reads
it through a learned embedding per bucket that starts at zero. The whole pipeline runs with it
on: pick, KD cache, the three stages, the text baselines and the evaluation from payload bytes."""
import json

import pytest
import torch
import yaml

from latentwire import payload, pick, sender
from latentwire.adapter import TokenAdapter, receiver_ratings, receiver_tokens
from latentwire.config import load_params
from latentwire.latent import LatentWire
from latentwire.llm import load_frozen
from latentwire.receiver import Receiver
from tiny import ids_project, run_ids_pipeline, qa_rows as rows  # answer in each context's third sentence

EDGES = [0.3, 0.6, 0.8]  # 4 buckets: 2 bits an id


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_models):
    def rated(raw):
        assert raw["ids"]["rating_edges"] == []  # off by default
        raw["ids"]["rating_edges"] = EDGES
        raw["pick"].update(epochs=30, lr=0.02)  # a decisive pick: ratings near 0 and 1
    return ids_project(tmp_path_factory.mktemp("rating"), tiny_models, rated)


@pytest.fixture(scope="module")
def trained(project, one_thread):
    return run_ids_pipeline(project)[1]


def eval_rows(project) -> list[dict]:
    return [json.loads(x) for x in (project / "data/mix/eval.jsonl").read_text().splitlines()]


def test_the_sender_rates_the_answer_above_the_rest(project, trained):
    """Each sent id carries its bucket of the pick's answer probability (a separator: 0); the
    fitted pick rates the answer's tokens higher than the other tokens it sends."""
    s = sender.Sender.load(load_params(project / "params.yaml"), project / "models/pick", 8)
    on_answer, off_answer = [], []
    for r in eval_rows(project):
        p = s.pick(r["question"], r["context"])
        assert len(p.ratings) == len(p.ids) and set(p.ratings) <= {0, 1, 2, 3}
        assert all(b == 0 for i, b in zip(p.ids, p.ratings) if i == s.sep_id)
        at = r["context"].index(r["answers"][0])
        tokens = [k for a, b in p.spans for k in range(a, b)]
        rated = [b for i, b in zip(p.ids, p.ratings) if i != s.sep_id]
        for k, b in zip(tokens, rated):
            start, end = p.read.offsets[k]
            (on_answer if start < at + len(r["answers"][0]) and end > at else off_answer).append(b)
        lat = s.latent(p)
        assert (lat.kind, lat.ids, lat.ratings, lat.rating_bits) == (payload.KIND_RATED_IDS, p.ids, p.ratings, 2)
    assert on_answer and off_answer
    assert sum(on_answer) / len(on_answer) > sum(off_answer) / len(off_answer) + 1, (on_answer, off_answer)


def test_the_evaluation_reads_rated_payloads_at_their_measured_bytes(project, trained):
    m = trained
    s = sender.Sender.load(load_params(project / "params.yaml"), project / "models/pick", 8)
    for slot in ("llama", "qwen"):
        for ds in ("squad", "nq"):
            res = m[slot][ds]
            sizes = [len(s.send(r["question"], r["context"])) for r in eval_rows(project) if r["dataset"] == ds]
            assert res["bytes"]["ids"]["per_model"] == pytest.approx(sum(sizes) / len(sizes))
            assert res["equal_byte"]["bytes"] == pytest.approx(sum(sizes) / len(sizes))
            # 2 bytes an id, 2 bits its rating, the ratings' bits byte and the 7 of every payload
            n = [len(s.pick(r["question"], r["context"]).ids) for r in eval_rows(project) if r["dataset"] == ds]
            assert sizes == [2 * k + -(-2 * k // 8) + 1 + 7 for k in n] and max(n) == 8
            assert res["slots"]["exact"] == 1.0


def test_training_moves_the_rating_embedding_off_zero(project, trained):
    """Every stage trains the rating embedding beside the adapter (slots null: both receivers)."""
    p = load_params(project / "params.yaml")
    lw = LatentWire.from_checkpoint(p, project / "models/stage3/best", 8, project / "models/pick")
    for slot in ("llama", "qwen"):
        w = lw.codec.adapters[slot].rating.weight
        assert w.shape[0] == 4 and w[:4].abs().sum() > 0, slot
    # a checkpoint is matched on the channel: the same weights under the channel off are refused
    off = yaml.safe_load((project / "params.yaml").read_text())
    off["ids"]["rating_edges"] = []
    (project / "off.yaml").write_text(yaml.safe_dump(off))
    with pytest.raises(ValueError, match=r"rating_edges: checkpoint \[0.3, 0.6, 0.8\] != params \[\]"):
        LatentWire.from_checkpoint(load_params(project / "off.yaml"), project / "models/stage3/best", 8,
                                   project / "models/pick")


@pytest.mark.parametrize("slot", ["llama", "qwen"])
def test_at_zero_the_channel_reads_the_text_and_a_rating_moves_its_own_tokens(project, trained, slot):
    """Step 0 of the rating embedding reads exactly what the channel off reads (the picked text's
    own embeddings). A rating lands on the receiver's tokens whose characters come from the id
    rated so: that id's own position for the codebook's tokenizer (llama); for another (qwen),
    its tokens of the id's text. With the bucket's embedding set, exactly those positions move."""
    p = load_params(project / "params.yaml")
    s = sender.Sender.load(p, project / "models/pick", 8)
    llm = load_frozen(slot, p.models[slot], p.prompt)
    E = llm.model.get_input_embeddings().weight.detach()
    to_ratings = receiver_ratings(s.tokenizer, llm)
    on, off = TokenAdapter(E.shape[1], 8, 4, ratings=4), TokenAdapter(E.shape[1], 8, 4)
    for a in (on, off):
        a.set_table(E, receiver_tokens(s.tokenizer, llm), to_ratings)
    r = rows(1, "squad", 20)[0]
    lat = s.latent(s.pick(r["question"], r["context"]))
    ids, n = torch.tensor(lat.ids), len(lat.ids)
    full = llm.tokenizer(" " + s.tokenizer.decode(lat.ids).strip(), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(on(ids, lat.ratings), off(ids))
        on.rating.weight[3] = 1.0
        for k in range(n):
            rated = [3 if j == k else 0 for j in range(n)]
            own = to_ratings(lat.ids, rated)
            moved = ((on(ids, rated) - off(ids)).abs().sum(-1) > 0).tolist()
            assert moved == [b == 3 for b in own[:len(moved)]]
            if slot == "llama":
                assert own == rated
                continue
            word = s.tokenizer.decode([lat.ids[k]]).strip()
            got = llm.tokenizer.decode([t for t, b in zip(full, own) if b == 3]).strip()
            assert len(own) == len(full) and word in got and len(got) <= len(word) + 2, (word, got)
    with pytest.raises(ValueError, match="every id needs its rating"):
        on(ids)


def test_a_receiver_with_the_channel_refuses_a_payload_without_it(project, trained):
    p = load_params(project / "params.yaml")
    lw = LatentWire.from_checkpoint(p, project / "models/stage3/best", 8, project / "models/pick")
    llm = load_frozen("llama", p.models["llama"], p.prompt)
    lw.attach(llm)
    bare = payload.pack(payload.Latent(payload.KIND_IDS, 16, None, ids=[100, 101]), lw.codec.codebook)
    with pytest.raises(payload.PayloadError, match="carries no ratings, this receiver reads 2-bit ratings"):
        Receiver(llm).read(lw.codec, bare)


def test_the_buckets_are_the_picks_probability_cut_at_the_edges(project, trained):
    """The bucket of a sent token is where sigmoid(answer logit) falls among the edges."""
    s = sender.Sender.load(load_params(project / "params.yaml"), project / "models/pick", 8)
    r = rows(1, "nq", 30)[0]
    p = s.pick(r["question"], r["context"])
    prob = torch.sigmoid(s.model.logits(p.read)[:, 0]).tolist()
    want = pick.lay_out([sum(x > e for e in EDGES) for x in prob], p.spans, 0)
    assert p.ratings == want

"""The pick's parts without a model: reading (features, paragraphs), spending M positions
(spans, paragraph coverage), the multi-hop labels and what a pick is judged by."""
import pytest
import torch

from latentwire import pick


class Chars:
    """A stand-in tokenizer: one token per character (offsets are exact)."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False, split_special_tokens=False):
        out = {"input_ids": [ord(c) % 97 for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


def test_read_marks_paragraphs_and_the_question_paragraph():
    ctx = "Rome: Rome is old.\nParis: The Seine flows through Paris.\nOslo: Oslo is cold."
    r = pick.read(Chars(), "Which river flows through Paris?", ctx)
    assert len(r.ids) == len(ctx) + 1 == len(r.paragraph)  # " " + context, as after "Context:"
    assert sorted(set(r.paragraph)) == [0, 1, 2] and r.paragraph == sorted(r.paragraph)
    col = {f: r.features[:, k] for k, f in enumerate(pick.FEATURES)}
    in_paris = torch.tensor([p == 1 for p in r.paragraph])
    assert bool(col["para_top1"][in_paris].all()) and not bool(col["para_top1"][~in_paris].any())
    assert col["title"][1 + ctx.index("Paris:")] == 1 and col["title"][1 + ctx.index("The Seine")] == 0


def test_cover_spends_the_first_spans_on_two_paragraphs():
    # paragraph 0 holds every high score; paragraph 1 has one weaker peak (the bridge)
    T = 60
    scores = [0.0] * T
    for i in (5, 12, 20, 25):
        scores[i] = 10.0 - i / 10
    scores[45] = 3.0
    sentence = [i // 10 for i in range(T)]
    paragraph = [0 if i < 30 else 1 for i in range(T)]
    plain = pick.spans_for(scores, sentence, 12, 5, paragraph, cover=0)
    both = pick.spans_for(scores, sentence, 12, 5, paragraph, cover=2)
    assert {paragraph[a] for a, _ in plain} == {0}
    assert {paragraph[a] for a, _ in both} == {0, 1} and any(a <= 45 < b for a, b in both)
    for spans in (plain, both):  # the budget holds, separators included
        gaps = sum(1 for x, y in zip(spans, spans[1:]) if x[1] < y[0])
        assert sum(b - a for a, b in spans) + gaps <= 12
    one_para = pick.spans_for(scores, sentence, 12, 5, [0] * T, cover=2)
    assert one_para == pick.spans_for(scores, sentence, 12, 5, [0] * T, cover=0)


def test_support_labels_and_support_recall():
    ctx = "Alpha is here. Beta is there. Gamma."
    r = pick.read(Chars(), "Where is Beta?", ctx)
    beta = (ctx.index("Beta"), ctx.index("there.") + 6)
    y = pick.support_labels(r, [list(beta)])
    a, b = 1 + beta[0], 1 + beta[1]  # token i + 1 is character i (" " + context)
    assert y[a:b].eq(1).all() and y[:a].eq(0).all() and y[b:].eq(0).all()
    assert pick.support_labels(r, []).eq(-1).all()  # unknown: masked out of the loss
    assert pick.touched(r, [(a, a + 2)], [list(beta), [0, 5]]) == 0.5
    assert pick.touched(r, [(0, 3)], []) is None


def test_answer_labels_mark_whole_word_occurrences_only():
    ctx = "No. It opened in November, not May; no one came."
    r = pick.read(Chars(), "Did it open in May?", ctx)
    y = pick.answer_labels(r, ctx, ["no"])
    marked = [k - 1 for k in range(len(r.ids)) if y[k] == 1]  # token k + 1 is character k
    assert marked == [0, 1, 36, 37]  # "No" and "no", never inside "November" or "not"
    assert pick.contains_answer(["It opened in November"], ["no"]) is False


def test_the_gru_windows_match_one_pass_on_short_contexts():
    torch.manual_seed(0)
    m = pick.PickModel(hidden=8, d_embed=4)
    m.set_embeddings(torch.randn(20, 4))
    x, ids, q = torch.randn(2, 40, pick.N_FEATURES + 1), torch.randint(0, 20, (2, 40)), torch.randn(2, 4)
    full = torch.cat([x[..., :-1], m.E[ids], q[:, None].expand(-1, 40, -1), x[..., -1:]], -1)  # inp's columns
    h = torch.nn.functional.gelu(m.inp(full))
    o, _ = m.gru(h)
    want = m.out(torch.cat([o, h], -1))
    assert torch.allclose(m(x, ids, q, [40, 40]), want, atol=1e-5)  # with lengths: exactly one pass
    n = pick.CHUNK + 7
    assert m(torch.randn(1, n, pick.N_FEATURES + 1), torch.randint(0, 20, (1, n)), q[:1]).shape == (1, n, 2)
    # padding (id -1, zero features) is never read: a row padded in a batch rates its tokens as it does alone
    px = torch.cat([x[:1, :30], torch.zeros(1, 10, x.shape[-1])], 1)
    pids = torch.cat([ids[:1, :30], torch.full((1, 10), -1)], 1)
    batch = m(torch.cat([px, x[1:]]), torch.cat([pids, ids[1:]]), q, [30, 40])
    assert torch.allclose(batch[0, :30], m(x[:1, :30], ids[:1, :30], q[:1], [30])[0], atol=1e-6)
    # without lengths (the fit) padding reads as the zero input: the projected layer gives the bias there
    assert torch.equal(m.project(px, pids, q[:1])[0, 30:], torch.zeros(10, 8))


def tiny_pool(n: int = 12):
    """n read contexts with their [answer, support] labels (no supporting facts: support unknown)."""
    reads, labels = [], []
    for k in range(n):
        ctx = f"Alpha {k} is here. The answer is Beta{k}. Gamma."
        r = pick.read(Chars(), f"What is the answer {k}?", ctx)
        reads.append(r)
        labels.append(torch.stack([pick.answer_labels(r, ctx, [f"Beta{k}"]), pick.support_labels(r, [])], -1))
    return reads, labels


def quiet(_):
    pass


def test_an_ensemble_rates_by_its_members_mean_and_each_member_is_its_seeds_fit():
    reads, labels = tiny_pool()
    E = torch.randn(97, 4, generator=torch.Generator().manual_seed(0))
    ens = pick.Ensemble([pick.PickModel(8, 4) for _ in range(2)], support_weight=0.5)
    ens.set_embeddings(E)
    assert ens.members[1].E is ens.members[0].E  # one table, not one a member
    threads = torch.get_num_threads()
    pick.fit_ensemble(ens, reads, labels, epochs=2, batch=4, lr=1e-2, seed=3, ema=0.9, log=quiet)
    assert torch.get_num_threads() == threads  # the cores are handed back
    r = reads[0]
    a, b = ens.members[0].logits(r), ens.members[1].logits(r)
    assert not torch.allclose(a, b)  # two seeds, two fits
    assert torch.allclose(ens.logits(r), (a + b) / 2)
    assert torch.allclose(torch.tensor(ens.score(r)), (a[:, 0] + b[:, 0]) / 2 + 0.5 * (a[:, 1] + b[:, 1]) / 2)
    # member 1 is seed 4's fit, as it comes out alone on the member's share of the cores (its thread
    # changes nothing: the start is seeded under a lock, the windows come from its own generator)
    solo = pick.PickModel(8, 4)
    solo.set_embeddings(E)
    torch.set_num_threads(max(1, threads // 2))
    try:
        pick.fit(solo, reads, labels, 2, 4, 1e-2, seed=4, ema=0.9, log=quiet)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(solo.logits(r), b)
    # every read rated at once, each member in its own thread: the same numbers as one read at a time
    many = ens.logits_many(reads)
    assert len(many) == len(reads) and all(torch.equal(x, ens.logits(q)) for x, q in zip(many, reads))
    assert torch.get_num_threads() == threads


def test_the_fit_ends_with_the_moving_average_of_its_weights():
    reads, labels = tiny_pool()
    E = torch.randn(97, 4, generator=torch.Generator().manual_seed(0))
    weights = {}
    for ema in (0.0, 1e-12, 0.5):
        m = pick.PickModel(8, 4)
        m.set_embeddings(E)
        pick.fit(m, reads, labels, 2, 4, 1e-2, seed=0, ema=ema, log=quiet)
        weights[ema] = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert torch.allclose(weights[1e-12], weights[0.0], atol=1e-6)  # a decay of ~0: the last step's weights
    assert (weights[0.5] - weights[0.0]).abs().max() > 1e-3  # a real average lags the last step


def test_length_batches_cover_every_context_once():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 500, 7, 480, 6, 490, 8, 470] * 10
    bs = pick.batches(lengths, 4, g)
    assert sorted(k for b in bs for k in b) == list(range(len(lengths)))
    spread = [max(lengths[k] for k in b) - min(lengths[k] for k in b) for b in bs]
    # similar lengths together: at most one mixed batch per window of 16 batches (2 windows here)
    assert sum(x > 100 for x in spread) <= 2 and len(bs) == 20


def test_long_contexts_train_on_a_few_windows_each():
    g = torch.Generator().manual_seed(0)
    T = 6 * pick.CHUNK
    y = torch.zeros(T, 2)
    y[3 * pick.CHUNK + 5, 0] = 1  # the answer in window 3
    short = torch.zeros(pick.CHUNK + 3, 2)
    items = pick.windows([y, short], g)
    long_starts = [a for k, a in items if k == 0]
    assert 3 * pick.CHUNK in long_starts and len(long_starts) == 2  # the answer's window + one without
    assert [a for k, a in items if k == 1] == [0, pick.CHUNK]  # a short context: all of it


def test_no_input_building_code_reads_an_answer():
    """The grep, as a test: no function that builds a model input names an answer (a variable,
    an attribute or a row key), docstrings aside."""
    import ast
    import inspect
    import textwrap

    from latentwire import adapter, baselines, data, ids, payload, receiver, sender
    builders = [data.cut_context, data.capped, pick.read, pick.spans_for, pick.picked_ids, sender.Sender.pick,
                sender.Sender.spend, sender.Sender.send, sender.Sender.decode, payload.pack, baselines.text_variants,
                baselines.cut_tokens, baselines.send_all, receiver.Receiver.rest, receiver.Receiver.read,
                receiver.Receiver.answer, ids.IdCodec.pick, ids.IdCodec.latents, ids.IdCodec.latent, ids.IdCodec.soft,
                pick.lay_out, sender.Sender.latent, adapter.TokenAdapter.forward, adapter.receiver_ratings]
    for f in builders:
        tree = ast.parse(textwrap.dedent(inspect.getsource(f)))
        doc = ast.get_docstring(tree.body[0], clean=False)
        names = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
        names += [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        names += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  and n.value != doc]
        assert not [x for x in names if "answer" in x.lower()], f.__qualname__


def test_a_later_span_never_trims_the_best_token_away():
    """One sentence, the best token at 10 and the second best at 16, M = 8, spans of 6: the
    first span is (8, 14); the second, (14, 20), touches it, so they merge to (8, 20), 12 wide,
    and are trimmed to 8. The best-rated token must stay inside the pick."""
    scores = [0.0] * 40
    scores[10], scores[16] = 10.0, 9.0
    spans = pick.spans_for(scores, [0] * 40, 8, 6)
    assert sum(b - a for a, b in spans) <= 8
    assert any(a <= 10 < b for a, b in spans), spans


def test_grow_sends_a_high_rated_run_whole():
    """A run of 8 tokens rated nearly as high as its peak (a long answer) and two single peaks
    elsewhere: spans of 3 spend M = 8 on the peaks and cut the run; with the run margin the
    run goes whole, and its 0.0-rated neighbours stay out."""
    scores = [0.0] * 60
    for i in range(20, 28):
        scores[i] = 9.0
    scores[26], scores[5], scores[45] = 10.0, 9.5, 9.4
    cut = pick.spans_for(scores, [0] * 60, 8, 3)
    assert not any(a <= 20 and 28 <= b for a, b in cut), cut
    assert pick.spans_for(scores, [0] * 60, 8, 3, grow=1.5) == [(20, 28)]
    assert pick.spans_for(scores, [0] * 60, 3, 3, grow=0.5) == [(25, 28)]  # the peak alone, widened to 3


@pytest.mark.parametrize("grow", [None, 0.3])
@pytest.mark.parametrize("seed", range(20))
def test_the_best_rated_token_is_always_picked(seed, grow):
    """Whatever the scores, sentences, M and span width: the best-rated token is sent, the
    budget holds, and the spans stay apart."""
    import random
    rng = random.Random(seed)
    T = rng.randint(20, 120)
    scores = [rng.random() for _ in range(T)]
    sentence = sorted(rng.randrange(6) for _ in range(T))
    M, span = rng.randint(2, 24), rng.choice([3, 6, 8, 12])
    spans = pick.spans_for(scores, sentence, M, span, grow=grow)
    cost = sum(b - a for a, b in spans) + sum(1 for x, y in zip(spans, spans[1:]) if x[1] < y[0])
    assert cost <= M and all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
    best = max(range(T), key=scores.__getitem__)
    assert any(a <= best < b for a, b in spans), (best, spans)


def test_word_index_joins_the_pieces_of_a_word():
    ctx = "It began in 1757, at La Nativité."
    r = pick.read(Chars(), "When?", ctx)
    at = lambda s: r.word[1 + ctx.index(s)]  # noqa: E731 (" " + context: token k + 1 is character k)
    assert at("1757") == at("757") == at("57") == at("7,") and at(",") != at("7,")
    assert at("Nativité") == at("ité") and at(" La") != at("La") != at("Nativité")


def test_a_span_never_ends_inside_a_word():
    """Tokens 10-13 are one word (a year in digits). A span of 5 around the best token (8) ends
    at 12 and sends "175" for "1757"; with the words, the trim drops the cut word whole."""
    T, scores = 30, [0.0] * 30
    scores[8] = 10.0
    word = list(range(10)) + [10] * 4 + list(range(11, 27))
    assert (7, 12) in pick.spans_for(scores, [0] * T, 5, 5)
    spans = pick.spans_for(scores, [0] * T, 5, 5, word=word)
    assert any(a <= 8 < b for a, b in spans) and not any(a < 14 and b > 10 for a, b in spans), spans


@pytest.mark.parametrize("grow", [None, 0.3])
@pytest.mark.parametrize("seed", range(20))
def test_whole_words_keep_the_best_word_and_the_budget(seed, grow):
    """Random words of 1-4 tokens: the best-rated token's word is sent whole, no span starts or
    ends inside a word, and the budget holds."""
    import random
    rng = random.Random(seed)
    T = rng.randint(20, 120)
    word, w = [], 0
    while len(word) < T:
        word += [w] * rng.randint(1, 4)
        w += 1
    word = word[:T]
    scores = [rng.random() for _ in range(T)]
    sentence = sorted(rng.randrange(6) for _ in range(T))
    M, span = rng.randint(4, 24), rng.choice([3, 6, 8, 12])
    spans = pick.spans_for(scores, sentence, M, span, grow=grow, word=word)
    cost = sum(b - a for a, b in spans) + sum(1 for x, y in zip(spans, spans[1:]) if x[1] < y[0])
    assert cost <= M and all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
    assert all((a == 0 or word[a - 1] != word[a]) and (b == T or word[b - 1] != word[b]) for a, b in spans), spans
    best = max(range(T), key=scores.__getitem__)
    assert all(any(a <= k < b for a, b in spans) for k in range(T) if word[k] == word[best]), (best, spans)

"""The sender's pick: which context tokens the M slots carry. No LLM forward.

A small model (`PickModel`: a bidirectional GRU) rates every context token (the sender's
tokenizer) as answer-bearing. It reads the codebook model's frozen input embeddings (a table
look-up, never a forward pass) and about forty cheap features, computed once per text:
  - the token:      question-word match (light stem), stopword, punctuation, digits, year,
                    capital letter, each crossed with the question's type (when / who / where /
                    how many / what-which / other) so that "when" looks for years;
  - its sentence:   BM25-like overlap with the question (in-context idf), its rank among the
                    context's sentences, whether it is the lead sentence;
  - its neighbours: question-word matches within 4 and 12 tokens, the distance to the nearest
                    one in the same sentence (answers sit next to the question's words, not on
                    them);
  - the lead:       relative position, inside the first 32 tokens (NQ passages open with the answer).
It is trained (`fit`) on the gold answer's tokens of thousands of train-split examples, and the
pick rates with an `Ensemble`: a few fits from different seeds, their logits averaged, each fit's
weights a moving average over its steps.
(bench/results/pick_ablation.md: the features alone in an MLP give a held-out recall at M=32 of
0.72 SQuAD / 0.69 NQ; adding the embeddings and the GRU, 0.78 / 0.84.)

`pick` then fills the budget of M positions with spans, best first: each span is the window of
`span` tokens (inside one sentence) around the highest-rated token not yet covered, widened
(`grow`) to the run of its neighbours rated nearly as high (a predicted answer of 8 tokens is
sent whole, not cut at 6); with `pick.whole_words` a span starts and ends between words (a
year in digits is never sent as "175" for "1757"; off by default, docs/RESULTS.md); spans that touch merge; non-adjacent spans are joined by one
separator token (" ..."), which takes a position. The spans come back in text order. `pick_recall` is the share of questions whose
gold answer lies wholly inside one picked span.

Why one file of ~340 lines: reading (features), rating (the model and its fit), picking (spans)
and judging (pick_recall and the reference selections) all work on one `Read` of a context.
"""
from __future__ import annotations

import math
import random
import re
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)\s+|\n+")
STOP = set("a an the of in on at to for by with from and or is are was were be been being what which "
           "who whom whose when where why how did do does that this these those it its as into than "
           "there their they he she his her has have had not no can could would will shall may many "
           "much name named called".split())
QTYPES = ("when", "who", "where", "quantity", "whatwhich", "other")
CHUNK = 256          # the pick GRU's window (tokens)
MAX_RUN = 12         # spans_for: the longest run of high-rated tokens one span takes whole
SEPARATOR = " ..."
_INIT = threading.Lock()  # fit: seeding and drawing a start is one step, whatever thread fits


def stem(w: str) -> str:
    """A light stem: lower case, first 6 characters (walks / walked / walking match)."""
    return w.lower()[:6]


def question_type(q: str) -> str:
    ql = q.lower()
    if re.search(r"\bhow (many|much|long|old|far|large|big|tall|high)\b|\bwhat (percentage|number)\b", ql):
        return "quantity"
    if re.search(r"\bwhen\b|\bwhat (year|date|day|month|century|decade)\b", ql):
        return "when"
    if re.search(r"\bwho(m|se)?\b", ql):
        return "who"
    if re.search(r"\bwhere\b", ql):
        return "where"
    if re.search(r"\b(what|which)\b", ql):
        return "whatwhich"
    return "other"


@dataclass
class Read:
    """One context as the sender reads it: its tokens (sender ids and char offsets into the
    context), the sentence, paragraph (line) and word of each token, and the feature matrix
    [T, N_FEATURES]. The fit's pool holds only ids, features and q_ids, as views into its
    features cache (`sender.pool_features`: tensors, the features in float16)."""
    ids: list[int]
    offsets: list[tuple[int, int]]
    sentence: list[int]
    features: torch.Tensor
    q_ids: list[int]
    paragraph: list[int] = field(default_factory=list)
    word: list[int] = field(default_factory=list)  # the word of each token (`word_index`); empty: unknown


TOKEN_FEATURES = ("bias", "q_match", "q_match_idf", "stop", "punct", "digit", "year", "capital",
                  "sent_score", "sent_top1", "sent_top2", "sent_lead", "rel_pos", "first32",
                  "near4", "near12", "dist3", "dist8", "dist16", "no_match_in_sent", "word_len",
                  "para_score", "para_top1", "para_top2", "sent_in_para_top1", "title")
CROSS = ("digit", "year", "capital", "stop")
FEATURES = TOKEN_FEATURES + tuple(f"{t}*{c}" for t in QTYPES for c in CROSS)
N_FEATURES = len(FEATURES)


def sentences(context: str) -> list[tuple[int, int]]:
    """Char spans of the context's sentences (split after . ! ? and at newlines)."""
    spans, start = [], 0
    for m in SENTENCE_END.finditer(context):
        if m.end() > start:
            spans.append((start, m.end()))
            start = m.end()
    if start < len(context):
        spans.append((start, len(context)))
    return spans or [(0, len(context))]


def word_index(context: str, offsets: list[tuple[int, int]]) -> list[int]:
    """The word each token belongs to (0, 1, ...): a token continues the word before it where it
    starts with a letter or digit right after one ("175" + "7", "Nativ" + "ité"); a space,
    punctuation or a symbol starts a new one. Spans end only between words (`spans_for`)."""
    out, w = [], -1
    for a, b in offsets:
        if not (a > 0 and b > a and context[a - 1].isalnum() and context[a].isalnum()):
            w += 1
        out.append(max(w, 0))
    return out


def _bm25(units: list[set], q_words: set) -> tuple[list[float], dict]:
    """In-context idf over `units` (word sets) and each unit's idf-weighted question overlap
    (math.fsum: exact, whatever order the set gives, so equal overlaps tie in every process)."""
    n = len(units)
    idf = {w: math.log(1 + (n + 0.5) / (sum(w in u for u in units) + 0.5)) for w in q_words}
    return [math.fsum(idf[w] for w in q_words if w in u) for u in units], idf


def _ranks(scores: list[float]) -> tuple[list[int], float]:
    top = sorted(range(len(scores)), key=lambda i: -scores[i])
    return top, (max(scores) if scores and max(scores) > 0 else 1.0)


def read(tokenizer, question: str, context: str, max_tokens: int = 2048) -> Read:
    """Tokenise " " + context (as it follows "Context:" in the prompt) and compute the features
    (column by column, linear in the context's length)."""
    # split_special_tokens: a context that spells "<|im_end|>" is read as text, never as a control token
    enc = tokenizer(" " + context, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
    ids = enc["input_ids"][:max_tokens]
    offsets = [(max(a - 1, 0), max(b - 1, 0)) for a, b in enc["offset_mapping"][:len(ids)]]
    T = len(ids)
    q_words = {stem(w) for w in WORD.findall(question) if w.lower() not in STOP}
    qt = question_type(question)
    sents = sentences(context)
    starts = np.array([a for a, _ in sents])
    tok_start = np.array([a for a, _ in offsets], dtype=np.int64).reshape(-1)
    sent_of = np.clip(np.searchsorted(starts, tok_start, side="right") - 1, 0, len(sents) - 1)
    # paragraphs: the context's lines (HotpotQA: one "title: text" line a paragraph)
    line_starts = np.array([0] + [m.end() for m in re.finditer("\n", context)])
    para_of_sent = np.searchsorted(line_starts, starts, side="right") - 1
    para_of = para_of_sent[sent_of] if T else np.zeros(0, dtype=np.int64)
    # per token: its word (the first \w+ run inside its span, else the text itself)
    texts = [context[a:b] for a, b in offsets]
    words = [(m.group(0) if (m := WORD.search(t)) else "") for t in texts]
    match = np.array([bool(w) and w.lower() not in STOP and stem(w) in q_words for w in words], dtype=bool)
    # BM25-like question overlap of each sentence and each paragraph (in-context idf)
    sent_scores, idf = _bm25([{stem(w) for w in WORD.findall(context[a:b])} for a, b in sents], q_words)
    n_p = len(line_starts)
    para_text = [context[a:b] for a, b in zip(line_starts, list(line_starts[1:]) + [len(context)])]
    para_scores, _ = _bm25([{stem(w) for w in WORD.findall(t)} for t in para_text], q_words)
    top, best = _ranks(sent_scores)
    ptop, pbest = _ranks(para_scores)
    best_in_para = {}  # paragraph -> its best sentence
    for i in top:
        best_in_para.setdefault(int(para_of_sent[i]), i)
    # question-word matches around each token, inside its sentence (itself excluded)
    pos = np.arange(T)
    csum = np.concatenate([[0], np.cumsum(match)])
    s_lo = np.searchsorted(sent_of, sent_of, side="left")   # sent_of is non-decreasing
    s_hi = np.searchsorted(sent_of, sent_of, side="right")

    def around(k):
        lo, hi = np.maximum(pos - k, s_lo), np.minimum(pos + k + 1, s_hi)
        return csum[hi] - csum[lo] - match

    prev = np.maximum.accumulate(np.where(match, pos, -10**6))       # last match at or before i
    prev = np.concatenate([[-10**6], prev[:-1]]) if T else prev       # strictly before i
    nxt = np.minimum.accumulate(np.where(match, pos, 10**6)[::-1])[::-1]
    nxt = np.concatenate([nxt[1:], [10**6]]) if T else nxt
    d_prev = np.where((prev >= 0) & (prev >= s_lo), pos - prev, 99)
    d_next = np.where((nxt < T) & (nxt < s_hi), nxt - pos, 99)
    d = np.minimum(d_prev, d_next)
    any_in_sent = (csum[s_hi] - csum[s_lo] - match) > 0 if T else np.zeros(0, dtype=bool)
    sent_first = np.array([sents[s][0] for s in sent_of], dtype=np.int64) if T else np.zeros(0, dtype=np.int64)
    line_first = line_starts[para_of] if T else np.zeros(0, dtype=np.int64)
    colon = [context.find(":", a) for a in line_starts]  # "title:" ends a paragraph's title
    col = {
        "bias": np.ones(T), "q_match": match,
        "q_match_idf": [idf.get(stem(w), 0.0) if m else 0.0 for w, m in zip(words, match)],
        "stop": [w.lower() in STOP for w in words], "punct": [not w for w in words],
        "digit": [any(c.isdigit() for c in t) for t in texts],
        "year": [bool(re.fullmatch(r"1[0-9]{3}|20[0-9]{2}", w)) for w in words],
        "capital": [bool(w) and w[0].isupper() for w in words] & (tok_start != sent_first),
        "sent_score": np.array(sent_scores)[sent_of] / best, "sent_top1": sent_of == top[0],
        "sent_top2": (sent_of == top[1]) if len(sents) > 1 else np.zeros(T),
        "sent_lead": sent_of == 0, "rel_pos": pos / max(T, 1), "first32": pos < 32,
        "near4": around(4) / 4, "near12": around(12) / 12,
        "dist3": d <= 3, "dist8": (d > 3) & (d <= 8), "dist16": (d > 8) & (d <= 16),
        "no_match_in_sent": ~any_in_sent, "word_len": [min(len(w), 12) / 12 for w in words],
        "para_score": np.array(para_scores)[para_of] / pbest, "para_top1": para_of == ptop[0],
        "para_top2": (para_of == ptop[1]) if n_p > 1 else np.zeros(T),
        "sent_in_para_top1": sent_of == np.array([best_in_para[int(p)] for p in para_of], dtype=np.int64),
        "title": (tok_start >= line_first) & (tok_start < np.array([colon[p] for p in para_of])) if n_p > 1
                 else np.zeros(T),
    }
    feats = np.zeros((T, N_FEATURES), dtype=np.float32)
    for k, name in enumerate(TOKEN_FEATURES):
        feats[:, k] = np.asarray(col[name], dtype=np.float32)
    for c in CROSS:
        feats[:, FEATURES.index(f"{qt}*{c}")] = feats[:, FEATURES.index(c)]
    q_ids = tokenizer(question, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return Read(ids, offsets, sent_of.tolist(), torch.from_numpy(feats), q_ids, para_of.tolist(),
                word_index(context, offsets))


def answer_labels(r: Read, context: str, answers: list[str]) -> torch.Tensor:
    """1 for every token that overlaps an occurrence of a gold answer in the context (as whole
    words: `metrics.answer_spans`)."""
    s, e = np.array(r.offsets, dtype=np.int64).reshape(-1, 2).T
    y = np.zeros(len(r.ids), dtype=bool)
    for ans in answers:
        for start, end in metrics.answer_spans(context, ans):
            y |= (s < end) & (e > start)
    return torch.from_numpy(y.astype(np.float32))


def support_labels(r: Read, support: list) -> torch.Tensor:
    """1 for every token inside a supporting-fact sentence (char spans); all -1 (unknown:
    masked out of the loss) where the example has no supporting facts."""
    if not support:
        return torch.full((len(r.ids),), -1.0)
    s, e = np.array(r.offsets, dtype=np.int64).reshape(-1, 2).T
    a, b = np.array(support, dtype=np.int64).reshape(-1, 2).T
    return torch.from_numpy(((s[:, None] < b) & (e[:, None] > a)).any(1).astype(np.float32))


def touched(r: Read, spans: list[tuple[int, int]], support: list) -> float | None:
    """support_recall of one pick: the share of supporting-fact sentences that a picked token
    overlaps (None without supporting facts)."""
    if not support:
        return None
    chars = [r.offsets[i] for a, b in spans for i in range(a, b)]
    return sum(any(s < e2 and e > s2 for s, e in chars) for s2, e2 in support) / len(support)


class PickModel(torch.nn.Module):
    """Rates every context token, reading the whole context: two logits per token, answer-
    bearing and inside a supporting-fact sentence (the multi-hop evidence; trained where a
    dataset has supporting facts). The pick ranks tokens by answer + support_weight * support.

    Per token the input is its cheap features (standardised), the codebook model's frozen input
    embedding of the token, the mean embedding of the question's tokens, and the best cosine
    between the token and any question token (a soft match). A one-layer bidirectional GRU
    runs over the context, and a small MLP rates each position. The embedding table is the
    codebook model's own (looked up, never run: `set_embeddings`), so it is not saved here."""

    def __init__(self, hidden: int = 64, d_embed: int = 0, support_weight: float = 0.0):
        super().__init__()
        self.d_embed, self.E, self.support_weight = d_embed, None, support_weight
        n_in = N_FEATURES + 2 * d_embed + 1
        self.inp = torch.nn.Linear(n_in, hidden)
        self.gru = torch.nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = torch.nn.Sequential(torch.nn.Linear(3 * hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, 2))
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))

    def set_embeddings(self, E: torch.Tensor) -> None:
        """The codebook model's input embeddings [V, d_embed], row-normalised here."""
        if E.shape[1] != self.d_embed:
            raise ValueError(f"pick: embeddings of width {E.shape[1]}, the model was built for {self.d_embed}")
        self.E = torch.nn.functional.normalize(E.float(), dim=-1)

    def inputs(self, r: "Read", a: int = 0, b: int | None = None):
        """Tokens a..b of one read context (default: all) -> (x [T, N_FEATURES + 1]: the
        standardised features and the soft match; ids [T]; q [d_embed]: the question's mean
        embedding). The embeddings themselves enter in `forward`, projected per distinct id."""
        x = (r.features[a:b].float() - self.mean) / self.std
        ids = torch.as_tensor(r.ids[a:b], dtype=torch.long)
        q = self.E[torch.as_tensor(r.q_ids if len(r.q_ids) else [0])]
        sim = (self.E[ids] @ q.T).max(-1, keepdim=True).values
        return torch.cat([x, sim], -1), ids, q.mean(0)

    def project(self, x: torch.Tensor, ids: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The input layer without its bias, [B, T, hidden]: inp(features, embedding, question,
        soft match) as the sum of its column blocks. Each distinct id's embedding is projected
        once (a batch of 128 windows holds ~32k tokens, a few thousand distinct), not once per
        token; padding (id -1) gets zero, as the zero input it stands for."""
        F, d = N_FEATURES, self.d_embed
        W = self.inp.weight
        z = x[..., :F] @ W[:, :F].T + x[..., F:] * W[:, -1]
        valid = (ids >= 0).unsqueeze(-1)
        uniq, inv = torch.unique(ids.clamp_min(0), return_inverse=True)
        e = (self.E[uniq] @ W[:, F:F + d].T)[inv] + (q @ W[:, F + d:F + 2 * d].T).unsqueeze(1)
        return z + e * valid

    def forward(self, x: torch.Tensor, ids: torch.Tensor, q: torch.Tensor,
                lengths: list[int] | None = None) -> torch.Tensor:
        """x [B, T, N_FEATURES + 1], ids [B, T] (-1: padding), q [B, d_embed] (`inputs`,
        batched) -> logits [B, T, 2] (answer, support). The GRU reads windows of CHUNK tokens
        (a long context is cut into windows, run side by side: CHUNK sequential steps however
        long the context; what spans windows, the features carry). With `lengths` (each row's
        real tokens) padding is never read (packed sequences: exact, and slow to train on CPU);
        without, rows are read padded (the fit: batches of similar lengths)."""
        B, T = ids.shape
        n = -(-T // CHUNK)
        z = torch.nn.functional.pad(self.project(x, ids, q), (0, 0, 0, n * CHUNK - T))
        h = torch.nn.functional.gelu(z.reshape(B * n, CHUNK, -1) + self.inp.bias)
        if lengths is None:
            o, _ = self.gru(h)
        else:
            real = torch.tensor([min(max(L - k * CHUNK, 1), CHUNK) for L in lengths for k in range(n)])
            packed = torch.nn.utils.rnn.pack_padded_sequence(h, real, batch_first=True, enforce_sorted=False)
            o, _ = torch.nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=CHUNK)
        return self.out(torch.cat([o, h], -1)).reshape(B, n * CHUNK, 2)[:, :T]

    def logits(self, r: "Read") -> torch.Tensor:
        """[T, 2] for one read context."""
        with torch.no_grad():
            x, ids, q = self.inputs(r)
            return self(x[None], ids[None], q[None], [len(r.ids)])[0]

    def score(self, r: "Read") -> list[float]:
        if not r.ids:
            return []
        logits = self.logits(r)
        return (logits[:, 0] + self.support_weight * logits[:, 1]).tolist()


def batches(lengths: list[int], batch: int, g: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar lengths (little padding): a random order, sorted by length
    within windows of 16 batches, cut into batches, the batches shuffled."""
    order, out = torch.randperm(len(lengths), generator=g).tolist(), []
    for w in range(0, len(order), 16 * batch):
        window = sorted(order[w:w + 16 * batch], key=lambda k: lengths[k])
        out += [window[i:i + batch] for i in range(0, len(window), batch)]
    return [out[k] for k in torch.randperm(len(out), generator=g).tolist()]


def windows(labels: list[torch.Tensor], g: torch.Generator, keep: int = 2) -> list[tuple[int, int]]:
    """(context, start) of the CHUNK-token windows one epoch trains on: every window of a context
    of at most `keep` + 1 windows; of a longer one (ten HotpotQA paragraphs) up to `keep` windows
    that hold a positive label and one that holds none, drawn anew each epoch (the distractor
    windows are seen, a few at a time)."""
    out = []
    for k, y in enumerate(labels):
        n = -(-len(y) // CHUNK)
        if n <= keep + 1:
            out += [(k, w * CHUNK) for w in range(n)]
            continue
        hit = [bool((y[w * CHUNK:(w + 1) * CHUNK] == 1).any()) for w in range(n)]
        pos, neg = [w for w in range(n) if hit[w]], [w for w in range(n) if not hit[w]]
        chosen = [pos[i] for i in torch.randperm(len(pos), generator=g)[:keep].tolist()]
        chosen += [neg[i] for i in torch.randperm(len(neg), generator=g)[:1].tolist()]
        out += [(k, w * CHUNK) for w in sorted(chosen)]
    return out


def fit(model: PickModel, reads: list["Read"], labels: list[torch.Tensor], epochs: int = 6,
        batch: int = 64, lr: float = 3e-3, seed: int = 0, ema: float = 0.0, log=print) -> float:
    """AdamW on the token BCE of both heads (labels[k]: [T, 2], answer and support; a support
    label of -1 is unknown and masked), the rare positives weighted by sqrt(negatives /
    positives), over CHUNK-token windows (`windows`: a long context gives a few per epoch).
    Inputs are built batch by batch, so memory grows with the pool's tokens only through the
    cached features (`sender.pool_features`: about 120 bytes a token). With `ema` > 0 the model
    ends with the exponential moving average of its weights over the steps, not the last step's:
    at step t the decay is min(ema, (1 + t) / (10 + t)), so that a short fit (a small pool: a few
    steps) averages its last steps rather than staying near its start. Returns the last epoch's
    mean loss."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    with _INIT:  # the global RNG, held while it is seeded and drawn: the same start in any thread
        torch.manual_seed(seed)
        for m in model.modules():  # the same seed gives the same start, whatever ran before
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    n_tok = sum(len(r.ids) for r in reads)
    mean = sum(r.features.double().sum(0) for r in reads) / n_tok
    var = sum(((r.features.double() - mean) ** 2).sum(0) for r in reads) / max(n_tok - 1, 1)
    model.mean.copy_(mean.float())
    model.std.copy_(var.sqrt().float().clamp_min(1e-3))
    pos = sum((y == 1).sum(0) for y in labels).float()
    known = sum((y >= 0).sum(0) for y in labels).float()
    pos_weight = ((known - pos) / pos.clamp_min(1)).sqrt()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    params = list(model.parameters())
    averaged, steps = [p.detach().clone() for p in params] if ema else [], 0
    pad = torch.nn.utils.rnn.pad_sequence
    total = 0.0
    for epoch in tqdm(range(epochs), desc=f"pick fit (seed {seed})", unit="epoch", disable=None):
        total, n = 0.0, 0
        items = windows(labels, g)
        for idx in batches([min(CHUNK, len(labels[k]) - a) for k, a in items], batch, g):
            x, ids, q = zip(*(model.inputs(reads[k], a, a + CHUNK) for k, a in (items[i] for i in idx)))
            x, ids, q = pad(x, batch_first=True), pad(ids, batch_first=True, padding_value=-1), torch.stack(q)
            t = pad([labels[k][a:a + CHUNK] for k, a in (items[i] for i in idx)], batch_first=True, padding_value=-1.0)
            mask = (t >= 0).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, ids, q), t.clamp_min(0), pos_weight=pos_weight,
                                                                        reduction="none")
            loss = (loss * mask).sum() / mask[..., 0].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema:
                steps += 1
                with torch.no_grad():
                    for a, p in zip(averaged, params):
                        a.lerp_(p, 1 - min(ema, (1 + steps) / (10 + steps)))
            total, n = total + loss.item() * len(idx), n + len(idx)
        total /= max(n, 1)
        log(f"pick (seed {seed}): epoch {epoch + 1}/{epochs}, {len(items)} windows, BCE {total:.4f}")
    if ema:
        with torch.no_grad():
            for p, a in zip(params, averaged):
                p.copy_(a)
    log(f"pick (seed {seed}): fitted on {n_tok} tokens of {len(reads)} contexts ({int(pos[0])} answer tokens, "
        f"{int(pos[1])} of {int(known[1])} in supporting facts), BCE {total:.4f}"
        + (f", weights averaged over {steps} steps (decay up to {ema})" if ema else ""))
    return total


class Ensemble(torch.nn.Module):
    """The pick's rater: PickModels fitted from different seeds (`fit_ensemble`); a token's
    logits are the mean of theirs. One member is one fit. Averaging two fits raises the held-out
    recall about as much as the fit's seed moves it (docs/RESULTS.md)."""

    def __init__(self, members: list[PickModel], support_weight: float = 0.0):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.support_weight = support_weight

    def set_embeddings(self, E: torch.Tensor) -> None:
        """Every member reads the same row-normalised table (one copy)."""
        self.members[0].set_embeddings(E)
        for m in self.members[1:]:
            m.E = self.members[0].E

    def logits(self, r: "Read") -> torch.Tensor:
        return torch.stack([m.logits(r) for m in self.members]).mean(0)

    def logits_many(self, reads: list["Read"]) -> list[torch.Tensor]:
        """`logits` of every read, each member over all of them in its own thread (`side_by_side`):
        the same numbers (a member's logits do not depend on the thread count), in 1 / members the
        wall on as many cores."""
        per = side_by_side(len(self.members), lambda k: [self.members[k].logits(r) for r in reads])
        return [torch.stack(ls).mean(0) for ls in zip(*per)]

    score = PickModel.score


def side_by_side(n: int, job) -> list:
    """[job(0), ..., job(n - 1)], one Python thread each, the cores shared out among them (torch's
    small GRU steps gain little from a second core of their own)."""
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    if n == 1:
        return [job(0)]
    torch.set_num_threads(max(1, threads // n))
    try:
        with ThreadPoolExecutor(max_workers=min(n, threads)) as pool:
            return list(pool.map(job, range(n)))
    finally:
        torch.set_num_threads(threads)


def fit_ensemble(model: Ensemble, reads: list["Read"], labels: list[torch.Tensor], epochs: int = 6,
                 batch: int = 64, lr: float = 3e-3, seed: int = 0, ema: float = 0.0, log=print) -> float:
    """`fit` each member, member k from seed + k, side by side: one Python thread a member, the
    cores shared out among them. The GRU's small steps gain nothing from a second core: on 2 cores the
    `pick` stage with one fit on both took 489 s, with two side by side 387 s. Each member's fit is the same in any thread (`fit` seeds its start under a
    lock; its windows come from its own generator). Returns the members' mean last-epoch loss."""
    n = len(model.members)
    losses = side_by_side(n, lambda k: fit(model.members[k], reads, labels, epochs, batch, lr, seed + k, ema, log))
    return sum(losses) / n


def spans_for(scores: list[float], sentence: list[int], M: int, span: int,
              paragraph: list[int] | None = None, cover: int = 0,
              grow: float | None = None, word: list[int] | None = None) -> list[tuple[int, int]]:
    """Token spans [a, b) filling M positions (a separator between non-adjacent spans takes
    one): around the best-rated uncovered token, `span` wide and inside its sentence, best
    first. With `grow` (a score margin) the span first takes the run of neighbours (inside the
    sentence) rated within `grow` of that token, up to MAX_RUN tokens, and is then widened to
    `span`; None: the `span` window alone. With `cover` > 1 the first spans go to that many different paragraphs (the best
    token of each next paragraph: a bridge paragraph of a two-hop question gets a span before
    the best paragraph gets its second). With `word` (each token's word, `word_index`) a span
    holds whole words only: it is widened to its words' ends, and trimmed to the budget a word at
    a time, so that no answer is sent cut ("in 175" for "in 1757"). -> sorted, non-overlapping spans."""
    T = len(scores)
    if T <= M:
        return [(0, T)] if T else []
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist()  # best first, ties in text order
    spans: list[tuple[int, int]] = []

    def cost(sp):
        sp = sorted(sp)
        return sum(b - a for a, b in sp) + sum(1 for x, y in zip(sp, sp[1:]) if x[1] < y[0])

    def start(k: int, floor: int) -> int:  # the first token of k's word (not before floor)
        while word and k > floor and word[k - 1] == word[k]:
            k -= 1
        return k

    def end(k: int, ceil: int) -> int:     # past the last token of the word of token k - 1 (not past ceil)
        while word and k < ceil and word[k] == word[k - 1]:
            k += 1
        return k

    def place(i) -> bool:
        """Add the span around token i (merged, trimmed to the budget); False once full."""
        nonlocal spans
        left = M - cost(spans)
        if left <= 1 and spans:
            return False
        s = sentence[i]
        lo = i
        while lo > 0 and sentence[lo - 1] == s:
            lo -= 1
        hi = i + 1
        while hi < T and sentence[hi] == s:
            hi += 1
        rlo, rhi = i, i + 1  # the run: the peak and its neighbours rated within `grow` of it
        if grow is not None:
            while rlo > lo and scores[rlo - 1] >= scores[i] - grow and rhi - rlo < MAX_RUN:
                rlo -= 1
            while rhi < hi and scores[rhi] >= scores[i] - grow and rhi - rlo < MAX_RUN:
                rhi += 1
        rlo, rhi = start(rlo, 0), end(rhi, T)  # the run's words whole (a word's leading-space token
        lo, hi = min(lo, rlo), max(hi, rhi)     # may sit in the sentence before: `read`)
        w = min(max(span, rhi - rlo), hi - lo)
        a = min(max(lo, rlo - (w - (rhi - rlo) + 1) // 3), hi - w)  # a third of the widening before the run
        cand = (start(a, 0), end(a + w, T))
        # merge with touching / overlapping spans, then trim to the budget: the end farther from
        # the peak token i first, but never into a span placed before (a better token's) nor past i
        merged = [sp for sp in spans if sp[1] < cand[0] or sp[0] > cand[1]]
        old = [sp for sp in spans if not (sp[1] < cand[0] or sp[0] > cand[1])]
        new = (min(a for a, _ in old + [cand]), max(b for _, b in old + [cand]))
        core = (min([start(i, 0)] + [a for a, _ in old]), max([end(i + 1, T)] + [b for _, b in old]))
        trial = merged + [new]
        while cost(trial) > M:
            excess = cost(trial) - M
            a2, b2 = new
            if (i - a2 > b2 - 1 - i or b2 == core[1]) and a2 < core[0]:
                a2 = end(a2 + min(excess, core[0] - a2), core[0])  # a cut word goes whole
            elif b2 > core[1]:
                b2 = start(b2 - min(excess, b2 - core[1]), core[1])  # below T: excess >= 1
            if (a2, b2) == new:
                break
            new = (a2, b2)
            trial = merged + [new]
        if cost(trial) <= M:
            spans = trial
        return True

    need = min(cover, len(set(paragraph))) if paragraph else 0
    if need > 1:  # first pass: the best token of each paragraph not yet covered
        covered: set[int] = set()
        for i in order:
            if len(covered) >= need:
                break
            if paragraph[i] in covered or any(a <= i < b for a, b in spans):
                continue
            if not place(i):
                return sorted(spans)
            covered = {paragraph[k] for a, b in spans for k in range(a, b)}
    for i in order:
        if any(a <= i < b for a, b in spans):
            continue
        if not place(i):
            break
    return sorted(spans)


def picked_ids(r: Read, spans: list[tuple[int, int]], sep_id: int) -> list[int]:
    return lay_out(r.ids, spans, sep_id)


def lay_out(values: list, spans: list[tuple[int, int]], sep) -> list:
    """Per-token values of the spans in the payload's layout: span after span, `sep` between two
    that do not touch."""
    out: list = []
    for k, (a, b) in enumerate(spans):
        if k and spans[k - 1][1] < a:
            out.append(sep)
        out += values[a:b]
    return out


def span_texts(r: Read, context: str, spans: list[tuple[int, int]]) -> list[str]:
    return [context[r.offsets[a][0]:r.offsets[b - 1][1]] for a, b in spans if b > a]


def contains_answer(texts: list[str], answers: list[str]) -> bool:
    """The gold answer lies wholly inside one picked span, as whole words (case and spacing ignored)."""
    return any(metrics.contains_answer(t, answers) for t in texts)


def random_spans(T: int, M: int, seed: int) -> list[tuple[int, int]]:
    """A random window of M tokens: the random pick of the same size."""
    if T <= M:
        return [(0, T)] if T else []
    a = random.Random(seed).randrange(T - M + 1)
    return [(a, a + M)]


def lexical_spans(r: Read, M: int) -> list[tuple[int, int]]:
    """The best M-token window by question-word matches alone (the lexical prior)."""
    T = len(r.ids)
    if T <= M:
        return [(0, T)] if T else []
    m = r.features[:, FEATURES.index("q_match")].tolist()
    sums = [sum(m[a:a + M]) for a in range(T - M + 1)]
    a = max(range(len(sums)), key=lambda k: sums[k])
    return [(a, a + M)]

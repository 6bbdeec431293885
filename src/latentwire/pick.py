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
It is trained (`fit`) on the gold answer's tokens of thousands of train-split examples.
(bench/results/pick_ablation.md: the features alone in an MLP give a held-out recall at M=32 of
0.72 SQuAD / 0.69 NQ; adding the embeddings and the GRU, 0.78 / 0.84.)

`pick` then fills the budget of M positions with spans, best first: each span is the window of
`span` tokens (inside one sentence) around the highest-rated token not yet covered; spans that
touch merge; non-adjacent spans are joined by one separator token (" ..."), which takes a
position. The spans come back in text order. `pick_recall` is the share of questions whose
gold answer lies wholly inside one picked span.

Why one file of ~340 lines: reading (features), rating (the model and its fit), picking (spans)
and judging (pick_recall and the reference selections) all work on one `Read` of a context.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.!?](?:[\"')\]]*)\s+|\n+")
STOP = set("a an the of in on at to for by with from and or is are was were be been being what which "
           "who whom whose when where why how did do does that this these those it its as into than "
           "there their they he she his her has have had not no can could would will shall may many "
           "much name named called".split())
QTYPES = ("when", "who", "where", "quantity", "whatwhich", "other")
SEPARATOR = " ..."


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
    context), the sentence of each token, and the feature matrix [T, N_FEATURES]."""
    ids: list[int]
    offsets: list[tuple[int, int]]
    sentence: list[int]
    features: torch.Tensor
    q_ids: list[int]


TOKEN_FEATURES = ("bias", "q_match", "q_match_idf", "stop", "punct", "digit", "year", "capital",
                  "sent_score", "sent_top1", "sent_top2", "sent_lead", "rel_pos", "first32",
                  "near4", "near12", "dist3", "dist8", "dist16", "no_match_in_sent", "word_len")
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


def read(tokenizer, question: str, context: str, max_tokens: int = 1024) -> Read:
    """Tokenise " " + context (as it follows "Context:" in the prompt) and compute the features."""
    enc = tokenizer(" " + context, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"][:max_tokens]
    offsets = [(max(a - 1, 0), max(b - 1, 0)) for a, b in enc["offset_mapping"][:len(ids)]]
    T = len(ids)
    q_words = {stem(w) for w in WORD.findall(question) if w.lower() not in STOP}
    qt = question_type(question)
    sents = sentences(context)
    sent_of = []
    j = 0
    for a, b in offsets:
        while j + 1 < len(sents) and a >= sents[j][1]:
            j += 1
        sent_of.append(j)
    # per token: its word (the first \w+ run inside its span, else the text itself)
    texts = [context[a:b] for a, b in offsets]
    words = [(WORD.search(t).group(0) if WORD.search(t) else "") for t in texts]
    match = [bool(w) and w.lower() not in STOP and stem(w) in q_words for w in words]
    # in-context idf over sentences, BM25-like sentence scores
    sent_words = [{stem(w) for w in WORD.findall(context[a:b])} for a, b in sents]
    n_s = len(sents)
    idf = {w: math.log(1 + (n_s + 0.5) / (sum(w in s for s in sent_words) + 0.5)) for w in q_words}
    scores = [sum(idf[w] for w in q_words if w in s) for s in sent_words]
    top = sorted(range(n_s), key=lambda i: -scores[i])
    best = max(scores) if scores and max(scores) > 0 else 1.0
    pos_match = [i for i in range(T) if match[i]]
    feats = torch.zeros(T, N_FEATURES)
    col = {f: k for k, f in enumerate(FEATURES)}
    for i in range(T):
        w, t, s = words[i], texts[i], sent_of[i]
        near = [abs(p - i) for p in pos_match if p != i and sent_of[p] == s]
        d = min(near) if near else 99
        f = {"bias": 1.0, "q_match": float(match[i]),
             "q_match_idf": idf.get(stem(w), 0.0) if match[i] else 0.0,
             "stop": float(w.lower() in STOP), "punct": float(not w),
             "digit": float(any(c.isdigit() for c in t)),
             "year": float(bool(re.fullmatch(r"1[0-9]{3}|20[0-9]{2}", w))),
             "capital": float(bool(w) and w[0].isupper() and offsets[i][0] != sents[s][0]),
             "sent_score": scores[s] / best, "sent_top1": float(s == top[0]),
             "sent_top2": float(n_s > 1 and s == top[1]), "sent_lead": float(s == 0),
             "rel_pos": i / max(T, 1), "first32": float(i < 32),
             "near4": sum(x <= 4 for x in near) / 4, "near12": sum(x <= 12 for x in near) / 12,
             "dist3": float(d <= 3), "dist8": float(3 < d <= 8), "dist16": float(8 < d <= 16),
             "no_match_in_sent": float(not near), "word_len": min(len(w), 12) / 12}
        for c in CROSS:
            f[f"{qt}*{c}"] = f[c]
        for k, v in f.items():
            feats[i, col[k]] = v
    q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    return Read(ids, offsets, sent_of, feats, q_ids)


def answer_labels(r: Read, context: str, answers: list[str]) -> torch.Tensor:
    """1 for every token that overlaps an occurrence of a gold answer in the context."""
    y = torch.zeros(len(r.ids))
    low = context.lower()
    for ans in answers:
        a = ans.lower().strip()
        start = low.find(a) if a else -1
        while start >= 0:
            end = start + len(a)
            for i, (s, e) in enumerate(r.offsets):
                if s < end and e > start:
                    y[i] = 1.0
            start = low.find(a, start + 1)
    return y


class PickModel(torch.nn.Module):
    """Rates every context token (a logit: answer-bearing or not), reading the whole context.

    Per token the input is its cheap features (standardised), the codebook model's frozen input
    embedding of the token, the mean embedding of the question's tokens, and the best cosine
    between the token and any question token (a soft match). A one-layer bidirectional GRU
    runs over the context, and a small MLP rates each position. The embedding table is the
    codebook model's own (looked up, never run: `set_embeddings`), so it is not saved here."""

    def __init__(self, hidden: int = 64, d_embed: int = 0):
        super().__init__()
        self.d_embed, self.E = d_embed, None
        n_in = N_FEATURES + 2 * d_embed + 1
        self.inp = torch.nn.Linear(n_in, hidden)
        self.gru = torch.nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = torch.nn.Sequential(torch.nn.Linear(3 * hidden, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))

    def set_embeddings(self, E: torch.Tensor) -> None:
        """The codebook model's input embeddings [V, d_embed], row-normalised here."""
        if E.shape[1] != self.d_embed:
            raise ValueError(f"pick: embeddings of width {E.shape[1]}, the model was built for {self.d_embed}")
        self.E = torch.nn.functional.normalize(E.float(), dim=-1)

    def inputs(self, r: "Read") -> torch.Tensor:
        """[T, n_in] for one read context."""
        x = (r.features - self.mean) / self.std
        e, q = self.E[torch.tensor(r.ids)], self.E[torch.tensor(r.q_ids or [0])]
        sim = (e @ q.T).max(-1, keepdim=True).values
        return torch.cat([x, e, q.mean(0).expand(len(r.ids), -1), sim], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, n_in] -> logits [B, T]."""
        h = torch.nn.functional.gelu(self.inp(x))
        o, _ = self.gru(h)
        return self.out(torch.cat([o, h], -1)).squeeze(-1)

    def score(self, r: "Read") -> list[float]:
        if not r.ids:
            return []
        with torch.no_grad():
            return self(self.inputs(r)[None])[0].tolist()


def fit(model: PickModel, reads: list["Read"], labels: list[torch.Tensor], epochs: int = 6,
        batch: int = 64, lr: float = 3e-3, seed: int = 0, log=print) -> float:
    """AdamW on the token BCE over shuffled batches of contexts (the rare answer tokens
    weighted by sqrt(negatives / positives)). Returns the last epoch's mean loss."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in model.modules():  # the same seed gives the same start, whatever ran before
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    X = torch.cat([r.features for r in reads])
    model.mean.copy_(X.mean(0))
    model.std.copy_(X.std(0).clamp_min(1e-3))
    inputs = [model.inputs(r) for r in reads]
    y = torch.cat(labels)
    pos_weight = ((1 - y).sum() / y.sum().clamp_min(1)).sqrt()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    pad = torch.nn.utils.rnn.pad_sequence
    total = 0.0
    for epoch in tqdm(range(epochs), desc="pick fit", unit="epoch", disable=None):
        order, total, n = torch.randperm(len(reads), generator=g).tolist(), 0.0, 0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = pad([inputs[k] for k in idx], batch_first=True)
            t = pad([labels[k] for k in idx], batch_first=True)
            mask = pad([torch.ones(len(labels[k])) for k in idx], batch_first=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), t, pos_weight=pos_weight,
                                                                        reduction="none")
            loss = (loss * mask).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        total /= max(n, 1)
    log(f"pick: fitted on {len(y)} tokens of {len(reads)} contexts ({int(y.sum())} answer tokens), BCE {total:.4f}")
    return total


def spans_for(scores: list[float], sentence: list[int], M: int, span: int) -> list[tuple[int, int]]:
    """Token spans [a, b) filling M positions (a separator between non-adjacent spans takes
    one): around the best-rated uncovered token, `span` wide and inside its sentence, best
    first. -> sorted, non-overlapping spans."""
    T = len(scores)
    if T <= M:
        return [(0, T)] if T else []
    order = sorted(range(T), key=lambda i: -scores[i])
    spans: list[tuple[int, int]] = []

    def cost(sp):
        sp = sorted(sp)
        return sum(b - a for a, b in sp) + sum(1 for x, y in zip(sp, sp[1:]) if x[1] < y[0])

    for i in order:
        if any(a <= i < b for a, b in spans):
            continue
        left = M - cost(spans)
        if left <= 1 and spans:
            break
        s = sentence[i]
        lo = i
        while lo > 0 and sentence[lo - 1] == s:
            lo -= 1
        hi = i + 1
        while hi < T and sentence[hi] == s:
            hi += 1
        w = min(span, hi - lo)
        a = min(max(lo, i - w // 3), hi - w)
        cand = (a, a + w)
        # merge with touching / overlapping spans, then trim to the budget
        merged = [sp for sp in spans if sp[1] < cand[0] or sp[0] > cand[1]]
        joint = [sp for sp in spans if not (sp[1] < cand[0] or sp[0] > cand[1])] + [cand]
        new = (min(a for a, _ in joint), max(b for _, b in joint))
        trial = merged + [new]
        while cost(trial) > M:
            excess = cost(trial) - M
            a2, b2 = new
            # trim the end farther from the peak token i
            if i - a2 > b2 - 1 - i:
                a2 += min(excess, i - a2) or 0
            else:
                b2 -= min(excess, b2 - 1 - i) or 0
            if (a2, b2) == new:
                break
            new = (a2, b2)
            trial = merged + [new]
        if cost(trial) <= M:
            spans = trial
    return sorted(spans)


def picked_ids(r: Read, spans: list[tuple[int, int]], sep_id: int) -> list[int]:
    out: list[int] = []
    for k, (a, b) in enumerate(spans):
        if k and spans[k - 1][1] < a:
            out.append(sep_id)
        out += r.ids[a:b]
    return out


def span_texts(r: Read, context: str, spans: list[tuple[int, int]]) -> list[str]:
    return [context[r.offsets[a][0]:r.offsets[b - 1][1]] for a, b in spans if b > a]


def contains_answer(texts: list[str], answers: list[str]) -> bool:
    """The gold answer lies wholly inside one picked span (case and spacing ignored)."""
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return any(norm(a) and norm(a) in norm(t) for t in texts for a in answers)


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

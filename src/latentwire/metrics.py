"""SQuAD v1.1 answer scoring: the official normalisation, F1/EM as max over gold answers; and where a
gold answer occurs in a text, as whole words (the answer-bearing labels, pick recall, answer_in_context)."""
from __future__ import annotations

import functools
import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, squeeze whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def best_f1(prediction: str, golds: list[str]) -> float:
    return max(f1_score(prediction, g) for g in golds)


def best_em(prediction: str, golds: list[str]) -> float:
    return max(exact_match(prediction, g) for g in golds)


def answer_spans(text: str, answer: str) -> list[tuple[int, int]]:
    """The (start, end) char offsets where `answer` occurs in `text`, case ignored, as whole words:
    an answer that starts (ends) with a letter or digit does not start (end) inside a word, so
    "no" is not found in "November" nor "7" in "1987", as a plain substring test would."""
    a = answer.strip()
    return [m.span() for m in _pattern(a).finditer(text)] if a else []


@functools.lru_cache(maxsize=1 << 16)
def _pattern(a: str) -> re.Pattern:
    """The whole-word pattern of one answer, compiled once (the pick stage matches each of its
    pool's ~56k answers many times: `re`'s own cache of 512 patterns recompiled them, ~7 s)."""
    head = r"(?<!\w)" if re.match(r"\w", a[0]) else ""
    tail = r"(?!\w)" if re.match(r"\w", a[-1]) else ""
    return re.compile(head + re.escape(a) + tail, re.IGNORECASE)


def contains_answer(text: str, answers: list[str]) -> bool:
    """Some gold answer occurs in `text` as whole words (case and spacing ignored)."""
    text = " ".join(text.split())
    return any(answer_spans(text, " ".join(a.split())) for a in answers)

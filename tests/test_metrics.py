"""SQuAD v1.1 scoring, hand-worked: normalisation, token F1, EM, max over gold answers."""
import pytest

from latentwire.metrics import answer_spans, best_em, best_f1, contains_answer, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize("raw, norm", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  the   Eiffel\tTower \n", "eiffel tower"),
    ("An apple a day", "apple day"),
    ("A", ""),
    ("Theory of the atheist", "theory of atheist"),      # articles only as whole words
    ("U.S.A.", "usa"),                                   # punctuation dropped, not spaced
    ("New-York, (NY)!", "newyork ny"),
    ("\"1,889\"", "1889"),
    ("the.end", "theend"),                               # punctuation goes before articles
    ("PARIS", "paris"),
    ("Café Crème", "café crème"),                        # non-ASCII letters kept
    ("", ""),
])
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("The Paris!", "paris") == 1.0
    assert exact_match("Paris, France", "paris france") == 1.0
    assert exact_match("Paris France", "Paris") == 0.0
    assert exact_match("a", "the") == 1.0  # both normalise to ""
    assert isinstance(exact_match("x", "y"), float)


@pytest.mark.parametrize("pred, gold, f1", [
    ("Paris", "paris.", 1.0),
    ("the big red dog", "a red dog barked", 2 / 3),      # common {red, dog}: P = R = 2/3
    ("in the city of Paris", "Paris, France", 1 / 3),    # 1 common; P = 1/4, R = 1/2 -> 2PR/(P+R) = 1/3
    ("Paris France", "Paris", 2 / 3),                    # P = 1/2, R = 1 -> 2/3
    ("dog dog dog", "dog", 1 / 2),                       # counts clip: common 1, P = 1/3, R = 1
    ("dog dog", "dog dog cat", 4 / 5),                   # common 2, P = 1, R = 2/3
    ("1889", "in 1889", 2 / 3),
    ("London", "Paris", 0.0),
    ("the", "a", 0.0),                                   # empty after normalisation: 0, not 1
    ("", "Paris", 0.0),
])
def test_f1_score(pred, gold, f1):
    assert f1_score(pred, gold) == pytest.approx(f1, abs=1e-12)
    assert f1_score(gold, pred) == pytest.approx(f1, abs=1e-12)  # F1 is symmetric


def test_best_over_golds():
    golds = ["Denver Broncos", "the Broncos", "Broncos team of Denver"]
    assert best_em("broncos", golds) == 1.0                       # 2nd gold, after normalisation
    assert best_f1("broncos", golds) == 1.0
    # vs "Denver Broncos": P=1, R=1/2 -> 2/3; vs "broncos team of denver": P=1, R=1/4 -> 2/5
    assert best_f1("Denver", golds) == pytest.approx(2 / 3)
    assert best_em("Denver", golds) == 0.0
    # vs 1st: 1 common, P=R=1/2 -> 1/2; vs 3rd: 2 common, P=1, R=2/4 -> 2/3
    assert best_f1("Denver team", golds) == pytest.approx(2 / 3)
    assert best_f1("Miami Dolphins", golds) == 0.0
    assert best_f1("the", ["Paris", "London"]) == 0.0
    assert best_em("London", ["Paris", "london"]) == 1.0


@pytest.mark.parametrize("text, answer, spans", [
    ("No, it opened in November, not in May: no.", "no", [(0, 2), (39, 41)]),  # never inside "November" or "not"
    ("founded in 1987; 7 members", "7", [(17, 18)]),                          # never inside "1987"
    ("the band R.E.M. and REM", "r.e.m.", [(9, 15)]),                          # case ignored, the dots are literal
    ("it cost US$20 million", "$20 million", [(10, 21)]),                       # no boundary asked before a "$"
    ("Paris", "  ", []),                                                        # an empty answer is found nowhere
])
def test_answer_spans_are_whole_words(text, answer, spans):
    assert answer_spans(text, answer) == spans


def test_contains_answer_ignores_case_and_spacing_but_not_word_edges():
    assert contains_answer("the  SEINE\nflows", ["the Seine flows"])
    assert not contains_answer("He was born in November.", ["no", "yes"])  # a substring test says yes
    assert contains_answer("He was born in November.", ["no", "november"])

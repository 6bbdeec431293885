"""stats.paired_ci: the mean difference and its (stratified, cluster) bootstrap interval, on
samples whose answer is known."""
import math
import random

import pytest

from latentwire.stats import paired_ci


def width(ci: dict) -> float:
    return ci["hi"] - ci["lo"]


def test_a_constant_difference_has_a_zero_width_interval():
    diffs = {"squad": [0.1] * 12, "nq": [0.1] * 5}
    clusters = {"squad": [f"a{i // 3}" for i in range(12)], "nq": ["b"] * 5}
    ci = paired_ci(diffs, seed=0, n_boot=500, clusters=clusters)
    assert ci["diff"] == pytest.approx(0.1) and ci["lo"] == pytest.approx(0.1) and ci["hi"] == pytest.approx(0.1)
    assert ci["n"] == 17 and ci["clusters"] == 4 + 1


def test_an_interval_holds_the_mean_and_leaves_out_what_the_sample_rules_out():
    rng = random.Random(0)
    up = [1.0] * 45 + [0.0] * 15 + [-1.0] * 20  # mean 0.3125, sd about 0.8: 0 is ~3.5 standard errors off
    rng.shuffle(up)
    ci = paired_ci({"squad": up}, seed=1, n_boot=2000)
    assert ci["diff"] == pytest.approx(0.3125)
    assert ci["lo"] < 0.3125 < ci["hi"]
    assert ci["lo"] > 0  # a clear gain: the interval leaves 0 out
    se = (sum((x - 0.3125) ** 2 for x in up) / (len(up) - 1) / len(up)) ** 0.5
    # each end about 1.96 standard errors from the mean, as the normal approximation has it
    assert (0.3125 - ci["lo"]) / se == pytest.approx(1.96, abs=0.25)
    assert (ci["hi"] - 0.3125) / se == pytest.approx(1.96, abs=0.25)
    flat = [1.0, -1.0] * 40  # mean 0: the interval holds 0
    ci0 = paired_ci({"squad": flat}, seed=1, n_boot=2000)
    assert ci0["diff"] == 0 and ci0["lo"] < 0 < ci0["hi"]
    assert width(paired_ci({"squad": up}, seed=1, n_boot=2000, level=0.5)) < width(ci) / 2


def test_datasets_are_resampled_each_within_itself():
    """Two datasets of constant differences, +1 and -1: a stratified bootstrap keeps 10 of one and
    30 of the other in every resample, so the pooled mean never moves; pooling the 40 examples
    into one resample would."""
    ci = paired_ci({"squad": [1.0] * 10, "nq": [-1.0] * 30}, seed=0, n_boot=500)
    assert ci["diff"] == pytest.approx(-0.5)
    assert ci["lo"] == pytest.approx(-0.5) and ci["hi"] == pytest.approx(-0.5)


def test_clusters_widen_the_interval_when_their_questions_agree():
    """20 articles of 10 questions each, every question of an article with the article's difference:
    10 questions are one draw, so the interval is about sqrt(10) times as wide as per question."""
    rng = random.Random(2)
    per_article = [rng.choice([1.0, -1.0]) for _ in range(20)]
    diffs = [d for d in per_article for _ in range(10)]
    labels = [f"article{k}" for k in range(20) for _ in range(10)]
    alone = paired_ci({"squad": diffs}, seed=3, n_boot=2000)
    clustered = paired_ci({"squad": diffs}, seed=3, n_boot=2000, clusters={"squad": labels})
    assert clustered["diff"] == alone["diff"] and clustered["clusters"] == 20 and alone["clusters"] == 200
    assert width(clustered) == pytest.approx(math.sqrt(10) * width(alone), rel=0.3)
    # one label per question: the same draws as no clusters at all
    unique = paired_ci({"squad": diffs}, seed=3, n_boot=2000, clusters={"squad": [str(i) for i in range(200)]})
    assert width(unique) == pytest.approx(width(alone), rel=0.1)


def test_clusters_of_unequal_size_weigh_by_their_questions():
    """The statistic is the mean over questions, not over clusters: one article of 9 questions at
    +1 and one of 1 question at -1 has a mean difference of 0.8, and a resample of two articles
    takes each with its questions."""
    ci = paired_ci({"squad": [1.0] * 9 + [-1.0]}, seed=0, n_boot=4000, clusters={"squad": ["big"] * 9 + ["small"]})
    assert ci["diff"] == pytest.approx(0.8)
    # the resamples: both big (1.0) a quarter of the time, one of each (0.8) half, both small (-1.0) a quarter
    assert ci["lo"] == pytest.approx(-1.0) and ci["hi"] == pytest.approx(1.0)
    middle = paired_ci({"squad": [1.0] * 9 + [-1.0]}, seed=0, n_boot=4000, level=0.4,
                       clusters={"squad": ["big"] * 9 + ["small"]})
    assert middle["lo"] == pytest.approx(0.8) and middle["hi"] == pytest.approx(0.8)  # not (1 - 1) / 2 = 0


def test_no_examples_no_interval_and_the_seed_fixes_it():
    empty = paired_ci({"squad": []})
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("diff", "lo", "hi"))
    rng = random.Random(6)
    diffs = {"squad": [rng.uniform(-1, 1) for _ in range(30)]}
    assert paired_ci(diffs, seed=4, n_boot=300) == paired_ci(diffs, seed=4, n_boot=300)
    assert paired_ci(diffs, seed=4, n_boot=300)["lo"] != paired_ci(diffs, seed=5, n_boot=300)["lo"]

"""The summary writer's format (golden files) and the bootstrap intervals on cases with known answers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import TESTS
from sft.evaluation.compare import comparison_panels
from sft.evaluation.report import (
    Row, base_metric, bootstrap_mean, confidence_rows, difference_rows, format_score, model_pairs, summary_table, write_summary,
)

GOLDEN = TESTS / "golden"
TIME = "20250101_120000"
MODELS = ["base", "masked", "unmasked"]


def known_rows() -> list[Row]:
    """Two tasks, their group average and an unrelated loglikelihood task, with one missing score."""
    return [
        Row("sft_demo_add", "1a2b3c", "exact_match", "gen", {"base": 0.0, "masked": 52.5, "unmasked": 47.123}),
        Row("sft_demo_sort", "4d5e6f", "exact_match", "gen", {"base": 0.0, "masked": 100.0, "unmasked": None}),
        Row("sft_demo", "a1b2c3", "naive_average", "gen", {"base": 0.0, "masked": 76.25, "unmasked": 47.123},
            is_group=True),
        Row("hellaswag", "0f0f0f", "acc_norm", "ppl", {"base": 25.0049, "masked": 26.5, "unmasked": 27.999}),
    ]


@pytest.mark.parametrize("suffix", ["csv", "md", "txt"])
def test_summary_files_match_golden(tmp_path, suffix):
    paths = write_summary(summary_table(known_rows(), MODELS), tmp_path / "summary", TIME)
    assert paths[suffix].name == f"summary_{TIME}.{suffix}"
    golden = GOLDEN / paths[suffix].name
    if os.environ.get("UPDATE_GOLDEN"):  # regenerate after a deliberate format change, then review the diff
        golden.write_text(paths[suffix].read_text(encoding="utf-8"), encoding="utf-8")
    assert paths[suffix].read_text(encoding="utf-8") == golden.read_text(encoding="utf-8")


def test_summary_table_is_opencompass_shaped():
    table = summary_table(known_rows(), MODELS)
    assert table[0] == ["dataset", "version", "metric", "mode", *MODELS]
    assert table[2] == ["sft_demo_sort", "4d5e6f", "exact_match", "gen", "0.00", "100.00", "-"]
    assert format_score(float("nan")) == "-" and format_score(47.125001) == "47.13"


def test_identical_models_give_an_interval_around_zero():
    a = np.random.default_rng(1).integers(0, 2, 200).astype(float)
    row = Row("t", "v", "exact_match", "gen", {"x": 50.0, "y": 50.0},
              items={"x": [dict(enumerate(a))], "y": [dict(enumerate(a))]})
    (d,) = difference_rows([row], ["x", "y"])
    assert d["diff"] == 0.0 and d["ci_low"] <= 0.0 <= d["ci_high"] and d["significant"] == "no"


def test_a_model_right_wherever_the_other_is_wrong_is_significantly_better():
    b = np.random.default_rng(2).integers(0, 2, 100).astype(float)
    a = np.ones_like(b)  # right on every item, including each one b gets wrong
    row = Row("t", "v", "exact_match", "gen", {"b": 100 * b.mean(), "a": 100.0},
              items={"b": [dict(enumerate(b))], "a": [dict(enumerate(a))]})
    (d,) = difference_rows([row], ["b", "a"])  # listed later minus listed earlier: a - b
    assert (d["model_a"], d["model_b"]) == ("a", "b")
    assert d["diff"] == pytest.approx(100 * (1 - b.mean()), abs=0.01)
    assert 0 < d["ci_low"] < d["diff"] < d["ci_high"] and d["significant"] == "yes"


def test_interval_of_a_mean_has_the_binomial_width():
    x = np.array([0.0, 1.0] * 200)  # p = 0.5, n = 400: half-width 1.96 * sqrt(p (1 - p) / n) = 0.049
    est, low, high = bootstrap_mean([x])
    assert est == 0.5
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(0.25 / 400), rel=0.1)
    assert bootstrap_mean([x], seed=7) == bootstrap_mean([x], seed=7)  # seeded: reproducible


def test_group_interval_resamples_within_tasks_and_keeps_the_groups_weights():
    small, big = np.ones(10), np.zeros(90)  # macro mean 0.5, micro (size-weighted) mean 0.1
    est, low, high = bootstrap_mean([small, big])
    assert (est, low, high) == (0.5, 0.5, 0.5)  # stratified: every resample keeps 10 + 90 items
    assert bootstrap_mean([small, big], weights=[10, 90])[0] == pytest.approx(0.1)
    rows = [Row("g", "v", "naive_average", "gen", {"m": 50.0}, items={"m": [dict(enumerate(small)),
                                                                          dict(enumerate(big))]}, is_group=True)]
    (c,) = confidence_rows(rows, ["m"])
    assert (c["n"], c["score"], c["ci_low"], c["ci_high"]) == (100, 50.0, 50.0, 50.0)


def test_rows_without_item_scores_get_no_interval():
    row = Row("wikitext", "v", "word_perplexity", "ppl", {"x": 30.1, "y": 29.5}, scale=1.0)
    assert difference_rows([row], ["x", "y"]) == [] and confidence_rows([row], ["x", "y"]) == []


def test_every_pair_of_models_is_compared_later_minus_earlier():
    assert model_pairs(MODELS) == [("masked", "base"), ("unmasked", "base"), ("unmasked", "masked")]


def test_comparison_has_a_panel_per_metric_when_every_dataset_reports_the_same_ones():
    demo = [("sft_demo_add", "exact_match"), ("sft_demo_add", "edit_similarity"),
            ("sft_demo", "naive_average:exact_match"), ("sft_demo", "naive_average:edit_similarity")]
    assert base_metric("naive_average:edit_similarity") == "edit_similarity"
    assert comparison_panels(demo) == [[demo[0], demo[2]], [demo[1], demo[3]]]
    benchmarks = [("mmlu", "acc"), ("hellaswag", "acc"), ("hellaswag", "acc_norm")]  # as before: one panel
    assert comparison_panels(benchmarks) == [benchmarks]
    one_metric = [("sft_demo_add", "exact_match"), ("sft_demo", "naive_average")]  # results from before the metric
    assert comparison_panels(one_metric) == [one_metric]

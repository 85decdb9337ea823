"""How many seeds a difference needs: the between-seed sd, the minimum detectable difference and the seeds for a
target, against a hand computation with t quantiles from a printed table; the committed sweep's table and the
`sft sweep --report-only` command that prints it without training."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from helpers import ROOT
from sft.cli.main import main
import numpy as np
from scipy import stats

from sft.evaluation.seeds import mdd, seeds_needed, seeds_table, spread, t_interval, t_quantile, t_test_p

# Student t quantiles from a printed table (df: t_0.975, t_0.80)
T = {2: (4.303, 1.061), 3: (3.182, 0.978), 4: (2.776, 0.941), 7: (2.365, 0.896)}


def test_t_quantiles_match_the_printed_table():
    for df, (t975, t80) in T.items():
        assert t_quantile(0.975, df) == pytest.approx(t975, abs=1e-3)
        assert t_quantile(0.80, df) == pytest.approx(t80, abs=1e-3)


@pytest.mark.parametrize("n", [2, 8, 12])
def test_t_interval_is_scipys_at_2_8_and_12_seeds(n):
    values = np.random.default_rng(n).normal(3.0, 2.0, size=n)
    m, low, high = t_interval(values)
    assert (low, high) == pytest.approx(stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values)))
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert (m, low, high) == pytest.approx((values.mean(), ci.low, ci.high))
    assert t_test_p(values) == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue)


def test_t_interval_uses_t_past_ten_seeds_not_1_96():
    # 12 seeds: t_0.975 with 11 dof is 2.201 (a printed table), 12% wider than the normal quantile 1.96
    values = [float(v) for v in range(12)]  # mean 5.5, sd 3.6056
    m, low, high = t_interval(values)
    assert high - m == pytest.approx(2.201 * 3.6056 / math.sqrt(12), abs=2e-3)
    assert t_interval([5.0]) == (5.0, 5.0, 5.0)  # one seed: no interval
    assert math.isnan(t_test_p([5.0])) and t_test_p([2.0, 2.0, 2.0]) == 0.0 and t_test_p([0.0, 0.0]) == 1.0


def test_mdd_and_seeds_needed_by_hand():
    n, sd, m = spread([2.0, 4.0, 6.0])  # mean 4, sd 2
    assert (n, sd) == (3, 2.0)
    assert m == pytest.approx((4.303 + 1.061) * 2 / math.sqrt(3), abs=2e-3)  # 6.193
    # D = 4 with sd 2: 4 seeds give (3.182 + 0.978) * 2 / 2 = 4.16 > 4, 5 seeds (2.776 + 0.941) * 2 / sqrt(5) = 3.32
    assert mdd(2.0, 4) == pytest.approx(4.16, abs=2e-3) and mdd(2.0, 5) == pytest.approx(3.325, abs=2e-3)
    assert seeds_needed(2.0, 4.0) == 5 and seeds_needed(2.0, -4.0) == 5
    assert seeds_needed(2.0, 0.0) is None and math.isnan(mdd(2.0, 1))
    assert seeds_needed(0.0, 1.0) == 2  # no spread between seeds: the smallest paired design


def test_seeds_table_on_a_hand_made_difference():
    diffs = pd.DataFrame([{"dataset": "g", "metric": "naive_average:edit_similarity", "w_a": 1.0, "w_b": 0.0,
                           "diff": 4.0, "values": "2.0000 4.0000 6.0000"}])
    header, row = seeds_table(diffs, [(1.0, 0.0)], [4.0, 100.0])
    assert header[-2:] == ["seeds to detect 4", "seeds to detect 100"]
    assert row == ["`g` edit similarity", "w = 1 - w = 0", "3", "+4.00", "2.00", "6.19", "5", "5", "2"]
    assert seeds_table(diffs, [(0.5, 0.0)], []) == [header[:-2]]  # a pair not asked for is left out


def test_report_only_prints_the_committed_sweeps_needs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # reads evaluation_results/sweep-demo/differences.csv: nothing is trained
    assert main(["sweep", "--name", "demo", "--report-only", "--target-difference", "5"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "`sft_demo_long` edit similarity" in x and "w = 1 - w = 0 " in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    # the long-output question: +10.53, sd 8.55 over 3 seeds, MDD 26.48; 8 seeds for +10.53, 25 for 5 points
    assert cells[2:] == ["3", "+10.53", "8.55", "26.48", "8", "25"]
    assert main(["sweep", "--name", "no-such-sweep", "--report-only"]) == 2
    assert "run the sweep first" in capsys.readouterr().err

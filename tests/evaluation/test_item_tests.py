"""Paired tests over items for the exploratory page tables: McNemar's exact test and the paired t against scipy and
hand counts, Holm over a table's tests, and the marks they give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from helpers import ROOT
from sft.evaluation.item_tests import item_tests, mark, paired_p
from sft.evaluation.pages import render_spec

DEMO = "evaluation_results/demo/20261202_111738"


def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_items():
    a = np.array([100, 100, 100, 0, 0, 100, 0, 100.0])
    b = np.array([100, 0, 0, 0, 100, 0, 0, 0.0])  # discordant: 4 right by a only, 1 by b only
    assert paired_p(a, b, "exact_match") == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue) == pytest.approx(
        2 * (1 + 5) / 32)  # P(X <= 1) + P(X >= 4) of Binomial(5, 1/2)
    assert paired_p(a, a, "exact_match") == 1.0  # no discordant item


def test_other_metrics_take_the_paired_t_over_items():
    rng = np.random.default_rng(0)
    a, b = rng.normal(50, 10, 40), rng.normal(52, 10, 40)
    assert paired_p(a, b, "naive_average:edit_similarity") == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_p(a, a + 3, "edit_similarity") == 0.0 and paired_p(a, a, "edit_similarity") == 1.0


def test_holm_over_the_long_families_by_hand():
    cells = [(f"sft_demo_{t}", m, "unmasked", "masked") for t in ("count_up", "count_down", "day_list", "month_list")
             for m in ("exact_match", "edit_similarity")]
    tests = item_tests(ROOT / DEMO, cells)
    # exact match: masked gets none right, so every discordant item goes to unmasked: p = 2 / 2^n
    assert tests[cells[0]][0] == pytest.approx(2 / 2 ** 4) and tests[cells[6]][0] == pytest.approx(2 / 2 ** 6)
    # Holm over 8: the five tiny p-values first, then 2/64 x 3, 2/16 x 2, 2/4 x 1
    assert tests[cells[6]][1] == pytest.approx(3 * 2 / 64)
    assert tests[cells[0]][1] == pytest.approx(2 * 2 / 16) and tests[cells[2]][1] == pytest.approx(0.5)
    assert mark(tests, cells[0]) == " (Holm p 0.25, ns after Holm)" and mark(tests, cells[2], "no") == " (Holm p 0.5)"


def test_tables_say_they_are_exploratory_and_mark_each_family():
    table = render_spec(f"tasks {DEMO} --group sft_demo_long --pair unmasked,masked", ROOT)
    assert table.startswith("Exploratory. Holm p: a paired test over items") and "the 8 tests of this table" in table
    assert "| count_up | 0.00 / 2.69 | 0.00 / 41.27 | 4.00 / 56.07 | +4.00 [1.00, 8.00] (Holm p 0.25, ns after " \
           "Holm) |" in table
    assert table.splitlines()[-1].endswith("| +7.75 [5.25, 10.50] | +24.90 [23.26, 26.51] |")  # the average: untested
    chat = render_spec("differences evaluation_results/demo-chat/20261206_172207 --group sft_dialogue --chat "
                       "--pair unmasked,masked", ROOT)  # @chat items, pooled over the group's tasks
    assert "over the 2 tests" in chat and "(Holm p" in chat.splitlines()[-1]

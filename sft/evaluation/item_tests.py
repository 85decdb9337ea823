"""Paired tests over test items for one evaluation's page tables (`sft pages tasks|groups|differences`), Holm-adjusted
over every test a table shows: the marks that keep its per-family rows exploratory rather than findings.

Two models of one evaluation answer the same items, so a difference between them is tested item by item
(item_scores.csv):

    exact match (0/100 per item)   the exact McNemar test: of the items exactly one model gets right, is each model
                                   as likely to be that one? Two-sided binomial test of one model's count among the
                                   discordant items at 1/2 (scipy.stats.binomtest); no discordant item: p = 1
    any other metric               the paired t-test over items (scipy.stats.ttest_rel); identical scores: p = 1

A group row pools its tasks' items. Holm (sft.evaluation.multiplicity) then adjusts all the table's tests together:
16 families x 2 metrics x a pair are 32 tests, and at 5% each, one or two "significant" rows are expected by chance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, ttest_rel

from sft.evaluation.combined import read_item_scores
from sft.evaluation.multiplicity import holm
from sft.evaluation.report import base_metric
from sft.runs.layout import ITEM_SCORES

EXACT = "exact_match"  # the metric tested with McNemar's exact test (a 0/100 score per item)


def paired_p(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """Two-sided p of model a against model b on the same items (arrays in item order)."""
    if base_metric(metric) == EXACT:
        only_a, only_b = int(((a > 0) & (b == 0)).sum()), int(((a == 0) & (b > 0)).sum())
        return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    d = a - b
    if np.allclose(d, d[0]):  # no spread: ttest_rel gives nan; the sign is then certain, or there is no difference
        return 1.0 if abs(d[0]) < 1e-12 else 0.0
    return float(ttest_rel(a, b).pvalue)


def _rows(items: pd.DataFrame, dataset: str, metric: str, model: str, chat: bool) -> pd.Series:
    """A model's item scores on a task (or a group's tasks), indexed by (task, item); its @chat rows with `chat`."""
    rows = items[(items["model"] == model) & (items["metric"] == base_metric(metric))]
    is_chat = rows["task"].str.endswith("@chat")
    rows = rows[is_chat] if chat and is_chat.any() else rows[~is_chat]  # as the tables pick a model's rows
    task, group = rows["task"].str.removesuffix("@chat"), rows["group"].str.removesuffix("@chat")
    rows = rows[(task == dataset) | (group == dataset)]
    return rows.assign(task=rows["task"].str.removesuffix("@chat")).set_index(["task", "item"])["score"]


def item_tests(folder: str | Path, cells: list[tuple[str, str, str, str]], chat: bool = False) -> dict | None:
    """{(dataset, metric, a, b): (p, Holm's p over all these cells)} from the evaluation's item_scores.csv; None
    where it has none. A cell whose items are not found for both models is left out (and out of Holm's family)."""
    path = Path(folder) / ITEM_SCORES
    if not path.is_file():
        return None
    items = read_item_scores(path)
    found = {}
    for dataset, metric, a, b in cells:
        sa, sb = _rows(items, dataset, metric, a, chat), _rows(items, dataset, metric, b, chat)
        shared = sa.index.intersection(sb.index)
        if len(shared):
            found[dataset, metric, a, b] = paired_p(sa[shared].to_numpy(float), sb[shared].to_numpy(float), metric)
    adjusted = holm(found.values())
    return {k: (p, h) for (k, p), h in zip(found.items(), adjusted)}


def mark(tests: dict | None, key: tuple, significant: str = "yes") -> str:
    """' (Holm p 0.0021)'; ' (Holm p 0.31, ns after Holm)' where the interval excludes 0 (`significant`) but Holm's p is
    0.05 or more; '' where the cell was not tested."""
    if not tests or key not in tests or math.isnan(tests[key][1]):
        return ""
    h = tests[key][1]
    return f" (Holm p {h:.2g}{', ns after Holm' if significant == 'yes' and not h < 0.05 else ''})"


def caption(tests: dict | None) -> str:
    """The line above a table with marks, saying what they are; '' without item tables (or no cell tested)."""
    if not tests:
        return ""
    return (f"Exploratory. Holm p: a paired test over items (exact McNemar for exact match, else paired t), Holm over "
            f"the {len(tests)} tests of this table.\n\n")

"""The combined interval of a paired difference between two arms of a sweep: training seeds and test items resampled
together, from the per-item score tables (item_scores.csv: model,task,group,item,metric,score, one per evaluation).

A sweep's t-interval is over seeds: it treats each run's score as exact, though it is a mean over a few hundred
test items. A single run's bootstrap is over items: it treats the run as the only one a weight can give. The
difference the study reports, the mean over seeds of arm a's score minus arm b's, varies with both. Each bootstrap
replicate here draws the seeds with replacement (the pairs of runs, a and b of one seed together) and, per task,
the items with replacement (a and b on the same items), and recomputes the difference of the endpoint (a task's
mean, or a group's average of its tasks' means); the percentile interval of the replicates is the combined one.

The design is crossed, not nested: every seed is scored on the same test items, so an item that is hard is hard in
every seed. `crossed` (the default) draws one set of items per replicate, shared by the seeds drawn; `nested`
draws the items again within each seed drawn, which treats the item noise of different seeds as independent and
is narrower when items are shared (tests/evaluation/test_combined.py shows both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sft.data.errors import UserError
from sft.evaluation.report import LEVEL
from sft.evaluation.results import (
    ITEM_COLUMNS,  # model,task,group,item,metric,score; score on the summary's scale
)
from sft.evaluation.settings import BOOT_SEED, N_BOOT

DESIGNS = ("crossed", "nested")


def read_item_scores(path: str | Path) -> pd.DataFrame:
    """An evaluation's item_scores.csv, checked against its columns (item ids kept as text)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"model": str, "task": str, "group": str, "item": str, "metric": str},
                            keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: cannot read it as the per-item score table ({e}); evaluate the run again to "
                         "rewrite it.") from None
    missing = [c for c in ITEM_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)}; the per-item table has the columns "
                         f"{','.join(ITEM_COLUMNS)} (evaluate the run again to rewrite it).")
    table["score"] = pd.to_numeric(table["score"], errors="coerce")
    bad = table.index[table["score"].isna()]
    if len(bad):
        raise UserError(f"{path}: row {bad[0] + 2}, field score: {table.loc[bad[0], 'score']!r} is not a number "
                         f"({len(bad)} such rows); evaluate the run again to rewrite it.")
    return table


def endpoint_tasks(table: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    """The rows of one endpoint: the task named `dataset`, or every task whose group is `dataset` (its average)."""
    rows = table[(table["metric"] == metric) & ((table["task"] == dataset) | (table["group"] == dataset))]
    if rows.empty:
        groups = sorted(g for g in table["group"].unique() if g)
        raise UserError(f"no item scores for {dataset}:{metric}; the table's metrics are "
                         f"{sorted(table['metric'].unique())} and its groups {groups} (a group of groups has no "
                         "tasks of its own: name one of its subgroups).")
    return rows


def _matrices(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[np.ndarray], list[int], int]:
    """Per task, the seeds x items matrix of a - b on the seeds both arms have and the items every one of those runs
    scored; the tasks' item counts; the items left out (scored by some runs only)."""
    seeds = sorted(set(a["seed"]) & set(b["seed"]))
    out, sizes, dropped = [], [], 0
    for task in sorted(set(a["task"]) | set(b["task"])):
        ma = a[a["task"] == task].pivot_table(index="seed", columns="item", values="score", aggfunc="first")
        mb = b[b["task"] == task].pivot_table(index="seed", columns="item", values="score", aggfunc="first")
        ma, mb = ma.reindex(seeds), mb.reindex(seeds)
        items = [i for i in ma.columns.intersection(mb.columns) if ma[i].notna().all() and mb[i].notna().all()]
        dropped += len(set(ma.columns) | set(mb.columns)) - len(items)
        if not items:
            raise UserError(f"task {task}: no test item is scored in every run of both arms; evaluate the runs on "
                             "the same items (the same --limit).")
        out.append((ma[items] - mb[items]).to_numpy(dtype=float))
        sizes.append(len(items))
    return out, sizes, dropped


def combined_interval(a: pd.DataFrame, b: pd.DataFrame, dataset: str, metric: str, weighted: bool = False,
                      n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL,
                      design: str = "crossed") -> dict:
    """Arm a minus arm b on one endpoint, with the interval that resamples seeds and items together.

    a, b: item tables (ITEM_COLUMNS plus `seed`, the training seed of each row's run); dataset, metric: a task, or a
    group (its tasks' means averaged equally, or by item count when `weighted`, as the summary's group row).
    Returns diff, ci_low, ci_high, seeds, items (per run, summed over tasks) and items_dropped.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}.")
    a, b = endpoint_tasks(a, dataset, metric), endpoint_tasks(b, dataset, metric)
    diffs, sizes, dropped = _matrices(a, b)
    n_seeds = diffs[0].shape[0]
    if n_seeds < 1:
        raise UserError(f"{dataset}:{metric}: the two arms share no seed; pair runs of the same seeds.")
    w = np.asarray(sizes, dtype=float) if weighted else np.ones(len(sizes))
    w = w / w.sum()
    estimate = float(sum(wk * d.mean() for wk, d in zip(w, diffs)))
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot)  # B x S
    stats = np.zeros(n_boot)
    for wk, d in zip(w, diffs):
        n = d.shape[1]
        if design == "crossed":  # one draw of items per replicate, shared by its seeds
            item_counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot)  # B x n
            stats += wk * ((seed_counts @ d) * item_counts).sum(axis=1) / (n_seeds * n)
        else:  # a draw of items for every seed drawn
            item_counts = rng.multinomial(n, np.full(n, 1 / n), size=(n_boot, n_seeds))  # B x S x n
            stats += wk * np.einsum("bs,bsn,sn->b", seed_counts, item_counts, d) / (n_seeds * n)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return {"diff": estimate, "ci_low": float(low), "ci_high": float(high), "seeds": n_seeds,
            "items": int(sum(sizes)), "items_dropped": int(dropped)}

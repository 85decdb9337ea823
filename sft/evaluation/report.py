"""Summaries and confidence intervals of evaluation results.

`python -m sft evaluate` writes its tables with the writers here (OpenCompass's summary layout:
`dataset,version,metric,mode,<model>...`, scores 0-100 with two decimals, `-` where missing);
`python -m sft compare` (sft/evaluation/compare.py) reads result folders back and draws the comparison.

Intervals are percentile bootstraps over test items. A pairwise difference resamples the same
items for both models (a paired bootstrap). A group row (e.g. the demo's average over task
families) resamples items within each member task (stratified) and recombines the member means
with the group's own weights, so the interval is about exactly the number in the summary.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from sft.evaluation.settings import BOOT_SEED, N_BOOT

LEVEL = 0.95  # confidence level of every interval
RULE = 128  # width of the ^^^/$$$/--- rules in the summary .txt, as in OpenCompass
MAX_DRAWS = 4_000_000  # item draws held in memory at once while bootstrapping (32 MB of indices)


@dataclass
class Row:
    """One line of the summary: a dataset and metric, scored for every model."""

    dataset: str
    version: str
    metric: str
    mode: str  # "gen" (generate_until), "ppl" (loglikelihood), or "mixed" for a group of both
    scores: dict[str, float | None]  # model -> score on the summary's scale (None = missing)
    # model -> one {item id: score in [0, 1]} per member task (one for a plain task); None when the
    # metric is not a mean over items (perplexity, BLEU), which a resampled mean would misdescribe.
    items: dict[str, list[dict[Any, float]]] | None = None
    size_weighted: bool = False  # a group's mean weights its member tasks by item count (else equally)
    scale: float = 100.0  # summary score = scale x mean item score
    is_group: bool = False


# ---------------------------------------------------------------- the summary (OpenCompass layout)


def format_score(value: float | None) -> str:
    """Two decimals, or '-' for a missing score."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def summary_table(rows: list[Row], models: list[str]) -> list[list[str]]:
    """The summary as a header plus one list of strings per row."""
    table = [["dataset", "version", "metric", "mode", *models]]
    for r in rows:
        table.append([r.dataset, r.version, r.metric, r.mode, *(format_score(r.scores.get(m)) for m in models)])
    return table


def format_csv(table: list[list[str]]) -> str:
    """The table as CSV (fields with commas are quoted, which OpenCompass's names never need)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(table)
    return buf.getvalue()


def format_markdown(table: list[list[str]]) -> str:
    """The table as a GitHub markdown table, cells kept verbatim ('12.30' and '-' stay as written)."""
    return tabulate(table[1:], headers=table[0], tablefmt="github", disable_numparse=True) + "\n"


def format_psql(table: list[list[str]]) -> str:
    """The table in tabulate's psql layout, for terminals and the .txt summary."""
    return tabulate(table[1:], headers=table[0], tablefmt="psql", disable_numparse=True)


def format_summary_txt(table: list[list[str]], time_str: str) -> str:
    """The .txt summary: the table as psql, csv and markdown under OpenCompass's headings and rules."""
    divider = "-" * RULE + " THIS IS A DIVIDER " + "-" * RULE + "\n\n"
    sections = [("tabulate format", format_psql(table) + "\n"), ("csv format", format_csv(table)),
                ("markdown format", format_markdown(table))]
    blocks = [f"{title}\n" + "^" * RULE + "\n" + body + "$" * RULE + "\n\n" for title, body in sections]
    return f"{time_str}\n" + divider.join(blocks)


def write_summary(table: list[list[str]], summary_dir: str | Path, time_str: str) -> dict[str, Path]:
    """Write summary_<time>.csv, .md and .txt into summary_dir; return their paths by suffix."""
    out = Path(summary_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = {"csv": format_csv(table), "md": format_markdown(table), "txt": format_summary_txt(table, time_str)}
    paths = {}
    for suffix, text in texts.items():
        paths[suffix] = out / f"summary_{time_str}.{suffix}"
        paths[suffix].write_text(text, encoding="utf-8")
    return paths


# ---------------------------------------------------------------- bootstrap


def bootstrap_mean(strata: list, weights: list[float] | None = None, n_boot: int = N_BOOT,
                   seed: int = BOOT_SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """(estimate, low, high) of a weighted mean of stratum means, items resampled within each stratum.

    One stratum is the plain bootstrap of a mean. Given per-item differences a_i - b_i it is the
    paired bootstrap of a difference of means, since the mean is linear in the items.
    Weights default to equal (a macro average); they are normalised to sum to 1.
    """
    arrays = [np.asarray(s, dtype=np.float64) for s in strata]
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = [i for i, a in enumerate(arrays) if a.size and w[i] > 0]
    if not keep:
        raise ValueError("bootstrap_mean needs at least one non-empty stratum with a positive weight.")
    arrays, w = [arrays[i] for i in keep], w[keep] / w[keep].sum()
    estimate = float(sum(wi * a.mean() for wi, a in zip(w, arrays)))
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    chunk = max(1, MAX_DRAWS // max(a.size for a in arrays))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        for wi, a in zip(w, arrays):
            stats[start:start + k] += wi * a[rng.integers(0, a.size, size=(k, a.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(low), float(high)


def _strata(row: Row, model: str, other: str | None = None) -> tuple[list[np.ndarray], list[float]]:
    """Per-stratum item scores of a model (minus the other's, on the items both have) and weights."""
    strata = []
    for k, items in enumerate(row.items[model]):
        if other is None:
            strata.append(np.array([items[i] for i in sorted(items, key=str)]))
        else:
            theirs = row.items[other][k]
            common = sorted(set(items) & set(theirs), key=str)
            strata.append(np.array([items[i] - theirs[i] for i in common]))
    weights = [len(s) for s in strata] if row.size_weighted else [1.0 if len(s) else 0.0 for s in strata]
    return strata, weights


def confidence_rows(rows: list[Row], models: list[str], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list[dict]:
    """Each model's score on each row with its bootstrap interval (rows without item scores are skipped)."""
    out = []
    for r in rows:
        for m in models:
            if r.items is None or m not in r.items or r.scores.get(m) is None:
                continue
            strata, weights = _strata(r, m)
            if not any(len(s) for s in strata):
                continue
            est, low, high = bootstrap_mean(strata, weights, n_boot, seed)
            out.append({"dataset": r.dataset, "metric": r.metric, "model": m, "n": sum(map(len, strata)),
                        "score": round(r.scale * est, 4), "ci_low": round(r.scale * low, 4),
                        "ci_high": round(r.scale * high, 4)})
    return out


def model_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Every pair (a, b) with a listed after b: with the base model first, a - b is a gain over it."""
    return [(a, b) for b, a in itertools.combinations(models, 2)]


def difference_rows(rows: list[Row], models: list[str], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list[dict]:
    """a - b in points for every pair of models on every row, with a paired bootstrap interval."""
    out = []
    for r in rows:
        if r.items is None:
            continue
        for a, b in model_pairs(models):
            if a not in r.items or b not in r.items:
                continue
            strata, weights = _strata(r, a, b)
            if not any(len(s) for s in strata):
                continue
            est, low, high = bootstrap_mean(strata, weights, n_boot, seed)
            out.append({"dataset": r.dataset, "metric": r.metric, "model_a": a, "model_b": b,
                        "n": sum(map(len, strata)), "diff": round(r.scale * est, 2),
                        "ci_low": round(r.scale * low, 2), "ci_high": round(r.scale * high, 2),
                        "significant": "yes" if low > 0 or high < 0 else "no"})
    return out


DIFF_COLUMNS = ["dataset", "metric", "model_a", "model_b", "n", "diff", "ci_low", "ci_high", "significant"]
CONF_COLUMNS = ["dataset", "metric", "model", "n", "score", "ci_low", "ci_high"]


def write_records(records: list[dict], columns: list[str], path_stem: str | Path) -> list[Path]:
    """Write records as <stem>.csv and a markdown <stem>.md (numbers with two decimals)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table = [columns] + [[_cell(rec[c]) for c in columns] for rec in records]
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    csv_path.write_text(format_csv(table), encoding="utf-8")
    md_path.write_text(format_markdown(table), encoding="utf-8")
    return [csv_path, md_path]


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def base_metric(metric: str) -> str:
    """The metric a summary row reports: 'naive_average:edit_similarity' -> 'edit_similarity'."""
    return metric.split(":", 1)[-1]

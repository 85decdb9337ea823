"""Many comparisons at once: Holm's step-down adjustment, and the primary endpoints a study declares before its results.

A sweep compares every pair of weights on every row (16 task families, 3 group averages, 2 metrics, side effects):
at 5% per row, some "significant" rows are expected by chance alone. The study therefore declares its primary
endpoints first (`--primary DATASET:METRIC,...`, written to primary.json before any pair is trained), and reports

    primary       the declared endpoints x the pairs of weights compared (each weight against the smallest, unless
                  --primary-pairs names others): one family of tests, Holm-adjusted together;
    exploratory   every other row, Holm-adjusted within its own family: the rows of one pair of weights, one metric
                  and one kind (task rows, group averages, side effects, held-out losses, training statistics).

Holm (1979): sort the m p-values, p_(1) <= ... <= p_(m); the adjusted p_(i) is max over j <= i of
min(1, (m - j + 1) p_(j)). It controls the family-wise error rate under any dependence between the tests, which
rows of one sweep have (they share runs). statsmodels' multipletests(method="holm") computes the same; statsmodels
is not a dependency of this project (scipy has only the false-discovery-rate procedures), and the rule is five
lines, tested against hand-computed values.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sft.data.errors import UserError

PRIMARY_FILE = "primary.json"  # a sweep's declared primary endpoints, written before its first run


def holm(pvalues) -> list[float]:
    """Holm-adjusted p-values, in the input's order (nan stays nan and is left out of the family)."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # (m - j + 1) p_(j), j = rank + 1; never decreasing
        out[i] = running
    return out.tolist()


def parse_endpoints(text: str) -> list[tuple[str, str]]:
    """'sft_demo_short:exact_match,sft_demo_long:edit_similarity' -> [(dataset, metric), ...]: a summary row's dataset
    (a group's name for its average) and its metric without the average's prefix."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        dataset, sep, metric = part.partition(":")
        if not sep or not dataset.strip() or not metric.strip():
            raise UserError(f"--primary takes DATASET:METRIC endpoints separated by commas, e.g. "
                             f"sft_demo_short:exact_match,sft_demo_long:edit_similarity (a group's name for its "
                             f"average); got {part!r}.")
        out.append((dataset.strip(), metric.strip()))
    if not out:
        raise UserError("--primary is empty; name at least one DATASET:METRIC endpoint.")
    if len(set(out)) != len(out):
        raise UserError(f"--primary names an endpoint twice: {text!r}.")
    return out


def parse_pairs(text: str) -> list[tuple[float, float]]:
    """'1-0,0.5-0' -> [(1.0, 0.0), (0.5, 0.0)]: the pairs of weights (a - b) the primary endpoints are tested on."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        a, sep, b = part.partition("-")
        try:
            pair = (float(a), float(b))
        except ValueError:
            pair = None
        if not sep or pair is None or pair[0] == pair[1]:
            raise UserError(f"--primary-pairs takes A-B pairs of two different weights separated by commas, e.g. "
                             f"1-0,0.5-0 (w = 1 minus w = 0, w = 0.5 minus w = 0); got {part!r}.")
        out.append((max(pair), min(pair)))  # the sweep's differences are the larger weight minus the smaller
    return out


def declare(root: Path, endpoints: list[tuple[str, str]], pairs: list[tuple[float, float]] | None,
            results_exist: bool, commit: str) -> dict[str, Any]:
    """Write root/primary.json (the endpoints, the pairs, when, at which commit, whether any result existed yet), or
    check a re-run names the same endpoints: once declared they are fixed."""
    path = root / PRIMARY_FILE
    wanted = {"endpoints": [list(e) for e in endpoints], "pairs": None if pairs is None else [list(p) for p in pairs]}
    if path.is_file():
        found = read_declaration(root)
        if {k: found.get(k) for k in wanted} != wanted:
            raise UserError(f"{path} declares the primary endpoints {_describe(found)}, declared "
                             f"{found.get('declared_at')}; this run asks for {_describe(wanted)}. Endpoints are fixed "
                             "once declared: run the sweep again with the same --primary (or none, which keeps "
                             "them), or give the new endpoints a new --name.")
        return found
    root.mkdir(parents=True, exist_ok=True)
    record = {**wanted, "declared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "git_commit": commit, "before_results": not results_exist}
    path.write_text(json.dumps(record, indent=2))
    return record


def read_declaration(root: Path) -> dict[str, Any] | None:
    """root/primary.json, or None where the sweep declared no primary endpoint."""
    path = root / PRIMARY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it from git, or delete it and declare the "
                         "endpoints again with --primary (they will then be marked as declared after the "
                         "results).") from None


def _describe(record: dict) -> str:
    ends = ", ".join(f"{d}:{m}" for d, m in record.get("endpoints") or [])
    pairs = record.get("pairs")
    return f"[{ends}]" + ("" if pairs is None else " on " + ", ".join(f"w={a:g} - w={b:g}" for a, b in pairs))


def declaration_text(record: dict, pairs: list[tuple[float, float]], tests: int) -> str:
    """The paragraph a sweep's report opens with, before any number."""
    when = ("before any result of this sweep existed" if record.get("before_results")
            else "after some results of this sweep existed (post hoc: read the primary table as exploratory)")
    ends = "; ".join(f"`{d}` {m.replace('_', ' ')}" for d, m in record["endpoints"])
    on = ", ".join(f"w = {a:g} - w = {b:g}" for a, b in pairs)
    return (f"Primary endpoints (declared {record.get('declared_at')} at commit {record.get('git_commit')}, {when}): "
            f"{ends}; compared on {on}. Holm over these {tests} tests (paired t-tests over seeds); every other row "
            "is exploratory, Holm-adjusted within its pair of weights, metric and kind of row.\n")

"""Can the seeds answer? The between-seed spread of a paired difference, the smallest difference those seeds could
detect, and how many seeds a given difference needs.

A sweep pairs two weights by seed (the two runs of a seed share their example order), so a difference between
weights is the mean of n per-seed differences d_1..d_n, with sd_diff their standard deviation (n - 1 in the
denominator). For a two-sided paired t-test at level ALPHA with power POWER, the minimum detectable difference is

    MDD(n) = (t_{1 - ALPHA/2, n - 1} + t_{POWER, n - 1}) * sd_diff / sqrt(n)

(Student t quantiles, scipy.stats.t.ppf), and the seeds a difference D needs are the smallest n >= 2 with
MDD(n) <= |D|, sd_diff taken from the pilot sweep.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp

LEVEL = 0.95  # confidence level of every interval over seeds
ALPHA = 0.05  # two-sided test level
POWER = 0.80  # chance of detecting a true difference of the MDD
MAX_SEEDS = 10_000  # seeds_needed gives up (None) beyond this many


def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t with df degrees of freedom."""
    return float(student_t.ppf(p, df))


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds with its Student-t interval, t_{(1+level)/2, n-1} * sd / sqrt(n) on each
    side (scipy.stats.t); one value: the mean itself, with no interval."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, m, m
    half = t_quantile((1 + level) / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - half, m + half


def t_test_p(values) -> float:
    """Two-sided p-value of a paired t-test that the mean of the per-seed differences is 0 (scipy.stats.ttest_1samp);
    nan below 2 seeds; seeds that all agree give 0 (a non-zero difference) or 1 (none)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan
    m = float(x.mean())
    if float(x.std(ddof=1)) <= 1e-12 * max(1.0, abs(m)):  # no spread (to rounding): scipy gives nan or a warning;
        return 0.0 if abs(m) > 1e-12 else 1.0  # the sign is then certain, or there is no difference
    return float(ttest_1samp(x, 0.0).pvalue)


def mdd(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable difference of a paired mean over n seeds (nan below 2 seeds)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, difference: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest seeds (at least 2) whose MDD is at most |difference|; None past MAX_SEEDS or for no difference."""
    if not math.isfinite(sd) or difference == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if mdd(sd, n, alpha, power) <= abs(difference):
            return n
    return None


def spread(values: list[float]) -> tuple[int, float, float]:
    """(seeds, sd of the per-seed differences, MDD at that many seeds)."""
    x = np.asarray(values, dtype=float)
    sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return len(x), sd, mdd(sd, len(x))


def parse_values(text) -> list[float]:
    """A differences.csv `values` cell ('4.0000 6.0000 4.0000') as numbers."""
    return [float(v) for v in str(text).split()]


def seeds_cell(n: int | None) -> str:
    """A table's count of seeds needed: '> 10,000' where seeds_needed gave up."""
    return f"> {MAX_SEEDS:,}" if n is None else str(n)


def seeds_table(diffs, pairs: list[tuple[float, float]], targets: list[float]) -> list[list[str]]:
    """Rows of differences.csv (w_a, w_b, dataset, metric, diff, values) for the pairs asked (every pair if none):
    the difference, sd_diff, MDD at the sweep's seeds, the seeds the observed difference and each target need."""
    header = ["row", "pair", "seeds", "difference", "sd of the difference", f"MDD ({ALPHA:g} two-sided, "
              f"{POWER:.0%} power)", "seeds to detect the observed difference",
              *(f"seeds to detect {d:g}" for d in targets)]
    table = [header]
    for _, r in diffs.iterrows():
        if pairs and (float(r["w_a"]), float(r["w_b"])) not in pairs:
            continue
        n, sd, m = spread(parse_values(r["values"]))
        table.append([f"`{r['dataset']}` {r['metric'].split(':', 1)[-1].replace('_', ' ')}",
                      f"w = {float(r['w_a']):g} - w = {float(r['w_b']):g}", str(n), f"{float(r['diff']):+.2f}",
                      f"{sd:.2f}", f"{m:.2f}",
                      seeds_cell(seeds_needed(sd, float(r["diff"]))) if float(r["diff"]) else "- (no difference)",
                      *(seeds_cell(seeds_needed(sd, d)) for d in targets)])
    if pairs:  # in the order the pairs were asked for
        order = {f"w = {a:g} - w = {b:g}": i for i, (a, b) in enumerate(pairs)}
        table[1:] = sorted(table[1:], key=lambda row: order[row[1]])
    return table

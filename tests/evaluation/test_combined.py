"""The combined interval (seeds and items resampled together) on item tables built here, in the item_scores.csv
layout: its estimate is the sweep's mean of per-seed differences; with no item noise it is the seeds' bootstrap,
with no seed noise the items' paired bootstrap; the crossed design is wider than the nested one when items are
shared by the seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sft.evaluation.combined import ITEM_COLUMNS, combined_interval, read_item_scores
from sft.evaluation.report import bootstrap_mean

TASKS = {"t1": 40, "t2": 60}  # two tasks of the group g, with their item counts


def table(arm: str, values) -> pd.DataFrame:
    """An item table of one arm: values(seed, task, item) -> score, seeds 1-4, in item_scores.csv's columns + seed."""
    rows = [[f"{arm}_s{s}", task, "g", str(i), "exact_match", float(values(s, task, i)), s]
            for s in range(1, 5) for task, n in TASKS.items() for i in range(n)]
    return pd.DataFrame(rows, columns=[*ITEM_COLUMNS, "seed"])


def _per_seed_group_diff(a, b) -> list[float]:
    out = []
    for s in range(1, 5):
        means = [a[(a.seed == s) & (a.task == t)].score.mean() - b[(b.seed == s) & (b.task == t)].score.mean()
                 for t in TASKS]
        out.append(float(np.mean(means)))  # the group's naive average: its tasks equally
    return out


def test_estimate_is_the_mean_of_per_seed_differences_and_the_interval_covers_it():
    rng = np.random.default_rng(0)
    noise = {(s, t, i): rng.normal() for s in range(1, 5) for t, n in TASKS.items() for i in range(n)}
    a = table("a", lambda s, t, i: 50 + 3 * s + 10 * noise[s, t, i])
    b = table("b", lambda s, t, i: 45 + 10 * rng.normal())
    r = combined_interval(a, b, "g", "exact_match", n_boot=2000)
    assert r["diff"] == pytest.approx(np.mean(_per_seed_group_diff(a, b)))
    assert r["ci_low"] < r["diff"] < r["ci_high"] and (r["seeds"], r["items"], r["items_dropped"]) == (4, 100, 0)
    one = combined_interval(a, b, "t1", "exact_match", n_boot=2000)  # one task
    assert one["items"] == 40
    again = combined_interval(a, b, "g", "exact_match", n_boot=2000)
    assert again == r  # seeded: the same interval every time


def test_no_item_noise_gives_the_seeds_bootstrap():
    shift = {1: 0.0, 2: 4.0, 3: 1.0, 4: 9.0}  # every item of a seed differs by the same amount
    a, b = table("a", lambda s, t, i: 50 + shift[s]), table("b", lambda s, t, i: 50)
    r = combined_interval(a, b, "g", "exact_match", n_boot=4000)
    seeds = bootstrap_mean([np.array(list(shift.values()))], n_boot=4000)
    assert r["diff"] == pytest.approx(3.5)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(seeds[1:], abs=0.5)


def test_no_seed_noise_gives_the_items_paired_bootstrap():
    rng = np.random.default_rng(1)
    d = {(t, i): rng.normal(2, 10) for t, n in TASKS.items() for i in range(n)}
    a, b = table("a", lambda s, t, i: 50 + d[t, i]), table("b", lambda s, t, i: 50)  # the same in every seed
    r = combined_interval(a, b, "g", "exact_match", n_boot=4000)
    items = bootstrap_mean([np.array([d[t, i] for i in range(n)]) for t, n in TASKS.items()], n_boot=4000)
    assert r["diff"] == pytest.approx(items[0])
    assert (r["ci_high"] - r["ci_low"]) == pytest.approx(items[2] - items[1], rel=0.08)
    nested = combined_interval(a, b, "g", "exact_match", n_boot=4000, design="nested")
    # Items shared by the seeds: drawing them anew in each seed averages their noise away (half as wide at 4 seeds)
    assert (nested["ci_high"] - nested["ci_low"]) < 0.7 * (r["ci_high"] - r["ci_low"])


def test_items_not_in_every_run_are_left_out_and_counted_and_errors_name_the_fix(tmp_path):
    a, b = table("a", lambda s, t, i: 1), table("b", lambda s, t, i: 0)
    a = a[~((a.seed == 2) & (a.task == "t1") & (a.item == "0"))]  # one run lost an item
    r = combined_interval(a, b, "g", "exact_match", n_boot=200)
    assert (r["items"], r["items_dropped"], r["diff"]) == (99, 1, 1.0)
    with pytest.raises(ValueError, match="no item scores for g:edit_similarity"):
        combined_interval(a, b, "g", "edit_similarity")
    path = tmp_path / "item_scores.csv"
    table("a", lambda s, t, i: 1).drop(columns=["seed"]).to_csv(path, index=False)
    assert len(read_item_scores(path)) == 400
    path.write_text("model,task,group,item,metric,score\nw0_s1,t1,g,0,exact_match,high\n")
    with pytest.raises(ValueError, match="row 2, field score"):
        read_item_scores(path)
    path.write_text("model,task,item\n")
    with pytest.raises(ValueError, match="no column group, metric, score"):
        read_item_scores(path)

"""Sweeps on different bases side by side (sft pages bases): means, paired differences, p and Holm's p against scipy
and hand computation, on the committed sweeps as stand-ins for the two bases."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import ROOT
from scipy import stats

from sft.cli.main import main
from sft.data.errors import UserError
from sft.evaluation.bases import endpoint_rows, heldout_losses
from sft.evaluation.pages import render_spec

A, B = "evaluation_results/sweep-demo", "evaluation_results/sweep-long-output"
ENDPOINTS = [("sft_demo_short", "exact_match"), ("sft_demo_long", "edit_similarity")]


def _values(folder: str, dataset: str, metric: str) -> list[float]:
    d = pd.read_csv(ROOT / folder / "differences.csv")
    r = d[(d["dataset"] == dataset) & (d["metric"] == f"naive_average:{metric}") & (d["w_a"] == 1) & (d["w_b"] == 0)]
    return [float(v) for v in r.iloc[0]["values"].split()]


def test_differences_p_and_holm_match_scipy_and_the_hand_rule():
    rows = endpoint_rows(ROOT / B, ENDPOINTS)  # w = 0 and 1, 8 seeds: two tests, w = 1 - w = 0 per endpoint
    tested = [r for r in rows if r["diff"] is not None]
    assert [(r["endpoint"], r["w"]) for r in tested] == [(e, 1.0) for e in ENDPOINTS]
    p = [stats.ttest_1samp(_values(B, *e), 0).pvalue for e in ENDPOINTS]
    assert [r["p"] for r in tested] == pytest.approx(p)
    low, high = sorted(p)  # Holm over two: the smaller times 2, the larger times 1 (never below the first)
    expected = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}
    assert [r["p_holm"] for r in tested] == pytest.approx([expected[x] for x in p])
    x = _values(B, *ENDPOINTS[0])
    half = stats.t.ppf(0.975, len(x) - 1) * stats.sem(x)
    assert tested[0]["diff"] == pytest.approx((sum(x) / len(x), sum(x) / len(x) - half, sum(x) / len(x) + half))
    assert tested[0]["diff"][0] == pytest.approx(23.6875)  # differences.csv's published diff (23.69 on the page)


def test_holm_runs_over_every_weight_and_endpoint_of_a_sweep():
    rows = endpoint_rows(ROOT / A, ENDPOINTS)  # w = 0.1, 0.5, 1 against 0 on two endpoints: six tests
    p = [r["p"] for r in rows if r["diff"] is not None]
    assert len(p) == 6
    order = sorted(range(6), key=p.__getitem__)
    running, expected = 0.0, [0.0] * 6
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (6 - rank) * p[i]))
        expected[i] = running
    assert [r["p_holm"] for r in rows if r["diff"] is not None] == pytest.approx(expected)


def test_the_table_puts_both_sweeps_side_by_side_and_draws_them(tmp_path):
    spec = f"bases {A} --also {B} --endpoints sft_demo_short:exact_match,sft_demo_long:edit_similarity"
    table = render_spec(spec, ROOT)
    assert table.count("| w = 0 |") == 2 and "(reference)" in table
    assert "| w = 1 | 37.4 [32.0, 42.8] | +20.22 [10.0, 30.4] |" in table  # sweep-demo's sweep.csv: 37.4, its w=1 - w=0
    assert "| w = 0.1 |" in table and "- | - | - |" in table  # sweep-long-output has no w = 0.1: dashes
    png = tmp_path / "bases.png"
    assert main(["pages", *spec.split(), "--plot", str(png)]) == 0 and png.stat().st_size > 10_000


def test_bases_needs_two_sweeps_and_endpoints():
    with pytest.raises(UserError, match="--also"):
        render_spec(f"bases {A} --endpoints sft_demo_short:exact_match", ROOT)
    with pytest.raises(UserError, match="primary.json"):
        render_spec(f"bases {A} --also {B}", ROOT)
    with pytest.raises(UserError, match="no row sft_demo_nope"):
        render_spec(f"bases {A} --also {B} --endpoints sft_demo_nope:exact_match", ROOT)


def test_bases_default_to_the_first_sweeps_declared_endpoints(tmp_path):
    from helpers import fake_sweep

    a, b = fake_sweep(tmp_path / "sweep-pretrained"), fake_sweep(tmp_path / "sweep-random-init")
    table = render_spec(f"bases {a} --also {b}")
    assert "over the 1 endpoint(s) x weights of each sweep" in table
    assert table.count("`sweep-pretrained` mean (3 seeds)") == 1 and "`sweep-random-init` - smallest w" in table
    rows = endpoint_rows(a, [("sft_demo_short", "exact_match")])
    primary = pd.read_csv(a / "primary.csv").iloc[0]  # the sweep's own primary test: the same p, one test, Holm = p
    assert rows[1]["p"] == pytest.approx(primary["p"], rel=1e-2) and rows[1]["p_holm"] == rows[1]["p"]


def test_a_declared_familys_p_are_the_declared_tests_own():
    """sweep-pretrained declared both endpoints at every w: its tables give primary.csv's p and Holm p (written from
    unrounded per-seed values), not a recomputation from differences.csv's rounded ones (Holm 0.0697 there)."""
    declared = pd.read_csv(ROOT / "evaluation_results/sweep-pretrained/primary.csv")
    rows = endpoint_rows(ROOT / "evaluation_results/sweep-pretrained", ENDPOINTS)
    got = {(":".join(r["endpoint"]), r["w"]): (r["p"], r["p_holm"]) for r in rows if r["diff"] is not None}
    columns = declared[["endpoint", "w_a", "p", "p_holm"]]
    assert got == {(e, a): (p, h) for e, a, p, h in columns.itertuples(index=False)}
    assert got[("sft_demo_long:edit_similarity", 1.0)] == (0.00872, 0.0698)
    # one endpoint is not the declared family: recomputed, Holm over its 4 tests
    one = endpoint_rows(ROOT / "evaluation_results/sweep-pretrained", ENDPOINTS[1:])
    p = [r["p"] for r in one if r["diff"] is not None]
    assert len(p) == 4 and p[-1] == pytest.approx(stats.ttest_1samp(
        _values("evaluation_results/sweep-pretrained", *ENDPOINTS[1]), 0).pvalue)


def test_prompt_loss_per_weight_comes_from_each_pairs_heldout_json(tmp_path):
    """pages prompt-loss reads every pair's heldout.json: its response loss per w equals the sweep's own summary
    (sweep.csv), and its prompt loss is the mean of the pairs' values (the summary never kept it)."""
    import json

    folder = ROOT / "evaluation_results/sweep-pretrained"
    table = render_spec("prompt-loss evaluation_results/sweep-pretrained", ROOT)
    sweep = pd.read_csv(folder / "sweep.csv")
    for w in (0.0, 0.01, 0.1, 0.5, 1.0):
        response = sweep[(sweep["dataset"] == "heldout") & (sweep["metric"] == "response_loss")
                         & (sweep["prompt_loss_weight"] == w)].iloc[0]
        pairs = [f"w{w:g}_s{s}" for s in range(1, 9)]
        prompt = [json.loads(next((folder / p).glob("*/heldout.json")).read_text())["models"][p]["prompt_loss"]
                  for p in pairs]
        row = next(line for line in table.splitlines() if line.startswith(f"| w = {w:g} |"))
        cells = row.split(" | ")
        assert cells[1].startswith(f"{sum(prompt) / 8:.3f} [") and cells[2].startswith(f"{response['mean']:.3f} [")
    for wrong in (tmp_path, tmp_path / "absent"):  # an empty folder, a path that does not exist: not a sweep
        with pytest.raises(UserError, match=r"no pair folders \(w<w>_s<seed>/\) here: pass a published sweep"):
            heldout_losses(wrong)
    (tmp_path / "w0_s1" / "20261208_000000").mkdir(parents=True)  # a pair whose evaluation was not published
    with pytest.raises(UserError, match=r"w0_s1: no evaluation with a heldout.json; publish the sweep"):
        heldout_losses(tmp_path)

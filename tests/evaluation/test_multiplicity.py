"""Holm's adjustment against hand-computed values, and the primary endpoints a sweep declares before its results."""

from __future__ import annotations

import json
import math

import pytest

from sft.evaluation.multiplicity import declare, declaration_text, holm, parse_endpoints, parse_pairs, read_declaration


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04, 0.2 (m = 5): 5 x 0.01 = 0.05, 4 x 0.02 = 0.08, 3 x 0.03 = 0.09, 2 x 0.04 = 0.08
    # -> 0.09 (never below the one before), 1 x 0.2 = 0.2; given in another order, returned in that order
    assert holm([0.03, 0.2, 0.01, 0.04, 0.02]) == pytest.approx([0.09, 0.2, 0.05, 0.09, 0.08])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.04]) == [0.04]  # a family of one: unadjusted
    out = holm([0.01, math.nan, 0.04])  # nan is no test: the family is the two others
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([]) == []


def test_holm_turns_twelve_of_sixteen_into_fewer():
    # 16 families, 12 with p < 0.05: at most the ones below 0.05 / 16 ... 0.05 / 5 survive in turn
    p = [0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.01, 0.02, 0.03, 0.04, 0.045, 0.049, 0.2, 0.3, 0.5, 0.9]
    adjusted = holm(p)
    assert sum(x < 0.05 for x in p) == 12
    # 16 x 0.001 = 0.016, 15 x 0.002 = 0.03, 14 x 0.003 = 0.042, 13 x 0.004 = 0.052: three survive
    assert sum(x < 0.05 for x in adjusted) == 3 and adjusted[3] == pytest.approx(0.052)


def test_endpoints_and_pairs_are_read_with_the_fix_in_each_error():
    assert parse_endpoints("sft_demo_short:exact_match, sft_demo_long:edit_similarity") == [
        ("sft_demo_short", "exact_match"), ("sft_demo_long", "edit_similarity")]
    for bad in ("sft_demo_short", ":exact_match", "", "a:b,a:b"):
        with pytest.raises(ValueError, match="--primary"):
            parse_endpoints(bad)
    assert parse_pairs("1-0,0-0.5") == [(1.0, 0.0), (0.5, 0.0)]  # always the larger weight minus the smaller
    for bad in ("1", "1-1", "a-0"):
        with pytest.raises(ValueError, match="--primary-pairs"):
            parse_pairs(bad)


def test_endpoints_once_declared_are_fixed(tmp_path):
    ends = [("sft_demo_short", "exact_match")]
    record = declare(tmp_path, ends, None, results_exist=False, commit="abc")
    assert record["before_results"] and json.loads((tmp_path / "primary.json").read_text()) == record
    assert declare(tmp_path, ends, None, results_exist=True, commit="def") == record  # the same: kept as declared
    with pytest.raises(ValueError, match="fixed once declared"):
        declare(tmp_path, [("sft_demo_long", "edit_similarity")], None, results_exist=True, commit="def")
    text = declaration_text(record, [(1.0, 0.0)], 1)
    assert text.startswith("Primary endpoints (declared ") and "before any result" in text and "Holm over these 1" in text
    late = declare(tmp_path / "late", ends, [(1.0, 0.0)], results_exist=True, commit="abc")
    assert "post hoc" in declaration_text(late, [(1.0, 0.0)], 1) and read_declaration(tmp_path / "none") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "primary.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_declaration(tmp_path / "bad")

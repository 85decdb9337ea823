"""sft/data/mixture.py: a mixture's sources read from --data (PATH:RATIO entries or a YAML list), checked, named, and
the draw of training examples by the ratios (exact counts, repeats, seeded)."""

import json

import numpy as np
import pytest

from sft.data.errors import UserError
from sft.data.mixture import describe_draw, draw_counts, draw_indices, is_mixture, parse_mixture, shares


def _rows(path, n, tag="q"):
    path.write_text("".join(json.dumps({"instruction": f"{tag} {i}?", "output": f"{i}."}) + "\n" for i in range(n)))
    return path


def test_entries_give_path_ratio_and_name_and_shares_are_ratios_over_their_sum(tmp_path):
    a, b = _rows(tmp_path / "a.jsonl", 3), _rows(tmp_path / "b.jsonl", 3)
    spec = f"{a}:7,{b}:3"
    assert is_mixture(spec) and not is_mixture(str(a))
    sources = parse_mixture(spec)
    assert [(s.path, s.ratio, s.name, s.role_weights) for s in sources] == [(str(a), 7.0, "a", {}), (str(b), 3.0, "b", {})]
    assert shares(sources) == [0.7, 0.3]


def test_a_path_holding_a_colon_still_works_and_the_ratio_follows_the_last_colon(tmp_path):
    odd = _rows(tmp_path / "we:ird.jsonl", 2)  # a file really named with a colon
    assert not is_mixture(str(odd))  # the path exists as given: one source, no mixture
    (s,) = parse_mixture(f"{odd}:0.5")
    assert (s.path, s.ratio, s.name) == (str(odd), 0.5, "we_ird")
    with pytest.raises(UserError, match=r"source 1 of the mixture, field path: C:/data/a.jsonl is no such file"):  # a Windows drive
        parse_mixture("C:/data/a.jsonl:0.5")


def test_the_same_stem_twice_gets_the_entry_number(tmp_path):
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    a, b = _rows(tmp_path / "x/train.jsonl", 2), _rows(tmp_path / "y/train.jsonl", 2)
    assert [s.name for s in parse_mixture(f"{a}:1,{b}:1")] == ["train_1", "train_2"]


def test_a_yaml_list_gives_role_weights_and_names_with_paths_beside_it(tmp_path):
    _rows(tmp_path / "a.jsonl", 2), _rows(tmp_path / "b.jsonl", 2)
    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, ratio: 0.25}\n"
                                       "- path: b.jsonl\n  ratio: 0.75\n  name: bee\n  role_weights: {user: 0.5}\n")
    a, b = parse_mixture(str(tmp_path / "mix.yaml"))
    assert (a.path, a.ratio, a.name, a.role_weights) == (str(tmp_path / "a.jsonl"), 0.25, "a", {})
    assert (b.path, b.ratio, b.name, b.role_weights) == (str(tmp_path / "b.jsonl"), 0.75, "bee", {"user": 0.5})
    (tmp_path / "dict.yml").write_text("sources:\n- {path: a.jsonl}\n")  # ratio 1 by default
    assert [s.ratio for s in parse_mixture(str(tmp_path / "dict.yml"))] == [1.0]


@pytest.mark.parametrize("entries, message", [
    ("{a}:-1,{b}:1", r"--data entry 1 .*field ratio: must be a number >= 0, got '-1'"),
    ("{a}:0,{b}:0", r"the ratios sum to 0"),
    ("{a}:heavy,{b}:1", r"--data entry 1 .*field ratio: must be a number >= 0, got 'heavy'"),
    ("{a}:nan,{b}:1", r"field ratio: must be a number >= 0, got .nan."),
    ("{a}:heavy", r"--data entry 1 .*field ratio: must be a number >= 0, got .heavy."),
    ("{a},{b}:1", r"--data entry 1 .*no ratio.*it exists, so give it a ratio"),
    ("{a}:0.5,{missing}:0.5", r"source 2 of the mixture, field path: .*missing.jsonl is no such file"),
])
def test_a_bad_entry_names_the_source_the_field_and_the_fix(tmp_path, entries, message):
    a, b = _rows(tmp_path / "a.jsonl", 2), _rows(tmp_path / "b.jsonl", 2)
    with pytest.raises(UserError, match=message):
        parse_mixture(entries.format(a=a, b=b, missing=tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("yaml_text, message", [
    ("- {path: a.jsonl, ratio: -2}", r"mix.yaml: source 1, field ratio: must be a number >= 0, got -2"),
    ("- {path: a.jsonl, ratio: true}", r"source 1, field ratio: must be a number >= 0, got True"),
    ("- {path: a.jsonl, weight: 2}", r"source 1, field weight: unknown; a source gives path, ratio, role_weights"),
    ("- {ratio: 1}", r"source 1, field path: is missing"),
    ("- {path: a.jsonl, role_weights: {usr: 0.5}}", r"source 1, field role_weights: --role-weights: unknown role 'usr'"),
    ("- {path: a.jsonl, name: 'a b'}", r"source 1, field name: 'a b' must be letters"),
    ("- {path: a.jsonl, name: x}\n- {path: a.jsonl, name: x}", r"two sources are named 'x'"),
    ("a.jsonl: 1", r"must hold a list of sources, got dict"),
    ("- [a.jsonl", r"not a readable YAML file"),
])
def test_a_bad_yaml_entry_names_the_file_the_source_and_the_field(tmp_path, yaml_text, message):
    _rows(tmp_path / "a.jsonl", 2)
    (tmp_path / "mix.yaml").write_text(yaml_text + "\n")
    with pytest.raises(UserError, match=message):
        parse_mixture(str(tmp_path / "mix.yaml"))


def test_a_bad_ratio_exits_2_with_one_paragraph_on_the_command_line(tmp_path, capsys):
    from sft.cli.main import main

    a = _rows(tmp_path / "a.jsonl", 2)
    assert main(["inspect-data", "--data", f"{a}:-0.5", "--tokenizer", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "field ratio: must be a number >= 0, got '-0.5'" in err and "Traceback" not in err


def test_counts_are_exact_shares_of_all_the_examples_by_the_largest_remainder():
    assert draw_counts([8, 28], [0.7, 0.3]) == [25, 11]  # 25.2 and 10.8 of 36: the .8 gets the spare one
    assert draw_counts([10, 10, 10], [1 / 3] * 3) == [10, 10, 10]
    assert draw_counts([5, 95], [0.0, 1.0]) == [0, 95]  # ratio 0: the source gives none, nor counts in N
    assert draw_counts([10, 1000], [1.0, 0.0]) == [10, 0]  # (not 1,010 of a's 10 examples)
    assert sum(draw_counts([7, 13, 1], [0.2, 0.5, 0.3])) == 21


def test_a_short_source_is_repeated_evenly_and_a_long_one_sampled_without_replacement_seeded():
    up = draw_indices(8, 25, seed=42, source=0)  # every example 3 times, one of them a 4th time
    assert sorted(np.bincount(up, minlength=8)) == [3] * 7 + [4]
    down = draw_indices(28, 11, seed=42, source=1)
    assert len(set(down)) == 11 and down.tolist() == sorted(down.tolist())
    assert np.array_equal(down, draw_indices(28, 11, seed=42, source=1))  # the seed decides: the same draw
    assert not np.array_equal(down, draw_indices(28, 11, seed=7, source=1))
    assert describe_draw("a", 8, 25, 0.7).endswith("(fewer than its share: repeated, every example 3x and 1 of them "
                                                   "once more)")
    assert describe_draw("b", 28, 11, 0.3).endswith("(17 not drawn: a seeded choice of 11)")

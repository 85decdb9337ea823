"""sft/core/prepare.py: a mixture's splits (each source split, tokenized and weighed on its own, its training examples
drawn by the ratios, every example carrying its source), what inspect-data exports and plan counts of it."""

import json
from collections import Counter

import numpy as np
import pytest

from helpers import QWEN_TOKENIZER
from sft.core.plan import source_figures
from sft.core.prepare import prepare_data
from sft.data.config import DataConfig
from sft.data.conversations import ROLE_NAMES
from sft.data.errors import UserError


def _rows(path, n, tag):
    path.write_text("".join(json.dumps({"instruction": f"{tag} question {i}?", "output": f"{tag} answer {i}."}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture
def two_sources(tmp_path):
    """a.jsonl (10 rows, 8 for training after 2 held out) and b.jsonl (30 rows, 28 for training)."""
    return _rows(tmp_path / "a.jsonl", 10, "alpha"), _rows(tmp_path / "b.jsonl", 30, "beta")


def test_each_source_gives_its_share_of_the_examples_exactly_and_seeded(two_sources, qwen_tokenizer, tmp_path):
    a, b = two_sources
    cfg = DataConfig(data=f"{a}:0.7,{b}:0.3", eval_size=2, cache_dir=str(tmp_path / "cache"))
    data = prepare_data(cfg, qwen_tokenizer)
    # 8 + 28 = 36 training examples: a gives 0.7 x 36 = 25.2 -> 25, b 10.8 -> 11 (the largest remainder)
    assert Counter(data.train["source"]) == {0: 25, 1: 11} and data.sources == ["a", "b"]
    ids = [tuple(x) for x in data.train["input_ids"]]
    by_source = [Counter(i for i, s in zip(ids, data.train["source"]) if s == k) for k in (0, 1)]
    assert sorted(by_source[0].values()) == [3] * 7 + [4]  # a has 8: each 3 times, one a 4th time
    assert len(by_source[1]) == 11 and set(by_source[1].values()) == {1}  # b has 28: 11 of them, once each
    assert Counter(data.eval["source"]) == {0: 2, 1: 2}  # every source's held-out rows, once
    assert [(m["name"], m["training_examples"], m["drawn"]) for m in data.info["mixture"]] == [("a", 8, 25),
                                                                                              ("b", 28, 11)]
    again = prepare_data(cfg, qwen_tokenizer)  # the same seed: the same draw
    assert [tuple(x) for x in again.train["input_ids"]] == ids
    other = prepare_data(DataConfig(data=cfg.data, eval_size=2, cache_dir=cfg.cache_dir, split_seed=7), qwen_tokenizer)
    assert Counter(other.train["source"]) == {0: 25, 1: 11} and [tuple(x) for x in other.train["input_ids"]] != ids
    # plan's figures per source: the drawn examples and their tokens
    lengths = np.asarray(data.train["length"])
    response = np.asarray([sum(m) for m in data.train["response_mask"]])
    figures = source_figures(data, lengths, response)
    source = np.asarray(data.train["source"])
    assert {k: (v["examples"], v["available_examples"], v["tokens"]) for k, v in figures.items()} == {
        "a": (25, 8, int(lengths[source == 0].sum())), "b": (11, 28, int(lengths[source == 1].sum()))}
    assert figures["a"]["tokens"] + figures["b"]["tokens"] == int(lengths.sum())


def test_a_sources_role_weights_weigh_its_rows_only(two_sources, qwen_tokenizer, tmp_path):
    a, b = two_sources
    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, ratio: 1}\n"
                                       "- {path: b.jsonl, ratio: 1, name: beta, role_weights: {user: 0.5}}\n")
    cfg = DataConfig(data=str(tmp_path / "mix.yaml"), eval_size=2, cache_dir=str(tmp_path / "cache"),
                     prompt_loss_weight=0.1, role_weights="template=0")
    data = prepare_data(cfg, qwen_tokenizer)
    for split in (data.train, data.eval):
        for ex in split:
            weight_of = {ROLE_NAMES[r]: w for r, w in zip(ex["roles"], ex["loss_weights"])}
            assert weight_of == {"template": 0.0, "user": 0.5 if ex["source"] == 1 else pytest.approx(0.1),
                                 "assistant": 1.0}, ex["source"]
    # the step's tables: one per source (the run's last, for rows of no source); the loss looks them up per token
    assert data.weight_spec.tables() == [[0.0, 0.1, 0.1, 1.0, 1.0, 0.1, 1.0, 1.0, 0.1],
                                         [0.0, 0.1, 0.5, 1.0, 1.0, 0.1, 1.0, 1.0, 0.1],
                                         [0.0, 0.1, 0.1, 1.0, 1.0, 0.1, 1.0, 1.0, 0.1]]


def test_the_batch_weights_are_the_sources_tables_packed_and_padded(two_sources, qwen_tokenizer, tmp_path):
    from sft.core.collate import PackedWeightedLMCollator, WeightedLMCollator
    from sft.core.weights import step_weights

    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, role_weights: {assistant: 0.25}}\n- {path: b.jsonl}\n")
    cfg = DataConfig(data=str(tmp_path / "mix.yaml"), eval_size=2, cache_dir=str(tmp_path / "cache"))
    data = prepare_data(cfg, qwen_tokenizer)
    first = [data.train[i] for i in (0, len(data.train) - 1)]  # one of each source
    assert [ex["source"] for ex in first] == [0, 1]
    for collate in (WeightedLMCollator(qwen_tokenizer.pad_token_id), PackedWeightedLMCollator(0)):
        batch = collate(first)
        got = step_weights(batch, data.weight_spec.tables())
        want = [w for ex in first for w in ex["loss_weights"]]
        real = batch.get("attention_mask", batch["input_ids"] * 0 + 1).bool()
        assert got[real].tolist() == want
    assert max(first[0]["loss_weights"]) == 0.25 and max(first[1]["loss_weights"]) == 1.0


def test_a_bad_row_names_its_sources_file_row_and_field(two_sources, tmp_path):
    a, b = two_sources
    lines = b.read_text().splitlines()
    lines[2] = json.dumps({"instruction": "q", "output": 3})
    b.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"b.jsonl: line 3, field output: must be a string, got int"):
        prepare_data(DataConfig(data=f"{a}:1,{b}:1", eval_size=2, cache_dir=str(tmp_path / "cache")), None)


def test_inspect_data_exports_each_row_once_with_its_source_and_its_weights(two_sources, tmp_path, capsys):
    from sft.cli.main import main

    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, ratio: 3}\n- {path: b.jsonl, ratio: 1, role_weights: "
                                       "{user: 0.5}}\n")
    out = tmp_path / "masks.jsonl"
    assert main(["inspect-data", "--data", str(tmp_path / "mix.yaml"), "--tokenizer", str(QWEN_TOKENIZER), "--json",
                 "--export", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    stats = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["source"] for x in lines] == ["a"] * 10 + ["b"] * 30  # every row once, in the mixture's order
    for line in lines:
        user = {w for r, w in zip(line["roles"], line["weights"]) if r == "user"}
        assert user == ({0.5} if line["source"] == "b" else {0.0})  # w = 0 unless the source says otherwise
    assert {k: (v["share"], v["rows_read"], v["examples"]) for k, v in stats["sources"].items()} == {
        "a": (0.75, 10, 10), "b": (0.25, 30, 30)}
    b_user = sum(r == "user" for x in lines if x["source"] == "b" for r in x["roles"])
    assert stats["sources"]["b"]["weight_by_role"]["user"] == 0.5 * b_user > 0


def test_a_mixture_of_gsm8k_parts_with_the_qwen_tokenizer(gsm8k_path, qwen_tokenizer, tmp_path):
    rows = json.loads(gsm8k_path.read_text())[:600]
    for name, part in (("small", rows[:100]), ("large", rows[100:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp_path / "mix.yaml").write_text("- {path: small.jsonl, ratio: 0.5, role_weights: {user: 1, template: 0}}\n"
                                       "- {path: large.jsonl, ratio: 0.5}\n")
    data = prepare_data(DataConfig(data=str(tmp_path / "mix.yaml"), eval_size=0.1, max_length=512,
                                   cache_dir=str(tmp_path / "cache")), qwen_tokenizer)
    # 90 + 450 = 540 training examples, 270 from each: small's 90 three times each, 270 of large's 450
    assert Counter(data.train["source"]) == {0: 270, 1: 270}
    assert Counter(data.eval["source"]) == {0: 10, 1: 50}
    small = Counter(tuple(x) for x, s in zip(data.train["input_ids"], data.train["source"]) if s == 0)
    assert len(small) == 90 and set(small.values()) == {3}
    for ex in (data.train[0], data.train[len(data.train) - 1]):  # small's user tokens weigh 1, large's w = 0
        user = {w for r, w in zip(ex["roles"], ex["loss_weights"]) if ROLE_NAMES[r] == "user"}
        assert user == ({1.0} if ex["source"] == 0 else {0.0})


def test_plan_counts_the_head_positions_under_each_sources_role_weights(two_sources, qwen_tokenizer, tmp_path):
    from sft.core.plan import head_positions

    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, role_weights: {user: 0}}\n- {path: b.jsonl}\n")
    cfg = DataConfig(data=str(tmp_path / "mix.yaml"), eval_size=2, cache_dir=str(tmp_path / "cache"),
                     prompt_loss_weight=0.1)
    data = prepare_data(cfg, qwen_tokenizer)
    by_hand = sum(w > 0 for ex in data.train for w in ex["loss_weights"][1:])  # a target of non-zero weight
    assert head_positions(data.train, data.weight_spec) == by_hand
    assert head_positions(data.train, cfg.weight_spec()) > by_hand  # the run's table alone counts a's user tokens


def test_grouping_a_mixture_by_a_column_named_source_is_refused(two_sources, tmp_path):
    from sft.core.inspect_data import inspect_data

    a, b = two_sources
    with pytest.raises(UserError, match="--by source: a mixture gives every example its own `source`"):
        inspect_data(DataConfig(data=f"{a}:1,{b}:1", cache_dir=str(tmp_path / "cache")), None, by="source")


def test_a_source_of_ratio_0_is_held_out_only_and_eval_data_has_no_source(two_sources, qwen_tokenizer, tmp_path):
    a, b = two_sources
    data = prepare_data(DataConfig(data=f"{a}:1,{b}:0", eval_size=2, cache_dir=str(tmp_path / "cache")),
                        qwen_tokenizer)
    assert Counter(data.train["source"]) == {0: 8}  # a's 8 training examples, once: b's 28 count for nothing
    assert Counter(data.eval["source"]) == {0: 2, 1: 2}  # b is still evaluated (eval_source_b_loss)
    data = prepare_data(DataConfig(data=f"{a}:1,{b}:1", eval_data=str(a), cache_dir=str(tmp_path / "cache")),
                        qwen_tokenizer)
    assert Counter(data.train["source"]) == {0: 20, 1: 20} and "source" not in data.eval.column_names

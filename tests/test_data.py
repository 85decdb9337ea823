"""sft/data.py: loading and validation, the split, and tokenization with loss weights."""

import json

import pandas as pd
import pytest

from sft.data import (
    IGNORE_INDEX,
    DataConfig,
    fingerprint_rows,
    load_rows,
    split_indices,
    tokenize_example,
    tokenize_rows,
)
from sft.prompts import render_prompt

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Sort the words.", "input": "b a c", "output": "a b c"},
]


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ---------------------------------------------------------------- known answers, no tokenizer needed

EOS = 9


@pytest.mark.parametrize("w", [0.0, 0.1, 1.0])
def test_labels_and_weights_known_answer(w):
    ex, status = tokenize_example([1, 2, 3], [4, 5], EOS, w, max_length=64)
    assert status == "ok"
    assert ex["input_ids"] == [1, 2, 3, 4, 5, EOS]
    assert ex["loss_weights"] == [w, w, w, 1.0, 1.0, 1.0]
    assert ex["response_mask"] == [0, 0, 0, 1, 1, 1]
    # Labels are not shifted (the model shifts them) and are -100 exactly where the weight is 0.
    prompt_labels = [IGNORE_INDEX] * 3 if w == 0 else [1, 2, 3]
    assert ex["labels"] == prompt_labels + [4, 5, EOS]
    assert ex["length"] == 6


def test_truncation_keeps_the_response_and_cuts_the_prompt_middle():
    prompt = list(range(100, 160))  # 60 prompt tokens
    ex, status = tokenize_example(prompt, [1, 2, 3], EOS, 0.0, max_length=40)
    assert status == "prompt_trimmed"
    assert len(ex["input_ids"]) == 40
    assert ex["input_ids"][-4:] == [1, 2, 3, EOS]  # the whole response and its EOS survive
    kept_prompt = ex["input_ids"][:36]
    assert kept_prompt[-16:] == prompt[-16:]  # the "### Response:" cue stays next to the response
    assert kept_prompt[:20] == prompt[:20]  # and the instruction at the start


def test_truncation_never_leaves_an_empty_response():
    ex, status = tokenize_example(list(range(100, 200)), list(range(300, 400)), EOS, 0.0, max_length=64)
    assert status == "both_trimmed"
    n_resp = sum(ex["response_mask"])
    assert n_resp == 32  # at least half the window
    assert EOS not in ex["input_ids"]  # a cut response must not teach the model to stop there
    assert sum(ex["loss_weights"]) == n_resp


def test_truncation_drop_policy():
    ex, status = tokenize_example(list(range(100)), [1], EOS, 0.0, max_length=50, truncation="drop")
    assert ex is None and status == "dropped"


# ---------------------------------------------------------------- loading: formats, mapping, errors


def test_formats_load_the_same_rows(tmp_path):
    write_json(tmp_path / "a.json", ROWS)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    pd.DataFrame(ROWS).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    for name in ("a.json", "b.jsonl", "c.csv", "d.parquet"):
        rows, report = load_rows(tmp_path / name)
        assert rows == ROWS, name
        assert report.rows_read == report.rows_kept == 2
    rows, report = load_rows(tmp_path)  # a folder: every data file in it, in sorted order
    assert rows == ROWS * 4 and report.rows_kept == 8


def test_column_mapping_aliases_and_explicit(tmp_path):
    alias = [{"instruction": "x", "context": "c", "response": "y", "id": 7, "category": "qa"}]
    rows, report = load_rows(write_json(tmp_path / "alias.json", alias))
    assert rows == [{"instruction": "x", "input": "c", "output": "y"}]
    assert report.ignored_columns == ["id", "category"]  # extra columns are named, never an error
    custom = [{"q": "x", "a": "y"}]
    rows, _ = load_rows(write_json(tmp_path / "custom.json", custom), {"q": "instruction", "a": "output"})
    assert rows == [{"instruction": "x", "input": "", "output": "y"}]


def test_missing_input_and_null_input_mean_no_input(tmp_path):
    rows, _ = load_rows(write_json(tmp_path / "d.json", [{"instruction": "x", "output": "y"},
                                                          {"instruction": "x", "input": None, "output": "y"}]))
    assert [r["input"] for r in rows] == ["", ""]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"[{\"instruction\": \"x\", \"output\": \"y\"},\n {oops}]", r"bad\.json: invalid JSON at line 2"),
        (b"", r"bad\.json: the file is empty"),
        (b"  \n", r"bad\.json: the file is empty"),
        (b'{"instruction": "x"}', r"expected a JSON list"),
        (b'[{"instruction": "x", "input": ""}]', r"no column for output.*--column-map"),
        (b'[{"instruction": "x", "output": "y"}, {"instruction": "x", "output": ""}]',
         r"bad\.json: row 2, field output: is empty"),
        (b'[{"instruction": "x", "output": 5}]', r"row 1, field output: must be a string, got int"),
        (b'[{"instruction": null, "output": "y"}]', r"row 1, field instruction: is null"),
        (b'[{"instruction": "x", "output": "y", "input": 3}]', r"row 1, field input: must be a string or missing"),
        (b'[{"instruction": "x", "output": "y"}, {"instruction": "z"}]', r"row 2, field output: is missing"),
        (b'["just text"]', r"row 1, field \(row\): is a str"),
        (b'[{"instruction": "caf\xe9", "output": "y"}]', r"line 1 \(byte 21\) is not valid UTF-8.*iconv"),
    ],
)
def test_bad_input_names_file_row_field_and_fix(tmp_path, content, pattern):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern):
        load_rows(path)


def test_unknown_columns_only_error_when_required_are_missing(tmp_path):
    path = write_json(tmp_path / "u.json", [{"text": "hello", "label": 1}])
    with pytest.raises(ValueError, match=r"The columns are: text, label"):
        load_rows(path)


def test_bad_jsonl_line_and_csv_row_numbers(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x", \n')
    with pytest.raises(ValueError, match=r"b\.jsonl: line 2: invalid JSON"):
        load_rows(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text("instruction,input,output\nx,,y\nx,,\n")
    with pytest.raises(ValueError, match=r"c\.csv: row 2 \(line 3\), field output: is empty"):
        load_rows(tmp_path / "c.csv")


def test_skip_policy_counts_every_dropped_row_by_reason(tmp_path):
    (tmp_path / "b.jsonl").write_text(
        "\n".join([
            json.dumps({"instruction": "x", "output": "y"}),
            json.dumps({"instruction": "x", "output": ""}),
            json.dumps({"instruction": "x", "output": None}),
            "{not json",
            json.dumps({"instruction": "x", "output": ""}),
            json.dumps({"instruction": "x", "output": "z"}),
        ])
    )
    rows, report = load_rows(tmp_path / "b.jsonl", on_bad_rows="skip")
    assert len(rows) == 2
    assert report.rows_read == 6
    assert dict(report.rows_dropped) == {"output is empty": 2, "output is null": 1, "invalid JSON": 1}
    assert any(w.endswith("b.jsonl: line 2: output is empty") for w in report.first_bad_rows)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no such file or folder"):
        load_rows(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="holds no data file"):
        load_rows(tmp_path)


def test_split_is_a_function_of_data_and_seed_only():
    train, held = split_indices(1000, 0.05, seed=3)
    assert len(held) == 50 and len(train) == 950
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(range(1000))
    again = split_indices(1000, 0.05, seed=3)
    assert (again[0] == train).all() and (again[1] == held).all()
    assert not (split_indices(1000, 0.05, seed=4)[1] == held).all()
    with pytest.raises(ValueError, match="at least one row"):
        split_indices(10, 10, seed=0)


def test_prompt_loss_weight_is_checked():
    with pytest.raises(ValueError, match=r"prompt_loss_weight must be in \[0, 1\]"):
        DataConfig(prompt_loss_weight=1.5)


# ---------------------------------------------------------------- the real Qwen2.5 vocabulary (../shared)


def test_boundary_is_exact_with_qwen_tokenizer(qwen_tokenizer, tmp_path):
    # "### Response:\n" followed by a response starting with a newline or a space is where
    # BPE would merge across the boundary if prompt and response were tokenized together.
    rows = [
        {"instruction": "Say it.", "input": "", "output": "\nIndented answer"},
        {"instruction": "Say it.", "input": "ctx", "output": "   spaced"},
        {"instruction": "Add.", "input": "", "output": "42"},
    ]
    for w in (0.0, 1.0):
        cfg = DataConfig(prompt_loss_weight=w, cache_dir=str(tmp_path))
        ds, _ = tokenize_rows(rows, qwen_tokenizer, cfg)
        for row, ex in zip(rows, ds):
            prompt_ids = qwen_tokenizer(render_prompt("alpaca", row["instruction"], row["input"]),
                                        add_special_tokens=False)["input_ids"]
            n_p = len(prompt_ids)
            assert ex["input_ids"][:n_p] == prompt_ids  # the prompt's tokens are a prefix of the example's
            assert ex["response_mask"] == [0] * n_p + [1] * (len(ex["input_ids"]) - n_p)
            assert qwen_tokenizer.decode(ex["input_ids"][n_p:-1]) == row["output"]
    joint = qwen_tokenizer(render_prompt("alpaca", "Say it.") + "\nIndented answer")["input_ids"]
    separate = ds[0]["input_ids"][:-1]
    assert joint != separate  # the merge that tokenizing apart avoids really happens here


def test_eos_is_trained_although_it_is_the_pad_id(qwen_tokenizer, tmp_path):
    from sft.collate import WeightedLMCollator

    assert qwen_tokenizer.eos_token_id == qwen_tokenizer.pad_token_id == 151643
    ds, _ = tokenize_rows(ROWS, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path)))
    for ex in ds:
        assert ex["input_ids"][-1] == 151643 and ex["labels"][-1] == 151643 and ex["loss_weights"][-1] == 1.0
    batch = WeightedLMCollator(pad_token_id=qwen_tokenizer.pad_token_id)([ds[0], ds[1]])
    short = 0 if len(ds[0]["input_ids"]) < len(ds[1]["input_ids"]) else 1
    n = len(ds[short]["input_ids"])
    # The real EOS is attended to and labelled; only the padding after it is not.
    assert batch["attention_mask"][short, n - 1] == 1 and batch["labels"][short, n - 1] == 151643
    assert (batch["attention_mask"][short, n:] == 0).all() and (batch["labels"][short, n:] == -100).all()
    assert (batch["input_ids"][short, n:] == 151643).all()


def test_truncation_keeps_response_tokens_with_qwen(qwen_tokenizer, tmp_path):
    rows = [{"instruction": "Summarise.", "input": "word " * 400, "output": "A short summary."},
            {"instruction": "Write.", "input": "", "output": "long " * 400}]
    ds, report = tokenize_rows(rows, qwen_tokenizer, DataConfig(max_length=128, cache_dir=str(tmp_path)))
    assert report.examples_truncated == 2 and report.examples_dropped_too_long == 0
    first, second = ds[0], ds[1]
    assert len(first["input_ids"]) <= 128 and len(second["input_ids"]) <= 128
    assert qwen_tokenizer.decode([t for t, r in zip(first["input_ids"], first["response_mask"]) if r]) == (
        "A short summary.<|endoftext|>")
    n_prompt = len(second["response_mask"]) - sum(second["response_mask"])
    assert n_prompt < 64 and sum(second["response_mask"]) == 128 - n_prompt  # a short prompt is kept whole
    assert qwen_tokenizer.eos_token_id not in second["input_ids"]  # the cut response has no EOS
    assert qwen_tokenizer.decode(first["input_ids"]).count("### Response:") == 1


def test_gsm8k_loads_and_tokenizes_with_cache(qwen_tokenizer, gsm8k_path, tmp_path):
    rows, report = load_rows(gsm8k_path)
    assert report.rows_kept == 7473 and not report.rows_dropped
    cfg = DataConfig(cache_dir=str(tmp_path))
    ds, _ = tokenize_rows(rows[:500], qwen_tokenizer, cfg)
    assert list(tmp_path.glob("tokenized-train-*.arrow"))  # cached on disk, keyed by data and settings
    again, _ = tokenize_rows(rows[:500], qwen_tokenizer, cfg)
    assert again["input_ids"] == ds["input_ids"]
    assert fingerprint_rows(rows[:500]) != fingerprint_rows(rows[1:501])

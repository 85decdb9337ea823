"""sft.data: loading and validation of rows (formats, column mapping, errors, skip policy), the split, and the
data config's checks. (Tokenization with loss weights is tested in tests/core/test_tokenize.py.)"""

import json

import pandas as pd
import pytest

from sft.data.config import DataConfig
from sft.data.rows import load_rows
from sft.data.splits import split_indices

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Sort the words.", "input": "b a c", "output": "a b c"},
]


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path

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
    path = write_json(tmp_path / "u.json", [{"body": "hello", "label": 1}])
    with pytest.raises(ValueError, match=r"The columns are: body, label.* plain text in a `text` column"):
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


# ---------------------------------------------------------------- plain text ({"text": ...})

TEXTS = [{"text": "Paris is the capital of France."}, {"text": "Two plus three is five."}]


def test_plain_text_rows_load_from_every_format_and_a_folder(tmp_path):
    write_json(tmp_path / "a.json", TEXTS)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({**r, "id": i}) for i, r in enumerate(TEXTS)) + "\n")
    pd.DataFrame(TEXTS).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame(TEXTS).to_parquet(tmp_path / "d.parquet")
    for name in ("a.json", "b.jsonl", "c.csv", "d.parquet"):
        rows, report = load_rows(tmp_path / name)
        assert rows == TEXTS, name
        assert report.column_mapping == {"text": "text"}
    assert load_rows(tmp_path / "b.jsonl")[1].ignored_columns == ["id"]
    assert load_rows(tmp_path)[0] == TEXTS * 4
    rows, _ = load_rows(write_json(tmp_path / "e.json", [{"body": "x y"}]), column_map={"body": "text"})
    assert rows == [{"text": "x y"}]


def test_a_file_mixing_plain_text_and_instruction_rows_names_the_file_and_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*TEXTS, ROWS[0]]))
    with pytest.raises(ValueError, match=rf"{path}: line 3: is an instruction row .* while {path}: line 1 is plain "
                                         r"text .* separate files"):
        load_rows(path)
    pd.DataFrame([{"text": "abc", "instruction": "", "output": ""},
                  {"text": "", "instruction": "i", "output": "o"}]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"m.csv: row 2 \(line 3\): is an instruction row"):
        load_rows(tmp_path / "m.csv")
    folder = tmp_path / "folder"
    folder.mkdir()
    write_json(folder / "a.json", TEXTS)
    write_json(folder / "b.json", ROWS)
    with pytest.raises(ValueError, match="b.json: holds instruction rows while the files before it hold plain text"):
        load_rows(folder)


def test_alpacas_own_text_column_leaves_the_rows_instruction_rows(tmp_path):
    # tatsu-lab/alpaca ships a `text` column (the rendered prompt) beside instruction and output
    rows, report = load_rows(write_json(tmp_path / "a.json", [{**r, "text": "rendered"} for r in ROWS]))
    assert rows == ROWS and report.ignored_columns == ["text"]


def test_a_bad_text_row_names_its_field_or_is_counted(tmp_path):
    path = write_json(tmp_path / "t.json", [TEXTS[0], {"text": "  "}, {"text": 5}])
    with pytest.raises(ValueError, match=r"t.json: row 2, field text: is empty"):
        load_rows(path)
    rows, report = load_rows(path, on_bad_rows="skip")
    assert rows == [TEXTS[0]] and dict(report.rows_dropped) == {"text is empty": 1, "text must be a string, got int 5": 1}

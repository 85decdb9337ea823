"""sft.models.checks.data_files: what in a user's Dataset/ folder counts as data."""

import pytest

from sft.data.files import data_files


def test_the_demos_files_are_not_the_users_data(tmp_path):
    root = tmp_path / "Dataset"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "train.jsonl").write_text('{"instruction": "x", "input": "", "output": "y"}\n')
    (root / "demo.lock").write_text("")  # left by the demo's FileLock after `make demo`
    (root / "README.md").write_text("put your data here\n")
    assert data_files(root) == []  # nothing of the user's: the preset falls back to the hub id
    (root / "alpaca_data_cleaned.json").write_text("[]")
    assert data_files(root) == [root / "alpaca_data_cleaned.json"]


def test_a_folder_of_unusable_files_is_an_error(tmp_path):
    (tmp_path / "alpaca_data_cleaned.json.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="holds no usable data file.*alpaca_data_cleaned.json.gz"):
        data_files(tmp_path)

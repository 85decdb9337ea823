"""`python -m sft`: inspect-data figures, exit code 2 with one paragraph for user errors."""

import json
import subprocess
import sys

import pytest

from conftest import QWEN_TOKENIZER, ROOT


def run_sft(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sft", *args], capture_output=True, text=True, cwd=cwd)


def test_inspect_data_json_on_gsm8k(gsm8k_path, qwen_tokenizer, tmp_path):
    res = run_sft("inspect-data", "--data", str(gsm8k_path), "--tokenizer", str(QWEN_TOKENIZER), "--json",
                  "--show", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["rows_read"] == stats["rows_kept"] == 7473 and stats["rows_dropped"] == {}
    assert stats["examples_truncated"] == 0
    # The figures ../shared/README.md gives for this file and tokenizer.
    assert round(stats["length_mean"]) == 170 and round(stats["length_p99"]) == 334 and stats["length_max"] == 463
    share = stats["response_tokens"] / (stats["prompt_tokens"] + stats["response_tokens"])
    assert 0.50 < share < 0.52
    assert stats["generation_ratio_Rg"] == pytest.approx(stats["response_tokens"] / stats["prompt_tokens"])
    assert 0 < stats["instruction_output_ratio"] < 2
    assert "[[weight 0:" in res.stderr and "[[response, weight 1:" in res.stderr  # markers, not colours, off a tty


def test_user_errors_exit_2_with_one_paragraph(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": ""}]')
    res = run_sft("inspect-data", "--data", str(bad), "--tokenizer", "model/nope", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "does not exist" in res.stderr
    res = run_sft("train", "--preset", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "Unknown preset 'nope'" in res.stderr and "Traceback" not in res.stderr
    res = run_sft("train", "--no-such-setting", "3", cwd=tmp_path)
    assert res.returncode == 2 and "Unknown setting 'no_such_setting'" in res.stderr


def test_bad_rows_exit_2_or_are_counted(tmp_path, qwen_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x", "output": ""}\n')
    res = run_sft("inspect-data", "--data", str(bad), "--tokenizer", str(QWEN_TOKENIZER), cwd=tmp_path)
    assert res.returncode == 2 and "bad.jsonl: line 2, field output: is empty" in res.stderr
    res = run_sft("inspect-data", "--data", str(bad), "--tokenizer", str(QWEN_TOKENIZER), "--on-bad-rows", "skip",
                  "--json", cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["rows_dropped"] == {"output is empty": 1}

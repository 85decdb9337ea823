"""The benchmark scripts run (tiny settings, CPU): their figures come from real code paths."""

import os
import re
import subprocess
import sys

import pytest

from conftest import GSM8K, QWEN_TOKENIZER, ROOT

pytestmark = pytest.mark.slow


def run_script(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env)


def test_gpu_throughput_script_runs_small_on_the_cpu():
    if not (GSM8K.exists() and QWEN_TOKENIZER.exists()):
        pytest.skip("needs ../shared (GSM8K and the Qwen2.5 tokenizer) beside the repo")
    res = run_script("bench/gpu_throughput.py", "--small", "--steps", "2", "--tokens-per-step", "1024")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if "tokens/s, MFU" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["masked", "unmasked"]
    assert all(float(re.search(r"([\d,]+) tokens/s", line).group(1).replace(",", "")) > 0 for line in lines)


def test_preprocess_benchmark_prints_its_rate():
    if not (GSM8K.exists() and QWEN_TOKENIZER.exists()):
        pytest.skip("needs ../shared (GSM8K and the Qwen2.5 tokenizer) beside the repo")
    res = run_script("bench/preprocess.py", "--repeats", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(r"7473 rows: .* examples/s", res.stdout)

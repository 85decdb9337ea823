"""The benchmark scripts run (tiny settings, CPU): their figures come from real code paths."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from helpers import GSM8K, QWEN_TOKENIZER, ROOT

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
    # On the CPU without --peers: the project's Trainer only, in both regimes.
    assert [line.split(":")[0].split() for line in lines] == [["masked", "sft", "(selective", "head)"],
                                                               ["unmasked", "sft", "(selective", "head)"]]
    assert all(float(re.search(r"([\d,]+) tokens/s", line).group(1).replace(",", "")) > 0 for line in lines)


def test_real_vocab_benchmark_runs_small_and_its_configurations_agree():
    if not (GSM8K.exists() and QWEN_TOKENIZER.exists()):
        pytest.skip("needs ../shared (GSM8K and the Qwen2.5 tokenizer) beside the repo")
    res = run_script("bench/real_vocab.py", "--smoke")
    # Exit 0 means every configuration collated the same tokens and each regime's losses agreed.
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [line.split(" | ") for line in res.stdout.splitlines() if line.startswith("| ") and " GiB | " in line]
    seen = {(r[0].lstrip("| "), r[1], r[2]) for r in rows}
    for regime in ("masked (w = 0)", "unmasked (w = 1)", "w = 0.1"):
        assert {(regime, "sft", "selective head (default)"), (regime, "sft", "full logits")} <= seen
    assert all(float(r[3].replace(",", "")) > 0 and float(r[5].split()[0]) > 0 for r in rows)  # tokens/s, GiB
    assert len(re.findall(r"within the tolerance", res.stdout)) == 3
    has_trl = importlib.util.find_spec("trl") is not None
    assert any(r[1] == "trl" for r in rows) == has_trl
    assert has_trl or "TRL not run" in res.stdout
    assert re.search(r"plan's formula at this run, selective head .*: [\d.]+ GiB", res.stdout)
    assert len(re.findall(r"measured above the libraries / plan = [\d.]+", res.stdout)) == 6


def test_preprocess_benchmark_prints_its_rate():
    if not (GSM8K.exists() and QWEN_TOKENIZER.exists()):
        pytest.skip("needs ../shared (GSM8K and the Qwen2.5 tokenizer) beside the repo")
    res = run_script("bench/preprocess.py", "--repeats", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(r"7473 rows: .* examples/s", res.stdout)

"""configs/accelerate/fsdp.yaml launched for real on 2 CPU processes (gloo): it trains, checkpoints and resumes.

What the installed accelerate does with it on the CPU is part of the test: accelerate's `AcceleratorState` turns
`ACCELERATE_USE_FSDP` into `DistributedType.FSDP` only for GPU-like devices (MULTI_GPU, NPU, XPU, ...), never
for MULTI_CPU, so on the CPU the FSDP config runs as plain data parallel (each process holding the whole model).
The run says so in a warning, and the test checks that the run is otherwise sound: the loss of DDP's 2-process
run, one checkpoint saved, and a resume from it. Sharding itself needs GPUs (docs/distributed.md).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, demo_cli_args, demo_config
from sft.runs.checkpoints import last_complete_checkpoint, list_checkpoints
from sft.runs.layout import run_dir

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
COMMON = ["--seed", "3", "--logging-steps", "1", "--eval-steps", "1000", "--prompt-loss-weight", "0.1",
          "--optim", "sgd", "--learning-rate", "0.5", "--warmup-ratio", "0", "--lr-scheduler-type", "constant",
          "--per-device-train-batch-size", "4", "--save-steps", "2"]


def accelerate(config, port):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate" / config),
            "--num_processes", "2", "--main_process_port", str(port)]


def launch(root, prefix, run, *args, cwd):
    res = subprocess.run([*prefix, "-m", "sft", "train", *demo_cli_args(root), *COMMON, "--run-name", run, *args],
                         env=ENV, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def losses(root, run):
    history = json.loads((run_dir(demo_config(root, run_name=run)) / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


def test_the_fsdp_config_trains_saves_and_resumes_on_two_cpu_processes(demo_root, tmp_path):
    first = launch(demo_root, accelerate("fsdp.yaml", 29561), "fsdp", "--max-steps", "2", cwd=tmp_path)
    # Exactly why it is not sharded here: accelerate keeps MULTI_CPU on the CPU, and the run says so.
    assert "runs FSDP only on GPUs" in first.stderr and "DistributedType.MULTI_CPU" in first.stderr
    out = run_dir(demo_config(demo_root, run_name="fsdp"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and last_complete_checkpoint(out)
    launch(demo_root, accelerate("fsdp.yaml", 29562), "fsdp", "--max-steps", "4", "--resume", cwd=tmp_path)
    launch(demo_root, accelerate("ddp.yaml", 29563), "ddp", "--max-steps", "4", cwd=tmp_path)
    assert len(losses(demo_root, "fsdp")) == 4  # steps 1-2, then 3-4 after the resume
    assert losses(demo_root, "fsdp") == pytest.approx(losses(demo_root, "ddp"), rel=1e-4)
    a, b = (load_file(run_dir(demo_config(demo_root, run_name=r)) / "model.safetensors") for r in ("fsdp", "ddp"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)

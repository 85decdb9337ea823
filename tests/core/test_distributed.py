"""Two real processes (torchrun / accelerate, gloo on the CPU) against one: the same loss and weights."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, demo_cli_args, demo_config
from sft.runs.layout import run_dir, tensorboard_dir

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
COMMON = ["--seed", "3", "--logging-steps", "1", "--eval-steps", "1000", "--prompt-loss-weight", "0.1",
          "--optim", "sgd", "--learning-rate", "0.5", "--warmup-ratio", "0", "--lr-scheduler-type", "constant"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]


def launch(root, prefix, run, *args, cwd):
    cmd = [*prefix, "-m", "sft", "train", *demo_cli_args(root), *COMMON, "--run-name", run, *args]
    if prefix[-1] == "sys":  # plain python, one process
        cmd = [sys.executable, *cmd[len(prefix):]]
    res = subprocess.run(cmd, env=ENV, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def weights(root, run):
    return load_file(run_dir(demo_config(root, run_name=run)) / "model.safetensors")


def history(root, run):
    return json.loads((run_dir(demo_config(root, run_name=run)) / "log_history.json").read_text())


def test_two_processes_equal_one_with_twice_the_batch(demo_root, tmp_path):
    steps = ["--max-steps", "3", "--save-steps", "3", "--overwrite"]
    two = launch(demo_root, TORCHRUN, "ddp2", "--per-device-train-batch-size", "4", *steps, cwd=tmp_path)
    launch(demo_root, ["sys"], "ddp1", "--per-device-train-batch-size", "8", *steps, cwd=tmp_path)
    loss2 = [h["loss"] for h in history(demo_root, "ddp2") if "loss" in h]
    loss1 = [h["loss"] for h in history(demo_root, "ddp1") if "loss" in h]
    assert len(loss1) == 3 and loss2 == pytest.approx(loss1, rel=1e-5)
    for key in ("template_loss", "user_loss", "assistant_loss"):  # the loss per role, summed over processes
        per_role2 = [h[key] for h in history(demo_root, "ddp2") if "loss" in h]
        assert per_role2 == pytest.approx([h[key] for h in history(demo_root, "ddp1") if "loss" in h], rel=1e-5), key
    w2, w1 = weights(demo_root, "ddp2"), weights(demo_root, "ddp1")
    for k in w1:  # float32, gloo all-reduce sums in another order: equal to ~1e-6 relative
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    # Preprocessing ran once: rank 0 tokenized, rank 1 read rank 0's cache.
    assert two.stderr.count("train split, 320 examples, tokenized now") <= 1
    assert "rank 1: train split, 320 examples, tokenized earlier" in two.stderr
    # Only rank 0 wrote logs, checkpoints and the manifest.
    cfg = demo_config(demo_root, run_name="ddp2")
    writers = {f.name.split(".")[-2] for f in tensorboard_dir(cfg).glob("events.out.tfevents*")}  # writer PIDs
    assert len(writers) == 1
    assert (run_dir(cfg) / "run_manifest.json").is_file()


def test_checkpoints_move_between_world_sizes(demo_root, tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "configs/accelerate/ddp.yaml"), "--num_processes", "2", "--main_process_port", "29534"]
    # 2 processes (accelerate launch) write checkpoint-2; 1 process resumes it to step 4.
    launch(demo_root, accelerate, "move21", "--per-device-train-batch-size", "4", "--max-steps", "2",
           "--save-steps", "2", "--overwrite", cwd=tmp_path)
    launch(demo_root, ["sys"], "move21", "--per-device-train-batch-size", "8", "--max-steps", "4",
           "--save-steps", "2", "--resume", cwd=tmp_path)
    assert history(demo_root, "move21")[-1]["step"] == 4
    # And the reverse: 1 process to checkpoint-2, 2 processes (torchrun) to step 4.
    launch(demo_root, ["sys"], "move12", "--per-device-train-batch-size", "8", "--max-steps", "2",
           "--save-steps", "2", "--overwrite", cwd=tmp_path)
    launch(demo_root, TORCHRUN, "move12", "--per-device-train-batch-size", "4", "--max-steps", "4",
           "--save-steps", "2", "--resume", cwd=tmp_path)
    assert history(demo_root, "move12")[-1]["step"] == 4
    # Same global batch, same data order, same seed: the two paths end at the same weights.
    w21, w12 = weights(demo_root, "move21"), weights(demo_root, "move12")
    for k in w21:
        torch.testing.assert_close(w21[k], w12[k], rtol=1e-4, atol=1e-6)

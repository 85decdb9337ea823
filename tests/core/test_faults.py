"""Faults injected into real (tiny) training runs on the CPU: nothing of a run folder is lost or mixed up (issue #31).

kill -9 at random points of checkpoint writes, several times over, then a bit-identical finish; a full disk
(ENOSPC, monkeypatched) mid-run and before the first write; two concurrent runs of one name; a damaged newest
checkpoint; changed settings on resume; --overwrite whose new start fails; --resume on a pruned finished run;
whole-run summaries after a crash and a resume.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers import ROOT, demo_cli_args, demo_config
from sft.core import train as train_module
from sft.core.train import train
from sft.runs.checkpoints import last_complete_checkpoint, list_checkpoints
from sft.runs.layout import run_dir, tensorboard_dir
from sft.runs.manifest import read_manifest
from sft.runs.safety import RunLock, lock_path

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
SHORT = dict(max_steps=4, save_steps=2, eval_steps=100, logging_steps=1)


class CrashAt(TrainerCallback):
    """Raise right after the checkpoint of `step` is saved: a crash with that checkpoint on disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"injected crash after step {self.step}")


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def crashed_run(root, name, step=2, **settings):
    """A run that crashed after saving checkpoint-`step` (manifest: training)."""
    with pytest.raises(RuntimeError, match="injected crash"):
        train(demo_config(root, run_name=name, **{**SHORT, **settings}), callbacks=[CrashAt(step)])
    out = run_dir(demo_config(root, run_name=name))
    assert read_manifest(out)["status"] == "training" and not lock_path(out).exists()
    return out


def test_kill_9_at_random_points_of_checkpoint_writes_loses_nothing(demo_root, tmp_path):
    def cli(name, *extra):
        return [sys.executable, "-m", "sft", "train", *demo_cli_args(demo_root), "--run-name", name, "--seed", "3",
                "--max-steps", "12", "--save-steps", "1", "--eval-steps", "1000", "--logging-steps", "4", *extra]

    subprocess.run(cli("k-straight"), check=True, env=ENV, capture_output=True, cwd=tmp_path)
    out = run_dir(demo_config(demo_root, run_name="k-killed"))
    rng, kills = random.Random(31), 0
    for attempt in range(3):  # every checkpoint is a write that may be cut: kill at a random moment, three times
        proc = subprocess.Popen(cli("k-killed"), env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list_checkpoints(out):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        err = proc.communicate()[1].decode()
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        assert lock_path(out).exists() == (proc.returncode == -signal.SIGKILL)  # kill -9 leaves a stale lock...
        if proc.returncode == 0:
            break
    assert kills >= 1, "training finished before any kill"
    done = subprocess.run(cli("k-killed"), env=ENV, capture_output=True, cwd=tmp_path, text=True)
    assert done.returncode in (0, 2), done.stderr[-2000:]  # 2: it had already finished on the last try
    if done.returncode == 2:
        assert "finished run" in done.stderr
    assert not lock_path(out).exists()  # ... which the next run takes over, and releases
    straight = load_file(run_dir(demo_config(demo_root, run_name="k-straight")) / "model.safetensors")
    resumed = load_file(out / "model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # bit for bit, however often it was killed
    assert read_manifest(out)["status"] == "complete"


def test_a_full_disk_keeps_the_last_checkpoint_and_a_new_run_leaves_nothing(demo_root, monkeypatch):
    real_save = torch.save

    def full_at_second_save(obj, f, *a, **k):  # the optimizer of checkpoint-4 cannot be written
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_at_second_save)
    cfg = demo_config(demo_root, run_name="full", **SHORT)
    with pytest.raises(ValueError, match=r"No space left on device .*checkpoint-2, is kept.*--model-root"):
        train(cfg)
    assert last_complete_checkpoint(run_dir(cfg)).name == "checkpoint-2" and not lock_path(run_dir(cfg)).exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert train(demo_config(demo_root, run_name="full", **SHORT)).state.global_step == 4  # resumed, finished

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "run_manifest.tmp")

    monkeypatch.setattr(train_module, "write_manifest", full)
    cfg = demo_config(demo_root, run_name="full-at-start", **SHORT)
    with pytest.raises(ValueError, match="had saved no checkpoint yet"):
        train(cfg)
    assert not run_dir(cfg).exists() and not tensorboard_dir(cfg).exists() and not lock_path(run_dir(cfg)).exists()


def test_two_concurrent_runs_of_one_name(demo_root, tmp_path):
    cfg = demo_config(demo_root, run_name="twin")
    with RunLock(run_dir(cfg)):  # a run in progress, held by this (live) process
        refused = subprocess.run([sys.executable, "-m", "sft", "train", *demo_cli_args(demo_root), "--run-name",
                                  "twin", "--max-steps", "2"], env=ENV, capture_output=True, text=True, cwd=tmp_path)
        assert refused.returncode == 2 and f"pid {os.getpid()}" in refused.stderr, refused.stderr[-2000:]
        assert not run_dir(cfg).exists()
    cmd = [sys.executable, "-m", "sft", "train", *demo_cli_args(demo_root), "--run-name", "twin2", "--max-steps",
           "6", "--save-steps", "2", "--eval-steps", "1000"]
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], [e[-1500:] for _, e in results]
    refusal = next(e for c, e in results if c == 2)
    assert "being written by another training process" in refusal or "finished run" in refusal
    winner = 1 + [c for c, _ in results].index(0)
    assert read_manifest(run_dir(demo_config(demo_root, run_name="twin2")))["config"]["train"]["seed"] == winner


def test_a_damaged_newest_checkpoint_is_skipped_by_name(demo_root, caplog):
    out = crashed_run(demo_root, "damaged", step=4)
    (out / "checkpoint-4" / "trainer_state.json").write_text("")  # emptied: the write that was cut
    with caplog.at_level("WARNING", logger="sft"):
        trainer = train(demo_config(demo_root, run_name="damaged", **SHORT))
    assert "skipping" in caplog.text and "checkpoint-4" in caplog.text and "does not parse" in caplog.text
    assert "resuming" in caplog.text and "from checkpoint-2" in caplog.text
    assert trainer.state.global_step == 4 and read_manifest(out)["status"] == "complete"


def test_changed_settings_on_resume_are_refused_or_applied(demo_root):
    out = crashed_run(demo_root, "changed")
    before = files(out)
    with pytest.raises(ValueError, match=r"learning_rate: saved 0.003, now 1e-05.*global batch: saved 8 per device "
                                         r"x 1 accumulation x 1 process\(es\) = 8, now 4 per device.*Nothing was changed"):
        train(demo_config(demo_root, run_name="changed", **{**SHORT, "learning_rate": 1e-5,
                                                             "per_device_train_batch_size": 4}))
    assert files(out) == before and not lock_path(out).exists()
    train(demo_config(demo_root, run_name="changed", **{**SHORT, "logging_steps": 2}))  # harmless: applied
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["config"]["train"]["logging_steps"] == 2
    assert manifest["config"]["train"]["learning_rate"] == 3e-3


def test_overwrite_whose_new_start_fails_loses_nothing(demo_root, monkeypatch):
    cfg = demo_config(demo_root, run_name="ow", **SHORT)
    train(cfg)
    before = files(run_dir(cfg))

    def broken(*a, **k):
        raise RuntimeError("injected: the model failed to load")

    monkeypatch.setattr(train_module, "build_model", broken)
    with pytest.raises(RuntimeError, match="injected"):
        train(demo_config(demo_root, run_name="ow", overwrite=True, **SHORT))
    monkeypatch.undo()
    assert files(run_dir(cfg)) == before  # every checkpoint there, the manifest still "complete" and true
    with pytest.raises(RuntimeError, match="injected crash"):  # the new run fails before its first checkpoint
        train(demo_config(demo_root, run_name="ow", overwrite=True, **SHORT), callbacks=[CrashBefore()])
    assert files(run_dir(cfg)) == before
    train(demo_config(demo_root, run_name="ow", overwrite=True, **{**SHORT, "seed": 5}))
    assert read_manifest(run_dir(cfg))["config"]["train"]["seed"] == 5
    assert not list(run_dir(cfg).parent.glob("ow.old-*"))  # the old run, moved aside, went once the new one saved


class CrashBefore(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        raise RuntimeError("injected crash before the first checkpoint")


def test_resume_on_a_finished_run_with_pruned_checkpoints_is_refused(demo_root):
    cfg = demo_config(demo_root, run_name="pruned", **SHORT)
    train(cfg)
    for ckpt in list_checkpoints(run_dir(cfg)):
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    before = files(run_dir(cfg))
    with pytest.raises(ValueError, match="finished run whose checkpoints were pruned.*nothing was changed"):
        train(demo_config(demo_root, run_name="pruned", resume=True, **SHORT))
    assert files(run_dir(cfg)) == before


def test_summaries_cover_the_whole_run_after_a_resume(demo_root):
    straight = train(demo_config(demo_root, run_name="sum-straight", **SHORT))
    crashed_run(demo_root, "sum-resumed")
    resumed = train(demo_config(demo_root, run_name="sum-resumed", **SHORT))
    a = read_manifest(run_dir(demo_config(demo_root, run_name="sum-straight")))["results"]["train"]
    b = read_manifest(run_dir(demo_config(demo_root, run_name="sum-resumed")))["results"]["train"]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)  # not just the resumed half
    assert b["train_tokens_per_second"] > 0 and b["train_run_seconds"] > 0
    first = [h for h in resumed.state.log_history if "train_tokens_per_second" in h and h.get("step", 0) > 2][0]
    assert first["train_tokens_per_second"] < 10 * max(
        h["train_tokens_per_second"] for h in straight.state.log_history if "train_tokens_per_second" in h)


def test_run_names_never_nest_in_either_direction(demo_root):
    """`--run-name a/b` then `a --overwrite` moved a/b aside and deleted it (checkpoints and lock), even while it
    trained; `a` also trained into a folder holding a/b. Both directions are refused, at start and on overwrite."""
    inner = run_dir(demo_config(demo_root, run_name="nest/inner"))
    train(demo_config(demo_root, run_name="nest/inner", **SHORT))
    before = files(inner)
    for settings in ({}, {"overwrite": True}):
        with pytest.raises(ValueError, match=r"nest holds another run, .*nest/inner.*nothing was changed.*--run-name"):
            train(demo_config(demo_root, run_name="nest", **{**SHORT, **settings}))
    with RunLock(inner):  # nest/inner training again: its lock inside nest/
        with pytest.raises(ValueError, match="holds another run"):
            train(demo_config(demo_root, run_name="nest", overwrite=True, **SHORT))
    assert files(inner) == before and not lock_path(run_dir(demo_config(demo_root, run_name="nest"))).exists()
    outer = run_dir(demo_config(demo_root, run_name="outer"))
    train(demo_config(demo_root, run_name="outer", **SHORT))
    with pytest.raises(ValueError, match=r"would be inside the folder of the run .*outer: nothing was changed"):
        train(demo_config(demo_root, run_name="outer/inner", **SHORT))
    assert not (outer / "inner").exists() and read_manifest(outer)["status"] == "complete"

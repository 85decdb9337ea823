"""Faults injected into real (tiny) training runs on the CPU: nothing of a run folder is lost or mixed up (issue #31).

kill -9 at random points of checkpoint writes, several times over, then a bit-identical finish; a full disk
(a real 4 MiB tmpfs, or a file-size limit) mid-run; two concurrent runs of one name; a damaged newest
checkpoint; changed settings on resume; --overwrite whose new start fails; --resume on a pruned finished run;
whole-run summaries after a crash and a resume.
"""

from __future__ import annotations

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


def small_disk(folder, size_mb):
    """A real small file system at `folder` (tmpfs; root only), or None where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
                          capture_output=True)
    return folder if done.returncode == 0 else None


def file_size_limit(limit_bytes):
    """preexec_fn for a child whose files may not grow past limit_bytes (EFBIG, SIGXFSZ ignored): a real limit."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_a_full_disk_is_exit_2_keeps_the_last_checkpoint_and_resumes(demo_root, tmp_path):
    """A 4 MiB tmpfs as --model-root holds one checkpoint of the demo (2.7 MiB), not two: the run ended in a
    traceback, exit 1 (torch.save's 'unexpected pos', or safetensors' 'os error 28'). Now exit 2 naming the folder,
    the space free and needed, the last complete checkpoint kept, the cut one deleted; given room, the same command
    finishes the run. Where mounting is not allowed, a file-size limit (EFBIG) in the child stands in."""
    disk = small_disk(tmp_path / "disk", 4)
    root = disk if disk is not None else tmp_path / "limited"
    cmd = [sys.executable, "-m", "sft", "train", *demo_cli_args(demo_root), "--model-root", str(root), "--run-name",
           "full", "--max-steps", "6", "--save-steps", "2", "--eval-steps", "1000", "--logging-steps", "1"]
    out = root / "demo" / "full"
    try:
        limit = None if disk is not None else file_size_limit(1_500_000)  # the optimizer state: over 1.5 MB
        full = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit)
        assert full.returncode == 2, full.stderr[-3000:]
        err = full.stderr
        assert "Traceback" not in err and f"No space left on device while training {out}" in err, err[-3000:]
        assert "MiB are free there" in err and "--model-root" in err
        if disk is not None:
            assert "its last complete checkpoint, checkpoint-2, is kept" in err and "each checkpoint of this run" in err
            assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # the cut checkpoint-4 deleted
            assert last_complete_checkpoint(out).name == "checkpoint-2" and not lock_path(out).exists()
            assert read_manifest(out)["status"] == "training"  # never "complete" on a cut final model
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "from checkpoint-2" in done.stderr and read_manifest(out)["status"] == "complete"
        else:
            assert "saved no complete checkpoint yet" in err and not out.exists()
    finally:
        if disk is not None:
            subprocess.run(["umount", str(disk)], check=False)


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


DAMAGE = {  # what was found in a run folder, as it was found: trainer_state.json edited, state files cut short
    "global_step missing": ("trainer_state.json", lambda s: {k: v for k, v in s.items() if k != "global_step"}),
    "global_step null": ("trainer_state.json", lambda s: {**s, "global_step": None}),
    "global_step a string": ("trainer_state.json", lambda s: {**s, "global_step": "4"}),
    "global_step 60.5": ("trainer_state.json", lambda s: {**s, "global_step": 60.5}),
    "global_step 10**30": ("trainer_state.json", lambda s: {**s, "global_step": 10**30}),
    "global_step -5": ("trainer_state.json", lambda s: {**s, "global_step": -5}),
    "global_step not the folder's": ("trainer_state.json", lambda s: {**s, "global_step": 2}),
    "optimizer.pt cut": ("optimizer.pt", None), "scheduler.pt cut": ("scheduler.pt", None),
    "rng_state.pth cut": ("rng_state.pth", None),
}


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(demo_root, caplog):
    """A damaged trainer_state.json gave TypeError tracebacks, or (-5) trained 125 more steps on the step-60 weights
    and called the run complete; a cut optimizer/scheduler/RNG state a traceback on every re-run. Each is now an
    incomplete checkpoint: skipped, said on the console, the run resumed from the complete one before it."""
    import json
    import shutil

    pristine = crashed_run(demo_root, "damage-src", step=4)
    for n, (what, (name, edit)) in enumerate(DAMAGE.items()):
        out = run_dir(demo_config(demo_root, run_name=f"damage-{n}"))
        shutil.copytree(pristine, out)
        file = out / "checkpoint-4" / name
        if edit is None:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # a write cut half-way
        else:
            file.write_text(json.dumps(edit(json.loads(file.read_text()))))
        caplog.clear()
        with caplog.at_level("WARNING", logger="sft"):
            trainer = train(demo_config(demo_root, run_name=f"damage-{n}", **SHORT))
        assert f"skipping {out / 'checkpoint-4'}: incomplete" in caplog.text, (what, caplog.text[-1500:])
        assert "from checkpoint-2" in caplog.text, what
        steps = [h["step"] for h in trainer.state.log_history if "loss" in h]
        assert trainer.state.global_step == 4 and steps == sorted(set(steps)) and min(steps) >= 1, (what, steps)
        assert read_manifest(out)["status"] == "complete"


def test_a_refused_pickle_in_a_checkpoint_is_a_clear_error(demo_root):
    """A raw UnpicklingError whose text suggested weights_only=False; now a paragraph naming the file and the fix."""
    import shutil

    out = run_dir(demo_config(demo_root, run_name="hostile"))
    shutil.copytree(crashed_run(demo_root, "hostile-src", step=4), out)
    torch.save({"state": {}, "hook": os.system}, out / "checkpoint-4" / "optimizer.pt")  # not tensors: never run
    before = files(out)
    with pytest.raises(ValueError) as refused:
        train(demo_config(demo_root, run_name="hostile", **SHORT))
    message = str(refused.value)
    assert "checkpoint-4" in message and "optimizer.pt was refused by torch.load(weights_only=True)" in message
    assert "Delete" in message and "weights_only=False" not in message
    assert files(out) == before and not lock_path(out).exists()


def test_a_diverging_run_stops_at_the_step_with_exit_2_and_saves_nothing_of_it(demo_root):
    """A learning rate of 1e30 trained to exit 0 with every parameter NaN and a manifest saying complete."""
    from sft.data.errors import UserError

    cfg = demo_config(demo_root, run_name="diverge", **{**SHORT, "learning_rate": 1e30, "max_grad_norm": 0.0})
    with pytest.raises(UserError, match=r"stopped at optimizer step 3 of 4: the parameters became NaN or inf"):
        train(cfg)
    out = run_dir(cfg)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]  # huge but finite; step 3 never saved
    weights = load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert read_manifest(out)["status"] == "training" and not lock_path(out).exists()  # never "complete"


def test_the_record_never_claims_more_than_the_weights_hold(demo_root):
    """--max-steps 40 --resume on a run stopped at 60 ended with the step-60 weights and a manifest saying 40; a
    missing manifest made the settings check a warning; the manifest kept no history of the sessions."""
    out = crashed_run(demo_root, "record", step=4, max_steps=6)
    with pytest.raises(ValueError, match=r"checkpoint-4, holds 4 optimizer steps, more than max_steps 3.*nothing "
                                         r"was changed.*--max-steps.*above 4"):
        train(demo_config(demo_root, run_name="record", resume=True, **{**SHORT, "max_steps": 3}))
    manifest = (out / "run_manifest.json").read_bytes()
    (out / "run_manifest.json").unlink()
    with pytest.raises(ValueError, match=r"run_manifest.json is missing, so the settings .* cannot be checked.*"
                                         r"--overwrite"):
        train(demo_config(demo_root, run_name="record", **{**SHORT, "max_steps": 6}))
    (out / "run_manifest.json").write_text("{")
    with pytest.raises(ValueError, match="run_manifest.json does not parse"):
        train(demo_config(demo_root, run_name="record", **{**SHORT, "max_steps": 6}))
    (out / "run_manifest.json").write_bytes(manifest)
    train(demo_config(demo_root, run_name="record", **{**SHORT, "max_steps": 6, "logging_steps": 2}))
    segments = read_manifest(out)["segments"]
    assert [(s["resumed_from"], s["from_step"], s["to_step"]) for s in segments] == [
        (None, 0, None), ("checkpoint-4", 4, 6)]  # the first session crashed after step 4
    assert [s["config"]["train"]["logging_steps"] for s in segments] == [1, 2]


def test_an_overwrite_stopped_before_its_first_checkpoint_is_named_with_the_commands(demo_root, tmp_path):
    """An overwrite killed before the new run's first checkpoint left the old run at <name>.old-<time>, mentioned
    nowhere: a re-run started from the base. And --overwrite left the old run's TensorBoard events beside the new."""
    cfg = demo_config(demo_root, run_name="orphan", **SHORT)
    train(cfg)
    out, tb = run_dir(cfg), tensorboard_dir(cfg)
    old_events = files(tb)
    assert old_events
    cmd = [sys.executable, "-m", "sft", "train", *demo_cli_args(demo_root), "--run-name", "orphan", "--overwrite",
           "--max-steps", "4", "--save-steps", "2", "--eval-steps", "1000"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not list(tb.parent.glob(f"{tb.name}.old-*")):  # the old run set aside ...
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # ... and the new one killed before its first checkpoint
    proc.wait()
    (old,) = out.parent.glob("orphan.old-*")
    (old_tb,) = tb.parent.glob(f"{tb.name}.old-*")  # the events went aside with their run
    assert files(old_tb) == old_events and not list_checkpoints(out)
    again = subprocess.run(cmd[:-7] + ["--max-steps", "4"], env=ENV, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 2, again.stderr[-2000:]
    assert str(old) in again.stderr and f"mv '{old}' '{out}'" in again.stderr and f"rm -rf '{old}'" in again.stderr
    assert f"mv '{old_tb}' '{tb}'" in again.stderr
    subprocess.run(f"rm -rf '{out}' && mv '{old}' '{out}' && rm -rf '{tb}' && mv '{old_tb}' '{tb}'", shell=True,
                   check=True)
    assert read_manifest(out)["status"] == "complete" and files(tb) == old_events  # back as it was
    train(demo_config(demo_root, run_name="orphan", overwrite=True, **{**SHORT, "seed": 9}))
    assert not list(tb.parent.glob(f"{tb.name}.old-*")) and files(tb) != old_events  # the new run's events only
    assert not any(f in files(tb) for f in old_events)

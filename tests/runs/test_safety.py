"""A run folder is never lost or mixed up (issue #31): the checks that need no training.

Run names, setting values, a notebook's overrides, the run lock (live and stale), checkpoint completeness, the
resume decision (nothing to resume, changed settings), the base model's weights fingerprint, the folder moved
aside by overwrite, and a full disk on the command line. The cases that train are in tests/core/test_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from helpers import demo_config
from sft.cli import main as cli
from sft.core.values import read_overrides
from sft.core.overrides import load_config
from sft.core.run_folder import resume_checkpoint, setting_differences
from sft.models.checks import check_base_weights, weights_sha256
from sft.runs.checkpoints import checkpoint_problem, last_complete_checkpoint
from sft.runs.layout import BUILD_INFO, run_dir
from sft.runs.manifest import write_manifest
from sft.runs.safety import RunLock, check_run_name, lock_path, move_aside, restore


# ---------------------------------------------------------------- run names and values


@pytest.mark.parametrize("name, message", [
    ("base", "is the base model's folder"), ("base/x", "is the base model's folder"),
    ("/tmp/x", "is an absolute path"), ("", "is empty"), ("  ", "is empty"), ("../x", "leaves or aliases"),
    ("a/../../x", "leaves or aliases"), (".", "leaves or aliases"), ("x.lock", "lock"),
    ("x" * 245, "has a part of 245 bytes"), ("x" * 300, "has a part of 300 bytes"),  # ENAMETOOLONG tracebacks before
    ("sweep/" + "é" * 101, "has a part of 202 bytes"), ("two\nlines", "control characters"),
    ("tab\there", "control characters"), ("bell\x07", "control characters"),
])
def test_a_run_name_stays_under_the_preset_and_off_the_base(tmp_path, name, message):
    preset = tmp_path / "model/demo"
    (preset / "base").mkdir(parents=True)
    with pytest.raises(ValueError, match=message):
        check_run_name(name, preset, (preset / "base",))
    assert check_run_name("sweep-1/plw0.1", preset, (preset / "base",)) == preset / "sweep-1/plw0.1"


def test_load_config_refuses_the_base_and_writes_nothing(tmp_path):
    for name in ("base", "/tmp/elsewhere", "", "../up"):
        with pytest.raises(ValueError, match="--run-name"):
            demo_config(tmp_path, run_name=name)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("setting, value, message", [
    ("save_steps", 0, "save_steps must be a whole number of at least 1"),
    ("per_device_train_batch_size", 0, "per_device_train_batch_size must be"),
    ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be"),
    ("learning_rate", -1e-3, "learning_rate must be a finite number >= 0"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number >= 0"),
    ("weight_decay", float("inf"), "weight_decay must be a finite number >= 0"),
    ("max_grad_norm", float("nan"), "max_grad_norm must be a finite number >= 0"),
    ("bf16", "maybe", "bf16 must be auto, true or false"), ("overwrite", "maybe", "as bool for overwrite"),
    ("weight_decay", -0.1, "weight_decay must be"), ("max_steps", 0, "max_steps must be -1"),
    ("warmup_ratio", 1.5, "warmup_ratio"), ("extra", 5, "extra must be a dict"),
])
def test_bad_values_are_refused_before_any_folder_exists(tmp_path, setting, value, message):
    with pytest.raises(ValueError, match=message):
        demo_config(tmp_path, **{setting: value})
    assert not (tmp_path / "model").exists()


def test_non_finite_and_non_boolean_flags_are_exit_2_before_any_folder(tmp_path, capsys):
    root = ["--model-root", str(tmp_path / "model"), "--tensorboard-root", str(tmp_path / "tb")]
    for flags, message in ((["--learning-rate", "inf"], "learning_rate must be a finite number"),
                           (["--weight-decay", "inf"], "weight_decay must be a finite number"),
                           (["--bf16", "maybe"], "bf16 must be auto, true or false"),
                           (["--run-name", "a\nb"], "control characters"), (["--run-name", "r" * 250], "250 bytes")):
        assert cli.main(["train", *root, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "model").exists() and not (tmp_path / "tb").exists()


def test_a_notebooks_overrides_may_be_a_json_string():
    assert read_overrides('{"max_steps": 3}') == {"max_steps": 3}  # papermill -p overrides '{"max_steps": 3}'
    assert read_overrides(None) == {} and read_overrides("") == {} and read_overrides({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="not a JSON object"):
        read_overrides("max_steps=3")
    with pytest.raises(ValueError, match="must be a dict"):
        read_overrides("[1, 2]")


def test_an_unknown_extra_is_exit_2_not_a_type_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sft.studies.demo.ensure_assets", lambda cfg: None)
    monkeypatch.setattr("sft.cli.train_cmd.ensure_assets", lambda cfg: None)
    monkeypatch.setattr("sft.cli.train_cmd.train", lambda cfg: __import__("sft.core.train").core.train
                        .build_training_arguments(cfg))
    code = cli.main(["train", "--model-root", str(tmp_path / "model"), "--extra", "nonsense=1"])
    assert code == 2 and "TrainingArguments has no field" in capsys.readouterr().err


# ---------------------------------------------------------------- the lock


def test_one_writer_per_run_folder(tmp_path):
    run = tmp_path / "model/demo/r"
    with RunLock(run):
        assert json.loads(lock_path(run).read_text())["pid"] == os.getpid()
        with pytest.raises(ValueError, match=rf"being written by another training process \(pid {os.getpid()} on"):
            RunLock(run).acquire()
    assert not lock_path(run).exists() and not (tmp_path / "model").exists()  # released; no folder left behind


@pytest.mark.slow  # launches a process (the marker check: tests/markers.py)
def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "r"
    lock_path(run).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "earlier"}))
    with caplog.at_level("WARNING", logger="sft"), RunLock(run):
        assert json.loads(lock_path(run).read_text())["pid"] == os.getpid()
    assert f"pid {dead.pid}" in caplog.text and "stale lock" in caplog.text
    lock_path(run).write_text(json.dumps({"pid": 1, "host": "another-host", "started": "earlier"}))
    with pytest.raises(ValueError, match="another-host.*surely gone.*delete"):
        RunLock(run).acquire()  # another host's process cannot be checked: refused, with the way out


def _race_for(run, start, held, done):
    """One contender: wait for the others, take the lock, say whether it got it, hold it until all have tried."""
    start.wait()
    lock = RunLock(run)
    try:
        lock.acquire()
        held.put(os.getpid())
    except ValueError:
        pass
    done.wait()
    lock.release()


@pytest.mark.slow  # launches processes (the marker check: tests/markers.py)
def test_two_processes_meeting_one_stale_lock_never_both_hold_it(tmp_path):
    """Read, unlink, create was not atomic: two processes meeting the same dead-pid lock both held it in 17 of 40
    trials. Now flock: exactly one holder in every trial, and the lock file gone once it released."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "r"
    for trial in range(40):
        lock_path(run).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "earlier"}))
        start, done, held = ctx.Barrier(3), ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_race_for, args=(run, start, held, done)) for _ in range(2)]
        for p in procs:
            p.start()
        start.wait()
        done.wait(timeout=60)
        for p in procs:
            p.join(timeout=60)
        holders = []
        while not held.empty():
            holders.append(held.get())
        assert len(holders) == 1, (trial, holders)
        assert all(p.exitcode == 0 for p in procs) and not lock_path(run).exists()


def test_release_never_deletes_another_process_lock(tmp_path):
    run = tmp_path / "r"
    mine = RunLock(run).acquire()
    lock_path(run).unlink()  # the file deleted by hand (or by a buggy taker) ...
    theirs = RunLock(run).acquire()  # ... and taken by another holder: a new file
    mine.release()
    assert lock_path(run).exists() and json.loads(lock_path(run).read_text())["pid"] == os.getpid()
    with pytest.raises(ValueError, match="being written by another training process"):
        RunLock(run).acquire()  # still held
    theirs.release()
    assert not lock_path(run).exists()


# ---------------------------------------------------------------- checkpoints and the resume decision


def checkpoint(run, step, state=None, weights=True):
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}) if state is None else state)
    if weights:
        save_file({"w": torch.zeros(4)}, ckpt / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({"state": {}}, ckpt / name)
    return ckpt


def test_a_checkpoint_is_complete_only_when_its_state_parses_and_its_weights_open(tmp_path):
    good = checkpoint(tmp_path, 2)
    assert checkpoint_problem(good) is None
    assert "does not parse" in checkpoint_problem(checkpoint(tmp_path, 4, state=""))
    assert "does not parse" in checkpoint_problem(checkpoint(tmp_path, 6, state='{"global_step": 6, "log_hi'))
    cut = checkpoint(tmp_path, 8)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:-3])
    assert "cut short" in checkpoint_problem(cut)
    (cut / "model.safetensors").write_bytes(data[:5])
    assert "cut short" in checkpoint_problem(cut)
    skipped = []
    assert last_complete_checkpoint(tmp_path, skipped) == good
    assert [p.name for p, _ in skipped] == ["checkpoint-8", "checkpoint-6", "checkpoint-4"]


def test_settings_that_change_the_optimisation_are_told_apart():
    saved = load_config("demo").to_dict()
    new = load_config("demo", learning_rate=1e-5, prompt_loss_weight=0.5, logging_steps=1, max_steps=9,
                      optim="adafactor", logging_nan_inf_filter=False).to_dict()
    refused, length, harmless = setting_differences(saved, new)
    assert sorted(refused) == ["extra.optim: saved '(unset)', now 'adafactor'",
                               "learning_rate: saved 0.003, now 1e-05", "prompt_loss_weight: saved 0.0, now 0.5"]
    assert [x.split(":")[0] for x in length] == ["max_steps"]
    assert {x.split(":")[0] for x in harmless} >= {"logging_steps", "extra.logging_nan_inf_filter"}


@pytest.mark.slow  # launches a process (the marker check: tests/markers.py)
def test_resume_refuses_where_it_would_lose_or_mix_work(tmp_path):
    cfg = demo_config(tmp_path, run_name="r", resume=True)
    with pytest.raises(ValueError, match="resume is set, but .* holds no run to continue"):
        resume_checkpoint(cfg)  # --resume with nothing there: never a silent new run
    out = run_dir(cfg)
    write_manifest(out, demo_config(tmp_path, run_name="r"), {}, status="complete")
    with pytest.raises(ValueError, match="finished run whose checkpoints were pruned, so there is nothing to resume"):
        resume_checkpoint(cfg)
    checkpoint(out, 2)
    write_manifest(out, demo_config(tmp_path, run_name="r"), {}, status="training")
    assert resume_checkpoint(demo_config(tmp_path, run_name="r", logging_steps=1)) == str(out / "checkpoint-2")
    with pytest.raises(ValueError, match=r"learning_rate: saved 0.003, now 1e-05; weight_decay: saved 0.0, now 0.1\. "
                                         r"Nothing was changed.*saved settings.*--overwrite"):
        resume_checkpoint(demo_config(tmp_path, run_name="r", learning_rate=1e-5, weight_decay=0.1))
    with pytest.raises(ValueError, match=r"global batch: saved 8 per device x 1 accumulation x 1 process\(es\) = 8, "
                                         r"now 8 per device x 1 accumulation x 2 process\(es\) = 16"):
        resume_checkpoint(demo_config(tmp_path, run_name="r"), world_size=2)
    assert resume_checkpoint(demo_config(tmp_path, run_name="r", per_device_train_batch_size=4), world_size=2)
    with pytest.raises(ValueError, match="max_steps: saved -1, now 9"):
        resume_checkpoint(demo_config(tmp_path, run_name="r", max_steps=9))  # a longer run: only with resume=True
    assert resume_checkpoint(demo_config(tmp_path, run_name="r", max_steps=9, resume=True)) == str(out / "checkpoint-2")


# ---------------------------------------------------------------- the base model and overwrite


def test_a_changed_base_model_is_an_error_with_the_fix(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    save_file({"w": torch.zeros(4)}, base / "model.safetensors")
    (base / BUILD_INFO).write_text(json.dumps({"weights_sha256": weights_sha256(base)}))
    check_base_weights(base)
    save_file({"w": torch.ones(4)}, base / "model.safetensors")  # a run trained over it
    with pytest.raises(ValueError, match="has changed since it was built.*delete .* and rebuild"):
        check_base_weights(base)


def test_overwrite_moves_the_old_run_aside_and_restores_it(tmp_path):
    run = tmp_path / "r"
    checkpoint(run, 2)
    old = move_aside(run)
    assert not run.exists() and (old / "checkpoint-2").is_dir() and ".old-" in old.name
    (run / "checkpoint-1").mkdir(parents=True)  # what a failed new start wrote
    restore(run, old)
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-1").exists() and not old.exists()


def test_sharded_checkpoints_of_fsdp_and_deepspeed_count_as_complete(tmp_path):
    fsdp = tmp_path / "checkpoint-2"
    (fsdp / "pytorch_model_fsdp_0").mkdir(parents=True)
    (fsdp / "optimizer_0").mkdir()
    (fsdp / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    torch.save({"last_epoch": 2}, fsdp / "scheduler.pt")
    assert "no weights" in checkpoint_problem(fsdp)  # the shards' .metadata, written last, is not there yet
    (fsdp / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    assert last_complete_checkpoint(tmp_path) == fsdp
    zero = checkpoint(tmp_path, 4)
    (zero / "optimizer.pt").unlink()
    assert last_complete_checkpoint(tmp_path) == fsdp  # no optimizer state at all: not resumable
    (zero / "global_step4").mkdir()
    assert last_complete_checkpoint(tmp_path) == zero


@pytest.mark.slow
def test_papermill_overrides_given_as_a_json_string(demo_root, tmp_path):
    import papermill

    from helpers import ROOT, demo_overrides

    overrides = json.dumps({**demo_overrides(demo_root), "max_steps": 2, "eval_steps": 2, "save_steps": 2})
    out = tmp_path / "run.ipynb"  # papermill -p overrides '{...}' hands the cell a string
    papermill.execute_notebook(str(ROOT / "finetune_masked.ipynb"), str(out), cwd=str(tmp_path), kernel_name="python3",
                               parameters={"overrides": overrides, "run_name": "nb-string"}, progress_bar=False)
    manifest = json.loads((demo_root / "model/demo/nb-string/run_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["train"]["max_steps"] == 2
    # the weights it started from, as the base records them (the path alone names two builds that differ in bits)
    built = json.loads((demo_root / "model/demo/base/build_info.json").read_text())
    assert manifest["base_weights_sha256"] == built["weights_sha256"] and len(built["weights_sha256"]) == 64


def test_the_demo_base_is_checked_by_its_weights_not_only_its_config(demo_root, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from sft.studies.demo import tiny_model_config
    from sft.studies.tiny_model import ensure_demo_base

    cfg = demo_config(demo_root)
    base = shutil.copytree(demo_root / "model/demo/base", tmp_path / "base")
    corpus, tiny = demo_root / "Dataset/demo/train.jsonl", tiny_model_config(cfg.demo)
    assert ensure_demo_base(base, corpus, tiny) == base  # unchanged: reused
    info = json.loads((base / BUILD_INFO).read_text())
    del info["weights_sha256"]  # a base built before weights were fingerprinted: recorded on first use
    (base / BUILD_INFO).write_text(json.dumps(info))
    ensure_demo_base(base, corpus, tiny)
    assert json.loads((base / BUILD_INFO).read_text())["weights_sha256"] == weights_sha256(base)
    weights = load_file(base / "model.safetensors")
    save_file({k: v + 1e-3 for k, v in weights.items()}, base / "model.safetensors")  # `--run-name base`, before
    with pytest.raises(ValueError, match="has changed since it was built"):
        ensure_demo_base(base, corpus, tiny)
    with pytest.raises(ValueError, match="has changed since it was built"):
        from sft.models.checks import check_inputs

        check_inputs(demo_config(demo_root, **{"model.model": str(base)}))  # and before every run

"""sft/runs/prune.py and auto_clean.py: which checkpoints are kept, stripped, deleted or left alone, on real checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from helpers import ROOT, TESTS, demo_cli_args, demo_config, demo_overrides, load_script
from sft.runs.checkpoints import can_resume_from, checkpoint_problem, last_complete_checkpoint, list_checkpoints
from sft.runs.layout import run_dir
from sft.runs.prune import PrunePolicy, metric_at, plan_prune, prune_run, scan_checkpoints, watch
from sft.runs.callbacks import auto_clean_callback
from sft.core.train import train

STEPS = (2, 4, 6, 8)  # the fixture run saves and evaluates every 2 steps


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(demo_root):
    """A tiny run with checkpoints 2, 4, 6, 8, each evaluated at its own step."""
    cfg = demo_config(demo_root, run_name="prune-src", max_steps=8, save_steps=2, eval_steps=2, logging_steps=2,
                      overwrite=True)
    train(cfg)
    assert [p.name for p in list_checkpoints(run_dir(cfg))] == [f"checkpoint-{s}" for s in STEPS]
    return run_dir(cfg)


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of the finished run whose files were all last written an hour ago."""
    copy = shutil.copytree(finished_run, tmp_path / "run")
    age(copy, 3600)
    return copy


def age(folder, seconds):
    """Set every file's modification time `seconds` into the past."""
    then = time.time() - seconds
    for path in folder.rglob("*"):
        os.utime(path, (then, then))


def names(folder):
    return [p.name for p in list_checkpoints(folder)]


def own_metric(run, step, metric="eval_response_loss"):
    """The metric a checkpoint logged at its own step, read independently of sft.runs.prune."""
    history = json.loads((run / f"checkpoint-{step}" / "trainer_state.json").read_text())["log_history"]
    return next(h[metric] for h in history if h.get("step") == step and metric in h)


def add_metric(run, values, metric="eval_exact_match"):
    """Log `metric` = values[step] at each checkpoint's own step, in its trainer_state.json."""
    for step, value in values.items():
        path = run / f"checkpoint-{step}" / "trainer_state.json"
        state = json.loads(path.read_text())
        state["log_history"].append({metric: value, "step": step})
        path.write_text(json.dumps(state))
    age(run, 3600)


@pytest.mark.slow
def test_keeps_the_newest_and_the_best_by_response_loss(run):
    losses = {s: own_metric(run, s) for s in STEPS}
    best_two = sorted(STEPS, key=losses.get)[:2]
    decisions, freed = prune_run(run, PrunePolicy(keep_last=1, keep_best=2))
    actions = {d.checkpoint.step: d.action for d in decisions}
    kept = {8, *best_two}
    assert actions == {s: "keep" if s in kept else "delete" for s in STEPS}
    assert names(run) == [f"checkpoint-{s}" for s in STEPS if s in kept]
    reasons = {d.checkpoint.step: d.reason for d in decisions}
    assert "newest complete checkpoint" in reasons[8] and "best #1 by eval_response_loss" in reasons[best_two[0]]
    assert freed > 0 and all(d.freed > 0 for d in decisions if d.action == "delete")


@pytest.mark.slow
@pytest.mark.parametrize("greater_is_better, best", [(None, 4), (True, 4), (False, 2)])
def test_ranking_follows_the_metrics_direction(run, greater_is_better, best):
    # exact_match is known to be better high; the flag overrides it.
    add_metric(run, {2: 0.1, 4: 0.9, 6: 0.5, 8: 0.3})
    policy = PrunePolicy(keep_last=1, keep_best=1, metric="eval_exact_match", greater_is_better=greater_is_better)
    decisions, _ = prune_run(run, policy, dry_run=True)
    assert {d.checkpoint.step for d in decisions if d.action == "keep"} == {best, 8}
    assert names(run) == [f"checkpoint-{s}" for s in STEPS]  # dry run


def test_metric_value_is_the_last_logged_at_or_before_the_step():
    history = [{"eval_x": 3.0, "step": 2}, {"loss": 1.0, "step": 3}, {"eval_x": 2.0, "step": 4},
               {"eval_x": float("nan"), "step": 5}, {"eval_x": 1.0, "step": 6}]
    assert metric_at(history, "eval_x", 5) == (2.0, 4)
    assert metric_at(history, "eval_x", 1) == (None, None)


@pytest.mark.slow
def test_strip_optimizer_keeps_what_resuming_needs(run):
    before = {p: p.stat().st_size for p in run.rglob("*") if p.is_file()}
    decisions, freed = prune_run(run, PrunePolicy(keep_last=2, keep_best=0, strip_optimizer=True))
    assert {d.checkpoint.step: d.action for d in decisions} == {2: "delete", 4: "delete", 6: "strip", 8: "keep"}
    stripped = run / "checkpoint-6"
    assert checkpoint_problem(stripped) is None and not can_resume_from(stripped)
    assert not list(stripped.glob("rng_state*.pth")) and not (stripped / "optimizer.pt").exists()
    assert can_resume_from(run / "checkpoint-8") and last_complete_checkpoint(run) == run / "checkpoint-8"
    after = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    assert freed == sum(before.values()) - after


@pytest.mark.slow
def test_half_written_and_recent_checkpoints_are_left_alone(run):
    partial = run / "checkpoint-10"
    partial.mkdir()
    shutil.copy(run / "checkpoint-8" / "model.safetensors", partial)  # weights, but no trainer_state.json yet
    age(run, 3600)
    (run / "checkpoint-4" / "optimizer.pt").touch()  # written just now: may still be being saved
    decisions, _ = prune_run(run, PrunePolicy(keep_last=1, keep_best=0, min_age=60))
    actions = {d.checkpoint.step: (d.action, d.reason) for d in decisions}
    assert actions[10][0] == "skip" and "no trainer_state.json yet" in actions[10][1]
    assert actions[4][0] == "skip" and "may still be being written" in actions[4][1]
    assert actions[8][0] == "keep" and "newest complete" in actions[8][1]  # not the half-written 10
    assert names(run) == ["checkpoint-4", "checkpoint-8", "checkpoint-10"]
    assert last_complete_checkpoint(run) == run / "checkpoint-8"


@pytest.mark.slow
def test_corrupt_trainer_state_is_named_and_nothing_is_deleted(run, capsys):
    state = run / "checkpoint-4" / "trainer_state.json"
    state.write_text('{"log_history": [')
    age(run, 3600)
    code = load_script("auto_clean").main([str(run), "--keep-best", "0"])
    err = capsys.readouterr().err
    assert code == 2 and str(state) in err and "nothing was deleted" in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert names(run) == [f"checkpoint-{s}" for s in STEPS]


@pytest.mark.slow
def test_cli_dry_run_prints_the_plan_and_changes_nothing(run, capsys):
    files = sorted(str(p) for p in run.rglob("*"))
    assert load_script("auto_clean").main([str(run), "--strip-optimizer", "--keep-last", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete checkpoint-2" in out and "would strip  checkpoint-6" in out and "keep" in out
    assert "dry run, nothing changed: would have 2 deleted, 1 stripped" in out and "bytes" in out
    assert sorted(str(p) for p in run.rglob("*")) == files


@pytest.mark.slow
def test_unclear_settings_are_errors(run):
    with pytest.raises(ValueError, match="--greater-is-better or --lower-is-better"):
        PrunePolicy(metric="eval_foo")
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        PrunePolicy(keep_last=0)
    with pytest.raises(ValueError, match="No checkpoint has 'eval_typo_loss'.*eval_response_loss"):
        prune_run(run, PrunePolicy(metric="eval_typo_loss"))
    assert names(run) == [f"checkpoint-{s}" for s in STEPS]
    with pytest.raises(ValueError, match="unknown keys \\['keep'\\]"):
        auto_clean_callback({"keep": 1})


@pytest.mark.slow
def test_watch_until_complete_makes_a_last_pass_and_stops(run):
    age(run, 0)  # everything looks freshly written ...
    recent = [d.action for d in plan_prune(scan_checkpoints(run, "eval_response_loss"), PrunePolicy())]
    assert set(recent) == {"skip"}
    # ... but the manifest says the run is complete, so nothing is being written any more.
    passes = list(watch(run, PrunePolicy(keep_best=0), interval=0.01, until_complete=True))
    assert len(passes) == 1 and names(run) == ["checkpoint-8"]
    manifest = run / "run_manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "training"}))
    assert len(list(watch(run, PrunePolicy(), interval=0.01, until_complete=True, max_iterations=3))) == 3


@pytest.mark.slow
def test_callback_prunes_during_training_on_the_main_process_only(demo_root, run):
    cfg = demo_config(demo_root, run_name="prune-cb", max_steps=6, save_steps=2, eval_steps=2, logging_steps=2,
                      overwrite=True, auto_clean={"keep_last": 1, "keep_best": 1, "strip_optimizer": True})
    trainer = train(cfg)
    callback = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "AutoCleanCallback")
    assert len(callback.history) == 3  # one plan per save, made while training
    out = run_dir(cfg)
    history = trainer.state.log_history
    losses = {s: next(h["eval_response_loss"] for h in history if h.get("step") == s and "eval_response_loss" in h)
              for s in (2, 4, 6)}
    best = min(losses, key=losses.get)
    assert names(out) == [f"checkpoint-{s}" for s in sorted({best, 6})]
    assert can_resume_from(out / "checkpoint-6")
    if best != 6:
        assert not (out / f"checkpoint-{best}" / "optimizer.pt").exists()
    assert callback.freed > 0

    # Another process of a multi-GPU run saves too, but leaves pruning to the main one.
    other = auto_clean_callback({"keep_best": 0})
    state = SimpleNamespace(is_world_process_zero=False, best_model_checkpoint=None, global_step=8)
    other.on_save(SimpleNamespace(output_dir=str(run)), state, None)
    assert names(run) == [f"checkpoint-{s}" for s in STEPS] and other.history == []


def start_watcher(out, env, cwd, *extra, interval="0.2", sigint_ignored=False):
    """auto_clean.py --watch on `out`; with sigint_ignored, started as a background job of a script would be."""
    # A non-interactive shell's background job inherits SIGINT ignored (the cause of issue 15's hang).
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen([sys.executable, str(ROOT / "auto_clean.py"), str(out), "--watch", interval, *extra],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=pre)


def stop_within_a_second(proc, sig):
    """Send `sig` and return (stdout, stderr, seconds until exit); fail if it takes more than a second."""
    t = time.perf_counter()
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"auto_clean.py --watch ignored {sig!r} for 10 s: {proc.communicate()}")
    return stdout, stderr, time.perf_counter() - t


@pytest.mark.slow
def test_watch_prunes_beside_a_training_run_and_resume_still_works(demo_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    steps = {"max_steps": 40, "save_steps": 2, "eval_steps": 2, "logging_steps": 2, "seed": 7}
    cfg = demo_config(demo_root, run_name="watched", **steps)
    out, ready = run_dir(cfg), tmp_path / "ready"
    overrides = {**demo_overrides(demo_root), "run_name": "watched", "overwrite": True, **steps}
    # Training pauses after saving checkpoint-8 until the watcher has deleted checkpoint-2, then waits to be
    # killed: the test does not depend on how fast training runs next to the watcher (issue 15).
    trainer = subprocess.Popen([sys.executable, str(TESTS / "paused_train.py"), str(ready), "8",
                                "checkpoint-2", json.dumps(overrides)],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = start_watcher(out, env, tmp_path, "--min-age", "0.5", "--keep-last", "1", "--keep-best", "1",
                            "--strip-optimizer", sigint_ignored=True)
    try:
        deadline = time.time() + 300
        while not ready.exists() and trainer.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"training never reached step 8: {trainer.poll()=}, {trainer.stderr.read()[-2000:]}"
        assert ready.read_text() == "pruned", ready.read_text()
        trainer.kill()  # SIGKILL mid-run, as a crash would
        trainer.wait()
        stdout, stderr, took = stop_within_a_second(watcher, signal.SIGINT)  # Ctrl-C
    finally:
        for proc in (trainer, watcher):
            if proc.poll() is None:
                proc.kill()
    assert watcher.returncode == 0, stderr
    assert took < 1.0, f"the watcher took {took:.2f} s to stop"
    assert "delete" in stdout and "stopped (Ctrl-C)" in stdout and "freed" in stdout

    resume_from = last_complete_checkpoint(out)
    complete = [p for p in list_checkpoints(out) if checkpoint_problem(p) is None]
    assert resume_from == complete[-1]  # the newest complete checkpoint kept its optimizer state
    survivors = set(names(out))
    assert len(complete) <= 3  # newest + best (+ one saved after the watcher's last pass)

    train_cmd = [sys.executable, "-m", "sft", "train", *demo_cli_args(demo_root), "--run-name", "watched",
                 *[x for k, v in steps.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    subprocess.run([*train_cmd, "--resume"], check=True, env=env, cwd=tmp_path, capture_output=True)
    manifest = json.loads((out / "run_manifest.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    assert manifest["status"] == "complete" and history[-1]["step"] == 40
    resumed_at = int(resume_from.name.split("-")[1])
    # Resumed, not restarted: every checkpoint saved afterwards comes after the one it resumed from.
    assert all(int(n.split("-")[1]) > resumed_at for n in set(names(out)) - survivors)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_watcher_stops_within_a_second_while_sleeping(run, tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    watcher = start_watcher(run, env, tmp_path, "--keep-best", "0", interval="30", sigint_ignored=True)
    assert watcher.stdout.readline().startswith("watching")
    time.sleep(0.5)  # past its first pass, now waiting for the next
    stdout, stderr, took = stop_within_a_second(watcher, sig)
    assert watcher.returncode == 0 and took < 1.0, (took, stderr)
    assert f"stopped ({'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'})" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_watcher_stops_cleanly_whenever_the_signal_comes(run, tmp_path, delay):
    """Starting up, importing, scanning: whatever it is doing, SIGTERM ends it at once and no checkpoint is half gone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    watcher = start_watcher(run, env, tmp_path, "--keep-best", "0", "--min-age", "0")
    time.sleep(delay)
    stdout, stderr, took = stop_within_a_second(watcher, signal.SIGTERM)
    # Before Python runs the script, the default action ends it (-15); from the first lines on, it exits 0.
    assert watcher.returncode in (0, -signal.SIGTERM) and took < 1.0, (watcher.returncode, took, stderr)
    assert "Traceback" not in stderr
    for path in run.iterdir():  # every checkpoint is either whole or gone: no .deleting leftovers, no half folders
        assert not path.name.endswith(".deleting")
        if path.name.startswith("checkpoint-"):
            assert checkpoint_problem(path) is None and can_resume_from(path) or path.name == "checkpoint-8"


@pytest.mark.slow
def test_a_stop_is_honoured_between_checkpoints_never_inside_one(run):
    class StopAfterFirstCheck(threading.Event):
        """Not set for the first checkpoint acted on, set from the second on: a signal during the first delete."""

        checks = 0

        def is_set(self):
            self.checks += 1
            return self.checks > 1

    decisions, freed = prune_run(run, PrunePolicy(keep_last=1, keep_best=0), stop=StopAfterFirstCheck())
    assert [d.action for d in decisions] == ["delete", "skip", "skip", "keep"]
    assert "stop requested" in decisions[1].reason and freed == decisions[0].freed > 0
    assert names(run) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]  # checkpoint-2 wholly gone, the rest whole
    assert not list(run.glob(".*deleting"))

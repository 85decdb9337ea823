"""Checkpoint pruning: keep the newest, the best by a metric and anything still being written; free the rest.

The policy is pure (`plan_prune`: facts about the checkpoints in, decisions out); `scan_checkpoints`
reads the facts from disk and `apply_plan` carries the decisions out, so `auto_clean.py`, its
`--watch` loop and `AutoCleanCallback` (switched on by `TrainConfig.auto_clean`) all prune alike.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

from sft.data.errors import UserError
from sft.runs.checkpoints import (
    STATE_FILE,
    WEIGHT_FILES,
    can_resume_from,
    checkpoint_step,
    list_checkpoints,
    run_is_complete,
    weights_problem,
)

RESUME_ONLY_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")  # with rng_state*.pth: needed only to resume
LOWER_IS_BETTER = ("loss", "perplexity", "ppl")  # name fragments of metrics where lower is better
HIGHER_IS_BETTER = ("accuracy", "acc", "exact_match", "f1", "bleu", "rouge")  # ... and where higher is better
MIN_AGE = 60.0  # seconds since a checkpoint's last write before it counts as finished
TRASH_SUFFIX = ".deleting"  # a checkpoint being deleted is renamed .checkpoint-N.deleting first


def metric_direction(metric: str, greater_is_better: bool | None = None) -> bool:
    """True when higher values of the metric are better: as given, else known from its name."""
    if greater_is_better is not None:
        return greater_is_better
    name = metric.lower()
    if any(k in name for k in LOWER_IS_BETTER):
        return False
    if any(k in name for k in HIGHER_IS_BETTER):
        return True
    raise UserError(f"Cannot tell whether a higher or a lower {metric!r} is better; pass --greater-is-better "
                     "or --lower-is-better (greater_is_better in the auto_clean config).")


@dataclass
class PrunePolicy:
    """What to keep; everything else that is finished is deleted."""

    keep_last: int = 1  # the N newest complete checkpoints (the newest is always kept: training resumes from it)
    keep_best: int = 1  # the K best by `metric`
    metric: str = "eval_response_loss"  # means the same in every regime (eval_loss does not: its weights differ)
    greater_is_better: bool | None = None  # None = known from the metric's name (loss, perplexity: lower)
    strip_optimizer: bool = False  # drop optimizer, scheduler and RNG states from kept checkpoints not needed to resume
    min_age: float = MIN_AGE  # a checkpoint with a file newer than this (seconds) may still be written: left alone

    def __post_init__(self) -> None:
        """Reject settings that cannot be carried out, with the fix in the message."""
        if self.keep_last < 1:
            raise UserError(f"keep_last must be at least 1 (the newest checkpoint is always kept), got {self.keep_last}.")
        if self.keep_best < 0:
            raise UserError(f"keep_best must be 0 or more, got {self.keep_best}.")
        if self.min_age < 0:
            raise UserError(f"min_age must be 0 or more seconds, got {self.min_age}.")
        if self.keep_best:
            metric_direction(self.metric, self.greater_is_better)  # fail now, not at the first checkpoint

    @property
    def greater(self) -> bool:
        """True when higher metric values are better."""
        return metric_direction(self.metric, self.greater_is_better)


def policy_from_config(settings: dict[str, Any]) -> PrunePolicy:
    """A PrunePolicy from `TrainConfig.auto_clean`, e.g. {"keep_last": 2, "strip_optimizer": true}."""
    known = [f.name for f in fields(PrunePolicy) if f.name != "min_age"]
    if not isinstance(settings, dict):
        raise UserError(f"auto_clean must be a dict such as {{\"keep_best\": 1}} ({{}} = the defaults), "
                         f"got {settings!r}.")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise UserError(f"auto_clean has unknown keys {unknown}; use some of {known}.")
    return PrunePolicy(**settings)


@dataclass
class Checkpoint:
    """What pruning needs to know about one checkpoint folder."""

    path: Path
    step: int
    size: int  # bytes of all its files
    resume_bytes: int  # bytes of the files that only resuming needs (optimizer, scheduler, RNG)
    busy: str | None = None  # why it may still be being written (then it is left alone); None when finished
    resumable: bool = False  # has the optimizer and scheduler states
    metric: float | None = None  # the metric logged at or before its step
    metric_step: int | None = None  # the step that value was logged at
    logged: frozenset[str] = frozenset()  # every metric name in its log_history (for error messages)
    best_model_checkpoint: str | None = None  # the Trainer's own best, from its trainer_state.json

    @property
    def name(self) -> str:
        """checkpoint-N."""
        return self.path.name


@dataclass
class Decision:
    """What happens to one checkpoint, and why."""

    checkpoint: Checkpoint
    action: str  # "keep", "strip" (keep, minus the resume-only files), "delete" or "skip" (still being written)
    reason: str
    freed: int = 0  # bytes this decision frees


# ---------------------------------------------------------------- reading the checkpoints


def resume_only_files(path: Path) -> list[Path]:
    """Files of a checkpoint that only resuming training needs."""
    return [p for p in path.iterdir() if p.is_file() and (p.name in RESUME_ONLY_FILES or
                                                            (p.name.startswith("rng_state") and p.suffix == ".pth"))]


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json, with a clear error naming the file when it is damaged."""
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}), so {path.name} cannot be ranked; nothing was deleted. "
                         "Restore the file, or move the damaged checkpoint away, and run again.") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise UserError(f"{file} has no log_history list, so {path.name} cannot be ranked; nothing was deleted. "
                         "Restore the file, or move the damaged checkpoint away, and run again.")
    return state


def metric_at(log_history: list[dict[str, Any]], metric: str, step: int) -> tuple[float | None, int | None]:
    """The last finite value of `metric` logged at or before `step`, and the step it was logged at."""
    found: tuple[float | None, int | None] = (None, None)
    for entry in log_history:
        value, at = entry.get(metric), entry.get("step", 0)
        if at <= step and isinstance(value, (int, float)) and math.isfinite(value):
            found = (float(value), at)
    return found


def scan_checkpoints(run_dir: str | Path, metric: str, min_age: float = MIN_AGE,
                     now: float | None = None) -> list[Checkpoint]:
    """The run's checkpoints in step order, with their state, sizes and metric values."""
    now = time.time() if now is None else now
    out = []
    for path in list_checkpoints(run_dir):
        try:
            stats = [p.stat() for p in path.rglob("*") if p.is_file()]
            resume_bytes = sum(p.stat().st_size for p in resume_only_files(path))
        except FileNotFoundError:
            continue  # deleted while we looked (e.g. by the Trainer's save_total_limit)
        c = Checkpoint(path=path, step=checkpoint_step(path), size=sum(s.st_size for s in stats),
                       resume_bytes=resume_bytes)
        # Files only: the folder's own mtime changes when we strip it, which is no sign of a save.
        age = now - max((s.st_mtime for s in stats), default=now)
        if not (path / STATE_FILE).is_file():
            c.busy = f"no {STATE_FILE} yet: still being written (or a crashed save: delete it by hand)"
        elif not any((path / f).is_file() for f in WEIGHT_FILES):
            c.busy = "no model weights yet: still being written (or a crashed save: delete it by hand)"
        elif (problem := weights_problem(path)) is not None:
            c.busy = f"incomplete: {problem} (still being written, or damaged: never pruned automatically)"
        elif age < min_age:
            c.busy = f"written {age:.0f} s ago (< {min_age:g} s): may still be being written"
        else:
            state = read_trainer_state(path)
            history = state["log_history"]
            c.metric, c.metric_step = metric_at(history, metric, c.step)
            c.logged = frozenset(k for h in history for k, v in h.items() if isinstance(v, (int, float)))
            c.resumable = can_resume_from(path)
            c.best_model_checkpoint = state.get("best_model_checkpoint")
        out.append(c)
    return out


# ---------------------------------------------------------------- the policy


def plan_prune(checkpoints: list[Checkpoint], policy: PrunePolicy, protected: tuple[str, ...] = ()) -> list[Decision]:
    """Decide, for checkpoints in step order, which to keep, strip, delete or leave alone; pure."""
    finished = [c for c in checkpoints if c.busy is None]
    if not finished:
        return [Decision(c, "skip", c.busy or "") for c in checkpoints]
    newest = finished[-1]
    resume = next((c for c in reversed(finished) if c.resumable), None)
    keep: dict[str, list[str]] = {c.name: [] for c in finished}
    keep[newest.name].append("newest complete checkpoint")
    if resume is not None and resume is not newest:
        keep[resume.name].append("newest one training can resume from")
    for c in finished[-policy.keep_last:]:
        if c is not newest:
            keep[c.name].append(f"one of the {policy.keep_last} newest")
    ranked = rank(finished, policy) if policy.keep_best else []
    if policy.keep_best and not ranked:
        evaluated = sorted({k for c in finished for k in c.logged
                            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second"))})
        if evaluated:  # evaluations ran but never logged this metric: a typo, or the wrong name
            raise UserError(f"No checkpoint has {policy.metric!r} in its log_history, though evaluations logged "
                             f"{', '.join(evaluated)}; pass --metric with one of those, or --keep-best 0 to keep "
                             "by recency only. Nothing was deleted.")
    place = {c.name: i for i, c in enumerate(ranked)}
    for c in ranked[: policy.keep_best]:
        keep[c.name].append(f"best #{place[c.name] + 1} by {policy.metric} = {c.metric:.4g}")
    for c in finished:
        if c.name in protected:
            keep[c.name].append("the Trainer's best_model_checkpoint")
    decisions = []
    for c in checkpoints:
        if c.busy is not None:
            decisions.append(Decision(c, "skip", c.busy))
        elif keep[c.name]:
            reason = "; ".join(keep[c.name])
            if policy.strip_optimizer and c is not newest and c is not resume and c.resume_bytes:
                decisions.append(Decision(c, "strip", reason + "; optimizer/scheduler/RNG states removed",
                                          c.resume_bytes))
            else:
                decisions.append(Decision(c, "keep", reason))
        else:
            why = f"not among the {policy.keep_last} newest"
            if policy.keep_best:
                why += f" or the {policy.keep_best} best"
                why += (f" ({policy.metric} = {c.metric:.4g}, #{place[c.name] + 1} of {len(ranked)})"
                        if c.name in place else f" (no {policy.metric} logged at or before step {c.step})")
            decisions.append(Decision(c, "delete", why, c.size))
    return decisions


def rank(checkpoints: list[Checkpoint], policy: PrunePolicy) -> list[Checkpoint]:
    """Checkpoints with a metric value, best first; ties go to the one evaluated at its own step, then the newer."""
    sign = -1.0 if policy.greater else 1.0
    scored = [c for c in checkpoints if c.metric is not None]
    return sorted(scored, key=lambda c: (sign * c.metric, c.step - c.metric_step, -c.step))


# ---------------------------------------------------------------- carrying it out


def apply_plan(decisions: list[Decision], dry_run: bool = False, stop: threading.Event | None = None) -> int:
    """Delete and strip as decided; return the bytes freed (or that would be, with dry_run).

    A set `stop` is honoured between checkpoints, never inside one: the decisions not carried out become
    "skip" ("stop requested"), so the plan printed afterwards says what really happened.
    """
    freed = 0
    for d in decisions:
        if d.action not in ("delete", "strip"):
            continue
        if stop is not None and stop.is_set():
            d.action, d.reason, d.freed = "skip", "stop requested before this one was reached", 0
            continue
        if d.action == "delete":
            if not dry_run:
                # Renamed first (atomic), so an interrupted delete never leaves a half checkpoint-N behind.
                trash = d.checkpoint.path.with_name(f".{d.checkpoint.name}{TRASH_SUFFIX}")
                d.checkpoint.path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
        elif not dry_run:
            for f in resume_only_files(d.checkpoint.path):
                f.unlink(missing_ok=True)
        freed += d.freed
    return freed


def format_bytes(n: int) -> str:
    """Bytes with a readable unit beside them."""
    size, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    return f"{n:,} bytes ({size:.1f} {unit})" if unit != "B" else f"{n:,} bytes"


def format_plan(decisions: list[Decision], dry_run: bool = False) -> str:
    """One line per checkpoint (action, name, why, bytes), then the total."""
    if not decisions:
        return "no checkpoint-N folders yet"
    verbs = {"keep": "keep", "strip": "strip", "delete": "delete", "skip": "leave"}
    if dry_run:
        verbs.update(strip="would strip", delete="would delete")
    width = max(len(d.checkpoint.name) for d in decisions)
    lines = []
    for d in decisions:
        size = f"  [{format_bytes(d.freed)}]" if d.freed else ""
        lines.append(f"{verbs[d.action]:<13}{d.checkpoint.name:<{width}}  {d.reason}{size}")
    freed = sum(d.freed for d in decisions)
    n_del, n_strip = (sum(d.action == a for d in decisions) for a in ("delete", "strip"))
    total = f"{n_del} deleted, {n_strip} stripped: {format_bytes(freed)} freed"
    lines.append(f"dry run, nothing changed: would have {total}" if dry_run else total)
    return "\n".join(lines)


def prune_run(run_dir: str | Path, policy: PrunePolicy, dry_run: bool = False, protected: tuple[str, ...] = (),
              now: float | None = None, stop: threading.Event | None = None) -> tuple[list[Decision], int]:
    """Scan, plan and apply once; every checkpoint is read before anything is deleted."""
    if not dry_run and Path(run_dir).is_dir():  # finish deletes that an earlier run was stopped in
        for trash in Path(run_dir).glob(f".checkpoint-*{TRASH_SUFFIX}"):
            shutil.rmtree(trash, ignore_errors=True)
    checkpoints = scan_checkpoints(run_dir, policy.metric, policy.min_age, now)
    finished = [c for c in checkpoints if c.busy is None]
    if finished and finished[-1].best_model_checkpoint:  # load_best_model_at_end will load it
        protected = (*protected, Path(finished[-1].best_model_checkpoint).name)
    decisions = plan_prune(checkpoints, policy, protected)
    return decisions, apply_plan(decisions, dry_run, stop)


def watch(run_dir: str | Path, policy: PrunePolicy, interval: float, dry_run: bool = False,
          max_iterations: int | None = None, until_complete: bool = False,
          stop: threading.Event | None = None) -> Iterator[tuple[list[Decision], int]]:
    """Prune every `interval` seconds as checkpoints appear, yielding each pass's decisions and bytes freed.

    Returns as soon as `stop` is set: its wait replaces a sleep, so a stop is seen at once, not after the interval.
    """
    stop = stop if stop is not None else threading.Event()
    i = 0
    while not stop.is_set():
        complete = until_complete and run_is_complete(run_dir)
        # Once the run is complete nothing writes to its checkpoints any more: no need to wait min_age.
        yield prune_run(run_dir, replace(policy, min_age=0.0) if complete else policy, dry_run, stop=stop)
        i += 1
        if complete or (max_iterations is not None and i >= max_iterations) or stop.wait(interval):
            return


class StopFlag(threading.Event):
    """An Event that also remembers which signals set it."""

    def __init__(self) -> None:
        super().__init__()
        self.signals: list[str] = []

    @property
    def reason(self) -> str:
        """'Ctrl-C', 'SIGTERM', or both, in the order they came."""
        return ", ".join(dict.fromkeys(self.signals)) or "stop requested"


class StopOnSignals:
    """Within `with StopOnSignals() as stop:`, Ctrl-C (SIGINT) and SIGTERM set `stop` instead of raising.

    The handlers are installed explicitly because a process started from a non-interactive shell's background job
    inherits SIGINT *ignored*, and Python then never turns Ctrl-C into KeyboardInterrupt: a watcher started that way
    ran forever (issue 15). Setting a flag rather than raising lets the loop stop at a safe point, never between
    renaming a checkpoint away and deleting it. The previous handlers come back on exit.
    """

    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __enter__(self) -> StopFlag:
        """Install the handlers; return the flag they set."""
        self.stop = StopFlag()
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.NAMES}
        return self.stop

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop.signals.append(self.NAMES.get(signum, str(signum)))
        self.stop.set()

    def __exit__(self, *exc: Any) -> None:
        """Restore the previous handlers."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def worth_showing(decisions: list[Decision], shown: list[Decision] | None) -> bool:
    """In a watch loop: show the first plan, then only plans that delete or strip something new."""
    if shown is None:
        return True
    signature = [(d.checkpoint.name, d.action) for d in decisions]
    return signature != [(d.checkpoint.name, d.action) for d in shown] and any(
        d.action in ("delete", "strip") for d in decisions)

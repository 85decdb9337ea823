"""What a run does with the folder it finds: continue it, refuse, or start it again without losing the old one.

* `resume_checkpoint`: the checkpoint to continue from, or None for a new start; a `UserError` wherever going on
  would lose or mix up work: a finished run (unless resume), `resume` with nothing to resume from, settings that
  change the optimisation differing from the run's manifest (`setting_differences`).
* `RunFolder`: one training session's hold on its folder: the lock (rank 0 takes it for every process), a new
  run's folder removed again when it fails before its first checkpoint, an overwritten run moved aside until the
  new one has written its first checkpoint and put back when the new start fails.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from sft.core.config import ExperimentConfig
from sft.data.errors import UserError
from sft.runs.checkpoints import (
    REFUSED,
    checkpoint_step,
    last_complete_checkpoint,
    list_checkpoints,
    run_is_complete,
)
from sft.runs.layout import MANIFEST, run_dir, tensorboard_dir
from sft.runs.safety import RunLock, check_nesting, check_set_aside, drop, move_aside, restore

logger = logging.getLogger("sft")

# Settings that change nothing a checkpoint holds: applied on resume and recorded in the manifest.
HARMLESS = {"train.run_name", "train.model_root", "train.tensorboard_root", "train.logging_steps", "train.eval_steps",
            "train.save_steps", "train.save_total_limit", "train.auto_clean", "train.per_device_eval_batch_size",
            "train.resume", "train.overwrite", "data.cache_dir"}
HARMLESS_EXTRA = ("logging_", "save_", "eval_", "dataloader_", "report_to", "disable_tqdm", "push_to_hub", "hub_")
LENGTH = {"train.max_steps", "train.num_train_epochs"}  # a longer run: only with resume = true, said aloud
# Compared as one number, the global batch (per-device batch x accumulation x processes): a run may move between
# world sizes (2 processes of 4 = 1 process of 8, tested in tests/core/test_distributed.py).
BATCH = ("train.per_device_train_batch_size", "train.gradient_accumulation_steps")
DATA_FINGERPRINTS = ("data_fingerprint", "train_fingerprint", "eval_fingerprint")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("train.auto_clean", "data.column_map", "train.extra"):
            out.update(_flat(v, f"{key}."))
        elif key == "train.extra":
            out.update({f"train.extra.{n}": x for n, x in v.items()})
        else:
            out[key] = v
    return out


def _harmless(key: str) -> bool:
    return key in HARMLESS or (key.startswith("train.extra.") and key[12:].startswith(HARMLESS_EXTRA))


def setting_differences(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(refused, length, harmless) differences between a run's saved config and the new one, as 'key: a -> b'."""
    a, b = _flat(saved), _flat(new)
    refused, length, harmless = [], [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if key in BATCH:
            continue  # see global_batch
        line = f"{key.split('.', 1)[1]}: saved {a.get(key, '(unset)')!r}, now {b.get(key, '(unset)')!r}"
        (harmless if _harmless(key) else length if key in LENGTH else refused).append(line)
    return refused, length, harmless


def _refuse(out: Path, diffs: list[str], what: str = "settings that change the optimisation") -> UserError:
    return UserError(
        f"{out} cannot be resumed with these {what}, which differ from those it was trained with: "
        + "; ".join(diffs) + ". Nothing was "
        "changed. Either continue it with its saved settings (drop these flags or set them to the saved values), "
        "or train it again from the start with the new ones (--overwrite, or overwrite = True; the old run is kept "
        "aside until the new one has saved its first checkpoint); or give the new run another --run-name.")


def global_batch(train: dict[str, Any], world_size: int) -> tuple[int, str]:
    """Examples per optimizer step, and how: '4 x 1 x 2 processes'."""
    b, g = train["per_device_train_batch_size"], train["gradient_accumulation_steps"]
    return b * g * world_size, f"{b} per device x {g} accumulation x {world_size} process(es) = {b * g * world_size}"


def check_settings(cfg: ExperimentConfig, out: Path, world_size: int = 1) -> None:
    """Refuse a resume whose optimisation settings differ from the run's manifest; say which others are applied."""
    manifest = read_saved_manifest(out)
    saved = manifest["config"]
    refused, length, harmless = setting_differences(saved, cfg.to_dict())
    (old, how_old), (new, how_new) = (global_batch(saved["train"], int(manifest.get("world_size", 1))),
                                      global_batch(cfg.to_dict()["train"], world_size))
    if old != new:
        refused.append(f"global batch: saved {how_old}, now {how_new}")
    if length and cfg.train.resume != "true":
        refused += length
    if refused:
        raise _refuse(out, refused)
    if length:
        logger.warning("resume: the run's length changes (%s); the schedule is recomputed for the new length",
                       "; ".join(length))
    if harmless:
        logger.warning("resume: applying changed settings that do not alter the optimisation: %s", "; ".join(harmless))


def read_saved_manifest(out: Path) -> dict[str, Any]:
    """The manifest of a run being resumed; a UserError where it is missing or unreadable: without it the settings
    the checkpoints were trained with cannot be checked, and the new manifest would claim the new ones for the
    whole run."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("config"), dict) and "train" in manifest["config"]:
            return manifest
        problem = "holds no run config"
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, ValueError) as e:
        problem = f"does not parse ({str(e)[:120]})"
    raise UserError(
        f"{out / MANIFEST} {problem}, so the settings {out}'s checkpoints were trained with cannot be checked; "
        f"nothing was changed. Restore the file from a copy, or train the run again from the start (--overwrite, keeping the old run aside until the new one has saved "
        "its first checkpoint), or give the new run another --run-name.")


def check_data(out: Path, info: dict[str, Any]) -> None:
    """Refuse a resume on other data than the run was trained on (fingerprints in its manifest)."""
    saved = read_saved_manifest(out).get("data") or {}
    diffs = [f"{k}: saved {saved[k]}, now {info.get(k)}" for k in DATA_FINGERPRINTS
             if k in saved and saved[k] != info.get(k)]
    if diffs:
        raise _refuse(out, diffs, "data")


def resume_checkpoint(cfg: ExperimentConfig, world_size: int = 1) -> str | None:
    """The checkpoint to continue from, or None to start afresh; an error where that would lose a run's work.

    resume "auto" continues a run that stopped before its end (a crash, a kill, a closed notebook) and refuses a
    finished one; "true" continues any run, and is an error where there is nothing to continue; "false" never
    continues. Only overwrite starts a run again. A resume must keep the settings that shaped the checkpoint.
    """
    out, t = run_dir(cfg), cfg.train
    existing = list_checkpoints(out)
    complete = run_is_complete(out)
    if t.overwrite:
        return None  # a run the user asked to start again
    if not (existing or complete):
        if t.resume == "true":
            raise UserError(f"resume is set, but {out} holds no run to continue (no checkpoint); nothing was "
                             "changed. To start a new run there, drop --resume (resume = \"auto\"); to continue "
                             "another run, check --run-name and --model-root.")
        return None  # a new run
    if t.resume == "true" or (t.resume == "auto" and not complete):
        skipped: list[tuple[Path, str]] = []
        last = last_complete_checkpoint(out, skipped, parse_states=True)
        for path, why in skipped:
            if REFUSED in why:  # not a cut write: a file training never writes; said, never loaded, never skipped
                raise UserError(
                    f"{path}: {why}. Training never writes such a file, and it is not loaded; nothing was changed. "
                    f"Delete {path} (the run then resumes from the complete checkpoint before it) or restore the file "
                    "from a copy you trust; or train the run again from the start (--overwrite).")
            logger.warning("skipping %s: incomplete (%s); resuming from an earlier checkpoint", path, why)
        if last is None and (t.resume == "true" or complete):
            what = "a finished run whose checkpoints were pruned" if complete else "no complete checkpoint"
            raise UserError(f"{out} holds {what}, so there is nothing to resume from; nothing was changed. To "
                             "train it again from the start, set overwrite (--overwrite, or overwrite = True: the "
                             "old run is kept aside until the new one has saved its first checkpoint); or give the "
                             "new run another run_name (--run-name NEW).")
        if last is None:
            logger.warning("%s stopped before its first complete checkpoint: starting it from the base model", out)
            return None
        check_settings(cfg, out, world_size)
        step = json.loads((last / "trainer_state.json").read_text())["global_step"]  # checked: an int >= 0
        if t.max_steps > 0 and step > t.max_steps:
            raise UserError(
                f"{out}'s last complete checkpoint, {last.name}, holds {step} optimizer steps, more than max_steps "
                f"{t.max_steps}: resuming cannot take steps back, and the run would end with the step-{step} weights "
                f"under a manifest saying {t.max_steps}; nothing was changed. To train it further, set --max-steps "
                f"above {step} (or drop it: the saved value); for a {t.max_steps}-step model, use its "
                f"checkpoint-{t.max_steps} where it was kept, or train it again (--overwrite), or give the new run "
                "another --run-name.")
        # A warning, so a notebook shows it: the run continues where it was, not from the base model.
        logger.warning("resuming %s from %s (resume=%s)", out, last.name, t.resume)
        return str(last)
    what = "a finished run" if complete else "a run that was not finished"
    saved = f" (checkpoints: {', '.join(p.name for p in existing)})" if existing else ""
    raise UserError(
        f"{out} already holds {what}{saved}; nothing was changed. To continue it from its last complete "
        "checkpoint, set resume (--resume, or resume = True in a notebook); to train it again from the start, "
        "keeping the old run aside until the new one has saved its first checkpoint, set overwrite (--overwrite, "
        "or overwrite = True); or give the new run another run_name (--run-name NEW)."
    )


def on_rank0(args, fn: Callable[[], Any]) -> Any:
    """Run fn on the main process only; its ValueError is raised on every process (under torchrun, so no rank waits).

    The main process raises the error itself (a bug keeps its traceback); the others a UserError, or a ValueError
    for a bug, with its message."""
    distributed = args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    caught, error, result = None, None, None
    if args.process_index == 0:
        try:
            result = fn()
        except ValueError as e:
            caught, error = e, (isinstance(e, UserError), str(e))
    if distributed:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if caught is not None:
        raise caught
    if error is not None:
        raise (UserError if error[0] else ValueError)(error[1])
    return result


# What a write that ran out of room raises: OSError ENOSPC (or EFBIG past a file-size limit), and, wrapping the same
# error in text, torch.save's zip writer ("PytorchStreamWriter failed writing file ...: unexpected pos") and
# safetensors' Rust writer ("SafetensorError: ... No space left on device (os error 28)").
FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
FULL_TEXT = ("No space left on device", "os error 28", "File too large", "os error 27", "Disk quota exceeded",
             "unexpected pos")


def is_disk_full(error: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) is a write that ran out of room."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return True
        if any(t in str(error) for t in FULL_TEXT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def disk_full(e: BaseException, out: Path) -> UserError:
    """The paragraph for a write that ran out of space: the folder, the space free and needed, what was kept. A
    checkpoint cut short by it (newer than the last complete one) is deleted: it is never resumed from, and it
    holds the space the next try needs."""
    last = last_complete_checkpoint(out) if out.exists() else None
    for ckpt in list_checkpoints(out):
        if last is None or checkpoint_step(ckpt) > checkpoint_step(last):
            shutil.rmtree(ckpt, ignore_errors=True)
    where = out if out.exists() else next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(where).free
    need = folder_bytes(last) if last is not None else None
    kept = (f"its last complete checkpoint, {last.name}, is kept (the one cut short was deleted): free space and run "
            "the same command again to continue from it" if last else
            "it had saved no complete checkpoint yet, so nothing of it was kept")
    size = (f"{free / 2**20:.1f} MiB are free there; each checkpoint of this run takes {need / 2**20:.1f} MiB, and "
            "the final model about half that" if need else f"{free / 2**20:.1f} MiB are free there")
    return UserError(f"No space left on device while training {out} ({getattr(e, 'filename', None) or 'a write'}): "
                     f"{kept}. {size}. Free space (auto_clean.py prunes old checkpoints; --save-total-limit keeps "
                     "fewer) or put runs on another disk with --model-root.")


class RunFolder:
    """One training session's hold on its run folder (see the module docstring); rank 0 acts for every process."""

    def __init__(self, cfg: ExperimentConfig, args) -> None:
        self.cfg, self.args, self.out = cfg, args, run_dir(cfg)
        self.main = args.process_index == 0
        self.lock = RunLock(self.out)
        self.preset_dir = Path(cfg.train.model_root) / cfg.preset
        self.fresh = not self.out.exists()
        self.fresh_tb = not tensorboard_dir(cfg).exists()
        self.old: Path | None = None
        self.old_tb: Path | None = None  # the old run's TensorBoard folder, set aside with it

    def __enter__(self) -> "RunFolder":
        on_rank0(self.args, self._take)
        return self

    def _take(self) -> None:
        """The lock, then the checks that need it held: no run inside this one's folder or around it."""
        self.lock.acquire()
        try:
            check_nesting(self.out, self.preset_dir, self.cfg.train.run_name)
            check_set_aside(self.out, tensorboard_dir(self.cfg))
        except BaseException:
            self.lock.release()
            raise

    def start_over(self) -> None:
        """overwrite: move the old run aside (rank 0), once the model, data and settings are known to be good; the
        folder is checked again just before, so a run started inside it meanwhile is never moved or deleted."""
        if self.cfg.train.overwrite:
            def move() -> tuple[Path | None, Path | None]:
                check_nesting(self.out, self.preset_dir, self.cfg.train.run_name)
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")  # one stamp: the run and its events go together
                return move_aside(self.out, stamp), move_aside(tensorboard_dir(self.cfg), stamp)
            self.old, self.old_tb = on_rank0(self.args, move) or (None, None)

    def saved_checkpoint(self) -> None:
        """The new run is under way: the run moved aside, and its TensorBoard events, are deleted."""
        if self.main and self.old_tb is not None:
            drop(self.old_tb)
            self.old_tb = None
        if self.main and self.old is not None:
            drop(self.old)
            logger.warning("overwrite: the old run %s was deleted (the new run saved its first checkpoint)", self.old)
            self.old = None

    def __exit__(self, kind, error, tb) -> None:
        try:
            if error is not None and self.main:
                kept = last_complete_checkpoint(self.out) if self.out.exists() else None
                if self.old is not None and kept is None:
                    restore(self.out, self.old)
                elif self.fresh and kept is None and self.out.exists():
                    shutil.rmtree(self.out)  # a run that never started leaves no folder behind
                if self.old_tb is not None and kept is None:
                    restore(tensorboard_dir(self.cfg), self.old_tb)
                elif (self.fresh_tb or self.old is not None) and kept is None and tensorboard_dir(self.cfg).exists():
                    shutil.rmtree(tensorboard_dir(self.cfg))  # the failed new start's events
            elif error is None:
                self.saved_checkpoint()  # a run that finished before its first checkpoint
        finally:
            if self.main:
                self.lock.release()
        if error is not None and self.main and not isinstance(error, UserError) and is_disk_full(error):
            raise disk_full(error, self.out) from None

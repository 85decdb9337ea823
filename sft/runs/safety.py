"""Run folders kept safe: run names that stay under the preset's folder, one writer per run folder (a lock with
the writer's pid and host), and a run moved aside, not deleted, while `overwrite` starts it again.

Every failure is a `UserError` (sft.data.errors) that names the fix (exit code 2 on the command line).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import unicodedata
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

from sft.data.errors import UserError
from sft.runs.layout import BUILD_INFO, CHECKPOINT_RE, MANIFEST

logger = logging.getLogger("sft")
LOCK_SUFFIX = ".lock"  # model/<preset>/<run>.lock, beside the run folder: held by the one process writing it
OLD_SUFFIX = ".old-"  # model/<preset>/<run>.old-<timestamp>/: a run being overwritten, until the new one checkpoints
# The longest part of a run name, in bytes: 255 (a file name's limit) less "_finetune_tfb" and ".old-<timestamp>"
# (40), which its TensorBoard folder set aside by --overwrite adds.
MAX_NAME_BYTES = 200


# ---------------------------------------------------------------- run names


def check_run_name(name, preset_dir: str | Path, base_dirs: tuple[str | Path, ...] = ()) -> Path:
    """The run folder of `name` under `preset_dir`, or a ValueError: a run name is a plain name or a relative
    path below the preset's folder; never empty, absolute, with `..`, or the base model's folder."""
    fix = "give a plain name such as --run-name my-run (or a relative path under it, such as sweep-1/plw0.1)"
    text = "" if name is None else str(name)
    if not text.strip():
        raise UserError(f"The run name is empty, so the run would write into {preset_dir}/ itself: {fix}.")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or text.startswith("~"):
        raise UserError(f"The run name {text!r} is an absolute path: runs are written under {preset_dir}/ only; "
                         f"{fix}, or move every run with --model-root.")
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not parts or any(p in ("..", ".") for p in parts) or text != text.strip():
        raise UserError(f"The run name {text!r} leaves or aliases its folder ({preset_dir}/): {fix}.")
    bad = sorted({c for c in text if unicodedata.category(c)[0] == "C"})
    if bad:  # a newline or a control character would split or garble the logs, the lock and every message
        raise UserError(f"The run name {text!r} holds control characters ({', '.join(map(repr, bad))}): {fix}.")
    long = [p for p in parts if len(p.encode()) > MAX_NAME_BYTES]
    if long:  # the file system takes 255 bytes a name, and the run's TensorBoard folder set aside adds 40
        raise UserError(f"The run name {text[:60]!r}... has a part of {len(long[0].encode())} bytes; at most "
                        f"{MAX_NAME_BYTES} bytes a part (the folder, its lock, its TensorBoard folder and the copy "
                        f"set aside by --overwrite add their suffixes to it): {fix}.")
    if any(p.endswith(LOCK_SUFFIX) or OLD_SUFFIX in p for p in parts):
        raise UserError(f"The run name {text!r} ends like the project's own lock or set-aside folders: {fix}.")
    out = Path(preset_dir) / text
    resolved = out.resolve()
    for base in (Path(b) for b in base_dirs if b):
        b = base.resolve()
        if resolved == b or b in resolved.parents or resolved in b.parents:
            raise UserError(f"The run name {text!r} is the base model's folder ({base}): training there would "
                             f"replace the weights every run starts from; {fix}.")
    if (out / BUILD_INFO).is_file():
        raise UserError(f"{out} holds a base model built by the project ({BUILD_INFO}), not a run: {fix}.")
    return out


def _holds_run(folder: Path, own_name: str | None = None) -> bool:
    """Whether a folder is (or is being) a run: its lock beside it, a checkpoint-N inside, or a manifest of a run
    other than `own_name` (a LoRA run's merged/ copy carries its own run's manifest)."""
    if lock_path(folder).exists() or any(p.is_dir() and CHECKPOINT_RE.match(p.name) for p in folder.iterdir()):
        return True
    try:
        return json.loads((folder / MANIFEST).read_text()).get("run_name") != own_name
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True  # a manifest that does not parse is still a run's


def check_nesting(run: str | Path, preset_dir: str | Path, name: str) -> None:
    """A UserError where run `name` would sit inside another run's folder, or its folder holds another run:
    `--run-name a/b` beside a run `a`, or `a` over a run `a/b` (an overwrite of `a` would move `a/b` aside and delete
    it, checkpoints, lock and all, even while it trains). Checked once the run's own lock is held, so of two runs
    starting at once, nested, at least one sees the other's lock."""
    run, preset_dir = Path(run), Path(preset_dir)
    fix = ("nothing was changed. Give this run a name that neither holds nor sits inside another run "
           "(--run-name NEW); run names may be paths, but one run's folder never holds another's")
    for parent in run.parents:
        if parent == preset_dir or preset_dir not in parent.parents:
            break
        if parent.is_dir() and _holds_run(parent):
            raise UserError(f"{run} would be inside the folder of the run {parent}: {fix}.")
    if not run.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(run):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not CHECKPOINT_RE.match(d)]  # the run's own checkpoints
        inner = [here / f[: -len(LOCK_SUFFIX)] for f in filenames if f.endswith(LOCK_SUFFIX)]
        if here != run and _holds_run(here, name):
            inner.append(here)
        if inner:
            raise UserError(f"{run} holds another run, {inner[0]}: {fix}; or move that run out of it first.")


# ---------------------------------------------------------------- one writer per run folder


def _start_time(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, /proc on Linux), so a reused pid is not taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid, started: str | None) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:  # os.kill(-1, 0) would ask about every process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    now = _start_time(pid)
    return started is None or now is None or now == started


def lock_path(run: str | Path) -> Path:
    """model/<preset>/<run>.lock: beside the run folder, so moving the run aside keeps the lock in place."""
    run = Path(run)
    return run.parent / f"{run.name}{LOCK_SUFFIX}"


class RunLock:
    """An exclusive lock on a run folder, taken before anything is written and released on every exit.

    The lock is `fcntl.flock` on the lock file, so taking it is atomic and the kernel frees it when its process dies
    (kill -9, a crash): two processes meeting the same stale lock cannot both hold it, as they could when a stale
    file was read, deleted and created again. The file holds the holder's pid, host, start time and command, for the
    messages. Only the holder deletes it, while still holding it; a process that locked a file deleted meanwhile
    (the holder releasing) sees another inode at the path and tries again. A lock file whose process is gone is
    taken over with a message; one written on another host (whose process cannot be checked, and whose flock a
    network file system may not share) is refused, naming it.
    """

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.path = lock_path(run)
        self.made_parent: list[Path] = []
        self.held = False
        self.fd: int | None = None

    def describe(self, info: dict) -> str:
        return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started', '?')}"
                + (f": {info['command']}" if info.get("command") else ""))

    def _busy(self, info: dict | None) -> UserError:
        self._cleanup_parents()
        who = self.describe(info) if info else "a process that has not written its name yet"
        return UserError(
            f"{self.run} is being written by another training process ({who}); nothing was changed. Wait for it to "
            f"finish or stop it, or give this run another name (--run-name NEW). If that process is surely gone "
            f"(e.g. another host that crashed), delete {self.path}.")

    def acquire(self) -> "RunLock":
        parent = self.path.parent
        missing = [p for p in (parent, *parent.parents) if not p.exists()]
        parent.mkdir(parents=True, exist_ok=True)
        self.made_parent = missing  # removed again on release when empty: a refused run leaves no folder
        me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _start_time(os.getpid()),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)[:300]}
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(self._read()) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (deleting the file) between our open and our lock: again
                os.close(fd)
                continue
            info = self._read()
            if info is not None and (info.get("host") not in (None, me["host"]) or _alive(
                    info.get("pid"), info.get("proc_start"))):  # another host's; or written without flock
                os.close(fd)
                raise self._busy(info)
            if info is not None:
                logger.warning("taking over the stale lock %s of a process that is gone (%s)", self.path,
                               self.describe(info))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
            self.fd, self.held = fd, True
            return self
        self._cleanup_parents()
        raise UserError(f"Could not take the lock {self.path} (other processes keep taking it); try again.")

    def _read(self) -> dict | None:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return info if isinstance(info, dict) else None

    def _cleanup_parents(self) -> None:
        for p in self.made_parent:  # innermost first
            try:
                p.rmdir()
            except OSError:
                break

    def release(self) -> None:
        """Delete the lock file while still holding it, and only if it is still ours (the same inode)."""
        if not self.held:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd, self.held = None, False
        self._cleanup_parents()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- overwrite: move aside, then delete


def set_aside(folder: str | Path) -> list[Path]:
    """The <folder>.old-<timestamp>/ folders beside a folder: what an --overwrite killed before its new run's first
    checkpoint left (it is deleted at that checkpoint)."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return []
    return sorted(p for p in folder.parent.glob(f"{glob_escape(folder.name)}{OLD_SUFFIX}*") if p.is_dir())


def glob_escape(name: str) -> str:
    """A name with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def check_set_aside(run: str | Path, tensorboard: str | Path) -> None:
    """A UserError naming a run (and its TensorBoard folder) left set aside by an --overwrite that was stopped
    before its first checkpoint, with the commands to restore or delete it: a re-run had silently started from
    the base model, and --resume said there was nothing to continue."""
    run, tensorboard = Path(run), Path(tensorboard)
    old, old_tb = set_aside(run), set_aside(tensorboard)
    if not old and not old_tb:
        return
    stamp = (old or old_tb)[-1].name.rsplit(OLD_SUFFIX, 1)[1]
    moves = [(old[-1], run)] if old else []
    moves += [(p, tensorboard) for p in old_tb if p.name.endswith(stamp)]
    restore_cmd = " && ".join(f"rm -rf '{dst}' && mv '{src}' '{dst}'" for src, dst in moves)
    delete_cmd = "rm -rf " + " ".join(f"'{p}'" for p in old + old_tb)
    raise UserError(
        f"{(old or old_tb)[-1]} holds the run {run} had before an --overwrite that stopped before the new run's first "
        f"checkpoint (the old run is kept until then); nothing was changed. To get the old run back: {restore_cmd} ; "
        f"to drop it and keep what is at {run}: {delete_cmd} ; then run this command again.")


def move_aside(run: str | Path, stamp: str | None = None) -> Path | None:
    """Rename a run folder (or its TensorBoard folder) to <run>.old-<timestamp>/ (None when there is nothing to
    move)."""
    run = Path(run)
    if not run.exists() or not any(run.iterdir()):
        return None
    stamp = stamp or datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    old = run.parent / f"{run.name}{OLD_SUFFIX}{stamp}"
    run.rename(old)
    logger.warning("overwrite: %s moved aside to %s until the new run has written its first checkpoint", run, old)
    return old


def restore(run: str | Path, old: Path | None) -> None:
    """Put a run moved aside back, dropping what the failed new start wrote."""
    if old is None or not old.exists():
        return
    run = Path(run)
    if run.exists():
        shutil.rmtree(run)
    old.rename(run)
    logger.warning("the new start failed: %s restored from %s", run, old.name)


def drop(old: Path | None) -> None:
    """Delete a run moved aside, once the new one is safely under way."""
    if old is not None and old.exists():
        shutil.rmtree(old)

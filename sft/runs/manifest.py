"""The run manifest: what a run was (config, data, versions, commit), read back by evaluation and reports."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock

from sft.data.errors import UserError
from sft.runs.layout import BUILD_INFO, MANIFEST, REPO_ROOT, SWEEP_SESSIONS

# The optimiser's regime over every step of a run (sft.core.trainer, in results.train): the share of steps whose gradient
# norm exceeded max_grad_norm (clipped), the median norm before clipping, and how many steps they cover.
CLIPPING_STATS = ("train_grad_clipped_share", "train_grad_norm_median", "train_grad_norm_steps")
PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "lm-eval")  # versions recorded


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, where platform.processor() is often empty), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"  # (platform.processor() would launch `uname -p`)


def machine_info() -> dict[str, Any]:
    """Where a result was computed: CPU model, logical cores, the threads torch uses (what a wall time depends on)."""
    import torch  # here, not at the top: reading a manifest must not import torch

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "system": f"{os.uname().sysname} {os.uname().release}"}


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would type it: 'python -m sft sweep ...' (python -m's argv[0] is the
    package's __main__.py path), else 'python <script> ...'."""
    argv = list(sys.argv if argv is None else argv)
    head = ["python", "-m", "sft"] if argv and argv[0].endswith(os.path.join("sft", "__main__.py")) else \
        ["python", argv[0]] if argv else ["python"]
    return shlex.join(head + argv[1:])


def git_commit() -> str:
    """The project's commit, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    root = REPO_ROOT
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def recorded_weights_sha256(model_dir: str | Path) -> str | None:
    """The weights_sha256 a base built by the project records in its build_info.json (checked against its
    model.safetensors before every run: sft.models.checks.check_base_weights); None for any other model."""
    try:
        return json.loads((Path(model_dir) / BUILD_INFO).read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError):
        return None


def write_manifest(run_dir: str | Path, cfg, data_info: dict[str, Any], status: str,
                   results: dict[str, Any] | None = None, world_size: int = 1,
                   segments: list[dict[str, Any]] | None = None) -> Path:
    """Write run_manifest.json: the full config, data fingerprints, versions, commit, status, and the run's
    sessions (segments: each start or resume, its settings and the steps it took)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "status": status,  # "training" until the final model is saved, then "complete"
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "preset": cfg.preset,
        "run_name": cfg.train.run_name,
        "prompt_loss_weight": cfg.data.prompt_loss_weight,
        "template": cfg.data.template,
        "config": cfg.to_dict(),
        # the weights the run started from, where the base records them (a base the project built): two builds of one
        # fingerprint can differ in the last bits (pretraining at 1 or 2 torch threads), so the path alone is not enough
        "base_weights_sha256": recorded_weights_sha256(cfg.model.model),
        "world_size": world_size,  # processes: the global batch is per-device batch x accumulation x world_size
        "data": data_info,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": machine_info(),  # CPU model, cores, torch threads: what the run's wall time depends on
        "command": command_line(),  # the command that wrote this manifest (a sweep's, for its runs)
        "results": results or {},
        # One entry per training session, oldest first: started_at, resumed_from (a checkpoint, or null for a start
        # from the base), from_step, to_step (null while training, or where the session stopped before its end: the
        # next one's from_step says which of its steps the run kept), world_size and the session's full config.
        "segments": segments or [],
    }
    path = run_dir / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(path)  # atomic: a reader never sees half a manifest
    return path


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's manifest, with a clear error when the folder is not a run of this project."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{run_dir} has no {MANIFEST}: it is not a finished run of this project "
                         "(train one with `python -m sft train`, or pass the base model's folder).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run the training or restore the file.") from None


# A sweep's sessions (sft.studies.sweep): each invocation's command, commit, machine, start, end and wall seconds, in
# the sweep's provenance.json, published with it and read by `sft pages provenance`.


def _read_sessions(root: Path) -> list[dict]:
    path = root / SWEEP_SESSIONS
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["sessions"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a sweep's session record ({e}): restore it from git, or delete it (the "
                         "provenance of the sessions so far is then lost).") from None


def _write_sessions(root: Path, sessions: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (SWEEP_SESSIONS + ".tmp")
    tmp.write_text(json.dumps({"sessions": sessions}, indent=2))
    tmp.replace(root / SWEEP_SESSIONS)  # atomic: an interrupted write leaves the previous record


def _sessions_lock(root: Path) -> FileLock:
    """Two processes on one sweep (disjoint --seeds) read and rewrite provenance.json one at a time."""
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / (SWEEP_SESSIONS + ".lock")))


def start_session(root: Path) -> tuple[int, float]:
    """Append this invocation to a sweep's provenance.json (command, commit, machine, start); (its index, start)."""
    record = {"command": command_line(), "git_commit": git_commit(), "machine": machine_info(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished_at": None,
              "wall_seconds": None}  # stays None where the session was interrupted
    with _sessions_lock(root):
        sessions = _read_sessions(root)
        sessions.append(record)
        _write_sessions(root, sessions)
    return len(sessions) - 1, time.perf_counter()


def end_session(root: Path, session: tuple[int, float]) -> None:
    """Record the session's end and wall time (every pair trained, evaluated or skipped, and the summary)."""
    index, start = session
    with _sessions_lock(root):
        sessions = _read_sessions(root)
        sessions[index].update(finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               wall_seconds=round(time.perf_counter() - start, 1))
        _write_sessions(root, sessions)

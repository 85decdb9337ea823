"""Checkpoint folders written by the Trainer: which exist, which are complete, which is last; a finished run."""

from __future__ import annotations

import json
from pathlib import Path

from sft.runs.layout import CHECKPOINT_RE, MANIFEST

# One of these holds the weights: a full model (one file or a sharded index), or a LoRA run's adapter.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
STATE_FILE = "trainer_state.json"  # written by the Trainer after the weights, optimizer and RNG states


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """checkpoint-N folders of a run, in step order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def checkpoint_step(path: str | Path) -> int:
    """The global step in a checkpoint folder's name."""
    return int(CHECKPOINT_RE.match(Path(path).name).group(1))


def is_complete(path: str | Path) -> bool:
    """True when the weights and the trainer state are both on disk (the state is saved last)."""
    path = Path(path)
    return (path / STATE_FILE).is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def can_resume_from(path: str | Path) -> bool:
    """True when a checkpoint also has the optimizer and scheduler states that resuming needs."""
    path = Path(path)
    return is_complete(path) and (path / "optimizer.pt").is_file() and (path / "scheduler.pt").is_file()


def last_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that training can resume from (a half-written one is skipped)."""
    for path in reversed(list_checkpoints(run_dir)):
        if can_resume_from(path):
            return path
    return None


def run_is_complete(run_dir: str | Path) -> bool:
    """True once the run's manifest says training finished (it is written after the final save)."""
    try:
        return json.loads((Path(run_dir) / MANIFEST).read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False

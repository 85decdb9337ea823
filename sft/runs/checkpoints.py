"""Checkpoint folders written by the Trainer: which exist, which are complete, which is last; a finished run."""

from __future__ import annotations

import json
import re
import zipfile
import struct
from pathlib import Path

from sft.runs.layout import CHECKPOINT_RE, MANIFEST

# One of these holds the weights: a full model (one file or a sharded index), or a LoRA run's adapter.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
STATE_FILE = "trainer_state.json"  # written by the Trainer after the weights, optimizer and RNG states
FSDP_WEIGHTS = "pytorch_model_fsdp_0"  # FSDP's SHARDED_STATE_DICT weights: a torch.distributed.checkpoint folder
SHARDED_OPTIMIZER = ("optimizer_0", "global_step*")  # FSDP's sharded optimizer; DeepSpeed ZeRO's global_stepN/


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


def safetensors_problem(file: str | Path) -> str | None:
    """Why a safetensors file cannot be opened (a missing, cut or garbled header, data shorter than the header
    says), or None: reads the header only, never the tensors."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{file.name} is cut short ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                return f"{file.name} has a header longer than the file: cut short"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"{file.name} cannot be read ({e.strerror or e})"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{file.name} has an unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) > size:
        return f"{file.name} is cut short (its header promises more data than the file holds)"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why a checkpoint is incomplete, or None: its trainer state must parse, with a global_step that is a whole
    number >= 0 equal to the N of its folder's name (a damaged -5 trained 125 steps more and repeated 1-60), and its
    weights must open."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or "global_step" not in state:
            return f"{STATE_FILE} holds no trainer state (no global_step)"
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (OSError, ValueError, UnicodeDecodeError) as e:  # ValueError: JSON errors, and numbers too long to read
        return f"{STATE_FILE} does not parse ({str(e)[:120]})"
    step = state["global_step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"{STATE_FILE} has global_step {str(step)[:40]!r}, not a whole number >= 0"
    if CHECKPOINT_RE.match(path.name) and step != checkpoint_step(path):
        return f"{STATE_FILE} has global_step {str(step)[:40]}, not the {checkpoint_step(path)} of its folder's name"
    return weights_problem(path)


REFUSED = "refused by torch.load(weights_only=True)"  # a state file holding more than tensors and plain data


def torch_state_problem(file: Path) -> str | None:
    """Why a torch.save'd state that resuming loads (optimizer, scheduler, RNG) does not load, or None. Loaded as
    the Trainer loads it (weights_only, with its numpy allowlist) but memory-mapped: the pickle and the zip's
    directory are read, not the tensors, so a cut file is found without reading gigabytes."""
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():
            torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        # torch's text goes on to suggest weights_only=False, which would run whatever the file holds: only the
        # line naming what was refused is kept.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"{found.group(1)}, which is never loaded" if found else "objects outside the allowlist"
        return f"{file.name} was {REFUSED}: it holds objects other than tensors and plain data ({what})"
    except Exception as e:  # a cut or garbled file: RuntimeError (zip), EOFError, ...
        return f"{file.name} does not load ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return None


def weights_problem(path: str | Path) -> str | None:
    """Why a checkpoint's weights cannot be opened (none there, a cut or garbled safetensors file), or None."""
    path = Path(path)
    present = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not present and (path / FSDP_WEIGHTS / ".metadata").is_file():
        return None  # sharded by FSDP: torch.distributed.checkpoint writes .metadata after the shards
    if not present:
        return "no weights (" + " or ".join(WEIGHT_FILES) + f" or {FSDP_WEIGHTS}/)"
    for name in present:
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads((path / name).read_text())["weight_map"].values()))
            except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
                return f"{name} does not parse"
            problems = [safetensors_problem(path / s) for s in shards]
        else:
            problems = [safetensors_problem(path / name)]
        if any(problems):
            return next(p for p in problems if p)
    return None


def can_resume_from(path: str | Path) -> bool:
    """True when a checkpoint also has the optimizer and scheduler states that resuming needs."""
    return resume_problem(path) is None


def resume_problem(path: str | Path) -> str | None:
    """Why training cannot resume from a checkpoint (incomplete, or its optimizer or scheduler state missing)."""
    path = Path(path)
    missing = [f for f in ("optimizer.pt", "scheduler.pt") if not (path / f).is_file() or not (path / f).stat().st_size]
    if "optimizer.pt" in missing and any(p.is_dir() for pattern in SHARDED_OPTIMIZER for p in path.glob(pattern)):
        missing.remove("optimizer.pt")  # the optimizer sharded (FSDP, DeepSpeed ZeRO)
    problem = checkpoint_problem(path) or (f"no {' or '.join(missing)}" if missing else None)
    if problem:
        return problem
    for file in state_files(path):  # every torch.save'd file the resume reads: whole, by its zip directory
        problem = zip_problem(file)
        if problem:
            return problem
    return None


def state_files(path: Path) -> list[Path]:
    """The torch.save'd files of a checkpoint that resuming loads: optimizer, scheduler, RNG states."""
    states = [path / f for f in ("optimizer.pt", "scheduler.pt") if (path / f).is_file()]
    return states + sorted(path.glob("rng_state*.pth"))


def zip_problem(file: Path) -> str | None:
    """Why a torch.save'd file is not whole (a write cut short: no zip directory at its end, or members reaching
    past it), or None. Reads the zip directory only, without torch: pruning checks every checkpoint with it."""
    try:
        size = file.stat().st_size
        with zipfile.ZipFile(file) as z:
            members = z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"{file.name} is cut short or garbled ({str(e)[:80]})"
    if not any(m.filename.endswith("data.pkl") for m in members):
        return f"{file.name} is not a torch.save file (no data.pkl)"
    if any(m.header_offset + m.compress_size > size for m in members):
        return f"{file.name} is cut short (a member reaches past its end)"
    return None


def last_complete_checkpoint(run_dir: str | Path, skipped: list[tuple[Path, str]] | None = None,
                             parse_states: bool = False) -> Path | None:
    """The newest checkpoint that training can resume from (a half-written or damaged one is skipped, and added
    to `skipped` with the reason when a list is given). parse_states: also load each optimizer, scheduler and RNG
    state as the resume will (torch.load, weights_only), memory-mapped: what a resume decides by."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = resume_problem(path)
        if problem is None and parse_states:
            problem = next(filter(None, (torch_state_problem(f) for f in state_files(path))), None)
        if problem is None:
            return path
        if skipped is not None:
            skipped.append((path, problem))
    return None


def run_is_complete(run_dir: str | Path) -> bool:
    """True once the run's manifest says training finished (it is written after the final save)."""
    try:
        return json.loads((Path(run_dir) / MANIFEST).read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False

"""A training run that pauses after a given step until its watcher has pruned: makes the watch test deterministic.

    python tests/paused_train.py READY_FILE PAUSE_STEP GONE_CHECKPOINT OVERRIDES_JSON

Trains the demo preset like `python -m sft train` (OVERRIDES_JSON: config overrides as a JSON object). After the
checkpoint of PAUSE_STEP is saved it waits until GONE_CHECKPOINT (e.g. checkpoint-2) has been deleted by the
watcher under test, writes READY_FILE and sleeps until the test kills it: a training run caught mid-way, whatever
the relative speed of training and watcher on a loaded machine.
"""

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from sft.core.overrides import load_config
from sft.runs.layout import run_dir
from sft.core.train import train

WAIT_FOR_PRUNE = 120.0  # seconds; the watcher prunes within a second or two, this only bounds a broken one


class PauseAfterPruned(TrainerCallback):
    """After saving step `step`, wait for `gone` to disappear, write `ready`, then sleep until killed."""

    def __init__(self, ready: Path, step: int, gone: Path) -> None:
        self.ready, self.step, self.gone = ready, step, gone

    def on_save(self, args, state, control, **kwargs):
        if state.global_step < self.step:
            return
        deadline = time.time() + WAIT_FOR_PRUNE
        while self.gone.exists() and time.time() < deadline:
            time.sleep(0.05)
        self.ready.write_text("pruned" if not self.gone.exists() else "timeout: the watcher pruned nothing")
        time.sleep(3600)


if __name__ == "__main__":
    ready, step, gone, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    cfg = load_config("demo", **overrides)
    train(cfg, callbacks=[PauseAfterPruned(ready, step, run_dir(cfg) / gone)])

"""The pruning policy (sft.runs.prune) inside a training run: a Trainer callback, switched on by
`TrainConfig.auto_clean`, that prunes after every checkpoint save."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from sft.data.errors import UserError
from sft.runs.prune import (
    Decision,
    PrunePolicy,
    format_plan,
    policy_from_config,
    prune_run,
)

# ---------------------------------------------------------------- inside a training run


def auto_clean_callback(settings: dict[str, Any], log: Callable[[str], None] = print):
    """The AutoCleanCallback for `TrainConfig.auto_clean` settings."""
    return _callback_class()(policy_from_config(settings), log)


@functools.cache
def _callback_class() -> type:
    """Build AutoCleanCallback once, on first use, so auto_clean.py starts without importing transformers."""
    from transformers import TrainerCallback

    class AutoCleanCallback(TrainerCallback):
        """Prunes the run's checkpoints after every save, on the main process only."""

        def __init__(self, policy: PrunePolicy, log: Callable[[str], None] = print) -> None:
            self.policy = replace(policy, min_age=0.0)  # on_save comes after the checkpoint is fully written
            self.log = log
            self.history: list[list[Decision]] = []  # one plan per save
            self.freed = 0

        def on_save(self, args, state, control, **kwargs):
            """Prune after a checkpoint is saved; a damaged checkpoint is reported, never fatal to training."""
            if not state.is_world_process_zero:
                return
            protected = (Path(state.best_model_checkpoint).name,) if state.best_model_checkpoint else ()
            try:
                decisions, freed = prune_run(args.output_dir, self.policy, protected=protected)
            except UserError as e:
                self.log(f"auto_clean: skipped at step {state.global_step}: {e}")
                return
            self.history.append(decisions)
            self.freed += freed
            changed = [d for d in decisions if d.action in ("delete", "strip")]
            if changed:
                self.log(f"auto_clean at step {state.global_step}:\n" + format_plan(changed))

    return AutoCleanCallback


def __getattr__(name: str):
    """`sft.runs.callbacks.AutoCleanCallback`, built on first access."""
    if name == "AutoCleanCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

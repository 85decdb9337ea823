"""Checks of setting values before anything is written, and a notebook's `overrides` read as a dict.

A value the Trainer would accept silently (save_steps 0) or fail on late, after the run folder exists (batch
size 0, a negative learning rate), is a `UserError` naming the fix here, when the config is built.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sft.data.errors import UserError


def check_train_values(self) -> None:  # self: a TrainConfig
    """Values the Trainer would take silently or fail on late (after the run folder exists): errors now."""
    at_least_one = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "logging_steps", "eval_steps", "save_steps")
    for name in at_least_one:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be a whole number of at least 1, got {value!r}: set "
                             f"--{name.replace('_', '-')} N with N >= 1 (e.g. the preset's value).")
    for name in ("learning_rate", "weight_decay", "max_grad_norm"):
        value = getattr(self, name)
        # inf trained to exit 0 with every parameter NaN: refused as a value, like a negative one.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"{name} must be a finite number >= 0, got {value!r}: set --{name.replace('_', '-')} "
                            "to a non-negative value (e.g. --learning-rate 2e-5).")
    if not 0 <= self.warmup_ratio < 1:
        raise UserError(f"warmup_ratio is a share of the steps in [0, 1), got {self.warmup_ratio!r}: e.g. "
                         "--warmup-ratio 0.03.")
    if self.max_steps == 0 or self.max_steps < -1:
        raise UserError(f"max_steps must be -1 (train num_train_epochs) or at least 1, got {self.max_steps!r}.")
    if self.max_steps == -1 and not self.num_train_epochs > 0:
        raise UserError(f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs!r}: "
                         "set --num-train-epochs or --max-steps.")
    if self.save_total_limit is not None and self.save_total_limit < 1:
        raise UserError(f"save_total_limit must be None (keep all) or at least 1, got {self.save_total_limit!r}.")
    if not isinstance(self.extra, dict):
        raise UserError(f"extra must be a dict of TrainingArguments fields, got {self.extra!r}: e.g. "
                         "--extra optim=adamw_torch_fused, or give the field as its own flag (--optim ...).")


def read_overrides(overrides: Any) -> dict[str, Any]:
    """A notebook's `overrides`: a dict, None, or a JSON object as text (papermill `-p overrides '{...}'`)."""
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides) if overrides.strip() else {}
        except json.JSONDecodeError as e:
            raise UserError(f"overrides {overrides!r} is not a JSON object ({e}): give a dict, e.g. "
                             "overrides = {\"max_steps\": 20}, or with papermill -p overrides "
                             "'{\"max_steps\": 20}'.") from None
    if not isinstance(overrides, dict):
        raise UserError(f"overrides must be a dict of settings, e.g. {{\"max_steps\": 20}}, got {overrides!r}.")
    return overrides

"""Batching: turn tokenized examples into padded tensors.

The attention mask comes from each example's length, never from `input_ids != pad_id`:
with pad == eos (Qwen2.5) that test would also hide every real EOS from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.data import IGNORE_INDEX

PAD_VALUES = {"labels": IGNORE_INDEX, "loss_weights": 0.0, "response_mask": 0}  # input_ids take pad_token_id


@dataclass
class WeightedLMCollator:
    """Dynamic padding to the longest example of the batch (right padding, for training)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None  # e.g. 8 for tensor cores; None = no rounding

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(ex["input_ids"]) for ex in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {}
        for key, pad in (("input_ids", self.pad_token_id), *PAD_VALUES.items()):
            dtype = torch.float32 if key == "loss_weights" else torch.long
            out = torch.full((len(examples), width), pad, dtype=dtype)
            for i, ex in enumerate(examples):
                out[i, : lengths[i]] = torch.as_tensor(ex[key], dtype=dtype)
            batch[key] = out
        batch["attention_mask"] = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        return batch

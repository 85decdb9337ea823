"""Batching: turn tokenized examples into padded tensors.

The attention mask comes from each example's length, never from `input_ids != pad_id`:
with pad == eos (Qwen2.5) that test would also hide every real EOS from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.core.weights import IGNORE_INDEX
from sft.data.mixture import SOURCE

# input_ids take pad_token_id. weight_codes and weight_scale are what the loss recomputes each step's weights from
# (sft.core.weights.step_weights); loss_weights are those at the run's starting w (what held-out metrics read).
PAD_VALUES = {"labels": IGNORE_INDEX, "loss_weights": 0.0, "response_mask": 0, "weight_codes": 0, "weight_scale": 0.0}
FLOAT_COLUMNS = ("loss_weights", "weight_scale")


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
            if key not in examples[0]:
                continue
            dtype = torch.float32 if key in FLOAT_COLUMNS else torch.long
            out = torch.full((len(examples), width), pad, dtype=dtype)
            for i, ex in enumerate(examples):
                out[i, : lengths[i]] = torch.as_tensor(ex[key], dtype=dtype)
            batch[key] = out
        batch["attention_mask"] = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        if SOURCE in examples[0]:  # a mixture: each token's source (padding's is 0, and weighs nothing)
            batch[SOURCE] = torch.tensor([ex[SOURCE] for ex in examples])[:, None].expand(-1, width).contiguous()
        return batch


@dataclass
class PackedWeightedLMCollator:
    """Padding-free packing: a batch's examples concatenated into one row, position_ids restarting at 0.

    The model gets no attention mask, so transformers finds the example boundaries from the
    position_ids and keeps examples from attending to each other (a block-diagonal mask with
    SDPA, variable-length kernels with FlashAttention). The batch holds the same examples as
    in the padded modes, so every batching mode makes the same optimizer steps. Written here
    rather than using transformers' DataCollatorWithFlattening because the loss needs the
    weight columns carried along.
    """

    pad_token_id: int  # unused (nothing is padded); kept so both collators build the same way

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in ("input_ids", *(k for k in PAD_VALUES if k in examples[0])):
            dtype = torch.float32 if key in FLOAT_COLUMNS else torch.long
            batch[key] = torch.cat([torch.as_tensor(ex[key], dtype=dtype) for ex in examples])[None, :]
        batch["position_ids"] = torch.cat([torch.arange(len(ex["input_ids"])) for ex in examples])[None, :]
        if SOURCE in examples[0]:  # a mixture: each token's source
            batch[SOURCE] = torch.cat([torch.full((len(ex["input_ids"]),), ex[SOURCE]) for ex in examples])[None, :]
        return batch

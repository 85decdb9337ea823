"""Attention over packed rows without a quadratic mask: one causal SDPA call per packed example.

transformers keeps packed examples apart (found from position_ids restarting at 0) with a
block-diagonal mask when no attention mask is passed, but SDPA then computes the full
row x row score matrix and throws most of it away: on the CPU that makes packing the slowest
batching mode. FlashAttention's variable-length kernel avoids that on a GPU; this is the same
idea for any device: split the row at the example boundaries and run causal SDPA on each.
Registered under the name "sdpa_varlen" through transformers' AttentionInterface; padded
batches fall through to transformers' own SDPA path with its usual mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_varlen"  # the attn_implementation name to pass to from_pretrained or set_attn_implementation


def segment_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each packed example in a [1, T] row of position ids."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    ends = starts[1:] + [position_ids.shape[1]]
    return list(zip(starts, ends))


def sdpa_varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Causal attention per packed example; anything else goes to transformers' SDPA."""
    position_ids = kwargs.get("position_ids")
    packed = (
        attention_mask is None or attention_mask.dim() == 4  # the block mask transformers built for the packed row
    ) and position_ids is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    bounds = segment_bounds(position_ids) if packed else []
    if len(bounds) <= 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    enable_gqa = query.shape[1] != key.shape[1]  # grouped-query attention: fewer key/value heads
    out = torch.cat([
        F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                       scale=scaling, dropout_p=dropout if module.training else 0.0,
                                       enable_gqa=enable_gqa)
        for s, e in bounds
    ], dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_varlen_attention)
# Padded batches still need transformers' SDPA mask (padding + causal); packed rows ignore it.
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)

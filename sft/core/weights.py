"""Weights from roles: the tokenized columns (role, turn, message weight and reply-closing flag per token, a row's
sample weight) -> loss weights, when the batch is built and the loss computed, under one WeightSpec (sft.data.weights).

`add_weight_columns` gives a tokenized table its weights at the spec's starting w, for everything that reports on
them (held-out metrics, inspect-data, plan, the notebooks' plots): labels, loss_weights, response_mask, and the
two columns the loss recomputes a step's weights from, `weight_codes` (the role, an untrained reply apart) and
`weight_scale` (the message's own weight). `step_weights` is that recomputation at any w, in torch: the same
table, so training and reports agree token for token.
"""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from sft.data.mixture import SOURCE
from sft.data.weights import SAMPLE_WEIGHT, WeightSpec, static_columns

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
WEIGHT_COLUMNS = ("labels", "loss_weights", "response_mask", "weight_codes", "weight_scale")


def add_weight_columns(table: pa.Table, spec: WeightSpec, w: float | None = None) -> pa.Table:
    """The tokenized table (tokenize_roles_batch's columns) with its weight columns under `spec` at prompt weight
    w (default: spec.prompt_loss_weight). Labels are the ids, IGNORE_INDEX where the weight is 0 (not shifted)."""
    table = table.drop_columns([c for c in WEIGHT_COLUMNS if c in table.column_names])
    ids_col = table.column("input_ids").combine_chunks()
    offsets = ids_col.offsets
    n = len(ids_col)
    flat = lambda name: np.asarray(table.column(name).combine_chunks().flatten())  # noqa: E731
    ids, roles, turns, msg = flat("input_ids"), flat("roles"), flat("turns"), flat("message_weights")
    eot, empty = spec.end_of_turn, spec.empty_reasoning
    # The marks are read where a setting weighs them: an --end-of-turn other than turn, or an empty reasoning block
    # (ignored by default) that only conversations can hold.
    needed = "marks" in table.column_names and (eot != "turn" or (empty == "ignore" and pc.any(table.column("chat")).as_py()))
    marks = flat("marks") if needed else None
    if (spec.train_on == "all" and eot != "last") or n == 0:
        codes, scale, response = static_columns(roles, turns, msg, spec.train_on, marks, eot, empty)
    else:  # the last assistant turn is a property of each example
        bounds = np.asarray(offsets)
        parts = [static_columns(roles[a:b], turns[a:b], msg[a:b], spec.train_on,
                                None if marks is None else marks[a:b], eot, empty)
                 for a, b in zip(bounds[:-1], bounds[1:])]
        codes, scale, response = (np.concatenate([p[k] for p in parts]) for k in range(3))
    if SAMPLE_WEIGHT in table.column_names:  # the row's own weight from the data multiplies every token's
        sample = np.repeat(np.asarray(table.column(SAMPLE_WEIGHT), dtype=np.float32), np.diff(np.asarray(offsets)))
        scale, response = (scale * sample).astype(np.float32), response & (sample > 0)
    weights = (np.asarray(spec.table(w), dtype=np.float32)[codes] * scale).astype(np.float32)
    labels = np.where(weights > 0, ids, IGNORE_INDEX)

    def column(values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(values))

    new = {"labels": labels, "loss_weights": weights, "response_mask": response.astype(np.int8),
           "weight_codes": codes.astype(np.int8), "weight_scale": scale.astype(np.float32)}
    for name, values in new.items():
        table = table.append_column(name, column(values))
    return table


def with_weights(ds, spec: WeightSpec, w: float | None = None):
    """A tokenized `datasets.Dataset` with its weight columns (add_weight_columns), in memory: the cache on disk
    holds no weight, so a new weight setting costs this pass, never a tokenization."""
    if getattr(ds, "_indices", None) is None:  # one pass over the whole table; the cached columns stay mapped
        return datasets.Dataset(datasets.table.InMemoryTable(add_weight_columns(ds.data.table, spec, w)))
    return ds.with_format("arrow").map(lambda t: add_weight_columns(t, spec, w), batched=True, batch_size=10_000,
                                       keep_in_memory=True, load_from_cache_file=False,
                                       desc="Weights from roles").with_format(None)


def step_weights(batch: dict[str, torch.Tensor], table: list[float] | list[list[float]]) -> torch.Tensor:
    """The loss weight of every token of a collated batch at a step whose role table (WeightSpec.tables(w)) is
    `table`: table[weight_codes] * weight_scale, float32, as add_weight_columns computes it. A mixture whose sources
    weigh roles their own way gives one table per source (the run's last): table[source, weight_codes]."""
    codes = batch["weight_codes"].long()
    t = torch.as_tensor(table, dtype=torch.float32, device=codes.device)
    if t.dim() == 2:
        t = t[batch[SOURCE].long(), codes] if SOURCE in batch else t[-1][codes]
        return t * batch["weight_scale"]
    return t[codes] * batch["weight_scale"]

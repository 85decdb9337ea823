"""The data a run trains and evaluates on: load, split (seeded), tokenize, cached on disk across runs.

Training and evaluation both call `prepare_data`, so they see the same held-out rows, tokenized alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from sft.core.chat import end_of_call_id
from sft.core.tokenize import (
    check_tokenizer,
    conversation_renderer,
    fingerprint_tokenizer,
    tokenize_roles_batch,
)
from sft.core.weights import with_weights
from sft.data.config import DataConfig
from sft.data.weights import parse_weight_rules
from sft.data.errors import UserError
from sft.data.rows import CHAT_FIELDS, FIELDS, TEXT_FIELD, fingerprint_rows, load_rows, row_kind
from sft.data.splits import split_indices

logger = logging.getLogger("sft")


@dataclass
class TokenizeReport:
    """Counts from tokenization: dropped and truncated examples, and token totals."""

    examples_in: int
    examples_out: int
    examples_dropped_too_long: int
    examples_truncated: int
    truncation_counts: dict[str, int]
    from_cache: bool = False  # True when an earlier run (or the main process) already tokenized these rows
    examples_dropped_untrained: int = 0  # no reply token the data lets train (every reply's loss_weight 0)

    def summary(self, name: str) -> str:
        """One line for the console: examples kept, truncated (by how) and dropped (by why)."""
        line = f"{name} split: {self.examples_out:,} of {self.examples_in:,} examples kept"
        cut = {k: v for k, v in sorted(self.truncation_counts.items()) if k != "ok"}
        if cut:
            line += f"; {self.examples_truncated:,} truncated ({', '.join(f'{v:,} {k}' for k, v in cut.items())})"
        if self.examples_dropped_too_long:
            line += f"; {self.examples_dropped_too_long:,} dropped: too long to fit max_length"
        if self.examples_dropped_untrained:
            line += (f"; {self.examples_dropped_untrained:,} dropped: no trained token (every reply the data weighs "
                     "0, e.g. loss_weight: 0)")
        return line


def tokenize_rows(rows: list[dict[str, str]], tokenizer, cfg: DataConfig, name: str = "train"):
    """Tokenize validated rows into a `datasets.Dataset`, cached on disk across runs."""
    check_tokenizer(tokenizer)
    # No weight setting is part of the key: the cache holds roles, turns and message weights, and the weights are
    # computed from them (with_weights, and at every step by the loss), so a sweep over weights tokenizes once.
    parts = [fingerprint_rows(rows), fingerprint_tokenizer(tokenizer), cfg.template,
             cfg.max_length, cfg.truncation, CACHE_VERSION]
    if rows and "messages" in rows[0]:  # conversations: the chat template
        parts += [conversation_renderer(tokenizer, cfg).template]
        if cfg.reasoning_history != "keep":  # it changes the rendered text (only then in the key: old keys hold)
            parts.append(f"reasoning_history={cfg.reasoning_history}")
        if parse_weight_rules(cfg.weight_rules):  # rules act on the text, so at tokenization (only then in the key)
            parts.append([list(vars(r).values()) for r in parse_weight_rules(cfg.weight_rules)])
    extra = [name for name in (rows[0] if rows else {}) if name not in FIELDS + CHAT_FIELDS + (TEXT_FIELD,)]
    if extra:  # carried-through columns (inspect-data's group) are part of the cached table
        parts.append([[r[name] for r in rows] for name in extra])
    key = json.dumps(parts)
    fp = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cfg.cache_dir) / f"tokenized-{name}-{fp}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)
    from_cache = cache.exists()
    ds = datasets.Dataset.from_list([_as_columns(r) for r in rows])
    ds = ds.map(
        tokenize_roles_batch,
        batched=True,
        batch_size=1000,
        fn_kwargs={"tokenizer": tokenizer, "cfg": cfg},
        remove_columns=ds.column_names,
        cache_file_name=str(cache),
        load_from_cache_file=True,
        new_fingerprint=fp,
        desc=f"Tokenizing {name}",
    )
    ds = with_weights(ds, cfg.weight_spec())  # in memory, at the run's starting w; the loss recomputes per step
    fitted = len(ds)
    # An example whose replies the data weighs 0 teaches no response, like a conversation with no assistant turn
    # (refused when loading): dropped and counted. It depends on the data and train_on only, never on w, so every
    # regime of a comparison drops the same examples and keeps the same order.
    trained = _trained(ds)
    if not trained.all():
        ds = ds.select(np.flatnonzero(trained))
    counts = Counter(ds["truncation"])
    report = TokenizeReport(
        examples_in=len(rows),
        examples_out=len(ds),
        examples_dropped_too_long=len(rows) - fitted,
        examples_truncated=sum(v for k, v in counts.items() if k != "ok"),
        truncation_counts=dict(counts),
        from_cache=from_cache,
        examples_dropped_untrained=fitted - len(ds),
    )
    return ds, report


CACHE_VERSION = 9  # bump when tokenization changes (6: tool_call, tool_output, reasoning roles; 7: the template's own system text keeps its role's weight; 8: no split tool call in a trimmed middle; 9: the closing column), so old caches are not reused


def _trained(ds) -> np.ndarray:
    """Per example: whether any token is a trained reply token of non-zero message weight (its response_mask)."""
    if len(ds) == 0:
        return np.zeros(0, dtype=bool)
    col = ds.with_format("arrow")[:]["response_mask"].combine_chunks()
    offsets = np.asarray(col.offsets)
    counts = np.diff(np.concatenate([[0], np.cumsum(np.asarray(col.flatten(), dtype=np.int64))])[offsets])
    return counts > 0


def _as_columns(row: dict) -> dict:
    """A validated row as the columns tokenization reads: a conversation and its tools as JSON text, because Arrow
    would give every message, tool call and tool schema of the data the union of their keys (a call's arguments
    would gain the other calls' argument names, as nulls)."""
    if "messages" not in row:
        return row
    return {**row, "messages": json.dumps(row["messages"], ensure_ascii=False),
            "tools": json.dumps(row["tools"], ensure_ascii=False) if row.get("tools") else None}


# ---------------------------------------------------------------- the splits a run uses


def log_load(report) -> None:
    """Print what loading saw on the console (train and plan): rows read, kept, dropped by reason and where,
    columns ignored, message keys not read; a warning when anything was dropped or not read, never silent."""
    lossy = report.rows_dropped or report.unknown_message_keys
    (logger.warning if lossy else logger.info)("data %s", report.summary())


@dataclass
class PreparedData:
    """The tokenized splits and what loading saw."""

    train: Any
    eval: Any
    info: dict[str, Any]
    eval_rows: list[dict[str, str]]  # the held-out rows as text, for generations
    chat_template: str | None = None  # conversations: the Jinja template they were rendered with (saved with the model)
    end_of_turn: int | None = None  # conversations: the token that closes an assistant turn (generation stops there)
    end_of_call: int | None = None  # conversations: the token that closes a turn holding a tool call (generation stops there too)


def prepare_data(d: DataConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenize; the held-out split depends on (data, split_seed) only.

    Training and evaluation both call this, so they see the same held-out rows, tokenized alike.
    """
    rows, report = load_rows(d.data, d.column_map, d.on_bad_rows)
    log_load(report)
    if d.eval_data:
        train_rows = rows
        eval_rows, eval_report = load_rows(d.eval_data, d.column_map, d.on_bad_rows)
        log_load(eval_report)
        if row_kind(rows[0]) != row_kind(eval_rows[0]):
            kinds = row_kind(rows[0]), row_kind(eval_rows[0])
            raise UserError(f"{d.data} holds {kinds[0]} but eval_data {d.eval_data} holds {kinds[1]}: the held-out "
                             "rows must be of the training kind. Pass --eval-data with held-out rows of your data, "
                             "or --eval-data none to split them off it (eval_size).")
    else:
        train_idx, eval_idx = split_indices(len(rows), d.eval_size, d.split_seed)
        train_rows, eval_rows, eval_report = [rows[i] for i in train_idx], [rows[i] for i in eval_idx], None
    if d.max_rows is not None:
        train_rows = train_rows[: d.max_rows]
    train, train_tok = tokenize_rows(train_rows, tokenizer, d, name="train")
    eval_, eval_tok = tokenize_rows(eval_rows, tokenizer, d, name="eval")
    for name, tok in (("train", train_tok), ("held-out", eval_tok)):
        logger.info("rank %s: %s split, %d examples, tokenized %s", os.environ.get("RANK", "0"), name,
                    tok.examples_out, "earlier (read from the cache)" if tok.from_cache else "now")
        lossy = tok.examples_truncated or tok.examples_out < tok.examples_in
        (logger.warning if lossy else logger.info)("data %s", tok.summary(name))
    if not len(train):
        raise UserError(f"{d.data}: no training example is left ({train_tok.summary('train')}). Raise --max-length, "
                         "give the replies a weight above 0, or check --train-on.")
    info = {
        "load": report.to_dict(),
        "eval_load": eval_report.to_dict() if eval_report else None,
        "train_tokenize": vars(train_tok),
        "eval_tokenize": vars(eval_tok),
        "data_fingerprint": fingerprint_rows(rows),
        "train_fingerprint": fingerprint_rows(train_rows),
        "eval_fingerprint": fingerprint_rows(eval_rows),
        "train_examples": len(train),
        "eval_examples": len(eval_),
    }
    if "messages" not in rows[0]:
        info["conversations"] = False
        return PreparedData(train=train, eval=eval_, info=info, eval_rows=eval_rows)
    info["conversations"] = True
    renderer = conversation_renderer(tokenizer, d)
    return PreparedData(train=train, eval=eval_, info=info, eval_rows=eval_rows, chat_template=renderer.template,
                        end_of_turn=renderer.end_of_turn_id(), end_of_call=end_of_call_id(renderer))

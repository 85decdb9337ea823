"""The data a run trains and evaluates on: load, split (seeded), tokenize, cached on disk across runs.

Training and evaluation both call `prepare_data`, so they see the same held-out rows, tokenized alike.
"""

from __future__ import annotations

import dataclasses
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
from sft.data.mixture import SOURCE, describe_draw, draw_counts, draw_indices, is_mixture, parse_mixture, shares
from sft.data.weights import SAMPLE_WEIGHT, WeightSpec, parse_weight_rules
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


def tokenize_rows(rows: list[dict[str, str]], tokenizer, cfg: DataConfig, name: str = "train",
                  spec: WeightSpec | None = None):
    """Tokenize validated rows into a `datasets.Dataset`, cached on disk across runs; its weight columns under `spec`
    (default: cfg.weight_spec(); a mixture's source gives its own)."""
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
    ds = with_weights(ds, spec or cfg.weight_spec())  # in memory, at the run's starting w; the loss recomputes per step
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
    sources: list[str] | None = None  # a mixture: its sources' names, in the order of the examples' `source` index
    weight_spec: WeightSpec | None = None  # a mixture whose sources give role weights: the run's spec with them


def prepare_data(d: DataConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenize; the held-out split depends on (data, split_seed) only.

    Training and evaluation both call this, so they see the same held-out rows, tokenized alike. A mixture
    (`a.jsonl:0.7,b.jsonl:0.3`, or a YAML list) goes through prepare_mixture.
    """
    if is_mixture(d.data):
        return prepare_mixture(d, tokenizer)
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
    return _prepared(d, tokenizer, train, eval_, info, eval_rows, "messages" in rows[0])


def _prepared(d: DataConfig, tokenizer, train, eval_, info: dict, eval_rows: list, chat: bool,
              sources: list[str] | None = None, spec: WeightSpec | None = None) -> PreparedData:
    """The PreparedData of tokenized splits (conversations: with their template and end-of-turn tokens)."""
    info["conversations"] = chat
    if not chat:
        return PreparedData(train=train, eval=eval_, info=info, eval_rows=eval_rows, sources=sources, weight_spec=spec)
    renderer = conversation_renderer(tokenizer, d)
    return PreparedData(train=train, eval=eval_, info=info, eval_rows=eval_rows, chat_template=renderer.template,
                        end_of_turn=renderer.end_of_turn_id(), end_of_call=end_of_call_id(renderer), sources=sources,
                        weight_spec=spec)


# ---------------------------------------------------------------- a mixture of sources


def _source_spec(spec: WeightSpec, k: int) -> WeightSpec:
    """The weight spec of source k: the run's, with the role weights the source gives over it."""
    return spec.for_source(k) if spec.source_role_weights else spec


def prepare_mixture(d: DataConfig, tokenizer) -> PreparedData:
    """A mixture's splits (sft.data.mixture): each source loaded, split (eval_size, split_seed) and tokenized on its
    own and weighed with its own role weights; then its training examples drawn by the ratios (repeated where a
    source has fewer than its share, a seeded choice where more: printed), every example carrying its source.
    The held-out split holds every source's held-out rows once (or --eval-data's rows, of no source).

    Written here rather than with datasets.interleave_datasets(probabilities=...): that draws each example's source
    at random, so a source's count varies with the seed and the epoch's length is set by its stopping strategy;
    here each source gives exactly its share of a stated number of examples (concatenate_datasets of the draws).
    """
    sources = parse_mixture(d.data)
    spec = d.weight_spec()
    if any(s.role_weights for s in sources):
        spec = dataclasses.replace(spec, source_role_weights=tuple(s.role_weights for s in sources))
    loaded = []
    for s in sources:
        rows, report = load_rows(s.path, d.column_map, d.on_bad_rows)
        log_load(report)
        if loaded and row_kind(rows[0]) != row_kind(loaded[0][0][0]):
            raise UserError(f"source {s.name} ({s.path}) holds {row_kind(rows[0])} while source {sources[0].name} "
                            f"holds {row_kind(loaded[0][0][0])}: a mixture's sources hold one kind. Train on one "
                            "kind at a time, or convert the rows (instruction rows are one-turn conversations).")
        loaded.append((rows, report))
    if any(SAMPLE_WEIGHT in rows[0] for rows, _ in loaded):  # a source without the column: its rows weigh 1
        loaded = [([r if SAMPLE_WEIGHT in r else {**r, SAMPLE_WEIGHT: 1.0} for r in rows], rep) for rows, rep in loaded]
    trains, evals, eval_rows, reports, fingerprints = [], [], [], [], []
    for k, (s, (rows, report)) in enumerate(zip(sources, loaded)):
        if d.eval_data:
            train_rows = rows
        else:
            train_idx, eval_idx = split_indices(len(rows), d.eval_size, d.split_seed)
            train_rows, held = [rows[i] for i in train_idx], [rows[i] for i in eval_idx]
            ev, _ = tokenize_rows(held, tokenizer, d, name="eval", spec=_source_spec(spec, k))
            evals.append(ev.add_column(SOURCE, [k] * len(ev)))
            eval_rows += held
        train_rows = train_rows if d.max_rows is None else train_rows[: d.max_rows]
        tr, tok = tokenize_rows(train_rows, tokenizer, d, name="train", spec=_source_spec(spec, k))
        logger.info("data %s", tok.summary(f"{s.name} train"))
        trains.append(tr.add_column(SOURCE, [k] * len(tr)))
        reports.append(tok)
        fingerprints.append(fingerprint_rows(train_rows))
    available, share = [len(t) for t in trains], shares(sources)
    counts = draw_counts(available, share)
    empty = next((s for s, n, c in zip(sources, available, counts) if c and not n), None)
    if empty is not None:
        raise UserError(f"source {empty.name} ({empty.path}): no training example is left (its rows were all dropped: "
                        "too long, or no trained token) while its ratio asks for some. Fix its rows, raise "
                        "--max-length, or give it ratio 0.")
    drawn = []
    for k, (s, t, n, c, p) in enumerate(zip(sources, trains, available, counts, share)):
        (logger.warning if c != n else logger.info)("data %s", describe_draw(s.name, n, c, p))
        drawn.append(t.select(draw_indices(n, c, d.split_seed, k)))
    train = datasets.concatenate_datasets([t for t in drawn if len(t)])
    if d.eval_data:
        eval_rows, eval_report = load_rows(d.eval_data, d.column_map, d.on_bad_rows)
        log_load(eval_report)
        if row_kind(eval_rows[0]) != row_kind(loaded[0][0][0]):
            raise UserError(f"eval_data {d.eval_data} holds {row_kind(eval_rows[0])} but the mixture's sources hold "
                            f"{row_kind(loaded[0][0][0])}: the held-out rows must be of the training kind. Pass "
                            "--eval-data with such rows, or --eval-data none to split each source's off it.")
        eval_ = tokenize_rows(eval_rows, tokenizer, d, name="eval")[0]  # of no source: the run's role weights
    else:
        eval_ = datasets.concatenate_datasets(evals)
    info = {
        "load": {"source": d.data, "sources": [r.to_dict() for _, r in loaded]},
        "train_tokenize": {k: sum(vars(r)[k] for r in reports) for k in ("examples_in", "examples_out",
                           "examples_dropped_too_long", "examples_truncated", "examples_dropped_untrained")},
        "mixture": [{"name": s.name, "path": s.path, "ratio": s.ratio, "share": p, "role_weights": s.role_weights,
                     "rows": len(rows), "training_examples": n, "drawn": c}
                    for s, (rows, _), n, c, p in zip(sources, loaded, available, counts, share)],
        "data_fingerprint": fingerprint_rows([r for rows, _ in loaded for r in rows]),
        "train_fingerprint": hashlib.sha256(json.dumps([fingerprints, counts, d.split_seed]).encode()).hexdigest()[:16],
        "eval_fingerprint": fingerprint_rows(eval_rows),
        "train_examples": len(train),
        "eval_examples": len(eval_),
    }
    chat = "messages" in loaded[0][0][0]
    return _prepared(d, tokenizer, train, eval_, info, eval_rows, chat, [s.name for s in sources], spec)

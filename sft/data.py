"""Instruction data: load and validate rows, split them, and tokenize them with per-token loss weights.

The flow is  rows (file | folder | hub id) -> validated {instruction, input, output}
-> seeded held-out split -> {input_ids, labels, loss_weights, response_mask, length}.

Every user error is a `ValueError` that names the file, the row and the field, and says
how to fix it; with `on_bad_rows="skip"` bad rows are dropped and counted by reason instead.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sft.chat import ASSISTANT, CHAT_COLUMNS, ROLE_NAMES, check_conversation, make_renderer, token_weights
from sft.prompts import get_template

logger = logging.getLogger("sft")

REQUIRED = ("instruction", "output")  # columns every row must have, after the column mapping
OPTIONAL = ("input",)  # may be absent or null: both mean "no input"
FIELDS = REQUIRED + OPTIONAL  # the fields of a validated row; tokenization carries any other column through
# Column names that real datasets use for the same fields; looked for only when the canonical
# name is absent, and overridden by an explicit `column_map`.
ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "completion"),
}
SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")  # what a file or a folder may hold
PROMPT_TAIL_TOKENS = 16  # a trimmed prompt keeps its last tokens, so "### Response:" stays next to the response
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


@dataclass
class DataConfig:
    """Where the rows come from and how they become weighted token sequences."""

    data: str = "Dataset/demo/train.jsonl"  # a .json/.jsonl/.parquet/.csv file, a folder of them, or a hub dataset id
    eval_data: str | None = None  # an explicit held-out file; None = a seeded split of `data` (setting data without eval_data drops a preset's)
    eval_size: float = 0.05  # held-out share of `data` (< 1) or number of rows (>= 1), when eval_data is None
    split_seed: int = 42  # the held-out split is a function of (data, split_seed) only
    column_map: dict[str, str] = field(default_factory=dict)  # your column -> instruction | input | output, e.g. {"my_col": "output"} (--column-map my_col=output)
    on_bad_rows: str = "error"  # "error": stop at the first bad row; "skip": drop bad rows, count them by reason
    template: str = "alpaca"  # prompt template name (sft.prompts)
    chat_template: str = "auto"  # conversations: "auto" = the tokenizer's own chat template, else `template` as one; "tokenizer"; or a template name
    train_on: str = "all"  # conversations: "all" assistant turns weigh 1, or only the "last" (earlier ones weigh prompt_loss_weight)
    max_length: int = 512  # tokens per example, prompt + response + EOS
    prompt_loss_weight: float = 0.0  # w: 0 = masked (response only), 1 = unmasked (whole sequence)
    truncation: str = "trim"  # "trim": keep the response, cut the prompt's middle (conversations: drop earlier turns first); "drop": drop over-long examples
    max_rows: int | None = None  # use only the first N valid rows (quick experiments); None = all
    cache_dir: str = ".cache/sft"  # tokenized datasets are cached here, keyed by data, tokenizer and settings

    def __post_init__(self) -> None:
        if not 0.0 <= self.prompt_loss_weight <= 1.0:
            raise ValueError(
                f"prompt_loss_weight must be in [0, 1], got {self.prompt_loss_weight}: "
                "0 trains on the response only (masked), 1 on the whole sequence (unmasked)."
            )
        if self.on_bad_rows not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {self.on_bad_rows!r}.")
        if self.train_on not in ("all", "last"):
            raise ValueError(f"train_on must be 'all' or 'last' (assistant turns trained), got {self.train_on!r}.")
        if self.truncation not in ("trim", "drop"):
            raise ValueError(f"truncation must be 'trim' or 'drop', got {self.truncation!r}.")
        if self.max_length < 2 * PROMPT_TAIL_TOKENS:
            raise ValueError(f"max_length must be at least {2 * PROMPT_TAIL_TOKENS}, got {self.max_length}.")
        if self.eval_size <= 0:
            raise ValueError(f"eval_size must be > 0 (a share < 1 or a row count), got {self.eval_size}.")


@dataclass
class LoadReport:
    """What loading saw: counts by reason, so nothing is dropped silently."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_dropped: Counter = field(default_factory=Counter)  # reason -> count
    ignored_columns: list[str] = field(default_factory=list)  # extra columns (ids, categories, ...)
    column_mapping: dict[str, str] = field(default_factory=dict)  # canonical field -> column found
    first_bad_rows: list[str] = field(default_factory=list)  # where the first skipped rows were, for the user

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["rows_dropped"] = dict(self.rows_dropped)
        return d


# ---------------------------------------------------------------- reading files


def _decode(path: Path, raw: bytes) -> str:
    """Decode UTF-8 (a BOM is allowed), or say where the bad byte is and how to convert."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} (byte {e.start}) is not valid UTF-8 ({raw[e.start:e.start + 1]!r}). "
            f"Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed_{path.name}`."
        ) from None


def _json_records(path: Path, raw: bytes) -> Iterator[tuple[str, Any]]:
    """The rows of a .json file: one list of objects."""
    try:
        records = json.loads(_decode(path, raw))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}. "
            "A .json file must hold one list of objects; use .jsonl for one object per line."
        ) from None
    if not isinstance(records, list):
        raise ValueError(
            f"{path}: expected a JSON list of row objects, got a {type(records).__name__}. "
            "Wrap the rows in [...] or save them as .jsonl, one object per line."
        )
    for i, rec in enumerate(records, 1):
        yield f"{path}: row {i}", rec


def _jsonl_records(path: Path, raw: bytes, on_bad_rows: str, report: LoadReport) -> Iterator[tuple[str, Any]]:
    """The rows of a .jsonl file, one object per line; a line that is not JSON is an error or, skipped, counted."""
    for i, line in enumerate(_decode(path, raw).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            where = f"{path}: line {i}"
            if on_bad_rows == "skip":
                report.rows_read += 1  # never yielded, but read
                _skip(report, where, "invalid JSON")
                continue
            raise ValueError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}). Fix the line, or pass "
                "--on-bad-rows skip to drop such lines (they are counted and reported)."
            ) from None
        yield f"{path}: line {i}", rec


def _read_file(path: Path, on_bad_rows: str, report: LoadReport) -> Iterator[tuple[str, Any]]:
    """Yield (location, record) for each row of one file; location names the file and row."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path}: the file is empty. Put instruction rows in it or point --data elsewhere.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from _json_records(path, raw)
    elif suffix == ".jsonl":
        yield from _jsonl_records(path, raw, on_bad_rows, report)
    elif suffix == ".csv":
        # csv keeps every cell a string; an empty cell is "" (caught by validation), never NaN.
        reader = csv.DictReader(_decode(path, raw).splitlines())
        for i, rec in enumerate(reader, 1):
            yield f"{path}: row {i} (line {reader.line_num})", rec
    elif suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path}: not a readable Parquet file ({e}). Re-export it, or use .jsonl.") from None
        for i, rec in enumerate(table.to_pylist(), 1):
            yield f"{path}: row {i}", rec
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}.")


def _skip(report: LoadReport, where: str, reason: str) -> None:
    """Count a dropped row by reason and remember where the first few were."""
    report.rows_dropped[reason] += 1
    if len(report.first_bad_rows) < 5:
        report.first_bad_rows.append(f"{where}: {reason}")


def _resolve_columns(columns: list[str], column_map: dict[str, str], where: str) -> dict[str, str]:
    """Map canonical fields to the columns that hold them (or "messages" to a conversation column), or explain
    what is missing."""
    for col, target in column_map.items():
        if target not in FIELDS + ("messages",):
            raise ValueError(
                f"column_map maps {col!r} to {target!r}; targets must be one of instruction, input, output, messages."
            )
    mapping = {target: col for col, target in column_map.items() if col in columns}
    chat = mapping.get("messages") or next((c for c in CHAT_COLUMNS if c in columns), None)
    if chat is not None and not any(t in mapping for t in FIELDS) and not {"instruction", "output"} <= set(columns):
        return {"messages": chat}
    for target in FIELDS:
        if target not in mapping:
            found = next((a for a in ALIASES[target] if a in columns), None)
            if found is not None:
                mapping[target] = found
    missing = [t for t in REQUIRED if t not in mapping]
    if missing:
        looked = "; ".join(f"{t}: {', '.join(ALIASES[t])}" for t in missing)
        raise ValueError(
            f"{where}: no column for {', '.join(missing)} (looked for {looked}). The columns are: "
            f"{', '.join(columns) or '(none)'}. Map yours with --column-map YOUR_COLUMN=output "
            "(DataConfig.column_map in Python); conversations go in a `messages` or `conversations` column."
        )
    return mapping


def _check_row(rec: Any, mapping: dict[str, str]) -> tuple[dict[str, str] | None, str, str]:
    """Return (row, "", "") for a valid record, else (None, field, problem)."""
    if not isinstance(rec, dict):
        return None, "(row)", f"is a {type(rec).__name__}, not an object with fields"
    row = {}
    for name in REQUIRED:
        col = mapping[name]
        value = rec.get(col)
        label = name if col == name else f"{name} (column {col!r})"
        if col not in rec:
            return None, label, "is missing"
        if value is None:
            return None, label, "is null"
        if not isinstance(value, str):
            return None, label, f"must be a string, got {type(value).__name__} {value!r:.40}"
        if not value.strip():
            return None, label, "is empty"
        row[name] = value
    col = mapping.get("input")
    value = rec.get(col) if col is not None else None
    if value is not None and not isinstance(value, str):
        label = "input" if col == "input" else f"input (column {col!r})"
        return None, label, f"must be a string or missing, got {type(value).__name__} {value!r:.40}"
    row["input"] = value or ""
    return row, "", ""


def _check_chat_row(rec: Any, col: str, where: str, from_text: bool,
                    on_bad_rows: str) -> tuple[dict | None, str, str, str]:
    """(row, where, field, problem) for a conversation record; the problem is generic (for counting), and where
    names the turn; with on_bad_rows="error" the field also says how to fix it."""
    if not isinstance(rec, dict):
        return None, where, "(row)", f"is a {type(rec).__name__}, not an object with fields"
    if rec.get(col) is None:
        return None, where, col, "is missing"
    messages, turn, fld, problem, fix = check_conversation(rec[col], from_text)
    if messages is None:
        where = where if turn is None else f"{where}, turn {turn}"
        label = fld if turn is not None else col
        return None, where, label, problem if on_bad_rows == "skip" else f"{problem} ({fix})"
    return {"messages": messages}, where, "", ""


def _files_of(source: Path) -> list[Path]:
    """The data files of a file or a folder (sorted, so the row order is stable)."""
    if source.is_file():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(
            f"{source}: the folder holds no data file ({', '.join(SUFFIXES)}). Put your dataset file in it, "
            "or pass --data with a file path or a hub dataset id such as yahma/alpaca-cleaned."
        )
    return files


def _records_from_hub(dataset_id: str) -> tuple[str, list[Any]]:
    """Load the train split of a hub dataset (needs the network, or a populated HF cache)."""
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # the hub client raises many types (offline, 404, auth); say what to do instead
        raise ValueError(
            f"{dataset_id!r} is not a local file or folder, and loading it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {str(e)[:200]}). Download the dataset into Dataset/ and pass that path, "
            "or check the id and your network."
        ) from None
    return dataset_id, ds.to_list()


def _sources(source: str | Path, on_bad_rows: str, report: LoadReport) -> list[tuple[str, Iterator]]:
    """(name, records) for each file of a file or folder, or for a hub dataset."""
    path = Path(source)
    if path.exists():
        return [(str(f), _read_file(f, on_bad_rows, report)) for f in _files_of(path)]
    if "/" in str(source) and not str(source).startswith((".", "/")) and not path.suffix:
        name, records = _records_from_hub(str(source))
        return [(name, ((f"{name}: row {i}", r) for i, r in enumerate(records, 1)))]
    raise ValueError(
        f"{source}: no such file or folder. Pass a .json/.jsonl/.parquet/.csv file, a folder of them, "
        "or a hub dataset id such as yahma/alpaca-cleaned."
    )


def _valid_rows(name: str, records: list[tuple[str, Any]], column_map: dict[str, str], on_bad_rows: str,
                keep_column: str | None, report: LoadReport) -> list[dict[str, str]]:
    """The valid rows of one source, mapped to the canonical fields; bad ones raise or are counted."""
    not_object = next((where for where, r in records if not isinstance(r, dict)), None)
    if not_object is not None and on_bad_rows == "error":  # say so before guessing at columns
        _, fld, problem = _check_row(dict(records)[not_object], {})
        raise ValueError(f"{not_object}, field {fld}: {problem}. Each row must be an object such as "
                         '{"instruction": ..., "input": ..., "output": ...}.')
    columns = list(dict.fromkeys(k for _, r in records if isinstance(r, dict) for k in r))
    mapping = _resolve_columns(columns, column_map, name)
    report.column_mapping = {**report.column_mapping, **mapping}
    report.ignored_columns += [c for c in columns if c not in mapping.values() and c != keep_column
                               and c not in report.ignored_columns]
    rows, from_text = [], name.lower().endswith(".csv")
    for where, rec in records:
        report.rows_read += 1
        if "messages" in mapping:
            row, where, fld, problem = _check_chat_row(rec, mapping["messages"], where, from_text, on_bad_rows)
        else:
            row, fld, problem = _check_row(rec, mapping)
        if row is not None and keep_column is not None:
            if rec.get(keep_column) is None:
                raise ValueError(f"{where}, field {keep_column}: is missing. Every row needs a {keep_column!r} "
                                 f"value to be grouped by it; drop the grouping or fill the column.")
            row[keep_column] = str(rec[keep_column])
        if row is not None:
            rows.append(row)
        elif on_bad_rows == "skip":
            _skip(report, where, f"{fld} {problem}")
        else:
            raise ValueError(f"{where}, field {fld}: {problem}. Fix the row, or pass --on-bad-rows skip to drop bad "
                             "rows (they are counted by reason and reported).")
    return rows


def load_rows(
    source: str | Path, column_map: dict[str, str] | None = None, on_bad_rows: str = "error",
    keep_column: str | None = None,
) -> tuple[list[dict[str, str]], LoadReport]:
    """Load and validate instruction rows from a file, a folder or a hub dataset id.

    `keep_column` carries one more column into every row under its own name (as a string), e.g. the demo's
    `family` for statistics by group; a row without it is an error naming the row.
    """
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}.")
    report = LoadReport(source=str(source))
    rows: list[dict[str, str]] = []
    for name, records in _sources(source, on_bad_rows, report):
        part = _valid_rows(name, list(records), dict(column_map or {}), on_bad_rows, keep_column, report)
        if rows and part and ("messages" in rows[0]) != ("messages" in part[0]):
            raise ValueError(f"{name}: holds {'conversations' if 'messages' in part[0] else 'instruction rows'} "
                             f"while the files before it hold the other kind; train on one kind at a time (put "
                             "conversations and instruction rows in separate folders).")
        rows += part
    report.rows_kept = len(rows)
    if not rows:
        raise ValueError(
            f"{source}: no valid rows ({report.rows_read} read; dropped: {dict(report.rows_dropped)}). "
            "Check the file and the column mapping."
        )
    return rows, report


def fingerprint_rows(rows: list[dict[str, str]]) -> str:
    """A short content hash of the validated rows (order included), for manifests and caches."""
    h = hashlib.sha256()
    for r in rows:
        fields = r["messages"] if "messages" in r else [r["instruction"], r["input"], r["output"]]
        h.update(json.dumps(fields, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def split_indices(n: int, eval_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices: the same for every run with the same data and seed."""
    k = int(round(eval_size * n)) if eval_size < 1 else int(eval_size)
    if not 1 <= k < n:
        raise ValueError(
            f"eval_size={eval_size} gives {k} held-out rows out of {n}; it must leave at least one row on each "
            "side. Use a share such as 0.05 or a row count below the number of rows."
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


# ---------------------------------------------------------------- tokenization


def truncate_example(
    prompt_ids: list[int], response: list[int], max_length: int, truncation: str = "trim"
) -> tuple[list[int], list[int], str] | None:
    """Fit (prompt, response + EOS) into max_length; return (prompt, response, status), None if dropped.

    status is "ok", "prompt_trimmed", "response_trimmed" or "both_trimmed".
    """
    n_p, n_r = len(prompt_ids), len(response)
    if n_p + n_r <= max_length:
        return list(prompt_ids), list(response), "ok"
    if truncation == "drop":
        return None
    # The response keeps what the prompt leaves, and at least half the window, so it is never cut to nothing.
    keep_r = min(n_r, max(max_length - n_p, max_length // 2))
    keep_p = max_length - keep_r
    trimmed_p, trimmed_r = keep_p < n_p, keep_r < n_r
    if trimmed_p:  # cut the middle (usually the input): keep the instruction and the "### Response:" cue
        tail = min(PROMPT_TAIL_TOKENS, keep_p // 2)
        prompt_ids = list(prompt_ids[: keep_p - tail]) + list(prompt_ids[n_p - tail :])
    # A cut response loses its EOS (the last token): the model must not learn to stop mid-answer.
    response = list(response[:keep_r])
    status = {(True, True): "both_trimmed", (True, False): "prompt_trimmed"}.get(
        (trimmed_p, trimmed_r), "response_trimmed"
    )
    return list(prompt_ids), response, status


def _prompt_prefix_ids(tokenizer) -> list[int]:
    """The BOS the tokenizer would add by itself (Llama-style), or nothing (Qwen, GPT-2)."""
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("x")["input_ids"][:1] == [bos]:
        return [bos]
    return []


def tokenize_rows_batch(batch: dict[str, list], tokenizer, cfg: DataConfig):
    """The batched `datasets.map` function: prompt and response tokenized apart, then joined.

    Labels are the input ids themselves (the model shifts them), IGNORE_INDEX where the weight is 0;
    the weight is `cfg.prompt_loss_weight` on prompt tokens and 1 on response tokens and EOS. Columns
    other than instruction, input and output (e.g. inspect-data's group column) are carried through for
    the examples kept. Returns an Arrow table built from flat numpy arrays: converting millions of
    per-token Python numbers into Arrow was most of the preprocessing time.
    """
    if "messages" in batch:
        return tokenize_conversations_batch(batch, tokenizer, cfg)
    template = get_template(cfg.template)
    prompts = [template.render(i, x) for i, x in zip(batch["instruction"], batch["input"])]
    # Apart, so that no BPE merge crosses the prompt/response boundary: the prompt's tokens are
    # then exactly a prefix of the example's tokens, as at generation time.
    ids = _encode(tokenizer, prompts + list(batch["output"]))
    prompt_ids, response_ids = ids[: len(prompts)], ids[len(prompts) :]
    prefix, eos = _prompt_prefix_ids(tokenizer), tokenizer.eos_token_id
    rows, n_prompt, status, kept = [], [], [], []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        # EOS is a response token: the model must learn to stop.
        fitted = truncate_example(prefix + p, r + [eos], cfg.max_length, cfg.truncation)
        if fitted is None:
            continue  # dropped examples are counted by the caller from the row counts
        prompt, response, st = fitted
        rows.append(prompt + response)
        n_prompt.append(len(prompt))
        status.append(st)
        kept.append(i)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    position = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    response = position >= np.repeat(np.asarray(n_prompt, dtype=np.int64), lengths)
    weights = np.where(response, 1.0, cfg.prompt_loss_weight).astype(np.float32)
    return _examples_table(rows, weights, response, status, kept, batch)


def _examples_table(rows: list[list[int]], weights: np.ndarray, response: np.ndarray, status: list[str],
                    kept: list[int], batch: dict[str, list], per_token: dict | None = None) -> pa.Table:
    """The examples as Arrow columns: ids, labels (IGNORE_INDEX where the weight is 0), weights, the response
    mask (weight 1), length, truncation status, the batch's carried-through columns for the rows kept, and any
    further per-token values (flat, as the weights)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    labels = np.where(weights > 0, flat, IGNORE_INDEX)

    def column(values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    extra = {name: pa.array([values[i] for i in kept]) for name, values in batch.items()
             if name not in FIELDS + ("messages",)}
    return pa.table({
        "input_ids": column(flat), "labels": column(labels), "loss_weights": column(weights),
        "response_mask": column(response.astype(np.int8)),
        "length": pa.array(lengths), "truncation": pa.array(status, type=pa.string()), **extra,
        **{name: column(values) for name, values in (per_token or {}).items()},
    })


def conversation_renderer(tokenizer, cfg: DataConfig):
    """The ChatRenderer of cfg.chat_template for this tokenizer (sft.chat.chat_template_source)."""
    return make_renderer(tokenizer, cfg.chat_template, cfg.template, bool(_prompt_prefix_ids(tokenizer)))


def tokenize_conversations_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> pa.Table:
    """The conversation form of tokenize_rows_batch: each conversation rendered through the chat template.

    Assistant content and its end-of-turn token weigh 1 (every assistant turn, or the last with
    cfg.train_on="last"); system, user and template tokens weigh cfg.prompt_loss_weight.
    """
    rows, weights, trained, roles, turns, status, kept = [], [], [], [], [], [], []
    for i, ids, role, turn, st in conversation_tokens(batch["messages"], tokenizer, cfg):
        rows.append(ids)
        w, t = token_weights(role, turn, cfg.prompt_loss_weight, cfg.train_on)
        weights.append(w)
        trained.append(t)
        roles.append(role)
        turns.append(turn)
        status.append(st)
        kept.append(i)
    flat = np.concatenate(weights) if weights else np.zeros(0, dtype=np.float32)
    response = np.concatenate(trained) if trained else np.zeros(0, dtype=bool)
    # Each token's role code (sft.chat.ROLE_NAMES) and turn, for the held-out losses per role and inspect-data;
    # the collators take only the columns they pad, so training never sees them.
    per_token = {name: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
                 for name, parts, dtype in (("roles", roles, np.int8), ("turns", turns, np.int32))}
    return _examples_table(rows, flat, response, status, kept, batch, per_token)


def conversation_tokens(conversations: list[list[dict]], tokenizer, cfg: DataConfig) -> Iterator[tuple]:
    """(index, ids, role codes, turns, truncation status) of each conversation kept, fitted into max_length."""
    renderer = conversation_renderer(tokenizer, cfg)
    for i, (messages, (ids, roles, turns)) in enumerate(zip(conversations, _render_all(renderer, conversations))):
        st = "ok"
        if len(ids) > cfg.max_length:
            fitted = fit_conversation(renderer, messages, cfg)
            if fitted is None:
                continue
            ids, roles, turns, st = fitted
        yield i, list(ids), roles, turns, st


def _render_all(renderer, conversations: list[list[dict]]) -> list:
    """Tokens with roles and turns for each conversation; a template error names the conversation."""
    try:
        return renderer.tokens(conversations)
    except Exception:  # find the conversation the template refused, and say which
        for k, messages in enumerate(conversations):
            try:
                renderer.tokens([messages])
            except Exception as e:
                first = next((m["content"] for m in messages if m["role"] == "user"), "")
                raise ValueError(
                    f"conversation {k + 1} of this batch (first user turn {first!r:.60}): the chat template cannot "
                    f"render it ({type(e).__name__}: {str(e)[:200]}). Fix the turn order, or choose another template "
                    "with --chat-template.") from None
        raise


def fit_conversation(renderer, messages: list[dict], cfg: DataConfig):
    """Fit an over-long conversation into max_length: (ids, roles, turns, status), None if dropped.

    Earlier exchanges are dropped from the front (a system turn stays) until it fits; if even the last
    exchange is too long, its prompt loses its middle and the answer keeps at least half the window, as
    truncate_example does for instruction rows.
    """
    if cfg.truncation == "drop":
        return None
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head):]
    starts = [k for k, m in enumerate(body) if m["role"] == "user" and k > 0]
    ids = roles = turns = None
    for k in starts:
        ids, roles, turns = renderer.tokens([head + body[k:]])[0]
        if len(ids) <= cfg.max_length:
            return list(ids), roles, turns, "turns_dropped"
    if ids is None:
        ids, roles, turns = renderer.tokens([messages])[0]
    last = np.flatnonzero(roles == ASSISTANT)
    n_p = int(last[turns[last] == turns[last].max()][0]) if len(last) else len(ids)
    fitted = truncate_example(list(range(n_p)), list(range(n_p, len(ids))), cfg.max_length, cfg.truncation)
    keep = np.asarray(fitted[0] + fitted[1], dtype=np.int64)
    status = fitted[2] if not starts else f"turns_dropped+{fitted[2]}"
    return [ids[j] for j in keep], roles[keep], turns[keep], status


def with_training_template(tokenizer, template: str, chat_template: str | None = None):
    """A copy of the tokenizer whose chat_template renders the training prompt, token for token.

    chat_template: the Jinja template conversations were rendered with (PreparedData.chat_template), saved as is;
    None = the prompt template `template` as a chat template (instruction rows).

    The Trainer saves this copy with the final model and every checkpoint, so apply_chat_template,
    pipelines, vLLM and lm-eval's --apply_chat_template give a fine-tuned model the prompt it was
    trained on. The base model's own chat template (Qwen's ChatML) stays in the base folder.
    """
    out = copy.deepcopy(tokenizer)
    bos = bool(_prompt_prefix_ids(tokenizer))
    out.chat_template = chat_template or get_template(template).chat_template(bos_token=bos)
    return out


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; through the Rust tokenizer directly when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def check_tokenizer(tokenizer) -> None:
    """Refuse a tokenizer that cannot mark the end of a response."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no EOS token, so the model could never learn to stop. Set one, e.g. "
            "tokenizer.eos_token = '<|endoftext|>', or use the base model's own tokenizer."
        )


_TOKENIZER_FINGERPRINTS: dict[int, tuple[Any, str]] = {}  # id -> (tokenizer, hash): serialising Qwen's takes 0.2 s


def fingerprint_tokenizer(tokenizer) -> str:
    """A content hash of a fast tokenizer (vocabulary, merges, special tokens), computed once per object."""
    cached = _TOKENIZER_FINGERPRINTS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    fp = hashlib.sha256((text + str(tokenizer.eos_token_id)).encode()).hexdigest()[:16]
    _TOKENIZER_FINGERPRINTS[id(tokenizer)] = (tokenizer, fp)
    return fp


@dataclass
class TokenizeReport:
    """Counts from tokenization: dropped and truncated examples, and token totals."""

    examples_in: int
    examples_out: int
    examples_dropped_too_long: int
    examples_truncated: int
    truncation_counts: dict[str, int]
    from_cache: bool = False  # True when an earlier run (or the main process) already tokenized these rows


def tokenize_rows(rows: list[dict[str, str]], tokenizer, cfg: DataConfig, name: str = "train"):
    """Tokenize validated rows into a `datasets.Dataset`, cached on disk across runs."""
    check_tokenizer(tokenizer)
    parts = [fingerprint_rows(rows), fingerprint_tokenizer(tokenizer), cfg.template, cfg.prompt_loss_weight,
             cfg.max_length, cfg.truncation, CACHE_VERSION]
    if rows and "messages" in rows[0]:  # conversations: the chat template and the turns trained
        parts += [conversation_renderer(tokenizer, cfg).template, cfg.train_on]
    extra = [name for name in (rows[0] if rows else {}) if name not in FIELDS + ("messages",)]
    if extra:  # carried-through columns (inspect-data's group) are part of the cached table
        parts.append([[r[name] for r in rows] for name in extra])
    key = json.dumps(parts)
    fp = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(cfg.cache_dir) / f"tokenized-{name}-{fp}.arrow"
    cache.parent.mkdir(parents=True, exist_ok=True)
    from_cache = cache.exists()
    ds = datasets.Dataset.from_list(rows)
    ds = ds.map(
        tokenize_rows_batch,
        batched=True,
        batch_size=1000,
        fn_kwargs={"tokenizer": tokenizer, "cfg": cfg},
        remove_columns=ds.column_names,
        cache_file_name=str(cache),
        load_from_cache_file=True,
        new_fingerprint=fp,
        desc=f"Tokenizing {name}",
    )
    counts = Counter(ds["truncation"])
    report = TokenizeReport(
        examples_in=len(rows),
        examples_out=len(ds),
        examples_dropped_too_long=len(rows) - len(ds),
        examples_truncated=sum(v for k, v in counts.items() if k != "ok"),
        truncation_counts=dict(counts),
        from_cache=from_cache,
    )
    return ds, report


CACHE_VERSION = 4  # bump when tokenization or weighting changes, so old caches are not reused


# ---------------------------------------------------------------- statistics


def length_stats(ds) -> dict[str, float]:
    """Token statistics of a tokenized dataset (at least one example), with its generation ratio."""
    lengths = np.asarray(ds["length"])
    response_tokens = int(sum(sum(m) for m in ds["response_mask"]))
    total = int(lengths.sum())
    prompt_tokens = total - response_tokens
    return {
        "examples": int(len(lengths)),
        "prompt_tokens": prompt_tokens,
        "response_tokens": response_tokens,  # response tokens including each EOS
        "length_mean": float(lengths.mean()),
        "length_p50": float(np.percentile(lengths, 50)),
        "length_p99": float(np.percentile(lengths, 99)),
        "length_max": int(lengths.max()),
        # Huerta-Enochian & Ko (2024): generation ratio R_g = completion tokens / prompt tokens.
        "generation_ratio_Rg": response_tokens / max(prompt_tokens, 1),
    }


def token_column(ds, name: str) -> np.ndarray:
    """A per-token column of a tokenized dataset (input_ids, response_mask, roles ...), flat over its examples."""
    return np.asarray(pc.list_flatten(ds.with_format("arrow")[name]))


def tokens_by_role(ds) -> dict[str, int] | None:
    """Tokens per role (sft.chat.ROLE_NAMES) of tokenized conversations; None for instruction rows."""
    if "roles" not in ds.column_names:
        return None
    roles = token_column(ds, "roles")
    return {name: int((roles == code).sum()) for code, name in enumerate(ROLE_NAMES)}


# ---------------------------------------------------------------- the splits a run uses


@dataclass
class PreparedData:
    """The tokenized splits and what loading saw."""

    train: Any
    eval: Any
    info: dict[str, Any]
    eval_rows: list[dict[str, str]]  # the held-out rows as text, for generations
    chat_template: str | None = None  # conversations: the Jinja template they were rendered with (saved with the model)
    end_of_turn: int | None = None  # conversations: the token that closes an assistant turn (generation stops there)


def prepare_data(d: DataConfig, tokenizer) -> PreparedData:
    """Load, validate, split and tokenize; the held-out split depends on (data, split_seed) only.

    Training and evaluation both call this, so they see the same held-out rows, tokenized alike.
    """
    rows, report = load_rows(d.data, d.column_map, d.on_bad_rows)
    if d.eval_data:
        train_rows = rows
        eval_rows, eval_report = load_rows(d.eval_data, d.column_map, d.on_bad_rows)
        if ("messages" in rows[0]) != ("messages" in eval_rows[0]):
            kinds = ("conversations", "instruction rows") if "messages" in rows[0] else ("instruction rows",
                                                                                         "conversations")
            raise ValueError(f"{d.data} holds {kinds[0]} but eval_data {d.eval_data} holds {kinds[1]}: the held-out "
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
                        end_of_turn=renderer.end_of_turn_id())

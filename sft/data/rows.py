"""Rows read and validated: a file, a folder of files or a hub id -> {instruction, input, output}, {messages} or
{text} (plain text for language modelling, every token a target).

Columns are found by name or alias (or `column_map`); extra columns are ignored and named in the report. Every
user error is a `UserError` (sft.data.errors) that names the file, the row and the field, and says how to fix it; with
`on_bad_rows="skip"` bad rows are dropped and counted by reason instead (`LoadReport`), never silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import datasets

from sft.data.conversations import (
    CHAT_COLUMNS,
    SYSTEM_COLUMN,
    TOOLS_COLUMN,
    check_conversation,
    check_tools,
)
from sft.data.errors import UserError
from sft.data.weights import SAMPLE_WEIGHT, check_sample_weight
from sft.data.messages import unread_keys
from sft.data.files import SUFFIXES
from sft.data.readers import read_records


REQUIRED = ("instruction", "output")  # columns every row must have, after the column mapping
OPTIONAL = ("input",)  # may be absent or null: both mean "no input"
FIELDS = REQUIRED + OPTIONAL  # the fields of a validated row; tokenization carries any other column through
CHAT_FIELDS = ("messages", "tools")  # the fields of a validated conversation row ("tools" only where it has tools)
# Plain text (TRL's `text` datasets, LLaMA-Factory's `pt` stage): a row {"text": ...} with no instruction, output or
# conversation column is language-modelling text, every token of it a target (role `text`, weight 1).
TEXT_FIELD = "text"
# Column names that real datasets use for the same fields; looked for only when the canonical
# name is absent, and overridden by an explicit `column_map`.
ALIASES = {
    "instruction": ("instruction", "prompt", "question", "query"),
    "input": ("input", "context"),
    "output": ("output", "response", "answer", "completion"),
}


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
    unknown_message_keys: Counter = field(default_factory=Counter)  # conversations: turn key not read -> turns with it

    def summary(self) -> str:
        """One paragraph for the console: rows read, kept and dropped by reason, where the first dropped ones were,
        the columns ignored and the message keys not read (train and plan print it; nothing is lost unsaid)."""
        dropped = sum(self.rows_dropped.values())
        lines = [f"{self.source}: {self.rows_read:,} rows read, {self.rows_kept:,} kept, {dropped:,} dropped"
                 + (f" ({', '.join(f'{n:,} {why}' for why, n in self.rows_dropped.most_common())})" if dropped else "")]
        if self.first_bad_rows:
            lines.append("  first dropped: " + "; ".join(self.first_bad_rows))
        lines.append("  columns ignored: " + (", ".join(self.ignored_columns) or "none"))
        if self.unknown_message_keys:
            lines.append("  message keys not read (turns with each): " + ", ".join(
                f"{k} ({n:,})" for k, n in sorted(self.unknown_message_keys.items())))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["rows_dropped"] = dict(self.rows_dropped)
        d["unknown_message_keys"] = dict(self.unknown_message_keys)
        return d


def _skip(report: LoadReport, where: str, reason: str) -> None:
    """Count a dropped row by reason (a field's list index left out: tool_calls[2].function.name counts as
    tool_calls.function.name) and remember where the first few were."""
    report.rows_dropped[re.sub(r"\[\d+\]", "", reason)] += 1
    if len(report.first_bad_rows) < 5:
        report.first_bad_rows.append(f"{where}: {reason}")


def _skip_unread(report: LoadReport, where: str, reason: str) -> None:
    """Count a line that was read but never became a record (a .jsonl line that is not JSON)."""
    report.rows_read += 1
    _skip(report, where, reason)


def _resolve_columns(columns: list[str], column_map: dict[str, str], where: str) -> dict[str, str]:
    """Map canonical fields to the columns that hold them (or "messages" to a conversation column), or explain
    what is missing."""
    for col, target in column_map.items():
        if target not in FIELDS + CHAT_FIELDS + (SAMPLE_WEIGHT, TEXT_FIELD):
            raise UserError(f"column_map maps {col!r} to {target!r}; targets must be one of instruction, input, "
                             "output, messages, tools, sample_weight, text.")
    mapping = {target: col for col, target in column_map.items() if col in columns}
    chat = mapping.get("messages") or next((c for c in CHAT_COLUMNS if c in columns), None)
    if chat is not None and not any(t in mapping for t in FIELDS) and not {"instruction", "output"} <= set(columns):
        tools = mapping.get("tools") or (TOOLS_COLUMN if TOOLS_COLUMN in columns else None)
        return {"messages": chat, **({"tools": tools} if tools else {}),
                **({"system": SYSTEM_COLUMN} if SYSTEM_COLUMN in columns else {})}
    for target in FIELDS:
        if target not in mapping:
            found = next((a for a in ALIASES[target] if a in columns), None)
            if found is not None:
                mapping[target] = found
    missing = [t for t in REQUIRED if t not in mapping]
    if missing:
        looked = "; ".join(f"{t}: {', '.join(ALIASES[t])}" for t in missing)
        raise UserError(
            f"{where}: no column for {', '.join(missing)} (looked for {looked}). The columns are: "
            f"{', '.join(columns) or '(none)'}. Map yours with --column-map YOUR_COLUMN=output "
            "(DataConfig.column_map in Python); conversations go in a `messages` or `conversations` column, "
            "plain text in a `text` column."
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


def _check_text_row(rec: Any, col: str) -> tuple[dict[str, str] | None, str, str]:
    """Return ({"text": ...}, "", "") for a valid plain-text record, else (None, field, problem)."""
    if not isinstance(rec, dict):
        return None, "(row)", f"is a {type(rec).__name__}, not an object with fields"
    value, label = rec.get(col), TEXT_FIELD if col == TEXT_FIELD else f"text (column {col!r})"
    if value is None:
        return None, label, "is missing" if col not in rec else "is null"
    if not isinstance(value, str):
        return None, label, f"must be a string, got {type(value).__name__} {value!r:.40}"
    if not value.strip():
        return None, label, "is empty"
    return {TEXT_FIELD: value}, "", ""


# Columns that make a row an instruction row or a conversation, not plain text (any alias, filled in).
_NOT_TEXT = tuple(dict.fromkeys(ALIASES["instruction"] + ALIASES["output"] + CHAT_COLUMNS))


def _is_text_record(rec: Any, text_col: str, column_map: dict[str, str]) -> bool:
    """Whether a record is plain text: its text column filled in and no instruction, output or conversation column
    (alpaca's own `text` column, the rendered prompt beside instruction and output, leaves a row an instruction row)."""
    if not isinstance(rec, dict) or rec.get(text_col) in (None, ""):
        return False
    others = set(_NOT_TEXT) | {c for c, t in column_map.items() if t != TEXT_FIELD}
    return not any(rec.get(c) not in (None, "") for c in others)


def _text_column(records: list[tuple[str, Any]], column_map: dict[str, str], name: str) -> str | None:
    """The column of a plain-text source (its rows all text), None for instruction rows or conversations; a source
    mixing plain text with other rows is a ValueError naming the first row of the other kind."""
    text_col = next((c for c, t in column_map.items() if t == TEXT_FIELD), TEXT_FIELD)
    kinds = [(where, _is_text_record(rec, text_col, column_map)) for where, rec in records if isinstance(rec, dict)]
    if not any(is_text for _, is_text in kinds):
        return None
    first_where, first = kinds[0]
    odd = next((where for where, is_text in kinds if is_text != first), None)
    if odd is not None:
        kind = lambda t: 'plain text ({"text": ...})' if t else "an instruction row or conversation"  # noqa: E731
        raise UserError(f"{odd}: is {kind(not first)} while {first_where} is {kind(first)}; {name} mixes plain "
                         "text with instruction rows. A file holds one kind: put the text rows and the instruction "
                         "rows in separate files and train on one kind at a time.")
    return text_col


def _check_chat_row(rec: Any, mapping: dict[str, str], where: str, from_text: bool,
                    on_bad_rows: str) -> tuple[dict | None, str, str, str]:
    """(row, where, field, problem) for a conversation record; the problem is generic (for counting), and where
    names the turn; with on_bad_rows="error" the field also says how to fix it. The row's tools (its `tools`
    column) travel with it; LLaMA-Factory's `system` column becomes the opening system turn."""
    col = mapping["messages"]
    if not isinstance(rec, dict):
        return None, where, "(row)", f"is a {type(rec).__name__}, not an object with fields"
    if rec.get(col) is None:
        return None, where, col, "is missing"
    messages, turn, fld, problem, fix = check_conversation(rec[col], from_text)
    if messages is None:
        where = where if turn is None else f"{where}, turn {turn}"
        label = fld if turn is not None else col
        return None, where, label, problem if on_bad_rows == "skip" else f"{problem} ({fix})"
    tools, problem, fix = check_tools(rec.get(mapping["tools"])) if "tools" in mapping else (None, "", "")
    if problem:
        return None, where, mapping["tools"], problem if on_bad_rows == "skip" else f"{problem} ({fix})"
    system = rec.get(mapping["system"]) if "system" in mapping else None
    if system is not None and not isinstance(system, str):
        return None, where, mapping["system"], "is not a string" if on_bad_rows == "skip" else (
            f"is not a string (got {type(system).__name__} {system!r:.40}; the system column holds the system "
            "prompt as text)")
    if system and system.strip() and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    elif system and system.strip():
        return None, where, mapping["system"], "system prompt given twice" if on_bad_rows == "skip" else (
            "system prompt given twice (the row has a system column and its conversation opens with a system "
            "turn; keep one of them)")
    return {"messages": messages, **({"tools": tools} if tools else {})}, where, "", ""


def _files_of(source: Path) -> list[Path]:
    """The data files of a file or a folder (sorted, so the row order is stable)."""
    if source.is_file():
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise UserError(
            f"{source}: the folder holds no data file ({', '.join(SUFFIXES)}). Put your dataset file in it, "
            "or pass --data with a file path or a hub dataset id such as yahma/alpaca-cleaned."
        )
    return files


def _records_from_hub(dataset_id: str) -> tuple[str, list[Any]]:
    """Load the train split of a hub dataset (needs the network, or a populated HF cache)."""
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # the hub client raises many types (offline, 404, auth); say what to do instead
        raise UserError(
            f"{dataset_id!r} is not a local file or folder, and loading it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {str(e)[:200]}). Download the dataset into Dataset/ and pass that path, "
            "or check the id and your network."
        ) from None
    return dataset_id, ds.to_list()


def _sources(source: str | Path, on_bad_rows: str, report: LoadReport) -> list[tuple[str, Iterator]]:
    """(name, records) for each file of a file or folder, or for a hub dataset."""
    path = Path(source)
    if path.exists():
        return [(str(f), read_records(f, on_bad_rows, lambda where, why: _skip_unread(report, where, why)))
                for f in _files_of(path)]
    if "/" in str(source) and not str(source).startswith((".", "/")) and not path.suffix:
        name, records = _records_from_hub(str(source))
        return [(name, ((f"{name}: row {i}", r) for i, r in enumerate(records, 1)))]
    raise UserError(
        f"{source}: no such file or folder. Pass a .json/.jsonl/.parquet/.csv file, a folder of them, "
        "or a hub dataset id such as yahma/alpaca-cleaned."
    )


def _valid_rows(name: str, records: list[tuple[str, Any]], column_map: dict[str, str], on_bad_rows: str,
                keep_column: str | None, report: LoadReport) -> list[dict[str, str]]:
    """The valid rows of one source, mapped to the canonical fields; bad ones raise or are counted."""
    not_object = next((where for where, r in records if not isinstance(r, dict)), None)
    if not_object is not None and on_bad_rows == "error":  # say so before guessing at columns
        _, fld, problem = _check_row(dict(records)[not_object], {})
        raise UserError(f"{not_object}, field {fld}: {problem}. Each row must be an object such as "
                         '{"instruction": ..., "input": ..., "output": ...}.')
    columns = list(dict.fromkeys(k for _, r in records if isinstance(r, dict) for k in r))
    weight_col = next((c for c, t in column_map.items() if t == SAMPLE_WEIGHT), SAMPLE_WEIGHT)
    weight_col = weight_col if weight_col in columns else None
    fields_map = {c: t for c, t in column_map.items() if t != SAMPLE_WEIGHT}
    text_col = _text_column(records, fields_map, name)
    mapping = {TEXT_FIELD: text_col} if text_col else _resolve_columns(columns, fields_map, name)
    if weight_col is not None:
        mapping[SAMPLE_WEIGHT] = weight_col
    report.column_mapping = {**report.column_mapping, **mapping}
    report.ignored_columns += [c for c in columns if c not in mapping.values() and c != keep_column
                               and c not in report.ignored_columns]
    rows, from_text = [], name.lower().endswith(".csv")
    for where, rec in records:
        report.rows_read += 1
        if text_col is not None:
            row, fld, problem = _check_text_row(rec, text_col)
        elif "messages" in mapping:
            row, where, fld, problem = _check_chat_row(rec, mapping, where, from_text, on_bad_rows)
            if row is not None and isinstance(rec.get(mapping["messages"]), list):
                report.unknown_message_keys.update(k for turn in rec[mapping["messages"]] for k in unread_keys(turn))
        else:
            row, fld, problem = _check_row(rec, mapping)
        if row is not None and weight_col is not None:
            weight, problem = check_sample_weight(rec.get(weight_col), from_text, on_bad_rows)
            row, fld = ({**row, SAMPLE_WEIGHT: weight}, "") if weight is not None else (None, weight_col)
        if row is not None and keep_column is not None:
            if rec.get(keep_column) is None:
                raise UserError(f"{where}, field {keep_column}: is missing. Every row needs a {keep_column!r} "
                                 f"value to be grouped by it; drop the grouping or fill the column.")
            row[keep_column] = str(rec[keep_column])
        if row is not None:
            rows.append(row)
        elif on_bad_rows == "skip":
            _skip(report, where, f"{fld} {problem}")
        else:
            raise UserError(f"{where}, field {fld}: {problem}. Fix the row, or pass --on-bad-rows skip to drop bad "
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
        raise UserError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}.")
    report = LoadReport(source=str(source))
    rows: list[dict[str, str]] = []
    for name, records in _sources(source, on_bad_rows, report):
        part = _valid_rows(name, list(records), dict(column_map or {}), on_bad_rows, keep_column, report)
        if rows and part and row_kind(rows[0]) != row_kind(part[0]):
            raise UserError(f"{name}: holds {row_kind(part[0])} while the files before it hold "
                             f"{row_kind(rows[0])}; train on one kind at a time (put plain text, conversations and "
                             "instruction rows in separate folders).")
        rows += part
    if any(SAMPLE_WEIGHT in r for r in rows):  # a file of a folder without the column: its rows weigh 1
        rows = [r if SAMPLE_WEIGHT in r else {**r, SAMPLE_WEIGHT: 1.0} for r in rows]
    report.rows_kept = len(rows)
    if not rows:
        raise UserError(
            f"{source}: no valid rows ({report.rows_read} read; dropped: {dict(report.rows_dropped)}). "
            "Check the file and the column mapping."
        )
    return rows, report


def row_kind(row: dict) -> str:
    """What a validated row is: "conversations", "plain text" or "instruction rows" (one kind per dataset)."""
    return "conversations" if "messages" in row else "plain text" if TEXT_FIELD in row else "instruction rows"


def fingerprint_rows(rows: list[dict[str, str]]) -> str:
    """A short content hash of the validated rows (order included), for manifests and caches."""
    h = hashlib.sha256()
    for r in rows:
        fields = (r["messages"] if "messages" in r else [r[TEXT_FIELD]] if TEXT_FIELD in r
                  else [r["instruction"], r["input"], r["output"]])
        fields = [fields, r["tools"]] if r.get("tools") else fields  # a conversation's tools (only where given)
        h.update(json.dumps(fields, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]

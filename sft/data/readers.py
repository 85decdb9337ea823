"""One data file read into (location, record) pairs: JSON (a list), JSON Lines, CSV and Parquet; a byte that is not
UTF-8, a line that is not JSON or a damaged file is a UserError naming the file and line (sft.data.rows validates
the records)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq

from sft.data.errors import UserError
from sft.data.files import SUFFIXES


def _decode(path: Path, raw: bytes) -> str:
    """Decode UTF-8 (a BOM is allowed), or say where the bad byte is and how to convert."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line} (byte {e.start}) is not valid UTF-8 ({raw[e.start:e.start + 1]!r}). "
            f"Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed_{path.name}`."
        ) from None


def _json_records(path: Path, raw: bytes) -> Iterator[tuple[str, Any]]:
    """The rows of a .json file: one list of objects."""
    try:
        records = json.loads(_decode(path, raw))
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}. "
            "A .json file must hold one list of objects; use .jsonl for one object per line."
        ) from None
    if not isinstance(records, list):
        raise UserError(
            f"{path}: expected a JSON list of row objects, got a {type(records).__name__}. "
            "Wrap the rows in [...] or save them as .jsonl, one object per line."
        )
    for i, rec in enumerate(records, 1):
        yield f"{path}: row {i}", rec


def _jsonl_records(path: Path, raw: bytes, on_bad_rows: str, skip: Callable[[str, str], None]
                   ) -> Iterator[tuple[str, Any]]:
    """The rows of a .jsonl file, one object per line; a line that is not JSON is an error or, skipped, counted."""
    for i, line in enumerate(_decode(path, raw).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            where = f"{path}: line {i}"
            if on_bad_rows == "skip":
                skip(where, "invalid JSON")  # never yielded, but read: the caller counts it
                continue
            raise UserError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}). Fix the line, or pass "
                "--on-bad-rows skip to drop such lines (they are counted and reported)."
            ) from None
        yield f"{path}: line {i}", rec


def read_records(path: Path, on_bad_rows: str, skip: Callable[[str, str], None]) -> Iterator[tuple[str, Any]]:
    """Yield (location, record) for each row of one file; location names the file and row. A .jsonl line that
    is not JSON is an error, or with on_bad_rows="skip" handed to skip(location, reason)."""
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"{path}: the file is empty. Put instruction rows in it or point --data elsewhere.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        yield from _json_records(path, raw)
    elif suffix == ".jsonl":
        yield from _jsonl_records(path, raw, on_bad_rows, skip)
    elif suffix == ".csv":
        # csv keeps every cell a string; an empty cell is "" (caught by validation), never NaN.
        reader = csv.DictReader(_decode(path, raw).splitlines())
        for i, rec in enumerate(reader, 1):
            yield f"{path}: row {i} (line {reader.line_num})", rec
    elif suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable Parquet file ({e}). Re-export it, or use .jsonl.") from None
        for i, rec in enumerate(table.to_pylist(), 1):
            yield f"{path}: row {i}", rec
    else:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}.")

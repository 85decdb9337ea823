"""Writing files the project's way: JSON Lines in UTF-8, one object per line, written in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable


def write_jsonl(path: str | Path, records: Iterable[dict], default: Callable[[Any], Any] | None = None) -> Path:
    """Write records as UTF-8 JSON Lines (non-ASCII kept as is, "\\n" line ends), creating the folder.

    `default` turns values json cannot write into ones it can (e.g. lm-eval's handle_non_serializable).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=default) + "\n")
    return path

"""Which files in a folder are data: the suffixes the readers take, and a user's Dataset/ folder searched."""

from __future__ import annotations

from pathlib import Path

from sft.data.errors import UserError

SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")  # what a file or a folder may hold
NOT_DATA = ("readme", ".")  # names (lowercase prefixes) in Dataset/ that are never data: README.md, .gitkeep
LOCK_SUFFIX = ".lock"  # file locks are never data: the demo's Dataset/demo.lock sits beside the user's files


def data_files(folder: str | Path) -> list[Path]:
    """The data files of a user's Dataset/ folder (sorted; Dataset/demo/ left out), or [] when it holds nothing.

    A folder that holds files but no usable one (an archive, a .txt) is an error rather than a
    silent switch to the hub copy, which would train on other data than the user put there.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    files = sorted(f for f in root.rglob("*") if f.is_file() and "demo" not in f.relative_to(root).parts
                   and not f.name.lower().startswith(NOT_DATA) and f.suffix.lower() != LOCK_SUFFIX)
    usable = [f for f in files if f.suffix.lower() in SUFFIXES and f.stat().st_size > 0]
    if files and not usable:
        raise UserError(f"{root}/ holds no usable data file (found {', '.join(f.name for f in files[:5])}): put the "
                         f"dataset there as {'/'.join(SUFFIXES)}, e.g. {root}/alpaca_data_cleaned.json (uncompressed), "
                         "or pass --data PATH or a hub id such as yahma/alpaca-cleaned.")
    return usable

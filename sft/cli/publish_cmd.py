"""`sft publish`: copy what the pages cite from evaluation_results/raw/ into the committed evaluation_results/."""

from __future__ import annotations

import argparse

from sft.evaluation.publish import publish


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish each raw evaluation, sweep or case study; print where it went and its size."""
    for path in args.paths:
        target = publish(path)
        files = [p for p in target.rglob("*") if p.is_file()] if target.is_dir() else \
            [p for p in target.parent.glob(f"{target.stem}.*")]
        size = sum(p.stat().st_size for p in files)
        print(f"published: {path} -> {target} ({len(files)} files, {size / 1024:.0f} KiB); commit it with the pages "
              "that cite it")
    return 0

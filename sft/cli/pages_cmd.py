"""`sft pages`: the result tables of README.md and docs/*.md, written from the committed results."""

from __future__ import annotations

import argparse

from sft.evaluation.pages import render, update_pages


def cmd_pages(args: argparse.Namespace) -> int:
    """Print one generated table, or rewrite (--check: list) the marked blocks of README.md and docs/*.md."""
    if args.table is not None:
        print(render(args), end="")
        return 0
    changed = update_pages(args.root, check=args.check)
    for page in changed:
        print(f"{'differs from its results' if args.check else 'rewritten'}: {page}")
    return 1 if args.check and changed else 0

"""`sft sweep`: every (prompt-loss weight, seed) pair trained and evaluated, summarised with intervals."""

from __future__ import annotations

import argparse

from sft.studies.sweep import parse_weights, run_sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train and evaluate every (prompt-loss weight, seed) pair, then summarise and plot."""
    seeds = list(range(1, args.seeds + 1)) if args.seeds > 0 else []
    if not seeds:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}.")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if args.heldout_only and tasks:
        raise ValueError("--heldout-only runs no lm-eval task; drop --tasks, or drop --heldout-only.")
    if tasks == []:
        raise ValueError("--tasks is empty; pass lm-eval task names such as sft_demo, or --heldout-only.")
    run_sweep(args.preset, parse_weights(args.prompt_loss_weights), seeds, args.name or args.preset,
              limit=args.limit, overrides=args.overrides, plot=args.plot, tasks=[] if args.heldout_only else tasks)
    return 0

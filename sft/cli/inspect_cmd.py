"""`sft inspect-data`: what training will see, without a model, a Trainer or lm-eval."""

from __future__ import annotations

import argparse
import json
import sys

from sft.cli.main import config_values
from sft.core.config import ExperimentConfig
from sft.core.inspect_data import (
    export_masks,
    format_stats,
    inspect_data,
    render_example,
)
from sft.core.overrides import apply_overrides
from sft.models.tokenizer import load_tokenizer


def cmd_inspect_data(args: argparse.Namespace) -> int:
    """Show what training will see: counts, token statistics, rendered examples."""
    cfg = apply_overrides(ExperimentConfig(), config_values(args)).data  # DataConfig's defaults, the flags over them
    tokenizer = load_tokenizer(args.tokenizer)
    stats, ds, _ = inspect_data(cfg, tokenizer, by=args.by)
    if args.export:  # the masks, auditable token by token: one line per example, in the input's order
        stats["exported"] = {"path": args.export, "examples": export_masks(ds, args.export, list(stats.get("sources") or []))}
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    examples = sys.stderr if args.json else sys.stdout  # stdout stays one JSON object with --json
    colour = examples.isatty()
    for i in range(min(args.show, len(ds))):
        print(f"\n--- example {i} ---", file=examples)
        print(render_example(ds[i], tokenizer, colour), file=examples)
    return 0

"""`sft plan`: what a run will cost before it starts."""

from __future__ import annotations

import argparse
import json

from sft.core.overrides import load_config
from sft.core.plan import format_plan, plan_run


def cmd_plan(args: argparse.Namespace) -> int:
    """Tokenize the data and print what the run will cost: tokens, steps, FLOPs, memory, time."""
    plan = plan_run(load_config(args.preset, **args.overrides), world_size=args.world_size, mfu=args.mfu)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0

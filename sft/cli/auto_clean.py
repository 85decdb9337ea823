"""Prune a run's checkpoints: keep the newest, the best by a metric and anything still being written.

    python auto_clean.py model/demo/masked --dry-run
    python auto_clean.py model/demo/masked --keep-last 2 --keep-best 1 --strip-optimizer
    python auto_clean.py model/demo/masked --watch 60 --until-complete     # beside a training run

The policy is sft/runs/prune.py; the same one runs inside training with `--auto-clean '{"keep_best": 1}'`.
User errors (a damaged trainer_state.json, an unknown metric) end with exit code 2 and one paragraph.
Ctrl-C (SIGINT) or SIGTERM stops it within a second in any state, after the checkpoint being deleted is gone
(never half of one), with a summary and exit code 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sft.data.errors import UserError
from sft.runs.prune import (
    MIN_AGE,
    PrunePolicy,
    StopOnSignals,
    format_bytes,
    format_plan,
    prune_run,
    watch,
    worth_showing,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of auto_clean.py."""
    p = argparse.ArgumentParser(prog="python auto_clean.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:5]))
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder holding checkpoint-N folders, e.g. model/demo/masked")
    p.add_argument("--keep-last", type=int, default=1, metavar="N", help="keep the N newest complete checkpoints (1)")
    p.add_argument("--keep-best", type=int, default=1, metavar="K", help="keep the K best by --metric (1; 0 = none)")
    p.add_argument("--metric", default="eval_response_loss", help="log_history key to rank by (eval_response_loss)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--greater-is-better", dest="greater_is_better", action="store_true", default=None,
                      help="higher metric is better (default: known from the name: loss/perplexity lower, "
                           "accuracy/exact_match higher)")
    side.add_argument("--lower-is-better", dest="greater_is_better", action="store_false")
    p.add_argument("--strip-optimizer", action="store_true",
                   help="remove optimizer/scheduler/RNG states from kept checkpoints that resuming does not need")
    p.add_argument("--min-age", type=float, default=MIN_AGE, metavar="SECONDS",
                   help=f"a checkpoint with a file newer than this may still be written: left alone ({MIN_AGE:g})")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="prune every SECONDS until Ctrl-C")
    p.add_argument("--until-complete", action="store_true",
                   help="with --watch: stop once the run's manifest says complete (after a last pass)")
    p.add_argument("--max-iterations", type=int, metavar="N", help="with --watch: stop after N passes")
    p.add_argument("--dry-run", action="store_true", help="print what would happen, change nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """Prune once, or watch; user errors print one paragraph and return 2; Ctrl-C / SIGTERM stop cleanly (0)."""
    args = build_parser().parse_args(argv)
    try:
        policy = PrunePolicy(keep_last=args.keep_last, keep_best=args.keep_best, metric=args.metric,
                             greater_is_better=args.greater_is_better, strip_optimizer=args.strip_optimizer,
                             min_age=args.min_age)
        if args.watch is None:
            if args.until_complete or args.max_iterations is not None:
                raise UserError("--until-complete and --max-iterations go with --watch SECONDS.")
            if not Path(args.run_dir).is_dir():
                raise UserError(f"Run folder {args.run_dir} does not exist; pass a folder holding checkpoint-N "
                                 "folders, e.g. model/demo/masked.")
        elif args.watch <= 0:
            raise UserError(f"--watch takes a positive number of seconds, got {args.watch:g}.")
        with StopOnSignals() as stop:
            if args.watch is None:
                decisions, _ = prune_run(args.run_dir, policy, args.dry_run, stop=stop)
                print(format_plan(decisions, args.dry_run) if decisions else
                      f"{args.run_dir} holds no checkpoint-N folders: nothing to do.")
            else:
                print(f"watching {args.run_dir} every {args.watch:g} s (Ctrl-C to stop)", flush=True)
                freed, shown = 0, None
                for decisions, n in watch(args.run_dir, policy, args.watch, args.dry_run, args.max_iterations,
                                          args.until_complete, stop=stop):
                    freed += n
                    if worth_showing(decisions, shown):
                        print(time.strftime("[%H:%M:%S]\n") + format_plan(decisions, args.dry_run), flush=True)
                        shown = decisions
                print(f"{'would have freed' if args.dry_run else 'freed'} {format_bytes(freed)} in all while "
                      "watching")
            if stop.is_set():
                print(f"stopped ({stop.reason})", flush=True)
        return 0
    except (UserError, FileNotFoundError) as e:  # any other error is a bug: its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


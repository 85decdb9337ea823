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

import signal
import sys


def exit_before_start(signum, frame) -> None:
    """A stop that comes while the imports below load: nothing was touched yet, so just leave."""
    print("stopped before starting: nothing was changed", flush=True)
    raise SystemExit(0)


if __name__ == "__main__":  # main() installs the real handlers; tests importing this file keep pytest's own
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, exit_before_start)

from sft.cli.auto_clean import build_parser, main  # noqa: E402,F401 (after the handlers on purpose)

if __name__ == "__main__":
    sys.exit(main())

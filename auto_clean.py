"""Prune a run's checkpoints (the command lives in sft/cli/auto_clean.py; the policy in sft/runs/prune.py).

    python auto_clean.py model/demo/masked --dry-run
    python auto_clean.py model/demo/masked --watch 60 --until-complete     # beside a training run
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

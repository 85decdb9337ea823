"""`python -m sft`: the command line (sft/cli/main.py)."""

import sys

from sft.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

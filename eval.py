"""Case study: the same prompts through several models, side by side (the command lives in sft/cli/case_study.py).

    python eval.py --models base=model/demo/base,masked=model/demo/masked,unmasked=model/demo/unmasked
    python eval.py --models masked=PATH --prompts my_prompts.jsonl --tensorboard
    python eval.py --models masked=PATH --prompt "Sort these words." --input "pear, fig"
"""

import sys

from sft.cli.case_study import build_parser, main, run  # noqa: F401 (the script's parser and entry points)

if __name__ == "__main__":
    sys.exit(main())

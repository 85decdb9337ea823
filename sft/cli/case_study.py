"""Case study: the same prompts through several models, side by side.

    python eval.py --models base=model/demo/base,masked=model/demo/masked,unmasked=model/demo/unmasked
    python eval.py --models masked=PATH --prompts my_prompts.jsonl --tensorboard
    python eval.py --models masked=PATH --prompt "Sort these words." --input "pear, fig"

Prints a markdown table (one row per prompt, one column per model) and saves it with the raw
generations and the settings under evaluation_results/raw/case_study/<timestamp>.{md,jsonl,json}.
User errors end with exit code 2 and one paragraph.
"""

from __future__ import annotations

import argparse
import sys

from transformers.utils import logging as hf_logging

from sft.core.overrides import field_help
from sft.data.errors import UserError
from sft.evaluation import case_study as cs
from sft.evaluation.case_study import OUT_DIR
from sft.evaluation.settings import GenerationSettings
from sft.studies.demo import builtin_prompts


def build_parser() -> argparse.ArgumentParser:
    """The command line of eval.py."""
    default, helps = GenerationSettings(), field_help(GenerationSettings)  # decoding flags: one definition
    p = argparse.ArgumentParser(prog="python eval.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:5]))
    p.add_argument("--models", required=True, metavar="NAME=PATH,...",
                   help="models to compare, e.g. base=model/demo/base,masked=model/demo/masked")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompts", metavar="FILE.jsonl",
                     help="one JSON object per line: instruction (required), input, output (a reference answer); "
                          "or messages (a conversation ending on a user turn or a tool's output), tools (the JSON "
                          "schemas it may call) and output; "
                          "default: the demo's built-in prompts for demo runs, else 8 held-out rows of the runs' data")
    src.add_argument("--prompt", metavar="TEXT", help="a single instruction")
    p.add_argument("--input", metavar="TEXT", help="the input of --prompt")
    p.add_argument("--template", help="render every prompt with this template (default: each run's own)")
    p.add_argument("--max-new-tokens", type=int, default=default.max_new_tokens, help=helps["max_new_tokens"])
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=default.temperature, help=helps["temperature"])
    p.add_argument("--top-p", type=float, default=default.top_p, help=helps["top_p"])
    p.add_argument("--seed", type=int, default=default.seed, help=helps["seed"])
    p.add_argument("--batch-size", type=int, default=default.batch_size, help=helps["batch_size"])
    p.add_argument("--out", default=OUT_DIR, metavar="DIR", help=f"where results are saved (default {OUT_DIR})")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the generations as text into each fine-tuned run's TensorBoard folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the case study; user errors print one paragraph and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UserError, FileNotFoundError) as e:  # any other error is a bug: its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Read the inputs, generate, print and save."""
    hf_logging.disable_progress_bar()  # stderr keeps our one line per model

    if args.input is not None and args.prompt is None:
        raise UserError("--input belongs to --prompt; pass --prompt TEXT too, or put both in a --prompts file.")
    specs = cs.resolve_models(cs.parse_models(args.models), args.template)
    if args.prompts:
        rows, source = cs.read_prompts(args.prompts), args.prompts
    elif args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty; pass the instruction text.")
        rows, source = [{"instruction": args.prompt, "input": args.input or ""}], "--prompt"
    else:
        rows, source = cs.default_prompts(specs, builtin_prompts)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                  batch_size=args.batch_size)
    study = cs.run_case_study(specs, rows, settings, log=lambda msg: print(msg, file=sys.stderr))
    print(cs.study_markdown(study))
    paths = cs.save_case_study(study, args.out, source)
    print(f"saved {paths['md']}, {paths['jsonl'].name} and {paths['json'].name}", file=sys.stderr)
    if args.tensorboard:
        folders = cs.log_to_tensorboard(study)
        for folder in folders:
            print(f"TensorBoard text: {folder}", file=sys.stderr)
        if not folders:
            print("--tensorboard: no model comes from a fine-tuning run (none has a run_manifest.json), "
                  "so nothing was logged.", file=sys.stderr)
    return 0


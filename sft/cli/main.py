"""Command line: `python -m sft <command> ...` (`python -m sft --help` lists the commands).

The parser is built from the config dataclasses and the settings' defaults alone; each command lives in its own
module of sft/cli (inspect_cmd, train_cmd, plan_cmd, evaluate_cmd, sweep_cmd, reference_check), imported by
`run_command` only when that command runs.

User errors (bad data, a missing model folder, an unknown setting: a UserError, or a missing file) end with exit
code 2 and one paragraph saying what is wrong and how to fix it, never a traceback; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import sys
import typing
from collections import Counter

from sft.core.config import DEFAULT_PRESET, PRESETS
from sft.core.costs import MFU
from sft.core.overrides import field_help, section_classes
from sft.data.errors import UserError
from sft.evaluation.settings import (
    BATCH_SIZE,
    FORMATS,
    MAX_GEN_TOKS,
    EvalConfig,
    add_page_arguments,
)
from sft.runs.layout import RAW_RESULTS_ROOT, SWEEP_PLOT


# Sections whose fields' flags carry the section's name: --lora-r, --lora-alpha, --lora-dropout, --lora-bias (a bare
# --r or --bias says nothing of LoRA, and --dropout or --bias could be taken for the model's own).
PREFIXED = ("lora",)


def _metavar(typ) -> str:
    """How a field's value is written on the command line."""
    text = str(typ)
    if "dict" in text:
        return "KEY=VALUE"
    if "bool" in text:
        return "VALUE" if "str" in text else "BOOL"
    return "X" if "float" in text else "N" if "int" in text else "TEXT"


def add_config_arguments(p: argparse.ArgumentParser, sections: dict[str, type] | None = None,
                         show_defaults: bool = False, required: tuple[str, ...] = ()) -> None:
    """One flag per config field (sft/core/config.py, sft/data/config.py), its help the comment on the field's line.

    A field is --name where its name is unique across the sections (--section-name in a PREFIXED section), and
    always --section.name. Values stay strings (a list for a KEY=VALUE field): sft.core.overrides.apply_overrides
    reads them, as it reads a notebook's.
    """
    sections = sections or section_classes()
    counts = Counter(f.name for s, cls in sections.items() if s not in PREFIXED for f in dataclasses.fields(cls))
    for section, cls in sections.items():
        group = p.add_argument_group(f"{section} ({cls.__name__})", cls.__doc__.splitlines()[0])
        hints, helps = typing.get_type_hints(cls), field_help(cls)
        for f in dataclasses.fields(cls):
            name = f.name.replace("_", "-")
            short = f"--{section}-{name}" if section in PREFIXED else f"--{name}" if counts[f.name] == 1 else None
            flags = [short] * (short is not None) + [f"--{section}.{name}"]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            text = helps[f.name] + (f" (default: {default})" if show_defaults and f.name not in required else "")
            kind = _metavar(hints[f.name])
            group.add_argument(*flags, dest=f"{section}.{f.name}", default=argparse.SUPPRESS, metavar=kind,
                               required=f.name in required, help=text.replace("%", "%%"),
                               nargs="+" if kind == "KEY=VALUE" else "?" if kind in ("BOOL", "VALUE") else None,
                               const="true" if kind in ("BOOL", "VALUE") else None)


def config_values(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The config fields given on the command line: add_config_arguments' dests are the only ones with a dot."""
    return {dest: value for dest, value in vars(args).items() if "." in dest}


def _parse_overrides(extra: list[str]) -> dict[str, str]:
    """Turn `--some-flag VALUE` pairs (any config or TrainingArguments field) into a dict."""
    out: dict[str, str] = {}
    i = 0
    bare = {f.name: s for s in PREFIXED for f in dataclasses.fields(section_classes()[s])}  # --r: now --lora-r
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise UserError(f"Unexpected argument {arg!r}; settings are given as --name VALUE.")
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value = extra[i + 1]
            i += 2
        else:
            value = "true"  # a bare flag switches a boolean on
            i += 1
        key = name.replace("-", "_")
        if key in bare:
            raise UserError(f"--{name} is now --{bare[key]}-{name} (or --{bare[key]}.{name}): the {bare[key]} "
                            f"settings' flags carry its name.")
        out[key] = value
    return out


OVERRIDES = ("Every config field (sft/core/config.py) below is a flag, as --name (LoRA's as --lora-name) or "
             "--section.name; a field not given "
             "keeps the preset's value. Any other transformers.TrainingArguments field is set the same way, e.g. "
             "--optim adamw_torch_fused.")


def _config_command(sub, name: str, help: str, func: str, preset: bool = True) -> argparse.ArgumentParser:
    """A subcommand that takes a preset and any config or TrainingArguments field as flags."""
    # allow_abbrev=False: an unknown TrainingArguments flag must never be read as the prefix of a config flag.
    p = sub.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}. {OVERRIDES}", allow_abbrev=False)
    if preset:
        p.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="the settings to start from")
    add_config_arguments(p)
    p.set_defaults(func=func, accepts_overrides=True)
    return p


def _add_inspect_data(sub) -> None:
    p = sub.add_parser("inspect-data", help="statistics and weighted examples of a dataset", allow_abbrev=False)
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder or hub id")
    p.add_argument("--by", metavar="COLUMN", help="also give the statistics per value of this column (the demo: family)")
    p.add_argument("--show", type=int, default=0, metavar="K", help="render K examples with their weights")
    p.add_argument("--json", action="store_true", help="print one JSON object (examples go to stderr)")
    p.add_argument("--export", metavar="FILE.jsonl", help="write one line per example, in the input's order: input_ids, "
                                                          "roles (each token's role name) and weights (its final weight)")
    add_config_arguments(p, {"data": section_classes()["data"]}, show_defaults=True, required=("data",))
    p.set_defaults(func="inspect_cmd:cmd_inspect_data")


def _add_plan(sub) -> None:
    p = _config_command(sub, "plan", "what a run will cost before it starts: tokens, steps, FLOPs, memory, GPU time",
                        "plan_cmd:cmd_plan")
    p.add_argument("--world-size", type=int, default=1, help="data-parallel processes (GPUs)")
    p.add_argument("--mfu", type=float, default=MFU, help=f"assumed model FLOPs utilisation ({MFU})")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_reference_check(sub) -> None:
    p = sub.add_parser("reference-check", help="the reference commands end to end on a tiny Qwen2.5 stand-in "
                                               "(offline, CPU, about 2 minutes)")
    p.add_argument("--workdir", default=".cache/reference-check",
                   help="scratch folder (never your model/ or Dataset/); emptied first if an earlier check made it")
    p.add_argument("--shared", default="../shared", help="the folder with tokenizers/qwen2.5 and data/gsm8k_alpaca.json")
    p.set_defaults(func="reference_check:cmd_reference_check")


def _add_sweep(sub) -> None:
    p = _config_command(sub, "sweep", "train and evaluate every (prompt-loss weight, seed) pair; summary and plot",
                        "sweep_cmd:cmd_sweep")
    p.add_argument("--prompt-loss-weights", default="0,0.01,0.1,0.5,1", help="comma-separated weights in [0, 1]")
    p.add_argument("--seeds", default="3", metavar="N|A-B|LIST",
                   help="seeds 1..N per weight, A..B, or a list such as 1,2,5: two processes on disjoint seeds share one "
                        "sweep (then --seeds N summarises them all)")
    p.add_argument("--name", help="names model/<preset>/sweep-<name>/ and evaluation_results/raw/sweep-<name>/")
    p.add_argument("--limit", type=float, help="test items per task (lm-eval --limit)")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks or groups per pair (default for the demo: sft_demo; "
                                   "for demo-chat: sft_dialogue, sft_tool_call and sft_tool_answer)")
    p.add_argument("--heldout-only", action="store_true",
                   help="held-out losses only (per role for conversations), no lm-eval task")
    p.add_argument("--target-difference", type=float, action="append", default=[], metavar="D",
                   help="also print how many seeds a difference of D points needs, from the sweep's between-seed "
                        "spread (repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: print the seeds table of the sweep under evaluation_results/raw/sweep-NAME "
                        "(or, without it, its published copy evaluation_results/sweep-NAME)")
    p.add_argument("--primary", metavar="DATASET:METRIC,...",
                   help="the primary endpoints, declared in the sweep's primary.json before its first run (fixed "
                        "once declared), e.g. sft_demo_short:exact_match,sft_demo_long:edit_similarity; the report "
                        "opens with them, Holm-adjusted; every other row is exploratory (docs/sweeps.md)")
    p.add_argument("--primary-pairs", metavar="A-B,...",
                   help="the pairs of weights the primary endpoints are tested on, e.g. 1-0,0.5-0 (default: each "
                        "weight against the smallest)")
    p.add_argument("--plot", default=SWEEP_PLOT, help="where the plot goes (default: plw_sweep.png in the sweep's "
                                                      "folder; '' for none; one per variant, its label appended, when "
                                                      "--role-weights, --prompt-loss-weight-end or --loss-normalizer "
                                                      "list several values: each value is a variant, e.g. "
                                                      "--role-weights template=0,1)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out losses and lm-eval benchmarks of several models, summarised")
    p.add_argument("--models", required=True, metavar="LABEL=PATH,...",
                   help="e.g. base=model/demo/base,masked=model/demo/masked,unmasked=model/demo/unmasked")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks or groups (default for the demo: sft_demo; for "
                                   "demo-chat runs: sft_dialogue, sft_tool_call and sft_tool_answer)")
    p.add_argument("--heldout-only", action="store_true",
                   help="held-out response loss and token accuracy only, no lm-eval task (fast; offline)")
    p.add_argument("--name", help="folder under --out (default: the preset of the runs)")
    p.add_argument("--limit", type=float, help="items per task (a number below 1 is a share), for quick checks")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="one fixed batch size for every model")
    p.add_argument("--out", default=RAW_RESULTS_ROOT, help="results go to OUT/NAME/<YYYYmmdd_HHMMSS>/ (git-ignored; "
                                                           "`python -m sft publish` commits what the pages cite)")
    p.add_argument("--test-data", help="test JSONL of the sft_demo or sft_dialogue tasks (default: the demo's "
                                       "test.jsonl, or its dialogues')")
    p.add_argument("--max-gen-toks", type=int, default=MAX_GEN_TOKS, help="tokens generated per answer at most")
    p.add_argument("--prompt-format", choices=FORMATS, default="auto",
                   help="raw: lm-eval's prompts as they are; chat: in each model's chat template (a fine-tuned "
                        "model's is its training template); both; auto (default): base models raw, fine-tuned both")
    p.add_argument("--task-data", nargs="+", metavar="NAME=FOLDER",
                   help="lm-eval's task (or group) NAME reads its rows from FOLDER/<split>.jsonl (a group: one "
                        "sub-folder per task), e.g. gsm8k=data/gsm8k: its own YAML, only the data location changed")
    p.add_argument("--include-path", nargs="+", metavar="FOLDER", help="folders of your own lm-eval task YAMLs")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: each task's own)")
    p.add_argument("--assume-prompt-tokens-per-s", type=float, default=EvalConfig.assume_prompt_tokens_per_s,
                   help="--dry-run's time estimate: prompt tokens scored per second (an assumption; set yours)")
    p.add_argument("--assume-generated-tokens-per-s", type=float, default=EvalConfig.assume_generated_tokens_per_s,
                   help="--dry-run's time estimate: tokens generated per second over a batch (an assumption)")
    p.add_argument("--dry-run", action="store_true",
                   help="load the tasks and print what the evaluation will cost (requests, tokens, time); run nothing")
    p.set_defaults(func="evaluate_cmd:cmd_evaluate")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="plot and spreadsheet of evaluation results (in the first result folder)")
    p.add_argument("results", nargs="+", metavar="RESULT_DIR",
                   help="evaluation_results/raw/<name>/<timestamp> folders (or published ones)")
    p.add_argument("--out", help="folder for Comparison.png and Dataset_results.xlsx (default: the first RESULT_DIR)")
    p.set_defaults(func="evaluate_cmd:cmd_compare")


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="copy what the pages cite from evaluation_results/raw/ into the committed "
                                       "evaluation_results/ (summaries, settings, held-out metrics, item scores)")
    p.add_argument("paths", nargs="+", metavar="RAW_PATH",
                   help="evaluation_results/raw/<name>/<timestamp>, a sweep's evaluation_results/raw/sweep-<name>, or "
                        "a case study evaluation_results/raw/case_study/<timestamp>.md")
    p.set_defaults(func="publish_cmd:cmd_publish")


def _add_pages(sub) -> None:
    p = sub.add_parser("pages", help="the result tables of README.md and docs/*.md, written from the committed results")
    add_page_arguments(p)
    p.set_defaults(func="pages_cmd:cmd_pages")


DEMO_PRESETS = ("demo", "demo-chat")  # what build-demo and demo take as --preset (any other preset has no demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="python -m sft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inspect_data(sub)
    _config_command(sub, "train", "fine-tune (the notebooks run the same code)", "train_cmd:cmd_train")
    _add_plan(sub)
    _add_reference_check(sub)
    p = _config_command(sub, "build-demo", "write the demo data and build its tiny base model", "train_cmd:cmd_build_demo",
                        preset=False)
    p.add_argument("--chat", action="store_true", help="also write the synthetic dialogues (Dataset/demo-chat/)")
    p.add_argument("--preset", choices=DEMO_PRESETS, default=None, help="demo (the default), or demo-chat = --chat")
    _add_sweep(sub)
    p = _config_command(sub, "demo", "the whole offline study: build, fine-tune both regimes, evaluate, compare",
                        "train_cmd:cmd_demo", preset=False)
    p.add_argument("--chat", action="store_true",
                   help="the conversational study instead (make demo-chat): dialogues at w = 0, 0.5 and 1, lm-eval "
                        "multi-turn requests through the chat template; results in evaluation_results/demo-chat/")
    p.add_argument("--preset", choices=DEMO_PRESETS, default=None, help="demo (the default), or demo-chat = --chat")
    _add_evaluate(sub)
    _add_compare(sub)
    _add_publish(sub)
    _add_pages(sub)
    return parser


def run_command(func: str, args: argparse.Namespace) -> int:
    """Import the module of a command ("module:function" under sft.cli) and run it.

    The one place the command line imports code lazily: building the parser imports only the settings
    (dataclasses and constants), so `--help` answers at once, and each command pays only for its own imports
    (`inspect-data` never loads peft, lm-eval, papermill or the Trainer). bench/cli_startup.py times it.
    """
    module, name = func.split(":")
    return getattr(importlib.import_module(f"sft.cli.{module}"), name)(args)


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one paragraph and return 2."""
    logging.basicConfig(level=logging.INFO, format="[sft] %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "accepts_overrides", False):
            args.overrides = {**config_values(args), **_parse_overrides(extra)}
        return run_command(args.func, args)
    except (UserError, FileNotFoundError) as e:  # any other error is a bug: its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"error: no space left on device ({e.filename or 'a write'}): free space, or write elsewhere "
              "(--model-root, --out); a training run resumes from its last complete checkpoint.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `python -m sft <command> ...` (`python -m sft --help` lists the commands).

User errors (bad data, a missing model folder, an unknown setting) end with exit code 2 and
one paragraph saying what is wrong and how to fix it, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from sft.config import load_config
from sft.data import DataConfig
from sft.demo import ensure_assets, ensure_demo_assets, run_demo
from sft.evaluate import FORMATS, estimate_costs, evaluate_models, format_costs, parse_models
from sft.inspect_data import format_stats, inspect_data, render_example
from sft.modeling import load_tokenizer
from sft.plan import MFU, format_plan, plan_run
from sft.reference import reference_check
from sft.compare import compare, load_result
from sft.report import format_psql
from sft.sweep import parse_weights, run_sweep
from sft.train import train


def _parse_overrides(extra: list[str]) -> dict[str, str]:
    """Turn `--some-flag VALUE` pairs (any config or TrainingArguments field) into a dict."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}; settings are given as --name VALUE.")
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
        out[name.replace("-", "_")] = value
    return out


def _parse_column_map(pairs: list[str]) -> dict[str, str]:
    """Read `COLUMN=FIELD` pairs, e.g. `response=output`."""
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise ValueError(f"--column-map takes COLUMN=FIELD pairs such as response=output, got {kv!r}.")
        column, target = kv.split("=", 1)
        out[column] = target
    return out


def cmd_inspect_data(args: argparse.Namespace) -> int:
    """Show what training will see: counts, token statistics, rendered examples."""
    column_map = _parse_column_map(args.column_map or [])
    cfg = DataConfig(
        data=args.data,
        max_length=args.max_length,
        prompt_loss_weight=args.prompt_loss_weight,
        on_bad_rows=args.on_bad_rows,
        template=args.template,
        truncation=args.truncation,
        column_map=column_map,
    )
    tokenizer = load_tokenizer(args.tokenizer)
    stats, ds, _ = inspect_data(cfg, tokenizer, by=args.by)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    examples = sys.stderr if args.json else sys.stdout  # stdout stays one JSON object with --json
    colour = examples.isatty()
    for i in range(min(args.show, len(ds))):
        print(f"\n--- example {i} ---", file=examples)
        print(render_example(ds[i], tokenizer, colour), file=examples)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune with the preset, the flags and any config or TrainingArguments override."""
    overrides = dict(args.overrides)
    for name in ("prompt_loss_weight", "run_name", "max_steps"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.resume:
        overrides["resume"] = True
    if args.overwrite:
        overrides["overwrite"] = True
    cfg = load_config(args.preset, **overrides)
    ensure_assets(cfg)  # the demo builds its data and base model on first use
    try:
        train(cfg)
    finally:
        # Under torchrun / accelerate: leave the process group before the interpreter exits. Otherwise Gloo's
        # worker threads can still hold tensors at finalisation and a rank aborts after training finished
        # ("terminate called without an active exception", SIGABRT; seen under load in test_distributed).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def cmd_build_demo(args: argparse.Namespace) -> int:
    """Write the synthetic data and build the tiny base model of the demo preset."""
    cfg = load_config("demo", **args.overrides)
    print(f"demo base model: {ensure_demo_assets(cfg.demo)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole offline study (what `make demo` runs)."""
    run_demo(overrides=args.overrides)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Held-out metrics and lm-eval tasks for every model, summarised under evaluation_results/."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if args.heldout_only:
        if tasks:
            raise ValueError("--heldout-only runs no lm-eval task; drop --tasks, or drop --heldout-only.")
        tasks = []
    elif tasks == []:
        raise ValueError("--tasks is empty; pass lm-eval task names such as mmlu,gsm8k (or sft_demo), "
                         "or --heldout-only.")
    settings = dict(tasks=tasks, name=args.name, limit=args.limit, batch_size=args.batch_size, out=args.out,
                    test_data=args.test_data, max_gen_toks=args.max_gen_toks, prompt_format=args.prompt_format,
                    task_data=args.task_data or [], include_path=args.include_path or [],
                    num_fewshot=args.num_fewshot, assume_prompt_tokens_per_s=args.assume_prompt_tokens_per_s,
                    assume_generated_tokens_per_s=args.assume_generated_tokens_per_s)
    if args.dry_run:
        print(format_costs(estimate_costs(parse_models(args.models), **settings)))
        return 0
    run = evaluate_models(parse_models(args.models), **settings)
    scores = load_result(run).scores
    print(format_psql([list(scores.columns)] + scores.values.tolist()))
    print(f"results: {run}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Plot and tabulate one or more evaluation results into assets/."""
    print(compare(args.results, out=args.out))
    print(f"written: {args.out}/Comparison.png, {args.out}/Dataset_results.xlsx")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train and evaluate every (prompt-loss weight, seed) pair, then summarise and plot."""
    seeds = list(range(1, args.seeds + 1)) if args.seeds > 0 else []
    if not seeds:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}.")
    run_sweep(args.preset, parse_weights(args.prompt_loss_weights), seeds, args.name or args.preset,
              limit=args.limit, overrides=args.overrides, plot=args.plot)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Tokenize the data and print what the run will cost: tokens, steps, FLOPs, memory, time."""
    overrides = dict(args.overrides)
    if args.prompt_loss_weight is not None:
        overrides["prompt_loss_weight"] = args.prompt_loss_weight
    plan = plan_run(load_config(args.preset, **overrides), world_size=args.world_size, mfu=args.mfu)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def cmd_reference_check(args: argparse.Namespace) -> int:
    """Run the reference experiment's commands on a tiny stand-in of Qwen2.5-0.5B in a scratch folder."""
    reference_check(args.workdir, args.shared, main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="python -m sft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect-data", help="statistics and weighted examples of a dataset")
    p.add_argument("--data", required=True, help="a .json/.jsonl/.parquet/.csv file, a folder, or a hub dataset id")
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder or hub id")
    p.add_argument("--max-length", type=int, default=512, help="tokens per example (prompt + response + EOS)")
    p.add_argument("--prompt-loss-weight", type=float, default=0.0, help="w: 0 masked, 1 unmasked")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default="error")
    p.add_argument("--template", default="alpaca", help="prompt template name")
    p.add_argument("--truncation", choices=["trim", "drop"], default="trim")
    p.add_argument("--column-map", nargs="*", metavar="COLUMN=FIELD", help="e.g. response=output context=input")
    p.add_argument("--by", metavar="COLUMN", help="also give the statistics per value of this column (the demo: family)")
    p.add_argument("--show", type=int, default=0, metavar="K", help="render K examples with their weights")
    p.add_argument("--json", action="store_true", help="print one JSON object (examples go to stderr)")
    p.set_defaults(func=cmd_inspect_data)

    p = sub.add_parser("train", help="fine-tune (the notebooks run the same code)",
                       description="Any other --name VALUE sets a config field (sft/config.py) or a "
                                   "transformers.TrainingArguments field, e.g. --learning-rate 1e-4.")
    p.add_argument("--preset", default="demo", help="demo | qwen2.5-0.5b-alpaca")
    p.add_argument("--prompt-loss-weight", type=float, help="w: 0 masked, 1 unmasked, or anything between")
    p.add_argument("--run-name", help="folder name under model/<preset>/ (default: the preset's)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start the run again, deleting its old checkpoints")
    p.set_defaults(func=cmd_train, accepts_overrides=True)

    p = sub.add_parser("plan", help="what a run will cost before it starts: tokens, steps, FLOPs, memory, GPU time",
                       description="Any other --name VALUE overrides a config or TrainingArguments field, as for train.")
    p.add_argument("--preset", default="demo", help="demo | qwen2.5-0.5b-alpaca")
    p.add_argument("--prompt-loss-weight", type=float, help="w: 0 masked, 1 unmasked (changes the head's work)")
    p.add_argument("--world-size", type=int, default=1, help="data-parallel processes (GPUs)")
    p.add_argument("--mfu", type=float, default=MFU, help=f"assumed model FLOPs utilisation ({MFU})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plan, accepts_overrides=True)

    p = sub.add_parser("reference-check", help="the reference commands end to end on a tiny Qwen2.5 stand-in "
                                               "(offline, CPU, about 2 minutes)")
    p.add_argument("--workdir", default=".cache/reference-check",
                   help="scratch folder (never your model/ or Dataset/); emptied first if an earlier check made it")
    p.add_argument("--shared", default="../shared", help="the folder with tokenizers/qwen2.5 and data/gsm8k_alpaca.json")
    p.set_defaults(func=cmd_reference_check)

    p = sub.add_parser("build-demo", help="write the demo data and build its tiny base model")
    p.set_defaults(func=cmd_build_demo, accepts_overrides=True)

    p = sub.add_parser("sweep", help="train and evaluate every (prompt-loss weight, seed) pair; summary and plot",
                       description="Any other --name VALUE overrides a config or TrainingArguments field for every pair.")
    p.add_argument("--preset", default="demo")
    p.add_argument("--prompt-loss-weights", default="0,0.01,0.1,0.5,1", help="comma-separated weights in [0, 1]")
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N per weight")
    p.add_argument("--name", help="names model/<preset>/sweep-<name>/ and evaluation_results/sweep-<name>/")
    p.add_argument("--limit", type=float, help="test items per task (lm-eval --limit)")
    p.add_argument("--plot", default="assets/plw_sweep.png", help="where the plot goes")
    p.set_defaults(func=cmd_sweep, accepts_overrides=True)

    p = sub.add_parser("demo", help="the whole offline study: build, fine-tune both regimes, evaluate, compare")
    p.set_defaults(func=cmd_demo, accepts_overrides=True)

    p = sub.add_parser("evaluate", help="held-out losses and lm-eval benchmarks of several models, summarised")
    p.add_argument("--models", required=True, metavar="LABEL=PATH,...",
                   help="e.g. base=model/demo/base,masked=model/demo/masked,unmasked=model/demo/unmasked")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks or groups (default for the demo: sft_demo)")
    p.add_argument("--heldout-only", action="store_true",
                   help="held-out response loss and token accuracy only, no lm-eval task (fast; offline)")
    p.add_argument("--name", help="folder under --out (default: the preset of the runs)")
    p.add_argument("--limit", type=float, help="items per task (a number below 1 is a share), for quick checks")
    p.add_argument("--batch-size", type=int, default=16, help="one fixed batch size for every model")
    p.add_argument("--out", default="evaluation_results", help="results go to OUT/NAME/<YYYYmmdd_HHMMSS>/")
    p.add_argument("--test-data", help="test JSONL of the sft_demo tasks (default: the demo's test.jsonl)")
    p.add_argument("--max-gen-toks", type=int, default=64, help="tokens generated per answer at most")
    p.add_argument("--prompt-format", choices=FORMATS, default="auto",
                   help="raw: lm-eval's prompts as they are; chat: in each model's chat template (a fine-tuned "
                        "model's is its training template); both; auto (default): base models raw, fine-tuned both")
    p.add_argument("--task-data", nargs="+", metavar="NAME=FOLDER",
                   help="lm-eval's task (or group) NAME reads its rows from FOLDER/<split>.jsonl (a group: one "
                        "sub-folder per task), e.g. gsm8k=data/gsm8k: its own YAML, only the data location changed")
    p.add_argument("--include-path", nargs="+", metavar="FOLDER", help="folders of your own lm-eval task YAMLs")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: each task's own)")
    p.add_argument("--assume-prompt-tokens-per-s", type=float, default=20_000.0,
                   help="--dry-run's time estimate: prompt tokens scored per second (an assumption; set yours)")
    p.add_argument("--assume-generated-tokens-per-s", type=float, default=500.0,
                   help="--dry-run's time estimate: tokens generated per second over a batch (an assumption)")
    p.add_argument("--dry-run", action="store_true",
                   help="load the tasks and print what the evaluation will cost (requests, tokens, time); run nothing")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="plot and spreadsheet of evaluation results (assets/)")
    p.add_argument("results", nargs="+", metavar="RESULT_DIR", help="evaluation_results/<name>/<timestamp> folders")
    p.add_argument("--out", default="assets", help="folder for Comparison.png and Dataset_results.xlsx")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; user errors print one paragraph and return 2."""
    logging.basicConfig(level=logging.INFO, format="[sft] %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "accepts_overrides", False):
            args.overrides = _parse_overrides(extra)
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

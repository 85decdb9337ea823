"""`sft evaluate`, `sft compare`: held-out metrics and lm-eval tasks of several models, and their comparison."""

from __future__ import annotations

import argparse

from sft.data.errors import UserError
from sft.evaluation.compare import compare, find_result_dir, load_result
from sft.evaluation.costs import estimate_costs, format_costs
from sft.evaluation.evaluate import evaluate_models
from sft.evaluation.inputs import parse_models
from sft.evaluation.report import format_psql
from sft.studies.tasks import STUDY_TASKS


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Held-out metrics and lm-eval tasks for every model, summarised under evaluation_results/raw/."""
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if args.heldout_only:
        if tasks:
            raise UserError("--heldout-only runs no lm-eval task; drop --tasks, or drop --heldout-only.")
        tasks = []
    elif tasks == []:
        raise UserError("--tasks is empty; pass lm-eval task names such as mmlu,gsm8k (or sft_demo), "
                         "or --heldout-only.")
    settings = dict(tasks=tasks, name=args.name, limit=args.limit, batch_size=args.batch_size, out=args.out,
                    test_data=args.test_data, max_gen_toks=args.max_gen_toks, prompt_format=args.prompt_format,
                    task_data=args.task_data or [], include_path=args.include_path or [],
                    num_fewshot=args.num_fewshot, assume_prompt_tokens_per_s=args.assume_prompt_tokens_per_s,
                    assume_generated_tokens_per_s=args.assume_generated_tokens_per_s)
    if args.dry_run:
        print(format_costs(estimate_costs(parse_models(args.models), STUDY_TASKS, **settings)))
        return 0
    run = evaluate_models(parse_models(args.models), STUDY_TASKS, **settings)
    scores = load_result(run).scores
    print(format_psql([list(scores.columns)] + scores.values.tolist()))
    print(f"results: {run}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Plot and tabulate one or more evaluation results into --out (default: the first result folder)."""
    out = args.out or find_result_dir(args.results[0])
    print(compare(args.results, out=out))
    print(f"written: {out}/Comparison.png, {out}/Dataset_results.xlsx")
    return 0

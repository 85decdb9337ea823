"""What an evaluation will cost before it runs (`sft evaluate --dry-run`): requests, tokens and time per task."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from sft.evaluation.evaluate import plan_evaluation, prepare_tasks
from sft.evaluation.heldout import heldout_split
from sft.evaluation.report import format_markdown
from sft.evaluation.settings import EvalConfig
from sft.evaluation.tasks import GeneratedTasks, leaf_tasks, request_costs

# ---------------------------------------------------------------- what an evaluation will cost (--dry-run)


def estimate_costs(models: dict[str, str], generated: Sequence[GeneratedTasks] = (), **settings: Any) -> dict:
    """Every (model, prompt format, task): requests, their kind, prompt tokens, the bound on generated tokens, and
    a time at the stated throughputs. Tasks are loaded as for the evaluation; no model runs, nothing is written."""
    plan = plan_evaluation(models, EvalConfig(**settings), generated)
    s, rows = plan.settings, []
    with tempfile.TemporaryDirectory() as tmp:
        prepare_tasks(plan, Path(tmp))
        for label, formats in plan.formats.items():
            for fmt in formats:
                names = plan.tasks if fmt == "raw" else plan.chat_tasks
                for leaf in dict.fromkeys(x for name in names for x in leaf_tasks(plan.tm, name)):
                    cost = request_costs(plan.loaded[leaf], plan.tokenizers[label], fmt == "chat", s.limit,
                                         s.num_fewshot)
                    seconds = cost["prompt_tokens"] / s.assume_prompt_tokens_per_s + \
                        cost["max_generated_tokens"] / s.assume_generated_tokens_per_s
                    rows.append({"model": label, "format": fmt, "task": leaf, **cost, "seconds_at_most": seconds})
    return {"rows": rows, "assume_prompt_tokens_per_s": s.assume_prompt_tokens_per_s,
            "assume_generated_tokens_per_s": s.assume_generated_tokens_per_s,
            "heldout_examples": len(heldout_split(plan.run_cfg, plan.tokenizers[plan.source], plan.fingerprint))}


def format_costs(costs: dict) -> str:
    """The dry run's table, a total per model, and the throughputs it assumed."""
    rows = costs["rows"]
    table = [["model", "format", "task", "kind", "requests", "prompt tokens", "generated tokens (at most)",
              "time (at most)"]]
    table += [[r["model"], r["format"], r["task"], r["kind"], f"{r['requests']:,}", f"{r['prompt_tokens']:,}",
               f"{r['max_generated_tokens']:,}", _duration(r["seconds_at_most"])] for r in rows]
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label]
        table.append([label, "all", "total", "", f"{sum(r['requests'] for r in mine):,}",
                      f"{sum(r['prompt_tokens'] for r in mine):,}",
                      f"{sum(r['max_generated_tokens'] for r in mine):,}",
                      _duration(sum(r["seconds_at_most"] for r in mine))])
    total = sum(r["seconds_at_most"] for r in rows)
    return (format_markdown(table) + f"\nAll models: at most {_duration(total)}, assuming "
            f"{costs['assume_prompt_tokens_per_s']:,.0f} prompt tokens/s (log-likelihood and prefill) and "
            f"{costs['assume_generated_tokens_per_s']:,.0f} generated tokens/s (set them with --assume-prompt-tokens-"
            "per-s / --assume-generated-tokens-per-s to your hardware's). Generation is bounded by each task's "
            f"max_gen_toks; most answers stop earlier. Plus held-out metrics on {costs['heldout_examples']:,} "
            "examples per model.")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"

"""`sft sweep`: every (prompt-loss weight, seed) pair trained and evaluated, summarised with intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from sft.data.errors import UserError
from sft.evaluation.multiplicity import parse_endpoints, parse_pairs
from sft.runs.layout import RESULTS_ROOT, SWEEP_PLOT, sweep_results_dir
from sft.studies.sweep import parse_seeds, parse_weights, run_sweep, seeds_report
from sft.studies.variants import compare_variants, split_axes


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train and evaluate every (prompt-loss weight, seed) pair, then summarise and plot; --report-only: how many
    seeds the committed sweep's differences need, from its files."""
    name = args.name or args.preset
    if args.report_only:
        root = sweep_results_dir(name)  # the local sweep, else its published copy
        if not (root / "differences.csv").is_file() and sweep_results_dir(name, RESULTS_ROOT).is_dir():
            root = sweep_results_dir(name, RESULTS_ROOT)
        print(seeds_report(root, args.target_difference), end="")
        return 0
    seeds = parse_seeds(args.seeds)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks is not None else None
    if args.heldout_only and tasks:
        raise UserError("--heldout-only runs no lm-eval task; drop --tasks, or drop --heldout-only.")
    if tasks == []:
        raise UserError("--tasks is empty; pass lm-eval task names such as sft_demo, or --heldout-only.")
    weights = parse_weights(args.prompt_loss_weights)
    primary = parse_endpoints(args.primary) if args.primary else None
    pairs = parse_pairs(args.primary_pairs) if args.primary_pairs else None
    if pairs and not primary:
        raise UserError("--primary-pairs names the pairs the primary endpoints are tested on: declare the endpoints "
                         "too (--primary DATASET:METRIC,...).")
    missing = sorted({w for p in pairs or [] for w in p} - set(weights))
    if missing:
        raise UserError(f"--primary-pairs uses weight(s) {', '.join(f'{w:g}' for w in missing)} that "
                         f"--prompt-loss-weights ({args.prompt_loss_weights}) does not run; add them there or pair "
                         "the weights it runs.")
    shared, variants = split_axes(args.overrides)  # --role-weights, --prompt-loss-weight-end, --loss-normalizer
    roots = {}
    for label, settings in variants:  # one sweep per variant; they share one tokenization (no weight is cached)
        plot = sweep_plot(args.plot, name, label)
        roots[label] = run_sweep(args.preset, weights, seeds, f"{name}-{label}" if label else name, limit=args.limit,
                                 overrides={**shared, **settings}, plot=plot,
                                 tasks=[] if args.heldout_only else tasks, primary=primary, primary_pairs=pairs)
    compare_variants(roots, weights, seeds, sweep_results_dir(name))
    for label, root in roots.items():  # can these seeds answer? (docs/sweeps.md: the formula)
        if not (root / "differences.csv").is_file():
            continue  # one weight: no pair of weights to compare
        print(f"Seeds{f' of variant {label}' if label else ''}: between-seed sd of each paired difference, its minimum "
              f"detectable difference, seeds needed:\n{seeds_report(root, args.target_difference)}", flush=True)
    return 0


def sweep_plot(plot: str | None, name: str, label: str = "") -> Path | None:
    """Where a sweep's plot goes: the default in the sweep's own folder (a variant's sweep-<name>-<label>/, so no
    sweep overwrites another's plot); a --plot path as given, a variant appending its label; '' none."""
    if not plot:
        return None
    if plot == SWEEP_PLOT:
        return sweep_results_dir(f"{name}-{label}" if label else name) / SWEEP_PLOT
    return Path(plot).with_stem(f"{Path(plot).stem}-{label}") if label else Path(plot)

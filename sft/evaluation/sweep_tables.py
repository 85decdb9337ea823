"""A sweep's tables for the pages (`python -m sft pages sweep|sweep-differences|variants|seeds|primary`), and the
cells every page table writes: markdown without padding, a difference with its interval, a metric's name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sft.data.errors import UserError
from sft.evaluation.combined import combined_interval, read_item_scores
from sft.evaluation.multiplicity import declaration_text, holm, parse_endpoints, read_declaration
from sft.evaluation.report import base_metric
from sft.evaluation.seeds import (
    ALPHA,
    POWER,
    parse_values,
    seeds_cell,
    seeds_needed,
    seeds_table,
    spread,
    t_interval,
    t_test_p,
)
from sft.evaluation.side_effects import SIDE_EFFECTS, is_side_effect
from sft.runs.layout import ITEM_SCORES


def format_markdown(table: list[list[str]]) -> str:
    """A markdown table without padding: `| a | b |` rows under `|---|---|` (pages stay short)."""
    rows = ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    return "\n".join([rows[0], "|" + "---|" * len(table[0]), *rows[1:]]) + "\n"


def interval(diff: float, low: float, high: float, significant: str | None = None, digits: int = 2) -> str:
    """'+33.75 [31.33, 36.17]', with ' ns' where the interval contains 0."""
    text = f"{diff:+.{max(2, digits)}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return text + (" ns" if significant == "no" else "")


def metric_name(metric: str) -> str:
    """'naive_average:edit_similarity' -> 'edit similarity'."""
    return base_metric(metric).replace("_", " ")


def pair_args(args, weights: bool = False) -> list[tuple]:
    """--pair a,b: two labels, or two prompt-loss weights (a sweep's tables)."""
    try:
        bad = [p for p in args.pair if len(tuple(map(float if weights else str, p.split(",")))) != 2]
    except ValueError:
        bad = args.pair
    if bad:
        raise UserError(f"--pair takes two {'weights' if weights else 'labels'} separated by a comma (a,b for a - b), "
                        f"got {bad}.")
    return [tuple(map(float if weights else str, p.split(","))) for p in args.pair]


def weight_label(w) -> str:
    """'w = 0.5'."""
    return f"w = {float(w):g}"


def sweep_table(args) -> str:
    """Mean of the seeds [95% t-interval over seeds] per weight: the group averages, the held-out response loss and,
    where the runs recorded them, the training's clipped share of steps and median gradient norm."""
    sweep = pd.read_csv(Path(args.source) / "sweep.csv")
    if args.metrics:  # the side effects asked for, on the group rows
        keep = sweep["metric"].str.contains("average") & sweep["metric"].map(base_metric).isin(_side_effects(args))
    else:
        keep = sweep["metric"].str.contains("average") | (sweep["metric"] == "response_loss") | \
            (sweep["dataset"] == "train")
        keep &= ~sweep["metric"].map(is_side_effect)
    if args.datasets:
        keep &= sweep["dataset"].isin(args.datasets.split(",") + ["heldout", "train"])
    sweep = sweep[keep]
    weights = list(dict.fromkeys(sweep["prompt_loss_weight"]))
    seeds = int(sweep["seeds"].max())
    table = [[f"mean of {seeds} seeds [95% CI]", *map(weight_label, weights)]]
    for (dataset, metric), rows in sweep.groupby(["dataset", "metric"], sort=False):
        digits = 4 if dataset in ("heldout", "train") else 2
        cells = {r["prompt_loss_weight"]: f"{r['mean']:.{digits}f} [{r['ci_low']:.{digits - 1}f}, "
                                           f"{r['ci_high']:.{digits - 1}f}]" for _, r in rows.iterrows()}
        unit = (" (tokens)" if base_metric(metric) == "gen_length" else " (%)") if is_side_effect(metric) else ""
        table.append([f"`{dataset}` {metric_name(metric)}{unit}", *(cells.get(w, "-") for w in weights)])
    return format_markdown(table)


def _side_effects(args) -> list[str]:
    """--metrics as side effects (sft.evaluation.side_effects), or a clear error."""
    wanted = args.metrics.split(",")
    unknown = [m for m in wanted if m not in SIDE_EFFECTS]
    if unknown:
        raise UserError(f"--metrics takes side effects among {', '.join(SIDE_EFFECTS)}; got {unknown}.")
    return wanted


def _average_differences(args) -> pd.DataFrame:
    """A sweep's differences.csv rows of the group averages (scores; with --metrics those side effects), of
    --datasets if given."""
    diffs = pd.read_csv(Path(args.source) / "differences.csv")
    side = diffs["metric"].map(is_side_effect)
    if getattr(args, "metrics", None):
        side = diffs["metric"].map(base_metric).isin(_side_effects(args))
        diffs = diffs[diffs["metric"].str.contains("average") & side]
    else:
        diffs = diffs[diffs["metric"].str.contains("average") & ~side]
    return diffs[diffs["dataset"].isin(args.datasets.split(","))] if args.datasets else diffs


def sweep_differences_table(args) -> str:
    """Differences between weights, paired by seed [95% t-interval over seeds], for the group averages."""
    diffs = _average_differences(args)
    pairs = pair_args(args, weights=True)
    table = [["paired by seed [95% CI]", *(f"{weight_label(a)} - {weight_label(b)}" for a, b in pairs)]]
    for (dataset, metric), rows in diffs.groupby(["dataset", "metric"], sort=False):
        cells = []
        for a, b in pairs:
            r = rows[(rows["w_a"] == a) & (rows["w_b"] == b)]
            cells.append("-" if r.empty else interval(r.iloc[0]["diff"], r.iloc[0]["ci_low"], r.iloc[0]["ci_high"],
                                                       r.iloc[0]["significant"], digits=1) + _holm_mark(r.iloc[0]))
        table.append([f"`{dataset}` {metric_name(metric)}", *cells])
    return format_markdown(table)


def _holm_mark(row) -> str:
    """' (ns after Holm)' where a difference is significant alone but not after Holm within its family; '' for a
    sweep summarised before p-values were kept."""
    if "significant_holm" not in row or row["significant"] != "yes":
        return ""
    return " (ns after Holm)" if row["significant_holm"] == "no" else ""


def primary_table(args) -> str:
    """A sweep's primary endpoints: the declaration first (primary.json), then per endpoint and pair the difference
    [95% t-interval over seeds], p, Holm's p, the interval over seeds and items together, the minimum detectable
    difference at the seeds used and the seeds the observed difference (and each --target-difference) needs.

    A sweep that declared none takes --endpoints (each weight against the smallest), computed from differences.csv
    and labelled post hoc; a sweep whose runs kept no item_scores.csv says so under the table."""
    root = Path(args.source)
    record = read_declaration(root)
    if args.endpoints or record is None or not (root / "primary.csv").is_file():
        if not args.endpoints:
            raise UserError(f"{root}: no primary endpoints declared (primary.json) or none summarised (primary.csv); "
                             "run the sweep with --primary DATASET:METRIC,... (docs/sweeps.md), or name the "
                             "endpoints to test post hoc, --endpoints DATASET:METRIC,...")
        rows, intro = _post_hoc_rows(root, parse_endpoints(args.endpoints), record)
    else:
        rows = pd.read_csv(root / "primary.csv", dtype={"combined_low": str, "combined_high": str, "items": str})
        pairs = list(dict.fromkeys(zip(rows["w_a"], rows["w_b"])))
        intro = declaration_text(record, [(float(a), float(b)) for a, b in pairs], len(rows))
    targets = args.target_difference
    table = [["endpoint", "pair", "seeds", "difference [95% CI over seeds]", "p", "p (Holm)",
              "95% CI over seeds and items", f"MDD ({ALPHA:g} two-sided, {POWER:.0%} power)",
              "seeds for the observed difference", *(f"seeds for {d:g}" for d in targets)]]
    missing = False
    for _, r in rows.iterrows():
        dataset, metric = r["endpoint"].split(":", 1)
        missing |= r["combined_low"] == "-"
        combined = "-" if r["combined_low"] == "-" else (f"[{float(r['combined_low']):.1f}, "
                                                         f"{float(r['combined_high']):.1f}] ({r['items']} items)")
        sd = float(r["sd"])
        table.append([f"`{dataset}` {metric_name(metric)}", f"{weight_label(r['w_a'])} - {weight_label(r['w_b'])}",
                      str(r["seeds"]), interval(r["diff"], r["ci_low"], r["ci_high"], digits=1),
                      f"{r['p']:.3g}", f"{r['p_holm']:.3g}" + ("" if r["significant_holm"] == "yes" else " ns"),
                      combined, f"{float(r['mdd']):.1f}",
                      seeds_cell(seeds_needed(sd, float(r["diff"]))) if float(r["diff"]) else "- (no difference)",
                      *(seeds_cell(seeds_needed(sd, d)) for d in targets)])
    note = ("\nNo interval over seeds and items (`-`): some runs of this sweep kept no per-item score table "
            "(item_scores.csv; sweeps evaluated before it existed lack it), so the intervals are over seeds only and "
            "treat each run's score as exact.\n") if missing else ""
    return intro + "\n" + format_markdown(table) + note


def _post_hoc_rows(root: Path, endpoints: list[tuple[str, str]], record: dict | None) -> tuple[pd.DataFrame, str]:
    """primary.csv's rows for endpoints named after the results (each weight against the smallest), from
    differences.csv's per-seed values and, where every run kept one, the item tables; and the paragraph saying so."""
    diffs = pd.read_csv(root / "differences.csv")
    weights = sorted(set(diffs["w_a"]) | set(diffs["w_b"]))
    out = []
    for dataset, metric in endpoints:
        for w in weights[1:]:
            d = diffs[(diffs["dataset"] == dataset) & (diffs["metric"].map(base_metric) == metric)
                      & ~diffs["metric"].str.contains("stderr") & (diffs["w_a"] == w) & (diffs["w_b"] == weights[0])]
            if d.empty:
                raise UserError(f"{root}: no row {dataset}:{metric} (w = {w:g} - w = {weights[0]:g}) in "
                                 "differences.csv; name a group average or task of the sweep.")
            values = parse_values(d.iloc[0]["values"])
            mean, low, high = t_interval(values)
            n, sd, m = spread(values)
            row = {"endpoint": f"{dataset}:{metric}", "w_a": w, "w_b": weights[0], "seeds": n, "diff": mean,
                   "ci_low": low, "ci_high": high, "p": t_test_p(values), "sd": sd, "mdd": m,
                   "combined_low": "-", "combined_high": "-", "items": "-"}
            a, b = _published_items(root, w), _published_items(root, weights[0])
            if a is not None and b is not None:
                c = combined_interval(a, b, dataset, metric, weighted=d.iloc[0]["metric"].startswith("weighted"))
                row.update(combined_low=str(c["ci_low"]), combined_high=str(c["ci_high"]), items=str(c["items"]))
            out.append(row)
    for row, p in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = p
        row["significant_holm"] = "yes" if p < ALPHA else "no"
    ends = "; ".join(f"`{d}` {m.replace('_', ' ')}" for d, m in endpoints)
    declared = "" if record is None else f" (the sweep declared {', '.join(':'.join(e) for e in record['endpoints'])})"
    intro = (f"Endpoints named after the results, not declared before them{declared}: post hoc, read as exploratory. "
             f"{ends}; each weight against w = {weights[0]:g}, paired by seed. Holm over these {len(out)} tests "
             "(paired t-tests over seeds).\n")
    return pd.DataFrame(out), intro


def published_pairs(root: Path, w: float | None = None) -> list[tuple[float, int, Path, Path | None]]:
    """A published sweep's pairs (w<w>_s<seed>/: every weight's, or w's), as (w, seed, the pair's folder, its newest
    evaluation folder: the newest with a summary, or None where it has none), in folder-name order."""
    out = []
    for pair in sorted(root.glob("w*_s*" if w is None else f"w{w:g}_s*")):
        weight, seed = pair.name[1:].rsplit("_s", 1)
        runs = sorted(p for p in pair.iterdir() if (p / "summary").is_dir())
        out.append((float(weight), int(seed), pair, runs[-1] if runs else None))
    return out


def _published_items(root: Path, w: float) -> pd.DataFrame | None:
    """Every seed's item table of weight w (its newest evaluation, with the seed), or None where a run has none."""
    tables = []
    for _, seed, _, run in published_pairs(root, w):
        if run is None or not (run / ITEM_SCORES).is_file():
            return None
        tables.append(read_item_scores(run / ITEM_SCORES).assign(seed=seed))
    return pd.concat(tables) if tables else None


def variants_table(args) -> str:
    """Each variant minus the first at every weight, paired by seed [95% t-interval over seeds] (variants.csv)."""
    rows = pd.read_csv(Path(args.source) / "variants.csv")
    rows = rows[(rows["metric"].str.contains("average") & ~rows["metric"].map(is_side_effect))
                | (rows["metric"] == "response_loss")]
    if args.datasets:
        rows = rows[rows["dataset"].isin(args.datasets.split(",") + ["heldout"])]
    columns = list(dict.fromkeys(zip(rows["variant"], rows["prompt_loss_weight"])))
    baseline = rows["baseline"].iloc[0]
    table = [["paired by seed [95% CI]", *(f"{v} - {baseline} at {weight_label(w)}" for v, w in columns)]]
    for (dataset, metric), group in rows.groupby(["dataset", "metric"], sort=False):
        digits = 4 if dataset == "heldout" else 1
        cells = {(r["variant"], r["prompt_loss_weight"]): interval(r["diff"], r["ci_low"], r["ci_high"],
                                                                    r["significant"], digits=digits)
                 for _, r in group.iterrows()}
        table.append([f"`{dataset}` {metric_name(metric)}", *(cells.get(c, "-") for c in columns)])
    return format_markdown(table)


def sweep_seeds_table(args) -> str:
    """How many seeds the sweep's differences need (sft.evaluation.seeds), for the group averages."""
    diffs = _average_differences(args)
    return format_markdown(seeds_table(diffs, pair_args(args, weights=True),
                                       args.target_difference))

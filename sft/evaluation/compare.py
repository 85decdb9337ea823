"""`python -m sft compare`: evaluation results read back, plotted and tabulated (into the first result folder).

One or more result folders of `python -m sft evaluate` become `Comparison.png` (grouped bars with
95% bootstrap whiskers), `Dataset_results.xlsx` (sheets Scores, Differences, Heldout) and markdown
tables. Any rows the summaries hold work: the demo's families, lm-eval's tasks with their filters and
several metrics, groups, and the `@chat` rows of the chat-template pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sft.data.errors import UserError
from sft.evaluation.report import (
    CONF_COLUMNS,
    DIFF_COLUMNS,
    base_metric,
    format_markdown,
)
from sft.evaluation.results import role_losses
from sft.evaluation.side_effects import SIDE_EFFECTS, is_side_effect


def find_result_dir(path: str | Path) -> Path:
    """A result folder (with settings.json), or the newest one under an evaluation name folder."""
    p = Path(path)
    if (p / "settings.json").is_file():
        return p
    runs = sorted(d for d in p.glob("*") if (d / "settings.json").is_file()) if p.is_dir() else []
    if not runs:
        raise UserError(f"{path} is not an evaluation result folder (no settings.json in it or below it). "
                        "Pass evaluation_results/raw/<name>/<timestamp>, as written by `python -m sft evaluate`, "
                        "or its published copy evaluation_results/<name>/<timestamp>.")
    return runs[-1]


@dataclass
class Result:
    """One evaluation, read back from its folder."""

    path: Path
    settings: dict
    scores: Any  # DataFrame: the summary csv, models as columns
    confidence: Any  # DataFrame: dataset, metric, model, n, score, ci_low, ci_high
    differences: Any  # DataFrame: DIFF_COLUMNS
    heldout: dict
    models: list[str] = field(default_factory=list)


def load_result(path: str | Path) -> Result:
    """Read a result folder written by `sft.evaluation.evaluate.evaluate_models`."""
    p = find_result_dir(path)
    settings = json.loads((p / "settings.json").read_text())
    summary = p / "summary" / f"summary_{settings['timestamp']}.csv"
    scores = pd.read_csv(summary, dtype=str, keep_default_na=False)
    conf_path, diff_path = p / "summary" / "confidence.csv", p / "summary" / "differences.csv"
    confidence = pd.read_csv(conf_path) if conf_path.is_file() else pd.DataFrame(columns=CONF_COLUMNS)
    differences = pd.read_csv(diff_path) if diff_path.is_file() else pd.DataFrame(columns=DIFF_COLUMNS)
    heldout = json.loads((p / "heldout.json").read_text()) if (p / "heldout.json").is_file() else {}
    return Result(p, settings, scores, confidence, differences, heldout, list(settings["models"]))


def _relabel(results: list[Result]) -> list[dict[str, str]]:
    """Model labels unique across results: a repeated label gets its result's name and timestamp."""
    counts: dict[str, int] = {}
    for r in results:
        for m in r.models:
            counts[m] = counts.get(m, 0) + 1
    return [{m: m if counts[m] == 1 else f"{m} ({r.settings['name']}/{r.settings['timestamp']})" for m in r.models}
            for r in results]


def long_scores(results: list[Result]):
    """One row per (dataset, metric, model): score and interval, in the summaries' row order."""
    frames = []
    for r, names in zip(results, _relabel(results)):
        s = r.scores.melt(id_vars=["dataset", "version", "metric", "mode"], value_vars=r.models,
                          var_name="model", value_name="score")
        s["score"] = pd.to_numeric(s["score"].replace("-", None), errors="coerce")
        ci = r.confidence[["dataset", "metric", "model", "ci_low", "ci_high"]]
        s = s.merge(ci, on=["dataset", "metric", "model"], how="left")
        s["model"] = s["model"].map(names)
        s["preset"] = r.settings.get("preset")
        frames.append(s)
    out = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(zip(out["dataset"], out["metric"])))
    out["_row"] = [order.index(k) for k in zip(out["dataset"], out["metric"])]
    return out.sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)


def heldout_frame(results: list[Result]):
    """Held-out response loss, perplexity and token accuracy of every model (conversations: the loss per role)."""
    rows = []
    for r, names in zip(results, _relabel(results)):
        for m, metrics in r.heldout.get("models", {}).items():
            rows.append({"model": names.get(m, m), **metrics})
    return pd.DataFrame(rows)


def _tick_label(dataset: str, groups: set[str]) -> str:
    """A member task shown without its group's prefix ('sft_demo_add' -> 'add'); a group marked as the average."""
    if dataset in groups:
        return f"{dataset}\n(average)"
    for g in sorted(groups, key=len, reverse=True):
        if dataset.startswith(g + "_"):
            return dataset[len(g) + 1:]
    return dataset


def comparison_panels(rows: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The (dataset, metric) rows of each panel: one panel per metric when every dataset reports the same
    metrics (the demo's exact match and edit similarity), else one panel with every row (benchmarks that
    each report their own metrics)."""
    metrics = list(dict.fromkeys(base_metric(m) for _, m in rows))
    per_dataset: dict[str, set[str]] = {}
    for d, m in rows:
        per_dataset.setdefault(d, set()).add(base_metric(m))
    if len(metrics) < 2 or any(found != set(metrics) for found in per_dataset.values()):
        return [rows]
    return [[r for r in rows if base_metric(r[1]) == metric] for metric in metrics]


def _draw_bars(ax, scores, rows: list[tuple[str, str]], models: list[str], groups: set[str], colours) -> None:
    """One panel of grouped bars with whiskers, the value above each bar (side effects: shares in %, or mean
    generated tokens)."""
    width = 0.8 / len(models)
    x = np.arange(len(rows))
    for k, m in enumerate(models):
        sub = scores[scores["model"] == m].set_index(["dataset", "metric"])
        y = np.array([sub["score"].get(r, np.nan) for r in rows], dtype=float)
        low = np.array([sub["ci_low"].get(r, np.nan) for r in rows], dtype=float)
        high = np.array([sub["ci_high"].get(r, np.nan) for r in rows], dtype=float)
        err = np.vstack([np.where(np.isnan(low), 0, y - low), np.where(np.isnan(high), 0, high - y)])
        xs = x + (k - (len(models) - 1) / 2) * width
        ax.bar(xs, np.nan_to_num(y), width, yerr=err, capsize=2, label=m, color=colours[k % len(colours)],
               error_kw={"elinewidth": 0.8})
        for xi, yi, top in zip(xs, y, np.where(np.isnan(high), y, high)):
            if not np.isnan(yi):  # the value above its whisker: a zero bar is otherwise invisible
                ax.text(xi, top + 1, f"{yi:.0f}", ha="center", va="bottom", fontsize=6)
    for i, (d, _) in enumerate(rows):
        if d in groups:  # set each average apart from the tasks it averages and from the tasks after it
            ax.axvline(i - 0.5, color="grey", linestyle=":", linewidth=1)
            if i + 1 < len(rows):
                ax.axvline(i + 0.5, color="grey", linestyle=":", linewidth=1)
    # Benchmarks report several metrics each (acc and acc_norm, gsm8k's two filters): then each bar names its metric.
    several = len({base_metric(m) for _, m in rows}) > 1
    ticks = [_tick_label(d, groups) + (f"\n{base_metric(m)}" if several else "") for d, m in rows]
    ax.set_xticks(x, ticks, rotation=30, ha="right")
    metric = base_metric(rows[0][1])
    if metric == "gen_length":
        ax.set_ylabel("side effect: mean generated tokens")
    elif is_side_effect(metric):
        ax.set_ylabel(f"side effect: {metric.replace('_', ' ')}, % of generations")
        ax.set_ylim(0, 105)
    else:
        ax.set_ylabel("score, 0-100" if several else f"score, 0-100 ({metric})")
        ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_comparison(scores, path: str | Path, title: str) -> Path:
    """Grouped bars per dataset and model, 95% bootstrap intervals as whiskers; one panel per metric."""
    rows = list(dict.fromkeys(zip(scores["dataset"], scores["metric"])))
    models = list(dict.fromkeys(scores["model"]))
    groups = set(scores.loc[scores["metric"].str.contains("average"), "dataset"])
    side = [r for r in rows if is_side_effect(r[1])]  # a panel per side effect, below the scores' panels
    rows = [r for r in rows if not is_side_effect(r[1])]
    panels = (comparison_panels(rows) if rows else []) + [p for p in (
        [r for r in side if base_metric(r[1]) == metric] for metric in SIDE_EFFECTS) if p]
    longest = max(len(p) for p in panels)
    # A Figure without pyplot: no global state and no backend switch, so notebooks keep their inline plots.
    fig = Figure(figsize=(min(16.0, max(8.0, 0.3 * longest * len(models) + 2)), 5.5 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        _draw_bars(ax, scores, panel, models, groups, matplotlib.colormaps["tab10"].colors)
    axes[0, 0].set_title(title)
    # Beside the top panel, clear of the bars and of tick labels of any height (a benchmark's names run long).
    axes[0, 0].legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def write_workbook(scores, differences, heldout, path: str | Path) -> Path:
    """Dataset_results.xlsx: sheets Scores (wide, with intervals), Differences and Heldout."""
    wide = scores.pivot_table(index=["dataset", "metric"], columns="model", values=["score", "ci_low", "ci_high"],
                              sort=False, dropna=False)
    models = list(dict.fromkeys(scores["model"]))
    columns = {}
    for m in models:
        columns[m] = wide[("score", m)]
        columns[f"{m} 95% CI low"] = wide[("ci_low", m)]
        columns[f"{m} 95% CI high"] = wide[("ci_high", m)]
    wide = pd.DataFrame(columns).reset_index()
    meta = scores.drop_duplicates(["dataset", "metric"])[["dataset", "version", "metric", "mode"]]
    wide = meta.merge(wide, on=["dataset", "metric"], how="left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pd.ExcelWriter(path, engine="openpyxl") as xw:
        for name, frame in (("Scores", wide), ("Differences", differences), ("Heldout", heldout)):
            frame.to_excel(xw, sheet_name=name, index=False)
            sheet = xw.sheets[name]
            for col in sheet.columns:  # wide enough to read each column's header and values
                sheet.column_dimensions[col[0].column_letter].width = min(
                    60, max(len(str(c.value)) if c.value is not None else 0 for c in col) + 2)
    return path


def scores_markdown(scores) -> str:
    """Markdown table: one row per dataset and metric, one column per model, 'score [low, high]'."""
    models = list(dict.fromkeys(scores["model"]))
    table = [["dataset", "metric", *models]]
    for (d, metric), sub in scores.groupby(["dataset", "metric"], sort=False):
        cells = []
        for m in models:
            rec = sub[sub["model"] == m]
            if rec.empty or np.isnan(rec["score"].iloc[0]):
                cells.append("-")
            elif np.isnan(rec["ci_low"].iloc[0]):
                cells.append(f"{rec['score'].iloc[0]:.2f}")
            else:
                cells.append(f"{rec['score'].iloc[0]:.2f} [{rec['ci_low'].iloc[0]:.2f}, {rec['ci_high'].iloc[0]:.2f}]")
        table.append([d, metric, *cells])
    return format_markdown(table)


def differences_markdown(differences) -> str:
    """Markdown table of the group rows' differences (a - b, paired bootstrap interval); per task in the files."""
    groups = differences[differences["metric"].str.contains("average")] if not differences.empty else differences
    if groups.empty:
        return ""
    table = [["dataset", "metric", "a - b", "difference [95% CI]", "significant"]]
    for _, r in groups.iterrows():
        table.append([r["dataset"], r["metric"], f"{r['model_a']} - {r['model_b']}",
                      f"{r['diff']:+.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]", r["significant"]])
    return format_markdown(table)


def side_effects_markdown(results: list[Result], scores, differences) -> str:
    """The side effects of generation (sft.evaluation.side_effects): each model's share [95% CI] per task and group,
    the groups' paired differences, and what was left out (log-likelihood tasks, templates without markers)."""
    text = ("\n### Side effects of generation (% of generations [95% CI]; gen_length: mean tokens; "
            "on the raw generation)\n\n")
    text += scores_markdown(scores) if not scores.empty else "No side-effect rows.\n"
    diff = differences_markdown(differences)
    if diff:
        text += "\nDifferences of the groups' side effects (paired bootstrap):\n\n" + diff
    notes = []
    for r in results:
        info = r.settings.get("side_effects")
        where = f"{r.settings.get('name')}/{r.settings.get('timestamp')}"
        if info is None and r.settings.get("tasks"):
            notes.append(f"{where}: evaluated before side effects were counted; evaluate again for them")
        notes += [f"{where}: {n}" for n in (info or {}).get("notes", [])]
    return text + "".join(f"\n* {n}" for n in notes) + ("\n" if notes else "")


def heldout_markdown(heldout) -> str:
    """Markdown table of the held-out response metrics."""
    if heldout.empty:
        return ""
    table = [["model", "response loss", "response perplexity", "response token accuracy (%)", "prompt loss"]]
    for _, r in heldout.iterrows():
        prompt = r.get("prompt_loss")
        table.append([r["model"], f"{r['response_loss']:.4f}", f"{r['response_perplexity']:.3f}",
                      f"{100 * r['response_token_accuracy']:.2f}",
                      "-" if prompt is None or (isinstance(prompt, float) and math.isnan(prompt)) else f"{prompt:.4f}"])
    return format_markdown(table)


def roles_markdown(heldout) -> str:
    """Markdown table of a conversation split's held-out loss per role, 'loss (tokens)'; '' for instruction rows."""
    roles = [c.removesuffix("_loss") for c in role_losses(heldout.columns)] if not heldout.empty else []
    if not roles:
        return ""
    table = [["model", *(r.replace("_", " ") for r in roles)]]
    for _, r in heldout.iterrows():
        cells = []
        for role in roles:
            loss, n = r.get(f"{role}_loss"), r.get(f"{role}_tokens")
            missing = loss is None or (isinstance(loss, float) and math.isnan(loss))
            cells.append("-" if missing else f"{loss:.4f} ({int(n):,})")
        table.append([r["model"], *cells])
    return format_markdown(table)


def compare(result_dirs: list[str | Path], out: str | Path) -> str:
    """Write Comparison.png and Dataset_results.xlsx into `out`; return the markdown tables."""
    if not result_dirs:
        raise UserError("compare needs at least one result folder, e.g. evaluation_results/demo/<timestamp>.")
    results = [load_result(p) for p in result_dirs]
    scores = long_scores(results)
    names = _relabel(results)
    diffs = [r.differences.assign(model_a=r.differences["model_a"].map(n), model_b=r.differences["model_b"].map(n))
             for r, n in zip(results, names)]
    differences = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame(columns=DIFF_COLUMNS)
    heldout = heldout_frame(results)
    presets = ", ".join(dict.fromkeys(str(r.settings.get("preset")) for r in results))
    n_items = ", ".join(dict.fromkeys(str(r.settings.get("limit") or "all") for r in results))
    title = f"Preset {presets}: test scores by task and model (95% bootstrap CI; items per task: {n_items})"
    out = Path(out)
    plot_comparison(scores, out / "Comparison.png", title)
    write_workbook(scores, differences, heldout, out / "Dataset_results.xlsx")
    side = scores["metric"].map(is_side_effect)
    text = f"### Test scores (preset {presets}; score [95% CI])\n\n" + scores_markdown(scores[~side])
    side_diff = differences["metric"].map(is_side_effect) if not differences.empty else differences.index == -1
    diff = differences_markdown(differences[~side_diff])
    if diff:
        text += "\n### Differences of the averages (paired bootstrap; every task in Dataset_results.xlsx)\n\n" + diff
    text += side_effects_markdown(results, scores[side], differences[side_diff])
    held = heldout_markdown(heldout)
    if held:
        text += "\n### Held-out response metrics\n\n" + held
    roles = roles_markdown(heldout)
    if roles:
        text += "\n### Held-out loss by role (conversations; nats per token, tokens scored)\n\n" + roles
    return text

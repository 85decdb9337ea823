"""The study: fine-tune and evaluate every (prompt-loss weight, seed) pair, then summarise and plot.

Each pair trains to model/<preset>/sweep-<name>/w<w>_s<seed>/ and is evaluated into
evaluation_results/sweep-<name>/w<w>_s<seed>/<timestamp>/; a pair whose run is complete and
evaluated is never redone, so an interrupted sweep resumes where it stopped. All pairs share
the held-out split (split_seed is fixed) and, for a given seed, the example order.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from sft.checkpoints import list_checkpoints
from sft.config import load_config
from sft.demo import ensure_assets
from sft.evaluate import evaluate_models
from sft.layout import MANIFEST, RESULTS_ROOT, SWEEP_PLOT, run_dir, sweep_results_dir, sweep_run_name
from sft.report import format_markdown, write_summary
from sft.train import train

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t


def pair_label(w: float, seed: int) -> str:
    """w0.1_s2: the folder and column name of one (weight, seed) pair."""
    return f"w{w:g}_s{seed}"


def parse_weights(text: str) -> list[float]:
    """'0,0.01,0.1' -> [0.0, 0.01, 0.1], each in [0, 1]."""
    try:
        weights = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--prompt-loss-weights takes numbers separated by commas, e.g. 0,0.1,1; got {text!r}.") \
            from None
    if not weights or any(not 0 <= w <= 1 for w in weights):
        raise ValueError(f"--prompt-loss-weights must list weights in [0, 1], got {text!r}.")
    return sorted(set(weights))


def latest_evaluation(folder: Path) -> Path | None:
    """The newest finished evaluation folder (one with a summary) under evaluation_results/.../<pair>/."""
    done = sorted(p for p in folder.glob("*/summary/summary_*.csv")) if folder.is_dir() else []
    return done[-1].parents[1] if done else None


def train_pair(preset: str, name: str, w: float, seed: int, overrides: dict[str, Any]) -> Path:
    """Train one pair unless it is complete; an interrupted pair resumes from its last checkpoint."""
    run_name = sweep_run_name(name, pair_label(w, seed))
    cfg = load_config(preset, **{**overrides, "prompt_loss_weight": w, "seed": seed, "run_name": run_name})
    out = run_dir(cfg)
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("status") == "complete":
        print(f"[sweep] {run_name}: already trained", flush=True)
        return out
    cfg.train.resume = bool(list_checkpoints(out))
    cfg.train.overwrite = not cfg.train.resume
    ensure_assets(cfg)
    print(f"[sweep] {run_name}: training" + (" (resuming)" if cfg.train.resume else ""), flush=True)
    train(cfg)
    return out


def run_sweep(preset: str, weights: list[float], seeds: list[int], name: str, limit: float | None = None,
              overrides: dict[str, Any] | None = None, results_root: str = RESULTS_ROOT,
              plot: str | Path | None = SWEEP_PLOT) -> Path:
    """Train and evaluate every pair (skipping finished ones), then write the sweep summary and plot."""
    overrides = dict(overrides or {})
    root = sweep_results_dir(name, results_root)
    for seed in seeds:
        for w in weights:
            run = train_pair(preset, name, w, seed, overrides)
            label = pair_label(w, seed)
            if latest_evaluation(root / label) is None:
                evaluate_models({label: str(run)}, name=f"sweep-{name}/{label}", limit=limit, out=results_root)
            else:
                print(f"[sweep] {label}: already evaluated", flush=True)
    return summarise_sweep(root, weights, seeds, preset, plot)


def read_pair(folder: Path, label: str) -> dict[tuple[str, str], float]:
    """{(dataset, metric): score} from a pair's OpenCompass summary, plus its held-out losses."""
    run = latest_evaluation(folder)
    csv_path = next((run / "summary").glob("summary_*.csv"))
    scores = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            if row[label] != "-":
                scores[row["dataset"], row["metric"]] = float(row[label])
    heldout = json.loads((run / "heldout.json").read_text())["models"][label]
    for key in ("response_loss", "response_perplexity", "response_token_accuracy"):
        scores["heldout", key] = float(heldout[key])
    return scores


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval over seeds (the interval is the mean itself for one seed)."""
    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, m, m
    half = T_975.get(len(x) - 1, 1.96) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m, m - half, m + half


def summarise_sweep(root: Path, weights: list[float], seeds: list[int], preset: str,
                    plot: str | Path | None) -> Path:
    """Write summary/summary_<ts>.{csv,md,txt} (mean over seeds per weight) and sweep.csv with intervals."""
    pairs = {(w, s): read_pair(root / pair_label(w, s), pair_label(w, s)) for w in weights for s in seeds}
    keys = list(dict.fromkeys(k for scores in pairs.values() for k in scores))
    records = []
    for dataset, metric in keys:
        for w in weights:
            values = [pairs[w, s][dataset, metric] for s in seeds if (dataset, metric) in pairs[w, s]]
            if values:
                m, lo, hi = mean_interval(values)
                records.append({"dataset": dataset, "metric": metric, "prompt_loss_weight": w, "seeds": len(values),
                                "mean": round(m, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                                "values": " ".join(f"{v:.4f}" for v in values)})
    ts = datetime.now().strftime("%Y%m%d_%H%M%S")
    columns = [f"w={w:g}" for w in weights]
    table = [["dataset", "version", "metric", "mode", *columns]]
    for dataset, metric in keys:
        cells = []
        for w in weights:
            r = next((r for r in records if (r["dataset"], r["metric"], r["prompt_loss_weight"]) == (dataset, metric, w)),
                     None)
            cells.append("-" if r is None else f"{r['mean']:.2f}" if dataset != "heldout" else f"{r['mean']:.4f}")
        table.append([dataset, "-", metric, "gen" if dataset != "heldout" else "-", *cells])
    write_summary(table, root / "summary", ts)
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (root / "sweep.md").write_text(format_markdown(table))
    print(format_markdown(table), flush=True)
    if plot:
        plot_sweep(records, weights, preset, len(seeds), Path(plot))
    return root


def plot_sweep(records: list[dict], weights: list[float], preset: str, n_seeds: int, path: Path) -> Path:
    """Each family's score and the held-out response loss against w: mean over seeds, 95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_em, ax_loss) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [2, 1]})
    datasets = list(dict.fromkeys(r["dataset"] for r in records if r["dataset"] != "heldout"))
    cmap = plt.get_cmap("tab20")
    for i, dataset in enumerate(datasets):
        rows = sorted((r for r in records if r["dataset"] == dataset), key=lambda r: r["prompt_loss_weight"])
        x = [r["prompt_loss_weight"] for r in rows]
        if "average" in rows[0]["metric"]:  # the group: bold, with its interval over seeds
            ax_em.plot(x, [r["mean"] for r in rows], marker="o", color="black", lw=2.5, zorder=5,
                       label=f"{dataset} (average)")
            ax_em.fill_between(x, [max(r["ci_low"], 0) for r in rows], [min(r["ci_high"], 100) for r in rows],
                               color="black", alpha=0.15, zorder=4, label="95% interval of the average")
        else:  # families: means only, or the bands of 15 lines would hide each other
            ax_em.plot(x, [r["mean"] for r in rows], marker="o", ms=3, lw=1.1, color=cmap(i % 20),
                       label=dataset.removeprefix("sft_demo_"))
    ax_em.set_ylim(-2, 102)
    rows = sorted((r for r in records if (r["dataset"], r["metric"]) == ("heldout", "response_loss")),
                  key=lambda r: r["prompt_loss_weight"])
    x = [r["prompt_loss_weight"] for r in rows]
    ax_loss.plot(x, [r["mean"] for r in rows], marker="o", color="black")
    ax_loss.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.2, color="gray")
    for ax in (ax_em, ax_loss):
        ax.set_xscale("symlog", linthresh=0.01)  # shows 0, 0.01, 0.1 and 1 evenly
        ax.set_xticks(weights)
        ax.set_xticklabels([f"{w:g}" for w in weights])
        ax.set_xlim(-0.002, 1.3)
        ax.set_xlabel("prompt-loss weight w  (0 = masked, 1 = unmasked)")
        ax.grid(alpha=0.3)
    ax_em.set_ylabel("exact match (%)")
    ax_em.set_title(f"{preset}: test exact match per task family (mean of {n_seeds} seeds)")
    handles, labels = ax_em.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=9, fontsize=8, frameon=False)
    ax_loss.set_ylabel("held-out response loss (nats/token)")
    ax_loss.set_title("held-out response loss (95% over seeds)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room for the legend below
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

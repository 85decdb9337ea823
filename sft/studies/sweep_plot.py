"""The sweep's plot: scores and held-out loss against the prompt-loss weight, mean over seeds with 95% bands."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from sft.evaluation.report import base_metric
from sft.evaluation.results import role_losses
from sft.evaluation.side_effects import is_side_effect
from sft.studies.synthetic import FAMILIES
from sft.studies.tasks import DEMO_GROUP, LONG_GROUP, SHORT_GROUP

METRIC_LABELS = {"exact_match": "exact match (%)", "edit_similarity": "edit similarity (0-100, 100 = identical)",
                 "call_exact_match": "tool call exact match (%)", "call_name_match": "right tool called (%)"}
TRAINING = "train"  # the dataset of a run's training statistics in the sweep's tables: the clipping regime per arm
NOT_SCORES = ("heldout", TRAINING)  # rows that are losses or training statistics, not test scores (four decimals)
GROUP_STYLES = {DEMO_GROUP: ("black", "all"), SHORT_GROUP: ("tab:blue", "short-output"),
                LONG_GROUP: ("tab:red", "long-output")}  # colour and words of each demo group's curve


def _curve(records: list[dict], dataset: str, metric: str) -> list[dict]:
    """One (dataset, metric)'s records in order of w."""
    return sorted((r for r in records if (r["dataset"], r["metric"]) == (dataset, metric)),
                  key=lambda r: r["prompt_loss_weight"])


def _plot_groups(ax, records: list[dict], metric: str, n_metrics: int, families: list[str]) -> None:
    """The group averages of one metric against w, each with its 95% band (the whole demo's as a thin line)."""
    scored = [r for r in records if r["dataset"] not in NOT_SCORES]
    groups = list(dict.fromkeys(r["dataset"] for r in scored if "average" in r["metric"]))
    cmap = matplotlib.colormaps["tab20"]
    for k, dataset in enumerate(groups):
        options = list(dict.fromkeys(r["metric"] for r in scored if r["dataset"] == dataset))
        match = [m for m in options if base_metric(m) == metric]
        if not match and len(options) == n_metrics == 1:  # a group of one metric is just 'naive_average'
            match = options
        rows = _curve(records, dataset, match[0]) if match else []
        if not rows:
            continue
        colour, words = GROUP_STYLES.get(dataset, (cmap((2 * k + 1) % 20), dataset))
        x, y = [r["prompt_loss_weight"] for r in rows], [r["mean"] for r in rows]
        label = f"{words} ({_family_count(dataset, families)}{dataset})"
        if dataset == DEMO_GROUP and len(groups) > 1:  # between its two parts: a thin line, its band in sweep.csv
            ax.plot(x, y, marker="o", ms=4, color=colour, lw=1.2, ls="--", zorder=6, label=label)
            continue
        low, high = [max(r["ci_low"], 0) for r in rows], [min(r["ci_high"], 100) for r in rows]
        ax.plot(x, y, marker="o", color=colour, lw=2.5, zorder=5, label=label + ", 95% band")
        ax.fill_between(x, low, high, color=colour, alpha=0.12, zorder=4)
        for edge in (low, high):  # band edges drawn too: two overlapping bands stay legible
            ax.plot(x, edge, color=colour, lw=0.8, ls=":", zorder=4)


def _plot_families(ax, records: list[dict], metric: str, families: list[str]) -> None:
    """Each task family's mean of one metric against w (means only: the bands of 15 lines would hide each other)."""
    cmap = matplotlib.colormaps["tab20"]
    for i, dataset in enumerate(families):
        rows = _curve(records, dataset, metric)
        if rows:
            family = FAMILIES.get(dataset.removeprefix(f"{DEMO_GROUP}_"))
            ax.plot([r["prompt_loss_weight"] for r in rows], [r["mean"] for r in rows], marker="o", ms=3,
                    lw=1.1, color=cmap(i % 20), ls="--" if family and family.long_output else "-",
                    label=dataset.removeprefix(f"{DEMO_GROUP}_"))


def _plot_loss(ax, records: list[dict]) -> None:
    """The held-out response loss against w, with its 95% band over seeds; conversations: each role's loss too."""
    rows = _curve(records, "heldout", "response_loss")
    x = [r["prompt_loss_weight"] for r in rows]
    ax.plot(x, [r["mean"] for r in rows], marker="o", color="black", label="response (trained replies)")
    ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.2, color="gray")
    held = dict.fromkeys(r["metric"] for r in records if r["dataset"] == "heldout")
    roles = [m for m in role_losses(held) if m != "assistant_trained_loss"]  # the trained replies: the response
    for k, metric in enumerate(roles):  # means only: the roles' bands would hide the response's
        role = _curve(records, "heldout", metric)
        ax.plot([r["prompt_loss_weight"] for r in role], [r["mean"] for r in role], marker=".", ls="--",
                color=matplotlib.colormaps["tab10"](k % 10), label=metric.removesuffix("_loss").replace("_", " "))
    if roles:
        ax.legend(title="held-out tokens", fontsize=8)
    ax.set_ylabel("held-out loss (nats/token)" if roles else "held-out response loss (nats/token)")
    ax.set_title(f"held-out {'loss by role' if roles else 'response loss'} (95% over seeds)", fontsize=10)


def _set_weight_axis(ax, weights: list[float]) -> None:
    """The x axis of every panel: w on a symlog scale, which shows 0, 0.01, 0.1 and 1 evenly."""
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xticks(weights)
    ax.set_xticklabels([f"{w:g}" for w in weights])
    ax.set_xlim(-0.002, 1.3)
    ax.set_xlabel("prompt-loss weight w  (0 = masked, 1 = unmasked)")
    ax.grid(alpha=0.3)


def plot_sweep(records: list[dict], weights: list[float], preset: str, n_seeds: int, path: Path) -> Path:
    """Scores and held-out response loss against w, mean over seeds: per metric, the group averages with their
    95% bands (all, short- and long-output families) above the families' means; the loss beside them."""
    # Scores only: the side effects of generation (sweep.csv has them) would crowd the panels.
    scored = [r for r in records if r["dataset"] not in NOT_SCORES and not is_side_effect(r["metric"])]
    metrics = list(dict.fromkeys(base_metric(r["metric"]) for r in scored if "average" not in r["metric"]))
    families = list(dict.fromkeys(r["dataset"] for r in scored if "average" not in r["metric"]))
    if not metrics:  # held-out metrics only (--heldout-only): the loss panel alone
        return _save(_loss_figure(records, weights), path,
                     f"{preset}: held-out loss against the prompt-loss weight (mean of {n_seeds} seeds)")
    fig = Figure(figsize=(6.5 * len(metrics) + 5, 10.5))  # no pyplot: no global state, no backend switch
    axes = fig.subplots(2, len(metrics) + 1, squeeze=False)
    for col, metric in enumerate(metrics):
        ax_group, ax_family = axes[0, col], axes[1, col]
        _plot_groups(ax_group, records, metric, len(metrics), families)
        _plot_families(ax_family, records, metric, families)
        label = METRIC_LABELS.get(metric, metric)
        ax_group.set_title(f"{label}: group averages, 95% t-interval over {n_seeds} seeds", fontsize=10)
        ax_family.set_title(f"{label} per task family (dashed: long outputs)", fontsize=10)
        for ax in (ax_group, ax_family):
            ax.set_ylim(-2, 102)
            ax.set_ylabel(label)
        ax_group.legend(loc="upper left", fontsize=8)
    ax_loss, ax_legend = axes[0, -1], axes[1, -1]
    _plot_loss(ax_loss, records)
    for ax in (a for a in axes.flat if a is not ax_legend):
        _set_weight_axis(ax, weights)
    ax_legend.axis("off")  # the families' legend, beside the panels that draw them
    handles, labels = axes[1, 0].get_legend_handles_labels()
    ax_legend.legend(handles, labels, title="task family", loc="center", ncols=2, fontsize=9, frameon=False)
    return _save(fig, path,
                 f"{preset}: test scores and held-out loss against the prompt-loss weight (mean of {n_seeds} seeds)")


def _loss_figure(records: list[dict], weights: list[float]) -> Figure:
    """One panel: the held-out losses against w."""
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    _plot_loss(ax, records)
    _set_weight_axis(ax, weights)
    return fig


def _save(fig: Figure, path: Path, title: str) -> Path:
    """Title, lay out and write a figure."""
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def _family_count(group: str, families: list[str]) -> str:
    """'11 families, ' for a demo group whose members are known, else ''."""
    names = [d.removeprefix(f"{DEMO_GROUP}_") for d in families]
    known = [FAMILIES[n] for n in names if n in FAMILIES]
    members = {DEMO_GROUP: names, SHORT_GROUP: [f for f in known if not f.long_output],
               LONG_GROUP: [f for f in known if f.long_output]}.get(group)
    return f"{len(members)} families, " if members else ""

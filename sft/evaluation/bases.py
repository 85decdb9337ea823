"""`python -m sft pages bases SWEEP --also SWEEP ...`: the same endpoints in sweeps on different bases, side by side.

One table per endpoint (a group's average, e.g. sft_demo_short:exact_match): per weight w, each sweep's mean over
seeds [95% t-interval] and its difference from the sweep's smallest w, paired by seed [95% t-interval], with the
paired t-test's p and Holm's p. Holm adjusts, within each sweep, every (endpoint, w against the smallest) test the
tables show: with the sweep's declared endpoints (primary.json, the default) that is its primary family, and the p
and Holm p are then the declared test's own (primary.csv). Otherwise intervals and p-values are recomputed from the
per-seed values the sweep kept (sweep.csv, differences.csv) with scipy (sft.evaluation.seeds), so sweeps summarised
by older code read the same way as new ones. `--plot PATH` also draws
each endpoint against w, a line and 95% band per sweep.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sft.data.errors import UserError
from sft.evaluation.multiplicity import holm, parse_endpoints, read_declaration
from sft.evaluation.report import base_metric
from sft.evaluation.seeds import ALPHA, parse_values, t_interval, t_test_p
from sft.evaluation.sweep_tables import (
    format_markdown,
    interval,
    metric_name,
    published_pairs,
    weight_label,
)


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass a published sweep folder (evaluation_results/sweep-<name>, "
                         "written by `python -m sft publish evaluation_results/raw/sweep-<name>`).")
    return pd.read_csv(path)


def _row_metric(frame: pd.DataFrame, dataset: str, metric: str) -> str | None:
    """The sweep's metric column for an endpoint: the group average's ('naive_average:exact_match') or the task's."""
    found = [m for m in dict.fromkeys(frame.loc[frame["dataset"] == dataset, "metric"])
             if base_metric(m) == metric and "stderr" not in m]
    return found[0] if found else None


def endpoint_rows(folder: Path, endpoints: list[tuple[str, str]]) -> list[dict]:
    """Per endpoint and weight of one sweep: mean [CI] over seeds; against the smallest weight: diff [CI], p, Holm p."""
    sweep, diffs = _read(folder, "sweep.csv"), _read(folder, "differences.csv")
    weights = sorted(set(sweep["prompt_loss_weight"]))
    w0 = weights[0]
    rows = []
    for dataset, metric in endpoints:
        name = _row_metric(sweep, dataset, metric)
        if name is None:
            raise UserError(f"{folder}: no row {dataset}:{metric} in sweep.csv; its group rows are "
                             f"{sorted({d for d, m in zip(sweep['dataset'], sweep['metric']) if 'average' in m})}.")
        for w in weights:
            r = sweep[(sweep["dataset"] == dataset) & (sweep["metric"] == name) & (sweep["prompt_loss_weight"] == w)]
            if r.empty:
                continue
            mean, low, high = t_interval(parse_values(r.iloc[0]["values"]))
            row = {"endpoint": (dataset, metric), "w": w, "seeds": int(r.iloc[0]["seeds"]), "mean": mean,
                   "low": low, "high": high, "diff": None, "p": float("nan")}
            d = diffs[(diffs["dataset"] == dataset) & (diffs["metric"] == name) & (diffs["w_a"] == w)
                      & (diffs["w_b"] == w0)]
            if w != w0 and not d.empty:
                values = parse_values(d.iloc[0]["values"])
                row["diff"] = t_interval(values)
                row["p"] = t_test_p(values)
            rows.append(row)
    for r, p in zip(rows, holm([r["p"] for r in rows])):  # one family per sweep: every test its tables show
        r["p_holm"] = p
    return _declared_p(folder, rows, w0)


def _declared_p(folder: Path, rows: list[dict], w0: float) -> list[dict]:
    """Where the tables' tests are exactly the sweep's declared family (primary.csv), its p and Holm p: the figures
    the declared test wrote from unrounded per-seed values, which a recomputation from differences.csv's rounded
    ones can miss in the third digit (0.0697 for 0.0698), so that one page never gives two p for one test."""
    path = folder / "primary.csv"
    tested = [r for r in rows if r["diff"] is not None]
    if not path.is_file() or not tested:
        return rows
    declared = {(e, float(a), float(b)): (float(p), float(h)) for e, a, b, p, h in
                pd.read_csv(path)[["endpoint", "w_a", "w_b", "p", "p_holm"]].itertuples(index=False)}
    keys = [(":".join(r["endpoint"]), float(r["w"]), float(w0)) for r in tested]
    if sorted(keys) != sorted(declared):
        return rows
    for r, key in zip(tested, keys):
        r["p"], r["p_holm"] = declared[key]
    return rows


def _endpoints(args, folders: list[Path]) -> list[tuple[str, str]]:
    if args.endpoints:
        return parse_endpoints(args.endpoints)
    record = read_declaration(folders[0])
    if record is None:
        raise UserError(f"{folders[0]} declares no primary endpoints (primary.json): name the endpoints to compare, "
                         "--endpoints sft_demo_short:exact_match,sft_demo_long:edit_similarity.")
    return [tuple(e) for e in record["endpoints"]]


def _p(p: float) -> str:
    return "-" if p != p else f"{p:.3g}"


def bases_table(args) -> str:
    """The endpoints of several sweeps side by side (SOURCE and each --also); --plot PATH also draws them."""
    folders = [Path(p) for p in [args.source, *args.also]]
    if len(folders) < 2:
        raise UserError("bases compares sweeps side by side: name a second one with --also "
                         "(e.g. bases evaluation_results/sweep-pretrained --also evaluation_results/sweep-random-init).")
    endpoints = _endpoints(args, folders)
    per = {f: endpoint_rows(f, endpoints) for f in folders}
    names = [f"`{f.name}`" for f in folders]
    out = [f"Mean over seeds [95% t-interval]; difference from each sweep's smallest w, paired by seed [95% "
           f"t-interval], p of the paired t-test, p after Holm over the {len(endpoints)} endpoint(s) x weights of "
           f"each sweep (ns: Holm's p >= {ALPHA:g}).\n"]
    for endpoint in endpoints:
        weights = sorted({r["w"] for rows in per.values() for r in rows if r["endpoint"] == endpoint})
        header = [f"`{endpoint[0]}` {metric_name(endpoint[1])}"]
        for f, name in zip(folders, names):
            seeds = sorted({r["seeds"] for r in per[f] if r["endpoint"] == endpoint})
            n = "/".join(map(str, seeds))
            header += [f"{name} mean ({n} seeds)", f"{name} - smallest w", f"{name} p (Holm)"]
        table = [header]
        for w in weights:
            cells = [weight_label(w)]
            for f in folders:
                r = next((r for r in per[f] if r["endpoint"] == endpoint and r["w"] == w), None)
                if r is None:
                    cells += ["-", "-", "-"]
                    continue
                cells.append(f"{r['mean']:.1f} [{r['low']:.1f}, {r['high']:.1f}]")
                if r["diff"] is None:
                    cells += ["(reference)", "-"]
                else:
                    m, lo, hi = r["diff"]
                    cells.append(interval(m, lo, hi, digits=1))
                    holm_p = r["p_holm"]
                    mark = "" if holm_p == holm_p and holm_p < ALPHA else " ns"
                    cells.append(f"{_p(r['p'])} ({_p(holm_p)}){mark}")
            table.append(cells)
        out.append(format_markdown(table))
    if getattr(args, "plot", None):
        plot_bases(per, endpoints, Path(args.plot))
    return "\n".join(out)


HELDOUT_LOSSES = (("prompt_loss", "prompt loss"), ("response_loss", "response loss"))


def heldout_losses(folder: Path) -> dict[float, dict[str, list[float]]]:
    """{w: {prompt_loss: [per seed], response_loss: [...]}} from each pair's published heldout.json (w<w>_s<seed>/<ts>/:
    its newest evaluation), so a sweep summarised before its summary kept the prompt loss still has it."""
    pairs = published_pairs(folder) if folder.is_dir() else []
    if not pairs:
        raise UserError(f"{folder}: no pair folders (w<w>_s<seed>/) here: pass a published sweep, e.g. "
                         "evaluation_results/sweep-pretrained.")
    out: dict[float, dict[str, list[float]]] = {}
    for w, _, pair, run in pairs:
        if run is None or not (run / "heldout.json").is_file():
            raise UserError(f"{pair}: no evaluation with a heldout.json; publish the sweep with "
                             "`python -m sft publish`.")
        models = json.loads((run / "heldout.json").read_text())["models"]
        m = models.get(pair.name) or next(iter(models.values()))
        for key, _ in HELDOUT_LOSSES:
            if m.get(key) is not None:
                out.setdefault(w, {}).setdefault(key, []).append(float(m[key]))
    return out


def prompt_loss_table(args) -> str:
    """Held-out prompt and response loss per w of one or more sweeps (SOURCE and --also), mean over seeds [95%
    t-interval]: what the loss on the prompt did to the model's modelling of the prompts it was trained on."""
    folders = [Path(p) for p in [args.source, *args.also]]
    per = {f: heldout_losses(f) for f in folders}
    weights = sorted({w for losses in per.values() for w in losses})
    header = ["mean over seeds [95% CI] (nats)"]
    for f in folders:
        n = "/".join(map(str, sorted({len(v) for losses in per[f].values() for v in losses.values()})))
        header += [f"`{f.name}` {label} ({n} seeds)" for _, label in HELDOUT_LOSSES]
    table = [header]
    for w in weights:
        cells = [weight_label(w)]
        for f in folders:
            for key, _ in HELDOUT_LOSSES:
                values = per[f].get(w, {}).get(key)
                cells.append("-" if not values else "{:.3f} [{:.3f}, {:.3f}]".format(*t_interval(values)))
        table.append(cells)
    return ("Each run's held-out split (its `heldout.json`): the mean loss per prompt token (template and user) and "
            "per response token.\n\n" + format_markdown(table))


def plot_bases(per: dict[Path, list[dict]], endpoints: list[tuple[str, str]], path: Path) -> Path:
    """Each endpoint against w: a line per sweep (mean over seeds) with its 95% band."""
    fig = Figure(figsize=(5.5 * len(endpoints), 4))
    axes = fig.subplots(1, len(endpoints), squeeze=False)[0]
    for ax, endpoint in zip(axes, endpoints):
        for k, (folder, rows) in enumerate(per.items()):
            rows = sorted((r for r in rows if r["endpoint"] == endpoint), key=lambda r: r["w"])
            x = [r["w"] for r in rows]
            colour = f"C{k}"
            seeds = "/".join(map(str, sorted({r["seeds"] for r in rows})))
            ax.plot(x, [r["mean"] for r in rows], marker="o", color=colour, lw=2, label=f"{folder.name} ({seeds} seeds)")
            ax.fill_between(x, [r["low"] for r in rows], [r["high"] for r in rows], color=colour, alpha=0.15)
        ax.set_xscale("symlog", linthresh=0.01)  # 0, 0.01, 0.1, 0.5, 1 all visible
        ax.set(xlabel="prompt-loss weight w", ylabel=f"{metric_name(endpoint[1])} (mean over seeds, 95% band)",
               title=f"{endpoint[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path

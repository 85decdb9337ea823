"""The study: fine-tune and evaluate every (prompt-loss weight, seed) pair, then summarise and plot.

Each pair trains to model/<preset>/sweep-<name>/w<w>_s<seed>/ and is evaluated into
evaluation_results/raw/sweep-<name>/w<w>_s<seed>/<timestamp>/ (git-ignored, with its item_scores.csv; `python -m sft
publish evaluation_results/raw/sweep-<name>` commits the summaries, the plot and every pair's small files); a pair
whose run is complete and evaluated is never redone, so an interrupted sweep resumes where it stopped (a finished run
trained with other settings is refused, not reused). All pairs share the held-out split (split_seed is fixed) and,
for a given seed, the example order. Primary endpoints declared with `primary` go to primary.json before the first
run; the summary opens with them, Holm-adjusted (sft.evaluation.multiplicity), with the interval over seeds and items
together from the runs' item_scores.csv (sft.evaluation.combined). Each invocation appends a session (command, commit,
machine, start, end, wall seconds) to the sweep's provenance.json, published with it (`sft pages provenance`).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from sft.core.overrides import load_config
from sft.core.run_folder import setting_differences
from sft.core.train import train
from sft.data.errors import UserError
from sft.evaluation.combined import combined_interval, read_item_scores
from sft.evaluation.evaluate import evaluate_models
from sft.evaluation.multiplicity import (
    PRIMARY_FILE,
    declaration_text,
    declare,
    holm,
    read_declaration,
)
from sft.evaluation.report import (
    base_metric,
    format_markdown,
    model_pairs,
    write_summary,
)
from sft.evaluation.results import role_losses
from sft.evaluation.seeds import ALPHA, seeds_table, spread, t_interval, t_test_p
from sft.evaluation.side_effects import is_side_effect
from sft.runs.checkpoints import list_checkpoints, run_is_complete
from sft.runs.layout import (
    ITEM_SCORES,
    MANIFEST,
    RAW_RESULTS_ROOT,
    SWEEP_PLOT,
    run_dir,
    sweep_results_dir,
    sweep_run_name,
)
from sft.runs.manifest import CLIPPING_STATS, end_session, git_commit, start_session
from sft.studies.demo import ensure_assets
from sft.studies.sweep_plot import NOT_SCORES, TRAINING, plot_sweep
from sft.studies.tasks import STUDY_TASKS

DIFF_COLUMNS = ["dataset", "metric", "w_a", "w_b", "seeds", "diff", "ci_low", "ci_high", "significant", "sd", "mdd",
                "p", "family", "p_holm", "significant_holm", "values"]
# sd: between-seed sd of the difference; mdd: its minimum detectable difference (seeds); p: the paired t-test's;
# family: the tests Holm adjusts together (primary: the declared endpoints x pairs; else this row's pair, kind and
# metric: sft.evaluation.multiplicity); p_holm, significant_holm: after Holm
PRIMARY_COLUMNS = ["endpoint", "w_a", "w_b", "seeds", "diff", "ci_low", "ci_high", "p", "p_holm", "significant_holm",
                   "sd", "mdd", "combined_low", "combined_high", "items"]
# combined_low/high: the 95% interval that resamples seeds and test items together (sft.evaluation.combined), from
# each run's item_scores.csv; '-' where a run has none (evaluated before it existed)


def pair_label(w: float, seed: int) -> str:
    """w0.1_s2: the folder and column name of one (weight, seed) pair."""
    return f"w{w:g}_s{seed}"


def parse_weights(text: str) -> list[float]:
    """'0,0.01,0.1' -> [0.0, 0.01, 0.1], each in [0, 1]."""
    try:
        weights = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--prompt-loss-weights takes numbers separated by commas, e.g. 0,0.1,1; got {text!r}.") \
            from None
    if not weights or any(not 0 <= w <= 1 for w in weights):
        raise UserError(f"--prompt-loss-weights must list weights in [0, 1], got {text!r}.")
    return sorted(set(weights))


def parse_seeds(text: str) -> list[int]:
    """'8' -> seeds 1..8; '5-8' -> seeds 5..8 (a second process on the same sweep takes other seeds); '1,2,5' -> those
    seeds (a summary of the seeds two processes finished)."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = sorted({int(x) for x in text.split(",") if x.strip()})
        else:
            lo, sep, hi = text.partition("-")
            first, last = (int(lo), int(hi)) if sep else (1, int(lo))
            seeds = list(range(first, last + 1))
    except ValueError:
        seeds = []
    if not seeds or seeds[0] < 1:
        raise UserError(f"--seeds takes N (seeds 1..N), A-B (seeds A..B, 1 <= A <= B) or a list (1,2,5), got "
                         f"{text!r}: e.g. --seeds 8, or --seeds 1-4 and --seeds 5-8 in two processes, then --seeds 8 "
                         "to summarise them all.")
    return seeds


def latest_evaluation(folder: Path) -> Path | None:
    """The newest finished evaluation folder (one with a summary) under evaluation_results/.../<pair>/."""
    done = sorted(p for p in folder.glob("*/summary/summary_*.csv")) if folder.is_dir() else []
    return done[-1].parents[1] if done else None


def train_pair(preset: str, name: str, w: float, seed: int, overrides: dict[str, Any]) -> Path:
    """Train one pair unless it is complete; an interrupted pair resumes from its last checkpoint."""
    run_name = sweep_run_name(name, pair_label(w, seed))
    cfg = load_config(preset, **{**overrides, "prompt_loss_weight": w, "seed": seed, "run_name": run_name})
    out = run_dir(cfg)
    if run_is_complete(out):
        check_finished(cfg, out)
        print(f"[sweep] {run_name}: already trained", flush=True)
        return out
    ensure_assets(cfg)
    # resume "auto" (the default) continues a pair stopped part-way from its last complete checkpoint.
    print(f"[sweep] {run_name}: training" + (" (resuming)" if list_checkpoints(out) else ""), flush=True)
    train(cfg)
    return out


def check_finished(cfg, out: Path) -> None:
    """A finished pair is reused only if it was trained with this sweep's settings (sft.core.run_folder's rule for a
    resume: nothing that changes the optimisation, nor the run's length, may differ); else a clear error."""
    saved = json.loads((out / MANIFEST).read_text()).get("config") or {}
    refused, length, _ = setting_differences(saved, cfg.to_dict())
    if refused or length:
        raise UserError(f"{out} is a finished run of this sweep trained with other settings: {'; '.join(refused + length)}. "
                         "A sweep reuses a finished pair only when its settings are the same: give this sweep another "
                         "--name (its runs go to model/<preset>/sweep-<name>/), or run it with the saved settings.")


def run_sweep(preset: str, weights: list[float], seeds: list[int], name: str, limit: float | None = None,
              overrides: dict[str, Any] | None = None, results_root: str = RAW_RESULTS_ROOT,
              plot: str | Path | None = SWEEP_PLOT, tasks: list[str] | None = None,
              primary: list[tuple[str, str]] | None = None,
              primary_pairs: list[tuple[float, float]] | None = None) -> Path:
    """Train and evaluate every pair (skipping finished ones), then write the sweep summary and plot.

    overrides: config fields of every pair, e.g. {"data": "chats.jsonl"} (your rows, instruction or conversations);
    tasks: lm-eval tasks (None = the preset's, the demo's sft_demo; [] = held-out metrics only); plot: its path
    (SWEEP_PLOT: in the sweep's folder; None: no plot); primary: the primary endpoints, (dataset, metric), declared
    in primary.json before the first run (fixed once declared); primary_pairs: the pairs of weights they are tested
    on (None: each weight against the smallest).
    """
    overrides = dict(overrides or {})
    root = sweep_results_dir(name, results_root)
    plot = root / SWEEP_PLOT if plot == SWEEP_PLOT else plot
    if primary:
        done = any(latest_evaluation(root / pair_label(w, s)) for w in weights for s in seeds)
        record = declare(root, primary, primary_pairs, done, git_commit())
        print(declaration_text(record, _primary_pairs(record, weights), len(primary) * len(
            _primary_pairs(record, weights))), flush=True)
    session = start_session(root)
    checked = False
    for seed in seeds:
        for w in weights:
            run = train_pair(preset, name, w, seed, overrides)
            label = pair_label(w, seed)
            if latest_evaluation(root / label) is None:
                evaluate_models({label: str(run)}, STUDY_TASKS, name=f"sweep-{name}/{label}", limit=limit, out=results_root,
                                tasks=tasks)
            else:
                print(f"[sweep] {label}: already evaluated", flush=True)
            if not checked:  # the declared endpoints exist in the first pair's summary: fail now, not after every run
                check_endpoints(root, read_pair(root / label, label))
                checked = True
    out = summarise_sweep(root, weights, seeds, preset, plot)
    end_session(root, session)
    return out


def _primary_pairs(record: dict, weights: list[float]) -> list[tuple[float, float]]:
    """The pairs the primary endpoints are tested on: the declared ones, else each weight against the smallest."""
    if record.get("pairs"):
        return [tuple(p) for p in record["pairs"]]
    return [(w, weights[0]) for w in weights[1:]]


def _endpoint_rows(scores, dataset: str, metric: str) -> list[tuple[str, str]]:
    """The (dataset, metric) keys of a declared endpoint: its dataset, the metric with or without an average's
    prefix."""
    return [k for k in scores if k[0] == dataset and base_metric(k[1]) == metric]


def check_endpoints(root: Path, scores: dict) -> None:
    """A clear error when a declared primary endpoint is no row of the sweep's summaries."""
    record = read_declaration(root)
    missing = [f"{d}:{m}" for d, m in (record or {}).get("endpoints", []) if not _endpoint_rows(scores, d, m)]
    if missing:
        rows = sorted({f"{d}:{base_metric(m)}" for d, m in scores if "average" in m or d in NOT_SCORES})
        raise UserError(f"{root / PRIMARY_FILE}: the primary endpoint(s) {', '.join(missing)} are no row of this "
                         f"sweep's summaries; its group rows are {', '.join(rows)}. Declare endpoints from these "
                         "(delete primary.json first: nothing was declared on real results yet).")


def read_pair(folder: Path, label: str) -> dict[tuple[str, str], float]:
    """{(dataset, metric): score} from a pair's OpenCompass summary, plus its held-out losses (conversations: also
    the loss of each role) and, as dataset `train`, its training's clipped share of steps and median gradient norm."""
    run = latest_evaluation(folder)
    csv_path = next((run / "summary").glob("summary_*.csv"))
    scores = {}
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            if row[label] != "-":
                scores[row["dataset"], row["metric"]] = float(row[label])
    heldout = json.loads((run / "heldout.json").read_text())["models"][label]
    for key in ("response_loss", "response_perplexity", "response_token_accuracy", *role_losses(heldout)):
        if heldout[key] is not None:  # None: a role the held-out split has no token of
            scores["heldout", key] = float(heldout[key])
    settings = json.loads((run / "settings.json").read_text())
    manifest = settings.get("models", {}).get(label, {}).get("manifest") or {}
    for key in CLIPPING_STATS[:2]:  # the clipped share and median gradient norm (runs trained before: none)
        if manifest.get(key) is not None:
            scores[TRAINING, key.removeprefix("train_")] = float(manifest[key])
    return scores


def summarise_sweep(root: Path, weights: list[float], seeds: list[int], preset: str,
                    plot: str | Path | None) -> Path:
    """Write summary/summary_<ts>.{csv,md,txt} (mean over seeds per weight), sweep.csv with intervals,
    differences.csv/.md (every pair, p-values, Holm) and, where endpoints were declared, primary.csv/.md (printed
    first)."""
    pairs = {(w, s): read_pair(root / pair_label(w, s), pair_label(w, s)) for w in weights for s in seeds}
    keys = list(dict.fromkeys(k for scores in pairs.values() for k in scores))
    records = []
    for dataset, metric in keys:
        for w in weights:
            values = [pairs[w, s][dataset, metric] for s in seeds if (dataset, metric) in pairs[w, s]]
            if values:
                m, lo, hi = t_interval(values)
                records.append({"dataset": dataset, "metric": metric, "prompt_loss_weight": w, "seeds": len(values),
                                "mean": round(m, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                                "values": " ".join(f"{v:.4f}" for v in values)})
    diffs = difference_records(pairs, keys, weights, seeds)
    record = read_declaration(root)
    if record:  # the declared endpoints first, before any number
        primary_keys = {(k[0], k[1], a, b) for d, m in record["endpoints"] for k in _endpoint_rows(dict.fromkeys(keys), d, m)
                        for a, b in _primary_pairs(record, weights)}
        print(declaration_text(record, _primary_pairs(record, weights), len(primary_keys)), flush=True)
    else:
        primary_keys = set()
    add_holm(diffs, primary_keys)
    if record:
        primary = primary_records(root, diffs, record, weights, seeds)
        table = [PRIMARY_COLUMNS] + [[_diff_cell(r, c) for c in PRIMARY_COLUMNS] for r in primary]
        with (root / "primary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PRIMARY_COLUMNS)
            writer.writeheader()
            writer.writerows(primary)
        (root / "primary.md").write_text(declaration_text(record, _primary_pairs(record, weights), len(primary))
                                         + "\n" + format_markdown(table))
        print("Primary endpoints (paired by seed; 95% t-interval over seeds; Holm over the primary tests; combined: "
              "seeds and items resampled together):\n" + format_markdown(table), flush=True)
    ts = datetime.now().strftime("%Y%m%d_%H%M%S")
    columns = [f"w={w:g}" for w in weights]
    table = [["dataset", "version", "metric", "mode", *columns]]
    for dataset, metric in keys:
        cells = []
        for w in weights:
            r = next((r for r in records if (r["dataset"], r["metric"], r["prompt_loss_weight"]) == (dataset, metric, w)),
                     None)
            cells.append("-" if r is None else f"{r['mean']:.2f}" if dataset not in NOT_SCORES else f"{r['mean']:.4f}")
        table.append([dataset, "-", metric, "gen" if dataset not in NOT_SCORES else "-", *cells])
    write_summary(table, root / "summary", ts)
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    (root / "sweep.md").write_text(format_markdown(table))
    print(format_markdown(table), flush=True)
    if diffs:
        with (root / "differences.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=DIFF_COLUMNS)
            writer.writeheader()
            writer.writerows(diffs)
        diff_table = [DIFF_COLUMNS[:-1]] + [[_diff_cell(d, c) for c in DIFF_COLUMNS[:-1]] for d in diffs]
        (root / "differences.md").write_text(format_markdown(diff_table))
        shown = [row for d, row in zip(diffs, diff_table[1:])
                 if d["w_b"] == weights[0] and ("average" in d["metric"] or d["dataset"] in NOT_SCORES)]
        print(f"Differences from w={weights[0]:g} (paired by seed, 95% t-interval; p: paired t-test, p_holm: Holm "
              f"within each family; every pair and row in differences.csv):\n"
              + format_markdown([DIFF_COLUMNS[:-1]] + shown), flush=True)
    if plot:
        plot_sweep(records, weights, preset, len(seeds), Path(plot))
    return root


def seeds_report(root: Path, targets: list[float] = ()) -> str:
    """How many seeds each pair of weights needs (sft.evaluation.seeds), on the group averages of the sweep's
    differences.csv: the between-seed sd of the paired difference, its MDD, the seeds the observed difference (and
    each target difference) needs. Reads that file only: nothing is trained or evaluated."""
    path = root / "differences.csv"
    if not path.is_file():
        raise UserError(f"{path} does not exist: run the sweep first (`python -m sft sweep --name "
                        f"{root.name.removeprefix('sweep-')}`), or pass the --name of a sweep under "
                        "evaluation_results/raw/ or evaluation_results/.")
    diffs = pd.read_csv(path)
    diffs = diffs[diffs["metric"].str.contains("average") & ~diffs["metric"].map(is_side_effect)]
    return format_markdown(seeds_table(diffs, [], list(targets)))


def difference_records(pairs: dict, keys: list[tuple[str, str]], weights: list[float], seeds: list[int]) -> list[dict]:
    """w_a - w_b (w_a the larger weight) on every row: the mean of per-seed differences, 95% t-interval over seeds.

    Paired by seed, as the two runs of a seed share their example order; w = 1 minus w = 0 is
    unmasked minus masked.
    """
    out = []
    for dataset, metric in keys:
        for a, b in model_pairs(weights):
            values = [pairs[a, s][dataset, metric] - pairs[b, s][dataset, metric] for s in seeds
                      if (dataset, metric) in pairs[a, s] and (dataset, metric) in pairs[b, s]]
            if values:
                m, lo, hi = t_interval(values)
                _, sd, mdd = spread(values)
                out.append({"dataset": dataset, "metric": metric, "w_a": a, "w_b": b, "seeds": len(values),
                            "diff": round(m, 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4),
                            "significant": "yes" if len(values) > 1 and (lo > 0 or hi < 0) else "no",
                            "sd": round(sd, 4), "mdd": round(mdd, 4), "p": _round_p(t_test_p(values)),
                            "values": " ".join(f"{v:.4f}" for v in values)})
    return out


def _round_p(p: float) -> float:
    """A p-value to 3 significant digits (nan for one seed)."""
    return p if p != p or p == 0 else float(f"{p:.3g}")


def row_family(d: dict) -> str:
    """The exploratory family a difference row is Holm-adjusted in: its pair of weights, its kind of row and (for
    scores and side effects) its metric, e.g. 'w=1 - w=0, tasks: exact_match'."""
    if d["dataset"] == "heldout":
        kind = "held-out losses"
    elif d["dataset"] == TRAINING:
        kind = "training statistics"
    else:
        kind = f"{'group averages' if 'average' in d['metric'] else 'tasks'}: {base_metric(d['metric'])}"
    return f"w={d['w_a']:g} - w={d['w_b']:g}, {kind}"


def add_holm(diffs: list[dict], primary: set[tuple]) -> None:
    """Set each row's family (primary: its (dataset, metric, w_a, w_b) is among the declared endpoints x pairs),
    its Holm-adjusted p-value within the family and whether that is below 0.05."""
    families: dict[str, list[dict]] = {}
    for d in diffs:
        d["family"] = "primary" if (d["dataset"], d["metric"], d["w_a"], d["w_b"]) in primary else row_family(d)
        families.setdefault(d["family"], []).append(d)
    for rows in families.values():
        for d, p in zip(rows, holm([d["p"] for d in rows])):
            d["p_holm"] = _round_p(p)
            d["significant_holm"] = "-" if p != p else "yes" if p < ALPHA else "no"


def primary_records(root: Path, diffs: list[dict], record: dict, weights: list[float], seeds: list[int]) -> list[dict]:
    """The primary rows of differences.csv, each with the interval over seeds and items together where every run of
    the pair has an item_scores.csv."""
    items = {(w, s): _item_table(root, w, s) for w in weights for s in seeds}
    out = []
    for dataset, metric in record["endpoints"]:
        for a, b in _primary_pairs(record, weights):
            row = next((d for d in diffs if d["family"] == "primary" and d["dataset"] == dataset
                        and base_metric(d["metric"]) == metric and (d["w_a"], d["w_b"]) == (a, b)), None)
            if row is None:
                continue  # a weight of the declared pairs that this sweep does not run
            r = {"endpoint": f"{dataset}:{metric}", **{c: row[c] for c in PRIMARY_COLUMNS if c in row},
                 "combined_low": "-", "combined_high": "-", "items": "-"}
            tables_a = [items[a, s] for s in seeds]
            tables_b = [items[b, s] for s in seeds]
            if dataset not in NOT_SCORES and all(t is not None for t in tables_a + tables_b):
                c = combined_interval(pd.concat(tables_a), pd.concat(tables_b), dataset, metric,
                                      weighted=row["metric"].startswith("weighted_average"))
                r.update(combined_low=round(c["ci_low"], 4), combined_high=round(c["ci_high"], 4), items=c["items"])
            out.append(r)
    return out


def _item_table(root: Path, w: float, seed: int) -> pd.DataFrame | None:
    """A pair's item_scores.csv with its seed, or None where its evaluation wrote none."""
    run = latest_evaluation(root / pair_label(w, seed))
    path = run / ITEM_SCORES if run is not None else None
    if path is None or not path.is_file():
        return None
    return read_item_scores(path).assign(seed=seed)


def _diff_cell(record: dict, column: str) -> str:
    """A differences.md (primary.md) cell: scores with two decimals, held-out metrics with four, p-values with three
    significant digits."""
    value = record[column]
    held = record.get("dataset", record.get("endpoint", "").split(":")[0]) in NOT_SCORES
    if column in ("diff", "ci_low", "ci_high"):
        return f"{value:+.4f}" if held else f"{value:+.2f}"
    if column in ("sd", "mdd", "combined_low", "combined_high") and isinstance(value, float):  # nan with one seed
        return f"{value:.4f}" if held else f"{value:.2f}"
    if column in ("p", "p_holm"):
        return f"{value:.3g}"
    return f"{value:g}" if isinstance(value, float) else str(value)

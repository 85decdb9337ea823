"""From lm-eval's results to the summary's rows: one row per task (or group) and metric, every model a column.

A task evaluated in a model's chat template is a row of its own, its name marked `@chat`
(`gsm8k@chat` beside the raw prompt's `gsm8k`): `dataset,version,metric,mode,<models>` stays
OpenCompass's layout. Item scores travel with each row, so the report can draw bootstrap
intervals, wherever lm-eval's score is the mean of the per-sample scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sft.evaluation.report import Row

CHAT = "@chat"  # suffix of the tasks (and groups) evaluated in each model's chat template
UNSCALED = ("perplexity", "bits_per_byte", "bleu", "chrf", "ter")  # lm-eval metrics not in [0, 1]: kept as they are
MODES = {"generate_until": "gen"}  # OpenCompass's mode column; loglikelihood kinds are "ppl"


def with_suffix(results: dict, samples: dict[str, list], suffix: str) -> tuple[dict, dict[str, list]]:
    """lm-eval's results and samples with every task and group name marked (e.g. gsm8k -> gsm8k@chat)."""
    def name(n: str) -> str:
        return n + suffix

    renamed = {key: {name(k): v for k, v in results.get(key, {}).items()} for key in ("results", "configs")}
    renamed["group_subtasks"] = {name(g): [name(t) for t in members]
                                 for g, members in results.get("group_subtasks", {}).items()}
    return renamed, {name(k): v for k, v in samples.items()}


def merge_results(parts: list[tuple[dict, dict[str, list]]]) -> tuple[dict, dict[str, list]]:
    """One model's results and samples from several passes (raw, chat), keyed apart by their task names."""
    merged: dict[str, dict] = {"results": {}, "configs": {}, "group_subtasks": {}}
    samples: dict[str, list] = {}
    for res, smp in parts:
        for key in merged:
            merged[key].update(res.get(key, {}))
        samples.update(smp)
    return merged, samples


def short_hash(obj: Any) -> str:
    """OpenCompass-style 6-character version hash of a config."""
    return hashlib.md5(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:6]


def task_version(config: dict) -> str:
    """Hash of a task config without its machine-specific paths (config file, data file folders)."""
    cfg = json.loads(json.dumps(config, default=str))
    (cfg.get("metadata") or {}).pop("config_source", None)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        cfg["dataset_kwargs"]["data_files"] = {k: Path(v).name if isinstance(v, str) else v for k, v in files.items()}
    return short_hash(cfg)


def _leaves(name: str, subtasks: dict[str, list[str]]) -> list[str]:
    if name not in subtasks:
        return [name]
    return [leaf for child in subtasks[name] for leaf in _leaves(child, subtasks)]


def _metric_keys(entry: dict) -> list[str]:
    """The 'metric,filter' keys of a results entry (not stderrs, not counts)."""
    return [k for k, v in entry.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))]


def _item_scores(samples: list[dict], metric: str, filt: str) -> dict[Any, float] | None:
    """{doc_id: score} of one metric and filter, or None when the per-sample values are not numbers.

    Booleans (ifeval's prompt-level accuracy) are 0/1 items; lists (its instruction-level accuracy,
    whose score pools every instruction) are not items of a mean, so that row gets no interval.
    """
    out = {}
    for s in samples:
        if s.get("filter") == filt and metric in s:
            v = s[metric]
            if not isinstance(v, (int, float)):
                return None
            out[s["doc_id"]] = float(v)
    return out


def summary_rows(results: dict[str, dict], samples: dict[str, dict[str, list]], requested: list[str],
                 groups: dict[str, dict]) -> list[Row]:
    """Summary rows in the order asked for: each group's members, then the group's average."""
    subtasks = {g: m for r in results.values() for g, m in r.get("group_subtasks", {}).items()}
    configs = {t: c for r in results.values() for t, c in r.get("configs", {}).items()}
    found = list(dict.fromkeys(n for r in results.values() for n in r["results"]))
    order: list[str] = []

    def walk(name: str) -> None:
        for child in subtasks.get(name, []):
            walk(child)
        if name not in order and name in found:
            order.append(name)

    for name in requested:
        walk(name)
    order += [n for n in found if n not in order]  # tags expand to tasks not named above

    rows = []
    for name in order:
        is_group = name in subtasks
        leaves = _leaves(name, subtasks)
        modes = {MODES.get(configs.get(leaf, {}).get("output_type"), "ppl") for leaf in leaves}
        mode = modes.pop() if len(modes) == 1 else "mixed"
        keys = list(dict.fromkeys(k for r in results.values() for k in _metric_keys(r["results"].get(name, {}))))
        agg = {a["metric"]: a for a in groups.get(name, {}).get("aggregate_metric_list") or []}
        for key in keys:
            metric, filt = key.split(",", 1)
            scale = 1.0 if any(u in metric for u in UNSCALED) else 100.0
            label = metric if filt == "none" else f"{metric}_{filt}"
            size_weighted = bool(agg.get(metric, {}).get("weight_by_size", True))
            if is_group:
                kind = "weighted_average" if size_weighted else "naive_average"
                label = kind if len(keys) == 1 else f"{kind}:{label}"
                # The task definition's version: the same for the raw and the @chat pass.
                version = short_hash({"group": groups.get(name) or name.removesuffix(CHAT), "members": {
                    leaf.removesuffix(CHAT): task_version(configs.get(leaf, {})) for leaf in leaves}})
            else:
                version = task_version(configs.get(name, {}))
            scores, items = {}, {}
            for model, res in results.items():
                value = res["results"].get(name, {}).get(key)
                scores[model] = None if value is None else scale * float(value)
                per_leaf = [_item_scores(samples.get(model, {}).get(leaf, []), metric, filt) for leaf in leaves]
                # Intervals only where the reported score is the mean of the item scores.
                if value is not None and all(p for p in per_leaf) and _is_mean(per_leaf, value, size_weighted):
                    items[model] = per_leaf
            rows.append(Row(name, version, label, mode, scores, items or None, size_weighted, scale, is_group))
    return rows


def _is_mean(per_leaf: list[dict], value: float, size_weighted: bool) -> bool:
    means = [sum(p.values()) / len(p) for p in per_leaf]
    sizes = [len(p) for p in per_leaf]
    est = sum(m * n for m, n in zip(means, sizes)) / sum(sizes) if size_weighted else sum(means) / len(means)
    return abs(est - float(value)) < 1e-6


def role_losses(metrics: Iterable[str]) -> list[str]:
    """The per-role loss keys among a model's held-out metric names (conversations: template_loss, user_loss ...)."""
    return [k for k in metrics if k.endswith("_loss") and k not in ("response_loss", "prompt_loss")]


def heldout_rows(heldout: dict[str, dict]) -> list[Row]:
    """Summary rows of a held-out-only evaluation: response token accuracy (0-100) and response loss (nats);
    for conversations also the loss of each role (nats, '-' for a role the split has no token of)."""
    models = list(heldout)
    metrics = [("response_token_accuracy", 100.0), ("response_loss", 1.0)]
    metrics += [(key, 1.0) for key in role_losses(heldout[models[0]])]
    return [Row("heldout", short_hash(metric), metric, "ppl",
                {m: None if heldout[m].get(metric) is None else scale * heldout[m][metric] for m in models},
                scale=scale) for metric, scale in metrics]



ITEM_COLUMNS = ["model", "task", "group", "item", "metric", "score"]  # item_scores.csv (sft.runs.layout.ITEM_SCORES)


def item_records(rows: list[Row], subtasks: dict[str, list[str]]) -> list[list]:
    """One [model, task, group, item, metric, score] per model, item and metric of every task row with item scores:
    the score on the summary's scale, so a task's mean over its items is its summary score. group: the group whose
    members the task is (the summary's average row above it), '' for a task in no group."""
    parent = {leaf: g for g, members in subtasks.items() for leaf in members}
    out = []
    for r in rows:
        if r.is_group or not r.items:
            continue
        for model, (items,) in r.items.items():
            out += [[model, r.dataset, parent.get(r.dataset, ""), item, r.metric, f"{r.scale * v:.6g}"]
                    for item, v in items.items()]
    return out

"""The sweep's axes beyond w: role weights, schedules, normalisers and learning rates, each value a variant of the sweep.

`sft sweep --role-weights template=0,1 --prompt-loss-weights 0,0.5` sweeps w within each variant (template weighs
0, template weighs 1): every variant is a sweep of its own, `sweep-<name>-<variant>/`, and `compare_variants`
sets each variant against the first, paired by seed and w, into evaluation_results/raw/sweep-<name>/variants.csv
and variants.md. `--learning-rate 1e-3,3e-3` makes a variant per rate (lr0.001, lr0.003); one rate is a setting
every run shares, as any other field. Tokenization does not depend on any of these settings, so the whole grid
tokenizes once.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

from sft.data.errors import UserError
from sft.data.weights import NORMALIZERS, parse_role_weights
from sft.evaluation.report import format_markdown
from sft.evaluation.seeds import spread, t_interval
from sft.studies.sweep import pair_label, read_pair

AXES = ("role_weights", "prompt_loss_weight_end", "loss_normalizer", "learning_rate")
SEVERAL_ONLY = ("learning_rate",)  # an axis only when given several values (one value: a setting every run shares)
COLUMNS = ["dataset", "metric", "prompt_loss_weight", "variant", "baseline", "seeds", "diff", "ci_low", "ci_high",
           "significant", "sd", "mdd", "values"]  # sd, mdd: between-seed sd of the difference, its MDD (seeds.py)


def _text(value: Any) -> str:
    return ",".join(value) if isinstance(value, (list, tuple)) else str(value)


def parse_role_axis(text: str) -> list[dict[str, float]]:
    """'template=0,1,user=0,0.5' -> every combination: [{template: 0, user: 0}, {template: 0, user: 0.5}, ...].
    A value without a role belongs to the role before it."""
    values: dict[str, list[str]] = {}
    role = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            role, _, part = part.partition("=")
            role = role.strip()
            values.setdefault(role, [])
        if role is None:
            raise UserError(f"--role-weights {text!r}: start with ROLE=WEIGHT, e.g. template=0,1 (template at 0, "
                             "then at 1).")
        values[role].append(part)
    combos = [dict(zip(values, c)) for c in itertools.product(*values.values())]
    return [parse_role_weights(c) for c in combos]  # checks each role and weight (exit 2 with the fix)


def parse_rates(text: str) -> list[float]:
    """'1e-3,3e-3' -> [0.001, 0.003]: positive learning rates, each a variant of the sweep."""
    try:
        rates = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 for r in rates) or len(set(rates)) != len(rates):
        raise UserError(f"--learning-rate {text!r}: give positive learning rates separated by commas, each once, e.g. "
                         "1e-3,3e-3 (each a variant of the sweep: sweep-<name>-lr0.001/, ...).")
    return rates


def split_axes(overrides: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """(the overrides every run shares, [(variant label, its own overrides)]); one unlabeled variant without axes."""
    shared, axes = {}, {}
    for key, value in overrides.items():
        name = key.rsplit(".", 1)[-1]
        several = "," in _text(value)
        is_axis = name in AXES and value is not None and (name not in SEVERAL_ONLY or several)
        (axes if is_axis else shared)[key] = value
    choices = []
    for key, value in axes.items():
        name = key.rsplit(".", 1)[-1]
        if name == "role_weights":
            options = parse_role_axis(_text(value)) if not isinstance(value, dict) else [parse_role_weights(value)]
        elif name == "prompt_loss_weight_end":
            try:
                options = [None if v.strip().lower() == "none" else float(v) for v in _text(value).split(",")]
            except ValueError:
                raise UserError(f"--prompt-loss-weight-end {_text(value)!r}: give weights in [0, 1] or none, separated "
                                "by commas, e.g. 0,1.") from None
        elif name == "learning_rate":
            options = parse_rates(_text(value))
        else:
            options = [v.strip() for v in _text(value).split(",")]
            bad = [v for v in options if v not in NORMALIZERS]
            if bad:
                raise UserError(f"--loss-normalizer {bad[0]!r}: the normalisers are {', '.join(NORMALIZERS)} (several: "
                                 "weight_sum,response_tokens).")
        choices.append([(key, v) for v in options])
    return shared, [(variant_label(dict(combo)), dict(combo)) for combo in itertools.product(*choices)]


def variant_label(settings: dict[str, Any]) -> str:
    """A folder-safe name: rw-template0-user0.5, end1, norm-response_tokens, joined by '_'."""
    parts = []
    for key, value in settings.items():
        name = key.rsplit(".", 1)[-1]
        if name == "role_weights":
            parts.append("rw-" + "-".join(f"{r}{w:g}" for r, w in value.items()))
        elif name == "prompt_loss_weight_end":
            parts.append("const" if value is None else f"end{value:g}")
        elif name == "learning_rate":
            parts.append(f"lr{value:g}")
        else:
            parts.append(f"norm-{value}")
    return "_".join(parts)


def compare_variants(roots: dict[str, Path], weights: list[float], seeds: list[int], out: Path) -> Path | None:
    """Each variant minus the first, per (metric, w), paired by seed, with a 95% t-interval: variants.csv/.md."""
    labels = list(roots)
    if len(labels) < 2:
        return None
    scores = {(v, w, s): read_pair(roots[v] / pair_label(w, s), pair_label(w, s)) for v in labels for w in weights
              for s in seeds}
    keys = list(dict.fromkeys(k for sc in scores.values() for k in sc))
    rows = []
    for (dataset, metric), w, v in itertools.product(keys, weights, labels[1:]):
        values = [scores[v, w, s][dataset, metric] - scores[labels[0], w, s][dataset, metric] for s in seeds
                  if (dataset, metric) in scores[v, w, s] and (dataset, metric) in scores[labels[0], w, s]]
        if values:
            m, lo, hi = t_interval(values)
            _, sd, mdd = spread(values)
            rows.append({"dataset": dataset, "metric": metric, "prompt_loss_weight": w, "variant": v,
                         "baseline": labels[0], "seeds": len(values), "diff": round(m, 4), "ci_low": round(lo, 4),
                         "ci_high": round(hi, 4), "significant": "yes" if len(values) > 1 and (lo > 0 or hi < 0) else "no",
                         "sd": round(sd, 4), "mdd": round(mdd, 4), "values": " ".join(f"{x:.4f}" for x in values)})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "variants.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = [COLUMNS[:-1]] + [[f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS[:-1]]
                              for r in rows]
    (out / "variants.md").write_text(format_markdown(table))
    print(f"Variants against {labels[0]} (paired by seed, 95% t-interval):\n" + format_markdown(table), flush=True)
    return out / "variants.csv"

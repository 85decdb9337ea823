"""What training will see: data statistics and examples rendered with their loss weights."""

from __future__ import annotations

from typing import Any

from sft.data import DataConfig, length_stats, load_rows, tokenize_rows

COLOURS = {"zero": "\033[2;37m", "prompt": "\033[33m", "response": "\033[32m", "reset": "\033[0m"}


def inspect_data(cfg: DataConfig, tokenizer, by: str | None = None) -> tuple[dict[str, Any], Any, list[dict[str, str]]]:
    """Load, validate and tokenize `cfg.data`; return (stats, tokenized dataset, rows).

    `by` names a column (e.g. the demo's `family`): the statistics are then also given per value of it,
    under `stats["groups"]`, in order of first appearance.
    """
    rows, report = load_rows(cfg.data, cfg.column_map, cfg.on_bad_rows, keep_column=by)
    groups: dict[str, list[dict[str, str]]] = {}
    if by is not None:
        for row in rows:
            groups.setdefault(row.pop(by), []).append(row)
    ds, tok = tokenize_rows(rows, tokenizer, cfg, name="inspect")
    dropped = dict(report.rows_dropped)
    if tok.examples_dropped_too_long:
        dropped["too long (truncation=drop)"] = tok.examples_dropped_too_long
    stats = {
        "source": str(cfg.data),
        "rows_read": report.rows_read,
        "rows_kept": len(ds),
        "rows_dropped": dropped,
        "examples_truncated": tok.examples_truncated,
        "truncation": tok.truncation_counts,
        "ignored_columns": report.ignored_columns,
        "column_mapping": report.column_mapping,
        "max_length": cfg.max_length,
        "prompt_loss_weight": cfg.prompt_loss_weight,
        **length_stats(ds, tokenizer, rows),
    }
    if by is not None:
        stats["groups"] = {}
        for value, group in groups.items():
            # Each group tokenized on its own: with truncation=drop the rows of `ds` no longer line up with `rows`.
            group_ds, _ = tokenize_rows(group, tokenizer, cfg, name="inspect")
            g = length_stats(group_ds, tokenizer, group)
            stats["groups"][value] = {
                "examples": g["examples"],
                "prompt_tokens_mean": g["prompt_tokens"] / max(g["examples"], 1),
                "response_tokens_mean": g["response_tokens"] / max(g["examples"], 1),  # with EOS
                "instruction_output_ratio": g["instruction_output_ratio"],
                "generation_ratio_Rg": g["generation_ratio_Rg"],
            }
    return stats, ds, rows


def render_example(example: dict[str, list], tokenizer, colour: bool) -> str:
    """Show one example with prompt, response and zero-weight tokens told apart."""
    segments: list[tuple[str, list[int]]] = []
    for tok, w, r in zip(example["input_ids"], example["loss_weights"], example["response_mask"]):
        kind = "response" if r else ("zero" if w == 0 else "prompt")
        if segments and segments[-1][0] == kind:
            segments[-1][1].append(tok)
        else:
            segments.append((kind, [tok]))
    out = []
    for kind, ids in segments:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if colour:
            out.append(f"{COLOURS[kind]}{text}{COLOURS['reset']}")
        else:
            label = {"zero": "weight 0", "prompt": f"prompt, weight {example['loss_weights'][0]:g}",
                     "response": "response, weight 1"}[kind]
            out.append(f"[[{label}: {text}]]")
    return "".join(out)


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable block of the statistics."""
    lines = [f"source: {stats['source']}"]
    for k in ("rows_read", "rows_kept", "rows_dropped", "examples_truncated", "ignored_columns",
              "prompt_tokens", "response_tokens", "length_mean", "length_p50", "length_p99", "length_max",
              "instruction_output_ratio", "generation_ratio_Rg"):
        v = stats.get(k)
        lines.append(f"  {k:26s} {v:.3f}" if isinstance(v, float) else f"  {k:26s} {v}")
    if stats.get("groups"):
        lines += ["", "| group | examples | prompt tokens | response tokens (with EOS) | instruction/output | R_g |",
                  "|---|---|---|---|---|---|"]
        for value, g in stats["groups"].items():
            lines.append(f"| {value} | {g['examples']} | {g['prompt_tokens_mean']:.1f} | {g['response_tokens_mean']:.1f} "
                         f"| {g['instruction_output_ratio']:.2f} | {g['generation_ratio_Rg']:.3f} |")
    return "\n".join(lines)

"""What training will see: data statistics and examples rendered with their loss weights."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import datasets
import numpy as np

from sft.core.prepare import tokenize_rows
from sft.data.config import DataConfig
from sft.data.conversations import ROLE_NAMES, TEXT
from sft.data.errors import UserError
from sft.data.io import write_jsonl
from sft.data.mixture import SOURCE, is_mixture, parse_mixture
from sft.data.rows import TEXT_FIELD, LoadReport, load_rows, row_kind
from sft.data.stats import length_stats, tokens_by_role, weight_by_role

COLOURS = {"zero": "\033[2;37m", "prompt": "\033[33m", "response": "\033[32m", "reset": "\033[0m"}


def inspect_data(cfg: DataConfig, tokenizer, by: str | None = None) -> tuple[dict[str, Any], Any, list[dict[str, str]]]:
    """Load, validate and tokenize `cfg.data`; return (stats, tokenized dataset, rows).

    `by` names a column (e.g. the demo's `family`): the statistics are then also given per value of it,
    under `stats["groups"]`, in order of first appearance. Every row is tokenized once.
    """
    if is_mixture(cfg.data):
        rows, report, ds, tok, sources = inspect_mixture(cfg, tokenizer, by)
    else:
        rows, report = load_rows(cfg.data, cfg.column_map, cfg.on_bad_rows, keep_column=by)
        ds, tok = tokenize_rows(rows, tokenizer, cfg, name="inspect")  # carries the `by` column of the rows kept
        sources = None
    if len(ds) == 0:
        raise UserError(f"{cfg.data}: all {len(rows)} rows are longer than max_length={cfg.max_length} tokens and "
                         "truncation=drop dropped them; raise --max-length or pass --truncation trim.")
    dropped = dict(report.rows_dropped)
    if tok.examples_dropped_too_long:
        dropped["too long (truncation=drop)"] = tok.examples_dropped_too_long
    chat, text = "messages" in rows[0], TEXT_FIELD in rows[0]  # plain text: no instruction, every token a target
    instruction, output = (field_tokens(rows, tokenizer) if not (chat or text)
                           else (np.zeros(len(rows)), np.ones(len(rows))))
    stats = {
        "source": str(cfg.data),
        "rows_read": report.rows_read,
        "rows_kept": len(ds),
        "rows_dropped": dropped,
        "first_bad_rows": report.first_bad_rows,  # where the first dropped rows were (file, row, turn) and why
        "examples_truncated": tok.examples_truncated,
        "truncation": tok.truncation_counts,
        "ignored_columns": report.ignored_columns,
        "column_mapping": report.column_mapping,
        "max_length": cfg.max_length,
        "prompt_loss_weight": cfg.prompt_loss_weight,
        "role_weights": cfg.role_weights,
        "unknown_message_keys": dict(report.unknown_message_keys),  # conversations: turn keys not read, never silent
        **length_stats(ds),
        "instruction_output_ratio": None if chat or text else int(instruction.sum()) / max(int(output.sum()), 1),
    }
    # every token's role (instruction rows: template, user, assistant); its total weight under these settings
    stats["tokens_by_role"] = tokens_by_role(ds, instruction_rows=True)
    stats["weight_by_role"] = weight_by_role(ds)
    if sources is not None:  # a mixture: each source's rows once (training draws from them by the ratios: plan)
        stats["sources"] = sources
    if chat:  # the tokenized conversations carry every token's role and turn (--show renders them)
        stats["conversations_turns_mean"] = float(np.mean([len(r["messages"]) for r in rows]))
    if by is not None:
        example_groups, ds = np.asarray(ds[by]), ds.remove_columns(by)
        row_groups = np.asarray([row.pop(by) for row in rows])
        stats["groups"] = group_stats(ds, example_groups, row_groups, instruction, output)
    return stats, ds, rows


def inspect_mixture(cfg: DataConfig, tokenizer, by: str | None = None):
    """A mixture's sources for inspect-data, each row once in the mixture's order (source by source), each source's
    examples weighed by its own role weights and carrying its `source` index: (rows, the sources' load reports
    merged, dataset, tokenize report of the first source with the counts summed, per-source figures)."""
    if by == SOURCE:
        raise UserError(f"--by {SOURCE}: a mixture gives every example its own `{SOURCE}` (the source it came from), "
                        "and inspect-data reports each source's figures under `sources`; group by another column.")
    sources = parse_mixture(cfg.data)
    spec = dataclasses.replace(cfg.weight_spec(), source_role_weights=tuple(s.role_weights for s in sources))
    rows, parts, figures = [], [], {}
    report = LoadReport(source=str(cfg.data))
    tok = None
    for k, s in enumerate(sources):
        part, rep = load_rows(s.path, cfg.column_map, cfg.on_bad_rows, keep_column=by)
        if rows and row_kind(part[0]) != row_kind(rows[0]):
            raise UserError(f"source {s.name} ({s.path}) holds {row_kind(part[0])} while source {sources[0].name} "
                            f"holds {row_kind(rows[0])}: a mixture's sources hold one kind.")
        ds, t = tokenize_rows(part, tokenizer, cfg, name="inspect", spec=spec.for_source(k))
        parts.append(ds.add_column(SOURCE, [k] * len(ds)))
        rows += part
        for name in ("rows_read", "rows_kept"):
            setattr(report, name, getattr(report, name) + getattr(rep, name))
        report.rows_dropped.update(rep.rows_dropped)
        report.unknown_message_keys.update(rep.unknown_message_keys)
        report.first_bad_rows += rep.first_bad_rows[: 5 - len(report.first_bad_rows)]
        report.ignored_columns += [c for c in rep.ignored_columns if c not in report.ignored_columns]
        report.column_mapping.update(rep.column_mapping)
        tok = t if tok is None else dataclasses.replace(
            tok, examples_in=tok.examples_in + t.examples_in, examples_out=tok.examples_out + t.examples_out,
            examples_dropped_too_long=tok.examples_dropped_too_long + t.examples_dropped_too_long,
            examples_truncated=tok.examples_truncated + t.examples_truncated,
            truncation_counts=dict(Counter(tok.truncation_counts) + Counter(t.truncation_counts)))
        figures[s.name] = {"path": s.path, "ratio": s.ratio, "role_weights": s.role_weights,
                           "rows_read": rep.rows_read, "examples": len(ds), "tokens": int(sum(ds["length"])),
                           "weight_by_role": weight_by_role(ds)}
    total = sum(s.ratio for s in sources)
    for s in sources:
        figures[s.name]["share"] = s.ratio / total
    return rows, report, datasets.concatenate_datasets(parts), tok, figures


def export_masks(ds, path, sources: list[str] | None = None) -> int:
    """Write one line per example, in the input's order: input_ids, roles (the role name of every token) and
    weights (its final weight under the settings given); from a mixture also its source (the name of `sources`
    its `source` index points at). Returns the number of lines."""
    names = ["input_ids", "roles", "loss_weights"] + ([SOURCE] if sources and SOURCE in ds.column_names else [])
    cols = ds.select_columns(names).to_dict()
    lines = [{"input_ids": ids, "roles": [ROLE_NAMES[r] for r in roles], "weights": [float(w) for w in weights]}
             for ids, roles, weights in zip(cols["input_ids"], cols["roles"], cols["loss_weights"])]
    for line, k in zip(lines, cols.get(SOURCE, ())):
        line[SOURCE] = sources[k]
    write_jsonl(path, lines)
    return len(lines)


def field_tokens(rows: list[dict[str, str]], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per row of the raw instruction (with its input) and of the output, for Shi et al.'s ratio."""
    # Shi et al. (2024): instruction (with input) length over output length, on the raw fields, not the template.
    instruction = tokenizer([r["instruction"] + ("\n" + r["input"] if r["input"] else "") for r in rows],
                            add_special_tokens=False)["input_ids"]
    output = tokenizer([r["output"] for r in rows], add_special_tokens=False)["input_ids"]
    return np.fromiter(map(len, instruction), dtype=np.int64), np.fromiter(map(len, output), dtype=np.int64)


def group_stats(ds, example_groups: np.ndarray, row_groups: np.ndarray, instruction: np.ndarray,
                output: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per-group means of the tokenized examples and the raw-field ratio of the rows, in order of first appearance."""
    out = {}
    for value in dict.fromkeys(row_groups.tolist()):
        rows = row_groups == value
        ratio = int(instruction[rows].sum()) / max(int(output[rows].sum()), 1)
        kept = np.flatnonzero(example_groups == value)
        if len(kept) == 0:  # truncation=drop dropped every row of this group: no token statistics
            out[value] = {"examples": 0, "rows": int(rows.sum()), "prompt_tokens_mean": None,
                          "response_tokens_mean": None, "instruction_output_ratio": ratio, "generation_ratio_Rg": None}
            continue
        g = length_stats(ds.select(kept))
        out[value] = {
            "examples": g["examples"],
            "rows": int(rows.sum()),
            "prompt_tokens_mean": g["prompt_tokens"] / g["examples"],
            "response_tokens_mean": g["response_tokens"] / g["examples"],  # with EOS
            "instruction_output_ratio": ratio,
            "generation_ratio_Rg": g["generation_ratio_Rg"],
        }
    return out


def render_example(example: dict[str, list], tokenizer, colour: bool) -> str:
    """Show one example with prompt, response and zero-weight tokens told apart (a conversation: by turn)."""
    if example.get("chat"):
        return render_conversation(example, tokenizer, colour)
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
                     "response": "text, weight 1" if TEXT in example.get("roles", ()) else "response, weight 1"}[kind]
            out.append(f"[[{label}: {text}]]")
    return "".join(out)


def render_conversation(example: dict[str, list], tokenizer, colour: bool) -> str:
    """Show a conversation's tokens run by run of (turn, role, weight): `[[turn 2 user, weight 0: ...]]`."""
    runs: list[tuple[tuple, list[int]]] = []
    for tok, w, role, turn in zip(example["input_ids"], example["loss_weights"], example["roles"], example["turns"]):
        key = (turn, ROLE_NAMES[role], w)
        if runs and runs[-1][0] == key:
            runs[-1][1].append(tok)
        else:
            runs.append((key, [tok]))
    out = []
    for (turn, role, w), ids in runs:
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if colour:
            kind = "response" if w == 1 else ("zero" if w == 0 else "prompt")
            out.append(f"{COLOURS[kind]}{text}{COLOURS['reset']}")
        else:
            out.append(f"[[turn {turn + 1} {role}, weight {w:g}: {text}]]")
    return "".join(out)


def format_stats(stats: dict[str, Any]) -> str:
    """A human-readable block of the statistics."""
    lines = [f"source: {stats['source']}"]
    for k in ("rows_read", "rows_kept", "rows_dropped", "first_bad_rows", "examples_truncated", "ignored_columns",
              "prompt_tokens", "response_tokens", "length_mean", "length_p50", "length_p99", "length_max",
              "instruction_output_ratio", "generation_ratio_Rg", "tokens_by_role", "weight_by_role",
              "unknown_message_keys", "conversations_turns_mean"):
        if k not in stats or (k == "first_bad_rows" and not stats[k]):
            continue
        v = stats.get(k)
        if k == "first_bad_rows":  # one per line: each names its file, row (and turn) and reason
            lines += [f"  {k:26s} {v[0]}"] + [f"  {'':26s} {where}" for where in v[1:]]
            continue
        lines.append(f"  {k:26s} {v:.3f}" if isinstance(v, float) else f"  {k:26s} {v}")
    for name, src in (stats.get("sources") or {}).items():  # a mixture: each source's rows once
        lines.append(f"  source {name:19s} {src['path']}: share {src['share']:.4f}, {src['rows_read']:,} rows read, "
                     f"{src['examples']:,} examples, {src['tokens']:,} tokens"
                     + (f", role weights {src['role_weights']}" if src["role_weights"] else ""))
    if stats.get("groups"):
        lines += ["", "| group | examples | prompt tokens | response tokens (with EOS) | instruction/output | R_g |",
                  "|---|---|---|---|---|---|"]
        for value, g in stats["groups"].items():
            if not g["examples"]:
                lines.append(f"| {value} | 0 (all {g['rows']} rows longer than max_length, dropped) | - | - "
                             f"| {g['instruction_output_ratio']:.2f} | - |")
                continue
            lines.append(f"| {value} | {g['examples']} | {g['prompt_tokens_mean']:.1f} | {g['response_tokens_mean']:.1f} "
                         f"| {g['instruction_output_ratio']:.2f} | {g['generation_ratio_Rg']:.3f} |")
    return "\n".join(lines)


WEIGHTED_BY = "sft.core.weights.step_weights"  # where training turns each token's role into its weight, every step


def token_weights_table(example: dict[str, list], tokenizer, max_tokens: int | None = None) -> str:
    """One line per token of an example: position, token, role and the loss weight training gives it (at the
    settings' starting w), headed by the function that applies the weights and followed by each role's count and
    weight: instruction rows are template (the preamble and headers), user (instruction and input) and assistant
    (the response and EOS); a conversation adds system, and agent data tool_call, tool_output and reasoning."""
    ids, weights = example["input_ids"], example["loss_weights"]
    roles = [ROLE_NAMES[r] for r in example["roles"]]
    n = len(ids) if max_tokens is None else min(len(ids), max_tokens)
    width = max([9] + [len(r) for r in roles])  # tool_output is the longest role name
    lines = [f"weights set by {WEIGHTED_BY}", f"{'t':>4}  {'token':<24} {'role':<{width}} w_t"]
    for t in range(n):
        token = repr(tokenizer.decode([ids[t]], skip_special_tokens=False))[1:-1]
        lines.append(f"{t:>4}  {token:<24} {roles[t]:<{width}} {weights[t]:g}")
    if n < len(ids):
        lines.append(f"      ... {len(ids) - n} more tokens")
    w = np.asarray(weights, dtype=np.float64)
    by_role = ", ".join(f"{name} {roles.count(name)} at {sorted({f'{x:g}' for x, r in zip(weights, roles) if r == name})[0]}"
                        if len({x for x, r in zip(weights, roles) if r == name}) == 1 else
                        f"{name} {roles.count(name)} weighing {sum(x for x, r in zip(weights, roles) if r == name):g}"
                        for name in ROLE_NAMES if name in roles)
    lines.append(f"tokens by role: {by_role}; this example adds {w[1:].sum():g} to the step's sum of w_t "
                 "(token 0 is never predicted)")
    return "\n".join(lines)

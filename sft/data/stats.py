"""Statistics of tokenized data: lengths, prompt and response tokens, the generation ratio, tokens by role."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from sft.data.conversations import ROLE_NAMES, TOOL_CALL

# ---------------------------------------------------------------- statistics


def length_stats(ds) -> dict[str, float]:
    """Token statistics of a tokenized dataset (at least one example), with its generation ratio."""
    lengths = np.asarray(ds["length"])
    response_tokens = int(sum(sum(m) for m in ds["response_mask"]))
    total = int(lengths.sum())
    prompt_tokens = total - response_tokens
    return {
        "examples": int(len(lengths)),
        "prompt_tokens": prompt_tokens,
        "response_tokens": response_tokens,  # response tokens including each EOS
        "length_mean": float(lengths.mean()),
        "length_p50": float(np.percentile(lengths, 50)),
        "length_p99": float(np.percentile(lengths, 99)),
        "length_max": int(lengths.max()),
        # Huerta-Enochian & Ko (2024): generation ratio R_g = completion tokens / prompt tokens.
        "generation_ratio_Rg": response_tokens / max(prompt_tokens, 1),
    }


def token_column(ds, name: str) -> np.ndarray:
    """A per-token column of a tokenized dataset (input_ids, response_mask, roles ...), flat over its examples."""
    return np.asarray(pc.list_flatten(ds.with_format("arrow")[name]))


def is_chat(ds) -> bool:
    """Whether a tokenized dataset holds conversations (its `chat` column), rather than instruction rows."""
    return "chat" in ds.column_names and len(ds) > 0 and bool(ds[0]["chat"])


def roles_present(roles: np.ndarray) -> list[tuple[int, str]]:
    """(code, name) of the roles reported: template, system, user and assistant always, the agent roles
    (tool_call, tool_output, reasoning) where the data has a token of them."""
    return [(code, name) for code, name in enumerate(ROLE_NAMES) if code < TOOL_CALL or (roles == code).any()]


def tokens_by_role(ds, instruction_rows: bool = False) -> dict[str, int] | None:
    """Tokens per role (sft.data.conversations.ROLE_NAMES, the agent roles where present); None for instruction
    rows unless asked for (their roles are template, user and assistant)."""
    if "roles" not in ds.column_names or not (instruction_rows or is_chat(ds)):
        return None
    roles = token_column(ds, "roles")
    return {name: int((roles == code).sum()) for code, name in roles_present(roles)}


def weight_by_role(ds) -> dict[str, float] | None:
    """The total loss weight per role (the weights the dataset's loss_weights column holds; the agent roles where
    present)."""
    if "roles" not in ds.column_names or "loss_weights" not in ds.column_names:
        return None
    roles, weights = token_column(ds, "roles"), token_column(ds, "loss_weights").astype(np.float64)
    return {name: float(weights[roles == code].sum()) for code, name in roles_present(roles)}

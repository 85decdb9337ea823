"""Tokenization: validated rows -> input_ids, labels, per-token loss weights, response mask.

Alpaca-style rows: prompt and response are tokenized apart (no BPE merge across the boundary), EOS appended to
the response (and kept in the loss even though pad == eos for Qwen2.5), an over-long prompt trimmed in its middle
so the response survives. Conversations: rendered through the chat template (sft.core.chat), every token with its
role and turn. Labels are not shifted: the model shifts them inside `forward`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from sft.core.chat import make_renderer, token_weights
from sft.core.prompts import get_template
from sft.data.config import PROMPT_TAIL_TOKENS, DataConfig
from sft.data.conversations import ASSISTANT
from sft.data.rows import FIELDS

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


# ---------------------------------------------------------------- tokenization


def truncate_example(
    prompt_ids: list[int], response: list[int], max_length: int, truncation: str = "trim"
) -> tuple[list[int], list[int], str] | None:
    """Fit (prompt, response + EOS) into max_length; return (prompt, response, status), None if dropped.

    status is "ok", "prompt_trimmed", "response_trimmed" or "both_trimmed".
    """
    n_p, n_r = len(prompt_ids), len(response)
    if n_p + n_r <= max_length:
        return list(prompt_ids), list(response), "ok"
    if truncation == "drop":
        return None
    # The response keeps what the prompt leaves, and at least half the window, so it is never cut to nothing.
    keep_r = min(n_r, max(max_length - n_p, max_length // 2))
    keep_p = max_length - keep_r
    trimmed_p, trimmed_r = keep_p < n_p, keep_r < n_r
    if trimmed_p:  # cut the middle (usually the input): keep the instruction and the "### Response:" cue
        tail = min(PROMPT_TAIL_TOKENS, keep_p // 2)
        prompt_ids = list(prompt_ids[: keep_p - tail]) + list(prompt_ids[n_p - tail :])
    # A cut response loses its EOS (the last token): the model must not learn to stop mid-answer.
    response = list(response[:keep_r])
    status = {(True, True): "both_trimmed", (True, False): "prompt_trimmed"}.get(
        (trimmed_p, trimmed_r), "response_trimmed"
    )
    return list(prompt_ids), response, status


def _prompt_prefix_ids(tokenizer) -> list[int]:
    """The BOS the tokenizer would add by itself (Llama-style), or nothing (Qwen, GPT-2)."""
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("x")["input_ids"][:1] == [bos]:
        return [bos]
    return []


def tokenize_rows_batch(batch: dict[str, list], tokenizer, cfg: DataConfig):
    """The batched `datasets.map` function: prompt and response tokenized apart, then joined.

    Labels are the input ids themselves (the model shifts them), IGNORE_INDEX where the weight is 0;
    the weight is `cfg.prompt_loss_weight` on prompt tokens and 1 on response tokens and EOS. Columns
    other than instruction, input and output (e.g. inspect-data's group column) are carried through for
    the examples kept. Returns an Arrow table built from flat numpy arrays: converting millions of
    per-token Python numbers into Arrow was most of the preprocessing time.
    """
    if "messages" in batch:
        return tokenize_conversations_batch(batch, tokenizer, cfg)
    template = get_template(cfg.template)
    prompts = [template.render(i, x) for i, x in zip(batch["instruction"], batch["input"])]
    # Apart, so that no BPE merge crosses the prompt/response boundary: the prompt's tokens are
    # then exactly a prefix of the example's tokens, as at generation time.
    ids = _encode(tokenizer, prompts + list(batch["output"]))
    prompt_ids, response_ids = ids[: len(prompts)], ids[len(prompts) :]
    prefix, eos = _prompt_prefix_ids(tokenizer), tokenizer.eos_token_id
    rows, n_prompt, status, kept = [], [], [], []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        # EOS is a response token: the model must learn to stop.
        fitted = truncate_example(prefix + p, r + [eos], cfg.max_length, cfg.truncation)
        if fitted is None:
            continue  # dropped examples are counted by the caller from the row counts
        prompt, response, st = fitted
        rows.append(prompt + response)
        n_prompt.append(len(prompt))
        status.append(st)
        kept.append(i)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    position = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    response = position >= np.repeat(np.asarray(n_prompt, dtype=np.int64), lengths)
    weights = np.where(response, 1.0, cfg.prompt_loss_weight).astype(np.float32)
    return _examples_table(rows, weights, response, status, kept, batch)


def _examples_table(rows: list[list[int]], weights: np.ndarray, response: np.ndarray, status: list[str],
                    kept: list[int], batch: dict[str, list], per_token: dict | None = None) -> pa.Table:
    """The examples as Arrow columns: ids, labels (IGNORE_INDEX where the weight is 0), weights, the response
    mask (weight 1), length, truncation status, the batch's carried-through columns for the rows kept, and any
    further per-token values (flat, as the weights)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    labels = np.where(weights > 0, flat, IGNORE_INDEX)

    def column(values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    extra = {name: pa.array([values[i] for i in kept]) for name, values in batch.items()
             if name not in FIELDS + ("messages",)}
    return pa.table({
        "input_ids": column(flat), "labels": column(labels), "loss_weights": column(weights),
        "response_mask": column(response.astype(np.int8)),
        "length": pa.array(lengths), "truncation": pa.array(status, type=pa.string()), **extra,
        **{name: column(values) for name, values in (per_token or {}).items()},
    })


def conversation_renderer(tokenizer, cfg: DataConfig):
    """The ChatRenderer of cfg.chat_template for this tokenizer (sft.core.chat.chat_template_source)."""
    return make_renderer(tokenizer, cfg.chat_template, cfg.template, bool(_prompt_prefix_ids(tokenizer)))


def tokenize_conversations_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> pa.Table:
    """The conversation form of tokenize_rows_batch: each conversation rendered through the chat template.

    Assistant content and its end-of-turn token weigh 1 (every assistant turn, or the last with
    cfg.train_on="last"); system, user and template tokens weigh cfg.prompt_loss_weight.
    """
    rows, weights, trained, roles, turns, status, kept = [], [], [], [], [], [], []
    for i, ids, role, turn, st in conversation_tokens(batch["messages"], tokenizer, cfg):
        rows.append(ids)
        w, t = token_weights(role, turn, cfg.prompt_loss_weight, cfg.train_on)
        weights.append(w)
        trained.append(t)
        roles.append(role)
        turns.append(turn)
        status.append(st)
        kept.append(i)
    flat = np.concatenate(weights) if weights else np.zeros(0, dtype=np.float32)
    response = np.concatenate(trained) if trained else np.zeros(0, dtype=bool)
    # Each token's role code (sft.data.conversations.ROLE_NAMES) and turn, for the held-out losses per role and inspect-data;
    # the collators take only the columns they pad, so training never sees them.
    per_token = {name: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
                 for name, parts, dtype in (("roles", roles, np.int8), ("turns", turns, np.int32))}
    return _examples_table(rows, flat, response, status, kept, batch, per_token)


def conversation_tokens(conversations: list[list[dict]], tokenizer, cfg: DataConfig) -> Iterator[tuple]:
    """(index, ids, role codes, turns, truncation status) of each conversation kept, fitted into max_length."""
    renderer = conversation_renderer(tokenizer, cfg)
    for i, (messages, (ids, roles, turns)) in enumerate(zip(conversations, _render_all(renderer, conversations))):
        st = "ok"
        if len(ids) > cfg.max_length:
            fitted = fit_conversation(renderer, messages, cfg)
            if fitted is None:
                continue
            ids, roles, turns, st = fitted
        yield i, list(ids), roles, turns, st


def _render_all(renderer, conversations: list[list[dict]]) -> list:
    """Tokens with roles and turns for each conversation; a template error names the conversation."""
    try:
        return renderer.tokens(conversations)
    except Exception:  # find the conversation the template refused, and say which
        for k, messages in enumerate(conversations):
            try:
                renderer.tokens([messages])
            except Exception as e:
                first = next((m["content"] for m in messages if m["role"] == "user"), "")
                raise ValueError(
                    f"conversation {k + 1} of this batch (first user turn {first!r:.60}): the chat template cannot "
                    f"render it ({type(e).__name__}: {str(e)[:200]}). Fix the turn order, or choose another template "
                    "with --chat-template.") from None
        raise


def fit_conversation(renderer, messages: list[dict], cfg: DataConfig):
    """Fit an over-long conversation into max_length: (ids, roles, turns, status), None if dropped.

    Earlier exchanges are dropped from the front (a system turn stays) until it fits; if even the last
    exchange is too long, its prompt loses its middle and the answer keeps at least half the window, as
    truncate_example does for instruction rows.
    """
    if cfg.truncation == "drop":
        return None
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head):]
    starts = [k for k, m in enumerate(body) if m["role"] == "user" and k > 0]
    ids = roles = turns = None
    for k in starts:
        ids, roles, turns = renderer.tokens([head + body[k:]])[0]
        if len(ids) <= cfg.max_length:
            return list(ids), roles, turns, "turns_dropped"
    if ids is None:
        ids, roles, turns = renderer.tokens([messages])[0]
    last = np.flatnonzero(roles == ASSISTANT)
    n_p = int(last[turns[last] == turns[last].max()][0]) if len(last) else len(ids)
    fitted = truncate_example(list(range(n_p)), list(range(n_p, len(ids))), cfg.max_length, cfg.truncation)
    keep = np.asarray(fitted[0] + fitted[1], dtype=np.int64)
    status = fitted[2] if not starts else f"turns_dropped+{fitted[2]}"
    return [ids[j] for j in keep], roles[keep], turns[keep], status


def with_training_template(tokenizer, template: str, chat_template: str | None = None):
    """A copy of the tokenizer whose chat_template renders the training prompt, token for token.

    chat_template: the Jinja template conversations were rendered with (PreparedData.chat_template), saved as is;
    None = the prompt template `template` as a chat template (instruction rows).

    The Trainer saves this copy with the final model and every checkpoint, so apply_chat_template,
    pipelines, vLLM and lm-eval's --apply_chat_template give a fine-tuned model the prompt it was
    trained on. The base model's own chat template (Qwen's ChatML) stays in the base folder.
    """
    out = copy.deepcopy(tokenizer)
    bos = bool(_prompt_prefix_ids(tokenizer))
    out.chat_template = chat_template or get_template(template).chat_template(bos_token=bos)
    return out


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens; through the Rust tokenizer directly when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def check_tokenizer(tokenizer) -> None:
    """Refuse a tokenizer that cannot mark the end of a response."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no EOS token, so the model could never learn to stop. Set one, e.g. "
            "tokenizer.eos_token = '<|endoftext|>', or use the base model's own tokenizer."
        )


_TOKENIZER_FINGERPRINTS: dict[int, tuple[Any, str]] = {}  # id -> (tokenizer, hash): serialising Qwen's takes 0.2 s


def fingerprint_tokenizer(tokenizer) -> str:
    """A content hash of a fast tokenizer (vocabulary, merges, special tokens), computed once per object."""
    cached = _TOKENIZER_FINGERPRINTS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    fp = hashlib.sha256((text + str(tokenizer.eos_token_id)).encode()).hexdigest()[:16]
    _TOKENIZER_FINGERPRINTS[id(tokenizer)] = (tokenizer, fp)
    return fp

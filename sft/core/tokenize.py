"""Tokenization: validated rows -> input_ids with a role, turn and message weight per token (no loss weight).

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

from sft.core.chat import encode_with_offsets, make_renderer
from sft.core.controls import drop_history_reasoning, empty_reasoning, span_factors, special_ids, token_marks
from sft.core.prompts import get_template
from sft.data.config import PROMPT_TAIL_TOKENS, DataConfig
from sft.data.conversations import ASSISTANT, MESSAGE_WEIGHT, REPLY_ROLES, TEMPLATE, TEXT, USER
from sft.data.messages import SPANS
from sft.data.weights import parse_weight_rules
from sft.data.errors import UserError
from sft.data.rows import CHAT_FIELDS, FIELDS, TEXT_FIELD

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


def tokenize_roles_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> pa.Table:
    """The batched `datasets.map` function whose output is cached: prompt and response tokenized apart, joined.

    Every token carries its role code (sft.data.conversations.ROLE_NAMES), turn and message weight (1 where the
    data gives none); no loss weight is stored, so one cache serves every weight setting. Instruction rows: the
    template's preamble and headers (and a BOS) are `template`, the instruction and input `user` (turn 0), the
    response and its EOS `assistant` (turn 1). Columns other than instruction, input and output (e.g.
    inspect-data's group column) are carried through for the examples kept. Returns an Arrow table built from
    flat numpy arrays: converting millions of per-token Python numbers into Arrow was most of the time.
    """
    if "messages" in batch:
        return conversation_roles_batch(batch, tokenizer, cfg)
    if parse_weight_rules(cfg.weight_rules):
        raise UserError("--weight-rules weighs text within the messages of a role, in conversations; this data holds "
                        "instruction or text rows. Give it as conversations ({\"messages\": [...]}) or drop the rules.")
    if TEXT_FIELD in batch:
        return text_roles_batch(batch, tokenizer, cfg)
    template = get_template(cfg.template)
    rendered = [template.render_spans(i, x) for i, x in zip(batch["instruction"], batch["input"])]
    # Apart, so that no BPE merge crosses the prompt/response boundary: the prompt's tokens are
    # then exactly a prefix of the example's tokens, as at generation time.
    prompt_enc = _prompt_encodings(tokenizer, [text for text, _ in rendered])
    response_ids = _encode(tokenizer, list(batch["output"]))
    prefix, eos = _prompt_prefix_ids(tokenizer), tokenizer.eos_token_id
    rows, roles, turns, status, kept = [], [], [], [], []
    for i, ((text, spans), (p, user), r) in enumerate(zip(rendered, prompt_enc, response_ids)):
        prompt = prefix + list(p)
        prompt_roles = np.concatenate([np.full(len(prefix), TEMPLATE, dtype=np.int8), user(len(text), spans)])
        # EOS is a response token: the model must learn to stop.
        response = list(r) + [eos]
        fitted = truncate_example(list(range(len(prompt))), list(range(len(prompt), len(prompt) + len(response))),
                                  cfg.max_length, cfg.truncation)
        if fitted is None:
            continue  # dropped examples are counted by the caller from the row counts
        p_idx, r_idx, st = fitted
        ids = prompt + response
        rows.append([ids[j] for j in p_idx + r_idx])
        roles.append(np.concatenate([prompt_roles[p_idx], np.full(len(r_idx), ASSISTANT, dtype=np.int8)]))
        turns.append(np.repeat(np.asarray([0, 1], dtype=np.int32), [len(p_idx), len(r_idx)]))
        status.append(st)
        kept.append(i)
    return _examples_table(rows, roles, turns, [np.ones(len(x), dtype=np.float32) for x in rows], status, kept,
                           batch, chat=False, specials=special_ids(tokenizer))


def text_roles_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> pa.Table:
    """Plain-text rows tokenized (continued pretraining): the text and an EOS, every token role `text` (weight 1 at
    any w: there is no prompt), turn 0. A text longer than max_length keeps its start (and loses its EOS) under
    truncation "trim", is dropped under "drop"."""
    prefix, eos = _prompt_prefix_ids(tokenizer), tokenizer.eos_token_id
    rows, status, kept = [], [], []
    for i, ids in enumerate(_encode(tokenizer, list(batch[TEXT_FIELD]))):
        fitted = truncate_example([], prefix + list(ids) + [eos], cfg.max_length, cfg.truncation)
        if fitted is None:
            continue
        rows.append(fitted[1])
        status.append("ok" if fitted[2] == "ok" else "text_trimmed")
        kept.append(i)
    roles = [np.full(len(r), TEXT, dtype=np.int8) for r in rows]
    return _examples_table(rows, roles, [np.zeros(len(r), dtype=np.int32) for r in rows],
                           [np.ones(len(r), dtype=np.float32) for r in rows], status, kept, batch, chat=False,
                           specials=np.zeros(0, dtype=np.int64))  # no reply closes: the EOS weighs 1 whatever --end-of-turn


def _prompt_encodings(tokenizer, texts: list[str]) -> list[tuple[list[int], Any]]:
    """(ids, roles(n_chars, spans)) of each prompt: USER on the tokens that cover any character of a span. Through
    the Rust tokenizer, the span ends are looked up (char_to_token) instead of every token's offsets read."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [(ids, lambda n, spans, o=offsets: _user_roles(n, spans, o))
                for ids, offsets in encode_with_offsets(tokenizer, texts)]

    def roles_of(enc):
        def roles(n_chars: int, spans: list[tuple[int, int]]) -> np.ndarray:
            out = np.full(len(enc.ids), TEMPLATE, dtype=np.int8)
            for s, e in spans:
                first, last = (enc.char_to_token(s), enc.char_to_token(e - 1)) if e > s else (None, None)
                if first is None or last is None:  # a character in no token: read the offsets instead
                    return _user_roles(n_chars, spans, enc.offsets)
                out[first:last + 1] = USER
            return out
        return roles

    return [(enc.ids, roles_of(enc)) for enc in backend.encode_batch(texts, add_special_tokens=False)]


def _user_roles(n_chars: int, spans: list[tuple[int, int]], offsets) -> np.ndarray:
    """USER for a prompt token that covers any character of the user's words (the spans), else TEMPLATE."""
    user = np.zeros(n_chars + 1, dtype=np.int64)
    for s, e in spans:
        user[s:e] = 1
    before = np.concatenate([[0], np.cumsum(user)])  # before[k] = user characters in text[:k]
    starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
    ends = np.maximum(np.asarray([o[1] for o in offsets], dtype=np.int64), starts + 1)
    return np.where(before[np.minimum(ends, n_chars + 1)] > before[starts], USER, TEMPLATE).astype(np.int8)


def _examples_table(rows: list[list[int]], roles: list[np.ndarray], turns: list[np.ndarray],
                    message_weights: list[np.ndarray], status: list[str], kept: list[int], batch: dict[str, list],
                    chat: bool, specials: np.ndarray, empty_turns: list[list[int]] | None = None) -> pa.Table:
    """The examples as Arrow columns: ids, role codes, turns, message weights and marks (token_marks) per token,
    length, truncation status, whether it is a conversation, and the batch's carried-through columns for the rows
    kept. empty_turns: per example, the turns whose reasoning block is empty."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    marks = [token_marks(flat, np.concatenate(roles) if roles else np.zeros(0, np.int8),
                         np.concatenate(turns) if turns else np.zeros(0, np.int32), specials, offsets, empty_turns)]

    def column(parts: list[np.ndarray], dtype) -> pa.ListArray:
        values = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    extra = {name: pa.array([values[i] for i in kept]) for name, values in batch.items()
             if name not in FIELDS + CHAT_FIELDS + (TEXT_FIELD,)}
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "roles": column(roles, np.int8), "turns": column(turns, np.int32),
        "message_weights": column(message_weights, np.float32), "marks": column(marks, np.int8),
        "length": pa.array(lengths), "truncation": pa.array(status, type=pa.string()),
        "chat": pa.array([chat] * len(rows), type=pa.bool_()), **extra,
    })


def conversation_renderer(tokenizer, cfg: DataConfig):
    """The ChatRenderer of cfg.chat_template for this tokenizer (sft.core.chat.chat_template_source)."""
    return make_renderer(tokenizer, cfg.chat_template, cfg.template, bool(_prompt_prefix_ids(tokenizer)))


def conversation_roles_batch(batch: dict[str, list], tokenizer, cfg: DataConfig) -> pa.Table:
    """The conversation form of tokenize_roles_batch: each conversation rendered through the chat template (with
    the tools of its row), every token with its role, turn and its message's weight from the data (loss_weight,
    weight, train or loss). A conversation or tools list may come as its JSON text (tokenize_rows writes them so:
    Arrow would give every message, call and tool of a batch the same keys)."""
    rows, roles, turns, message_weights, status, kept, empty = [], [], [], [], [], [], []
    conversations = [json.loads(m) if isinstance(m, str) else m for m in batch["messages"]]
    if cfg.reasoning_history == "drop":  # as Qwen3-style templates render a conversation
        conversations = [drop_history_reasoning(m) for m in conversations]
    tools = [json.loads(t) if isinstance(t, str) else t for t in batch.get("tools", [None] * len(conversations))]
    for i, ids, role, turn, msg_w, st, kept_messages in conversation_tokens(conversations, tokenizer, cfg, tools,
                                                                            with_messages=True):
        rows.append(ids)
        roles.append(role)
        turns.append(turn)
        message_weights.append(msg_w)
        status.append(st)
        kept.append(i)
        empty.append([k for k, m in enumerate(kept_messages) if m["role"] == "assistant" and empty_reasoning(m)])
    return _examples_table(rows, roles, turns, message_weights, status, kept, batch, chat=True,
                           specials=special_ids(tokenizer), empty_turns=empty)


def conversation_tokens(conversations: list[list[dict]], tokenizer, cfg: DataConfig,
                        tools: list | None = None, with_messages: bool = False) -> Iterator[tuple]:
    """(index, ids, role codes, turns, message weights, truncation status) of each conversation kept, fitted into
    max_length. A turn's message weight is its MESSAGE_WEIGHT value (sft.data.conversations), 1 where none.
    tools: the tools each conversation may call (None where it has none); with_messages: each tuple ends with the
    messages kept (their indices are the turns)."""
    renderer = conversation_renderer(tokenizer, cfg)
    rules = parse_weight_rules(cfg.weight_rules)
    tools = tools if tools is not None else [None] * len(conversations)
    rendered = _render_all(renderer, conversations, tools)
    for i, (messages, tool_list, (ids, roles, turns, added)) in enumerate(zip(conversations, tools, rendered)):
        st, kept = "ok", messages
        if len(ids) > cfg.max_length:
            fitted = fit_conversation(renderer, messages, cfg, tool_list)
            if fitted is None:
                continue
            ids, roles, turns, added, st, kept = fitted
        # Arrow gives every message of a batch the same keys: a message without a weight reads None there.
        per_turn = np.asarray([1.0 if m.get(MESSAGE_WEIGHT) is None else float(m[MESSAGE_WEIGHT]) for m in kept],
                              dtype=np.float32)
        # The template's own text (its default system prompt, its tool list) is no message's words: its role's
        # weight alone, whatever the message it is rendered in weighs (docs/data.md: a weight touches its own words).
        weights = np.where(added, np.float32(1.0), per_turn[turns])
        if rules or any(m.get(SPANS) for m in kept):  # weighted characters (only rows with spans, or rules set)
            weights = weights * span_factors(renderer, kept, tool_list, list(ids), rules)
        out = (i, list(ids), roles, turns, weights.astype(np.float32), st)
        yield (*out, kept) if with_messages else out


def _render_all(renderer, conversations: list[list[dict]], tools: list) -> list:
    """Tokens with roles and turns for each conversation; a template error names the conversation."""
    try:
        return renderer.tokens(conversations, tools, with_added=True)
    except Exception:  # find the conversation the template refused, and say which
        for k, (messages, tool_list) in enumerate(zip(conversations, tools)):
            try:
                renderer.tokens([messages], [tool_list])
            except Exception as e:
                first = next((m["content"] for m in messages if m["role"] == "user"), "")
                raise UserError(
                    f"conversation {k + 1} of this batch (first user turn {first!r:.60}): the chat template cannot "
                    f"render it ({type(e).__name__}: {str(e)[:200]}). Fix the turn order, or choose another template "
                    "with --chat-template.") from None
        raise


def fit_conversation(renderer, messages: list[dict], cfg: DataConfig, tools: list[dict] | None = None):
    """Fit an over-long conversation into max_length: (ids, roles, turns, template-added mask, status, the messages
    kept), None if dropped (turns index the messages kept).

    Earlier exchanges are dropped from the front (a system turn stays) until it fits; if even the last
    exchange is too long, its prompt loses its middle and the answer keeps at least half the window, as
    truncate_example does for instruction rows; where that cut would split an earlier reply of the exchange (a tool
    call), the example is dropped instead. The tools stay (the system turn's).
    """
    if cfg.truncation == "drop":
        return None
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head):]
    starts = [k for k, m in enumerate(body) if m["role"] == "user" and k > 0]
    ids = roles = turns = added = None
    for k in starts:
        ids, roles, turns, added = renderer.tokens([head + body[k:]], [tools], with_added=True)[0]
        if len(ids) <= cfg.max_length:
            return list(ids), roles, turns, added, "turns_dropped", head + body[k:]
    kept = head + body[starts[-1]:] if starts else messages
    if ids is None:
        ids, roles, turns, added = renderer.tokens([messages], [tools], with_added=True)[0]
    last = np.flatnonzero(np.isin(roles, REPLY_ROLES))
    n_p = int(last[turns[last] == turns[last].max()][0]) if len(last) else len(ids)
    fitted = truncate_example(list(range(n_p)), list(range(n_p, len(ids))), cfg.max_length, cfg.truncation)
    keep = np.asarray(fitted[0] + fitted[1], dtype=np.int64)
    # The middle cut must not leave part of an earlier reply (a tool call, its reasoning): the model would learn a
    # broken call. Such an example is dropped whole (counted with the examples too long to fit).
    cut = np.ones(len(ids), dtype=bool)
    cut[keep] = False
    earlier = np.isin(roles[:n_p], REPLY_ROLES)
    if np.intersect1d(turns[:n_p][earlier & cut[:n_p]], turns[:n_p][earlier & ~cut[:n_p]]).size:
        return None
    status = fitted[2] if not starts else f"turns_dropped+{fitted[2]}"
    return [ids[j] for j in keep], roles[keep], turns[keep], added[keep], status, kept


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
        raise UserError(
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

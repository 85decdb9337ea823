"""Batched generation for case studies and notebooks: left padding, greedy by default, stop at EOS.

`model.generate()` keeps every row of a batch until the last one ends, so one long response
makes the whole batch pay for it. The decoding loop here drops a row from the batch and its KV
cache as soon as it ends, and lets waiting prompts in (their caches left-padded and joined to
the batch's), so each step costs what the unfinished rows cost; prompts that share a template's
preamble encode it once. Decoding is plain: greedy is the argmax, sampling is temperature and
top-p; of the model's generation_config only the EOS tokens are used. Conversation prompts also stop at
their chat template's end-of-turn token (`prompt_stops`), which a base model's config may lack.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from sft.core.chat import end_of_call_id, renderer_for
from sft.core.prompts import format_tool_calls, get_template
from sft.data.errors import UserError
from sft.evaluation.settings import GenerationSettings

PREFILL = 16  # new prompts encoded per forward pass: they arrive sorted by length, so little padding
SHARED = 16  # prompts that agree on their first SHARED tokens (a template's preamble) are encoded together ...
MIN_PREFIX = 8  # ... and a common prefix at least this long is encoded once for the whole group


@dataclass
class _Rows:
    """Rows generating together: the token each feeds next, the attention mask, the KV cache, their prompts."""

    last: torch.Tensor | None  # [rows]: the latest token of each row, not yet in the cache (None until record())
    mask: torch.Tensor  # [rows, cached + 1]: 0 on padding
    cache: Any  # KV cache of every position before `last`
    prompts: list[int]  # the prompt each row answers


def generate_responses(model, tokenizer, prompts: list[str], settings: GenerationSettings | None = None,
                       stops: Iterable[int] = ()) -> list[str]:
    """Generate a response for each rendered prompt, batched with left padding, in the prompts' order;
    `stops`: token ids that end a response besides eos_ids (prompt_stops gives a chat template's)."""
    return tokenizer.batch_decode(generate_ids(model, tokenizer, prompts, settings, stops), skip_special_tokens=True)


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: list[str], settings: GenerationSettings | None = None,
                 stops: Iterable[int] = ()) -> list[list[int]]:
    """generate_responses' new token ids, its stop token excluded: fewer than max_new_tokens means the response
    stopped (EOS or a stop id), as many means it reached the limit (the case studies' side effects read this)."""
    s = settings or GenerationSettings()
    if s.do_sample:
        torch.manual_seed(s.seed)
    was_training = model.training
    model.eval()
    try:
        encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise UserError(f"Prompts {empty} are empty: a model needs at least one token to continue from.")
        return generate_token_ids(model, tokenizer, encoded, s, stops)
    finally:
        model.train(was_training)


def eos_ids(model, tokenizer) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS and any the model's generation config adds."""
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return sorted(i for i in ids if i is not None)


def generate_token_ids(model, tokenizer, encoded: list[list[int]], s: GenerationSettings,
                       stops: Iterable[int] = ()) -> list[list[int]]:
    """The new token ids of each encoded prompt, up to (not including) its EOS or one of `stops`; at most
    s.batch_size at once."""
    stop = set(eos_ids(model, tokenizer)) | set(stops)
    keep_one = "logits_to_keep" in inspect.signature(model.forward).parameters  # next-token logits only
    # Longest first: neighbours have similar lengths (little padding), and an out-of-memory
    # error, if any, comes at once.
    waiting = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    new: list[list[int]] = [[] for _ in encoded]
    refill_at = max(1, min(PREFILL, s.batch_size // 2))  # free places worth a prefill pass
    running: _Rows | None = None
    while waiting or running is not None:
        free = s.batch_size - (len(running.prompts) if running else 0)
        if waiting and (running is None or (free >= min(refill_at, len(waiting)) and can_join(running.cache))):
            take = take_group(waiting, encoded, min(free, PREFILL))
            logits, fresh = prefill(model, tokenizer, [encoded[i] for i in take], take, keep_one)
            running = join(running, record(fresh, next_tokens(logits, s), stop, new, s.max_new_tokens))
        else:
            positions = running.mask.sum(1, keepdim=True) - 1
            out = model(input_ids=running.last[:, None], attention_mask=running.mask, position_ids=positions,
                        past_key_values=running.cache, use_cache=True, **({"logits_to_keep": 1} if keep_one else {}))
            running = record(running, next_tokens(out.logits, s), stop, new, s.max_new_tokens)
    return new


def take_group(waiting: list[int], encoded: list[list[int]], n: int) -> list[int]:
    """Remove and return up to n waiting prompts: the first, then others sharing its first SHARED tokens."""
    head = encoded[waiting[0]][:SHARED]
    group = [i for i in waiting if encoded[i][:SHARED] == head][:n]
    chosen = set(group)
    group += [i for i in waiting if i not in chosen][: n - len(group)]
    chosen = set(group)
    waiting[:] = [i for i in waiting if i not in chosen]
    return group


def prefill(model, tokenizer, prompts: list[list[int]], numbers: list[int], keep_one: bool):
    """Encode prompts into a fresh KV cache: their common prefix once, the rest left-padded after it.

    Returns the next-token logits and the rows (their `last` token is chosen by the caller).
    The padding sits between prefix and suffix; positions count real tokens only, so every
    prompt sees the positions it would see alone.
    """
    common = len(os.path.commonprefix(prompts))
    common = common if common >= MIN_PREFIX and len(prompts) > 1 else 0
    common = min(common, min(len(p) for p in prompts) - 1)  # every prompt keeps a token to predict from
    cache = None
    if common > 0:
        cache = model(input_ids=torch.tensor([prompts[0][:common]], device=model.device), use_cache=True,
                      **({"logits_to_keep": 1} if keep_one else {})).past_key_values
        cache.batch_repeat_interleave(len(prompts))
    # Left padding: with right padding a short prompt would continue after its pad tokens.
    enc = tokenizer.pad({"input_ids": [p[common:] for p in prompts]}, padding_side="left", return_tensors="pt")
    ids, tail = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    mask = torch.cat([tail.new_ones(len(prompts), common), tail], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, common:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                **({"logits_to_keep": 1} if keep_one else {}))
    return out.logits, _Rows(None, mask, out.past_key_values, numbers)


def next_tokens(logits: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """The next token of each row: the most likely (greedy), or sampled with temperature and top-p."""
    logits = logits[:, -1].float()
    if not s.do_sample:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_p < 1:
        ranked, order = logits.sort(-1, descending=True)
        probs = ranked.softmax(-1)
        ranked[(probs.cumsum(-1) - probs) >= s.top_p] = float("-inf")  # keep the fewest tokens reaching top_p
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ranked)
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


def record(rows: _Rows, tokens: torch.Tensor, stop: set[int], new: list[list[int]], budget: int) -> _Rows | None:
    """Append each row's token; drop rows that reached EOS or the budget; return the rest, or None."""
    going = []
    for j, t in enumerate(tokens.tolist()):
        p = rows.prompts[j]
        if t in stop:
            continue
        new[p].append(t)
        if len(new[p]) < budget:
            going.append(j)
    if not going:
        return None
    mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows.prompts), 1)], dim=1)  # the new token's column
    if len(going) == len(rows.prompts):
        return _Rows(tokens, mask, rows.cache, rows.prompts)
    keep = torch.tensor(going, device=tokens.device)
    rows.cache.batch_select_indices(keep)
    return _Rows(tokens[keep], mask[keep], rows.cache, [rows.prompts[j] for j in going])


def can_join(cache) -> bool:
    """True for a cache whose layers `join` knows how to pad (plain full-attention layers)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def join(a: _Rows | None, b: _Rows | None) -> _Rows | None:
    """One batch of both row sets: the shorter is left-padded (mask and KV cache) to the longer."""
    if a is None or b is None:
        return a if b is None else b
    length = max(a.mask.shape[1], b.mask.shape[1])
    for rows in (a, b):
        pad = length - rows.mask.shape[1]
        if pad:
            rows.mask = F.pad(rows.mask, (pad, 0), value=0)
            for layer in rows.cache.layers:  # [rows, heads, positions, dim]: pad the positions on the left
                layer.keys, layer.values = F.pad(layer.keys, (0, 0, pad, 0)), F.pad(layer.values, (0, 0, pad, 0))
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys, la.values = torch.cat([la.keys, lb.keys]), torch.cat([la.values, lb.values])
    return _Rows(torch.cat([a.last, b.last]), torch.cat([a.mask, b.mask]), a.cache, a.prompts + b.prompts)


def render_prompts(template: str, rows: list[dict], tokenizer=None, chat_template: str | None = None) -> list[str]:
    """Render {instruction, input} rows with a registered template; conversation rows ({messages}, ending on a user
    turn) through `chat_template` (default: the tokenizer's own, else `template`'s), ready for the reply."""
    if rows and "messages" in rows[0]:
        if tokenizer is None:
            raise UserError("Conversation prompts are rendered through a chat template: pass the tokenizer too, "
                             "render_prompts(template, rows, tokenizer, chat_template).")
        source = chat_source(template, tokenizer, chat_template)
        return [tokenizer.apply_chat_template(r["messages"], chat_template=source, add_generation_prompt=True,
                                              tokenize=False, **({"tools": r["tools"]} if r.get("tools") else {}))
                for r in rows]
    t = get_template(template)
    return [t.render(r["instruction"], r.get("input") or "") for r in rows]


def chat_source(template: str, tokenizer, chat_template: str | None = None) -> str:
    """The chat template conversation prompts are rendered with: `chat_template`, else the tokenizer's own, else
    `template`'s."""
    return chat_template or tokenizer.chat_template or get_template(template).chat_template()


def prompt_stops(template: str, rows: list[dict], tokenizer, chat_template: str | None = None) -> list[int]:
    """Stop ids for render_prompts' prompts besides EOS: a conversation's chat template end-of-turn token (a base
    Qwen2.5 asked through ChatML ends its reply with <|im_end|>, which its generation config lacks) and the token
    that ends a tool call where the template ends calls apart; none else."""
    if not rows or "messages" not in rows[0]:
        return []
    renderer = renderer_for(tokenizer, chat_source(template, tokenizer, chat_template))
    return [t for t in dict.fromkeys((renderer.end_of_turn_id(), end_of_call_id(renderer))) if t is not None]


def conversation_prompt(messages: list[dict], output: str | None = None, tools: list[dict] | None = None) -> dict:
    """A prompt row of a conversation ending on a user turn or a tool's output (shown by that turn), with an optional
    reference and the tools it may call."""
    return {"messages": messages, "instruction": messages[-1]["content"], "input": "",
            **({"tools": tools} if tools else {}), **({"output": output} if output is not None else {})}


def reply_text(message: dict) -> str:
    """An assistant message as the chat template writes it: its content, then its tool calls (<tool_call> tags)."""
    calls = format_tool_calls(message["tool_calls"]) if message.get("tool_calls") else ""
    return "\n".join(t for t in (message.get("content") or "", calls) if t)


def prompt_rows(rows: list[dict], n: int) -> list[dict]:
    """The first n rows as prompts with their reference `output`: a conversation's turns before its last reply (a
    call is a reply too), with its tools."""
    return [conversation_prompt(r["messages"][:-1], reply_text(r["messages"][-1]), r.get("tools")) if "messages" in r
            else {"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]}
            for r in rows[:n]]

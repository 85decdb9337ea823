"""Weight controls that act on the rendered tokens and text (issue #38): the marks a setting may weigh apart (the
token that closes each reply, an empty reasoning block), a conversation rendered without its earlier turns'
reasoning, and the weights of characters (a message's spans) mapped to tokens through the offset mapping.

Called by sft.core.tokenize at tokenization; what they give is stored per token (marks, message_weights), and the
settings that weigh it are applied at batch time (sft.core.weights).
"""

from __future__ import annotations

import numpy as np

from sft.core.chat import THINK, encode_with_offsets
from sft.data.conversations import REASONING, REPLY_ROLES
from sft.data.errors import UserError
from sft.data.messages import SPANS
from sft.data.weights import CLOSING, EMPTY_REASONING


def special_ids(tokenizer) -> np.ndarray:
    """The ids of the tokenizer's special tokens (EOS, ChatML's <|im_end|>, ...): a reply's closing token is one."""
    added = [i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special]
    return np.unique(np.asarray(list(tokenizer.all_special_ids) + added, dtype=np.int64))


def token_marks(ids: np.ndarray, roles: np.ndarray, turns: np.ndarray, specials: np.ndarray, offsets: np.ndarray,
                empty_turns: list[list[int]] | None = None) -> np.ndarray:
    """Per token of a batch's examples (flat; `offsets` their bounds), int8 bits of what the settings may weigh apart
    (sft.data.weights): CLOSING on the token that closes each reply, the last of an assistant turn's own tokens where
    it is a special token (ChatML's <|im_end|>, EOS; a reply cut by truncation has none), what --end-of-turn weighs;
    EMPTY_REASONING on the reasoning tokens of each example's `empty_turns` (an empty <think></think> block), what
    --empty-reasoning weighs. One pass over the batch: it runs on every tokenization."""
    out = np.zeros(len(ids), dtype=np.int8)
    example = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    reply = np.flatnonzero(np.isin(roles, REPLY_ROLES))
    if len(reply):
        t, e = turns[reply], example[reply]
        last = reply[np.append((t[1:] != t[:-1]) | (e[1:] != e[:-1]), True)]  # each reply turn's last token
        out[last[np.isin(np.asarray(ids)[last], specials)]] = CLOSING
    for k, turns_k in enumerate(empty_turns or ()):
        if turns_k:
            a, b = offsets[k], offsets[k + 1]
            out[a:b][(roles[a:b] == REASONING) & np.isin(turns[a:b], turns_k)] |= EMPTY_REASONING
    return out


def empty_reasoning(message: dict) -> bool:
    """Whether an assistant message's reasoning is given and empty (reasoning_content "" or a leading empty
    <think></think> span), or absent: its reasoning tokens, if the template renders a block, are an empty block."""
    content = (message.get("content") or "").lstrip()
    if content.startswith(THINK[0]) and THINK[1] in content:
        return not content[len(THINK[0]):content.find(THINK[1])].strip()
    return not (message.get("reasoning_content") or "").strip()


def drop_history_reasoning(messages: list[dict]) -> list[dict]:
    """The conversation with the reasoning of every assistant turn before the last user turn dropped (its
    reasoning_content, and a leading <think>...</think> span of its content with the line breaks after it), as
    Qwen3's template renders the history (NeMo Automodel's drop_history_reasoning_content)."""
    last_user = max((k for k, m in enumerate(messages) if m["role"] == "user"), default=-1)
    out = []
    for k, m in enumerate(messages):
        if k < last_user and m["role"] == "assistant":
            m = {key: v for key, v in m.items() if key != "reasoning_content"}
            content = m.get("content") or ""
            if content.lstrip().startswith(THINK[0]) and THINK[1] in content:
                m["content"] = content.split(THINK[1], 1)[1].lstrip("\n")
        out.append(m)
    return out


def span_factors(renderer, messages: list[dict], tools: list | None, ids: list[int], rules=()) -> np.ndarray:
    """Per token of `ids` (the conversation's tokens, or what truncation kept of them), the weight its message's
    character spans give it (sft.data.messages.SPANS; 1 outside every span), times the weight of the rules
    (sft.data.weights.WeightRule) its characters match: a token weighs the least of its characters' weights, so a
    token that straddles a span boundary takes the lower side (a token half in a masked span is masked). Character
    offsets go to tokens through the tokenizer's offset mapping."""
    text, spans = renderer.spans(messages, tools)
    (full, offsets), = encode_with_offsets(renderer.tokenizer, [text])
    char = np.ones(len(text) + 1, dtype=np.float32)
    first = {}
    for s, _, t, _ in spans:
        first[t] = min(first.get(t, s), s)
    for i, (m, shown) in enumerate(zip(messages, renderer.template_messages(messages))):
        mine = [r for r in rules if r.role == m["role"]]
        if not m.get(SPANS) and not mine:
            continue
        at = text.find(shown["content"], first.get(i, 0)) if shown["content"] else -1
        if at < 0 and not m.get(SPANS):  # a message without text (a call alone): nothing for a rule to match
            continue
        if at < 0:
            raise UserError(f"turn {i + 1}: the chat template does not show this message's text verbatim, so its "
                            "character spans cannot be placed; use a template that does (the tokenizer's own, e.g. "
                            "Qwen2.5's) or drop the spans.")
        at += len(shown["content"]) - len(m["content"])  # reasoning the template is given before the content
        for s, e, w in m.get(SPANS) or ():  # later spans override earlier ones
            char[at + int(s):at + int(e)] = w
        for rule in mine:  # a rule multiplies what the data gives
            for s, e in rule.finditer(m["content"]):
                char[at + s:at + e] *= rule.weight
    factor = np.asarray([char[a:max(b, a + 1)].min() for a, b in offsets], dtype=np.float32)
    if len(full) == len(ids):
        return factor
    # Truncation kept a head of the tokens and one later run (the prompt's end and the answer): find that run.
    head = next((k for k, (a, b) in enumerate(zip(ids, full)) if a != b), len(ids))
    rest = ids[head:]
    for x in range(len(full) - len(rest), head - 1, -1):
        if full[x:x + len(rest)] == rest:
            return np.concatenate([factor[:head], factor[x:x + len(rest)]])
    raise RuntimeError("span_factors: the truncated tokens are not a head and a run of the conversation's")

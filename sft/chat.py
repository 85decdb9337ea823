"""Conversations: validate chat rows and render them through a chat template, every token with its role and turn.

A conversation is a list of {"role", "content"} turns (system, user, assistant); ShareGPT's {"from", "value"}
turns (human, gpt, system) are read into the same form. Rendering goes through a Jinja chat template (the
tokenizer's own, or a registered prompt template as a chat template) without needing `{% generation %}` tags:
each message's characters are found by rendering prefixes of the conversation (messages[:i] vs messages[:i+1]),
the whole text is tokenized once, and each token takes the role and turn of the characters it covers. The ids
are therefore exactly those of `tokenizer.apply_chat_template(messages, tokenize=True)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sft.prompts import get_template

ROLES = ("system", "user", "assistant")  # the roles a turn may have
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
CHAT_COLUMNS = ("messages", "conversations")  # columns that hold a conversation: OpenAI/HF, ShareGPT
ROLE_NAMES = ("template", "system", "user", "assistant")  # per-token role codes: 0 = markup of an assistant turn
TEMPLATE, SYSTEM, USER, ASSISTANT = range(4)


# ---------------------------------------------------------------- validation


def check_conversation(value: Any, from_text: bool = False) -> tuple[list[dict] | None, int | None, str, str, str]:
    """Return (messages, None, "", "", "") for a valid conversation, else (None, turn, field, problem, fix).

    `problem` is short and generic (bad rows are counted by it); `fix` names the value and what to do.
    from_text: the cell is text (CSV), read as a JSON list.
    """
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, None, "messages", "is not a JSON list", "write the cell as a JSON list of turns"
    if not isinstance(value, list):
        return None, None, "messages", "is not a list", (
            f"got {type(value).__name__} {value!r:.40}; write a list of turns such as "
            '[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]')
    messages = []
    for t, turn in enumerate(value, 1):
        msg, fld, problem, fix = _check_turn(turn, t)
        if msg is None:
            return None, t, fld, problem, fix
        messages.append(msg)
    return _check_order(messages)


def _check_turn(turn: Any, t: int) -> tuple[dict | None, str, str, str]:
    """One turn as {"role", "content"}, else (None, field, problem, fix)."""
    if not isinstance(turn, dict):
        return None, "(turn)", "is not an object", (
            f"got {type(turn).__name__}; write {{\"role\": ..., \"content\": ...}}")
    sharegpt = "role" not in turn and "from" in turn
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    names = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
    role = names.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
    if role is None:
        known = "human, gpt or system" if sharegpt else "system, user or assistant"
        got = "no role" if role_key not in turn else f"{turn.get(role_key)!r:.30}"
        return None, role_key, "unknown role", f"got {got}; use {known}"
    content = turn.get(content_key)
    if content is None:
        return None, content_key, "is missing", f"the {role} turn has no text; give it a string {content_key}"
    if not isinstance(content, str):
        return None, content_key, "is not a string", (
            f"got {type(content).__name__} {content!r:.40}; only text turns are supported, "
            "join the parts into a string")
    if role != "system" and not content.strip():
        return None, content_key, "is empty", f"the {role} turn is empty; drop the turn or fill it"
    return {"role": role, "content": content}, "", "", ""


def _check_order(messages: list[dict]) -> tuple[list[dict] | None, int | None, str, str, str]:
    """The turn order every chat template renders: a system turn first or not at all, ending on the assistant."""
    if not messages:
        return None, None, "messages", "is empty", "a conversation needs a user turn and the assistant's reply"
    first = next((t for t, m in enumerate(messages, 1) if m["role"] != "system"), 1)
    if messages[first - 1]["role"] == "assistant":
        return None, first, "role", "conversation opens with an assistant turn", (
            "an assistant turn must answer a user turn; drop the opening assistant turn or put a user turn first")
    for t, m in enumerate(messages[1:], 2):
        if m["role"] == "system":
            return None, t, "role", "system turn after the first", (
                "a system turn can only open the conversation; move it first or merge it into the next user turn")
    if not any(m["role"] == "assistant" for m in messages):
        return None, None, "messages", "has no assistant turn", (
            "nothing would be trained; add the reply or drop the row")
    if messages[-1]["role"] != "assistant":
        return None, len(messages), "role", "conversation ends without an assistant reply", (
            f"the last turn is a {messages[-1]['role']} turn that nothing answers; drop it or add the reply")
    return messages, None, "", "", ""


# ---------------------------------------------------------------- rendering


@dataclass
class ChatRenderer:
    """A chat template and the tokenizer it renders for; `render` maps a conversation to tokens with roles."""

    tokenizer: Any
    template: str  # the Jinja source
    specials: tuple[str, ...]  # special-token strings: an assistant turn ends with the last one its rendering adds

    def text(self, messages: list[dict], generation_prompt: bool = False) -> str:
        """The template's text for these messages."""
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int, int, int]]]:
        """(text, [(start, end, turn, role code)]) covering the text; an assistant turn's header and trailer are
        TEMPLATE, its content and end-of-turn token ASSISTANT."""
        full = self.text(messages)
        spans, prev = [], 0
        for i, m in enumerate(messages):
            cur = self.text(messages[: i + 1])
            if not full.startswith(cur) or len(cur) < prev:
                raise ValueError(f"turn {i + 1}: the chat template renders the earlier turns differently once this one "
                                 "follows, so its tokens cannot be told apart; use another template (--chat-template).")
            if m["role"] != "assistant":
                spans.append((prev, len(cur), i, ROLES.index(m["role"]) + 1))
            else:
                gen = self.text(messages[:i], generation_prompt=True) if i else ""
                start = len(gen) if cur.startswith(gen) and len(gen) >= prev else prev
                body = cur[start:]
                cut = max((body.rfind(s) + len(s) for s in self.specials if s and s in body), default=len(body))
                spans += [(prev, start, i, TEMPLATE), (start, start + cut, i, ASSISTANT),
                          (start + cut, len(cur), i, TEMPLATE)]
            prev = len(cur)
        spans.append((prev, len(full), len(messages) - 1, TEMPLATE))
        return full, [s for s in spans if s[1] > s[0]]

    def tokens(self, conversations: list[list[dict]]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """(ids, role codes, turns) per conversation, the text of each tokenized once with offsets."""
        rendered = [self.spans(m) for m in conversations]
        encodings = _encode_with_offsets(self.tokenizer, [text for text, _ in rendered])
        out = []
        for (text, spans), (ids, offsets) in zip(rendered, encodings):
            role = np.zeros(len(text) + 1, dtype=np.int8)
            turn = np.zeros(len(text) + 1, dtype=np.int32)
            for s, e, t, r in spans:
                role[s:e], turn[s:e] = r, t
            starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
            ends = np.maximum(np.asarray([o[1] for o in offsets], dtype=np.int64), starts + 1)
            # A token that crosses into an assistant turn's content (a merge at its start) belongs to it.
            at = np.where(role[ends - 1] == ASSISTANT, ends - 1, starts)
            out.append((ids, role[at], turn[at]))
        return out

    def end_of_turn_id(self) -> int | None:
        """The special token that closes an assistant turn and weighs 1 (ChatML's <|im_end|>, EOS in the alpaca
        chat template): where a generated reply should stop. None where the turn ends on no special token."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        ids, roles, _ = self.tokens([probe])[0]
        last = int(ids[np.flatnonzero(roles == ASSISTANT)[-1]])
        return last if self.tokenizer.convert_ids_to_tokens(last) in self.specials else None


def _encode_with_offsets(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids (no special tokens added, as apply_chat_template) and character offsets of each text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"]))


def chat_template_source(tokenizer, name: str, template: str, bos_token: bool) -> str:
    """The Jinja template conversations are rendered with: "auto" = the tokenizer's own, else the prompt template
    `template` as a chat template; "tokenizer" = the tokenizer's own (an error without one); or a template name."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "tokenizer" and not own:
        raise ValueError("--chat-template tokenizer: this tokenizer has no chat_template; pass a template name such "
                         "as alpaca, or auto.")
    if name in ("auto", "tokenizer"):
        return own if own else get_template(template).chat_template(bos_token=bos_token)
    return get_template(name).chat_template(bos_token=bos_token)


def make_renderer(tokenizer, name: str, template: str, bos_token: bool) -> ChatRenderer:
    """A ChatRenderer for the chosen chat template (see chat_template_source)."""
    return renderer_for(tokenizer, chat_template_source(tokenizer, name, template, bos_token))


def renderer_for(tokenizer, source: str) -> ChatRenderer:
    """A ChatRenderer for the Jinja chat template `source`."""
    specials = tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return ChatRenderer(tokenizer, source, specials)


def token_weights(roles: np.ndarray, turns: np.ndarray, w: float, train_on: str) -> tuple[np.ndarray, np.ndarray]:
    """(loss weight, trained) per token: weight 1 on the trained assistant tokens (every assistant turn's, or the
    last turn's with train_on="last"), w everywhere else."""
    trained = roles == ASSISTANT
    if train_on == "last" and trained.any():
        trained &= turns == turns[trained].max()
    return np.where(trained, 1.0, w).astype(np.float32), trained

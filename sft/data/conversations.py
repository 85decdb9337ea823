"""Conversations validated: OpenAI/HF {"role", "content"} turns or ShareGPT {"from", "value"} turns -> messages.

Also the role codes every token of a conversation is tagged with (ROLE_NAMES): template markup, system, user,
assistant. A bad turn gives (turn, field, problem, fix) so the reader can name the row and turn.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")  # the roles a turn may have
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
CHAT_COLUMNS = ("messages", "conversations")  # columns that hold a conversation: OpenAI/HF, ShareGPT
ROLE_NAMES = ("template", "system", "user", "assistant")  # per-token role codes: 0 = markup of an assistant turn
TEMPLATE, SYSTEM, USER, ASSISTANT = range(4)
MESSAGE_WEIGHT = "loss_weight"  # a validated message's own weight (only where the data gives one)
# The per-message weight keys real datasets carry: LLaMA-Factory's loss_weight (a number), Axolotl's weight (0/1)
# and train (bool), ms-swift's loss (bool). Each multiplies that message's tokens.
WEIGHT_KEYS = ("loss_weight", "weight", "train", "loss")
KNOWN_MESSAGE_KEYS = ("role", "content", "from", "value") + WEIGHT_KEYS


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
    msg = {"role": role, "content": content}
    for key in (k for k in WEIGHT_KEYS if k in turn):
        value = turn[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = isinstance(value, bool) if key in ("train", "loss") else number or isinstance(value, bool)
        if not ok or (number and not (value >= 0 and value == value and value != float("inf"))):
            want = "true or false" if key in ("train", "loss") else "a number >= 0 (or true/false)"
            return None, key, "is not a valid message weight", (
                f"got {value!r:.40}; {key} must be {want}: it multiplies this message's tokens in the loss "
                "(0 or false leaves the message out)")
        msg[MESSAGE_WEIGHT] = msg.get(MESSAGE_WEIGHT, 1.0) * float(value)
    return msg, "", "", ""


def unknown_message_keys(value: Any) -> list[str]:
    """The keys of a conversation's turns that the project does not read (reported by inspect-data and train,
    never dropped silently): anything besides role/content (from/value) and the weight keys."""
    if not isinstance(value, list):
        return []
    return sorted({k for turn in value if isinstance(turn, dict) for k in turn if k not in KNOWN_MESSAGE_KEYS})


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

"""Conversations validated: OpenAI/HF {"role", "content"} turns or ShareGPT {"from", "value"} turns -> messages.

Also the role codes every token of a conversation is tagged with (ROLE_NAMES): template markup, system, user,
assistant, and for agent data the assistant's tool calls, the tools' outputs and reasoning. A bad turn gives
(turn, field, problem, fix) so the reader can name the row and turn; the turn itself is read by
sft.data.messages (content parts, tool calls, reasoning).

A validated message is OpenAI/HF form: {"role": "system"|"user"|"assistant"|"tool", "content": str}, with
"tool_calls" [{"type": "function", "function": {"name": str, "arguments": dict}}] and "reasoning_content" on an
assistant turn where the data gives them, "name" / "tool_call_id" on a tool turn, and MESSAGE_WEIGHT where the data
weighs the message.
"""

from __future__ import annotations

import json
from typing import Any

from sft.data.messages import MESSAGE_WEIGHT, WEIGHT_KEYS, check_turn, unread_keys

__all__ = ["MESSAGE_WEIGHT", "WEIGHT_KEYS"]

CHAT_COLUMNS = ("messages", "conversations")  # columns that hold a conversation: OpenAI/HF, ShareGPT
TOOLS_COLUMN = "tools"  # the column with the tools a conversation may call (a JSON schema list, or its JSON text)
SYSTEM_COLUMN = "system"  # LLaMA-Factory's system prompt column beside a conversation: its opening system turn
# Per-token role codes, in this order: 0 = markup (an assistant turn's header and trailer, the chat format's tags),
# then the messages' text by role; tool_call = an assistant's call with its tags (Qwen's <tool_call>...</tool_call>),
# tool_output = a tool's reply with its wrapper (<tool_response>...</tool_response>), reasoning = <think>...</think>.
# text = a plain-text row's tokens ({"text": ...}, continued pretraining): every one a target, weighing 1 always.
ROLE_NAMES = ("template", "system", "user", "assistant", "tool_call", "tool_output", "reasoning", "text")
TEMPLATE, SYSTEM, USER, ASSISTANT, TOOL_CALL, TOOL_OUTPUT, REASONING, TEXT = range(8)
# The tokens trained as a reply (train_on): an assistant turn's own, and plain text (all of it is the target).
REPLY_ROLES = (ASSISTANT, TOOL_CALL, REASONING, TEXT)
ROLE_OF_MESSAGE = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool": TOOL_OUTPUT}


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
        msg, fld, problem, fix = check_turn(turn)
        if msg is None:
            return None, t, fld, problem, fix
        messages.append(msg)
    return _check_order(messages)


def check_tools(value: Any) -> tuple[list[dict] | None, str, str]:
    """(tools, "", "") for a row's tools (a list of JSON schemas, or its JSON text; None or [] = no tools), else
    (None, problem, fix). A bare function schema {"name", "description", "parameters"} (LLaMA-Factory's form) is
    wrapped as {"type": "function", "function": ...}, the form chat templates are written for."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "", ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return None, "is not JSON", (f"{e.msg} at character {e.pos} of {value!r:.40}; give the tools as a JSON "
                                         'list of function schemas, e.g. [{"type": "function", "function": '
                                         '{"name": "get_weather", "parameters": {...}}}]')
    if not isinstance(value, list):
        return None, "is not a list", (f"got {type(value).__name__} {value!r:.40}; give the tools as a list of "
                                       'function schemas, e.g. [{"type": "function", "function": {"name": ...}}]')
    tools = []
    for k, tool in enumerate(value, 1):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            return None, "has a tool without a name", (
                f"tool {k} is {tool!r:.60}; each tool is a function schema with a name, e.g. "
                '{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}')
        tools.append(tool if fn is not tool else {"type": "function", "function": tool})
    return tools or None, "", ""


def unknown_message_keys(value: Any) -> list[str]:
    """The keys of a conversation's turns that the project does not read (reported by inspect-data and train,
    never dropped silently): anything besides role/content (from/value), the weight keys, an assistant's tool
    calls and reasoning and a tool turn's name and tool_call_id."""
    if not isinstance(value, list):
        return []
    return sorted({k for turn in value for k in unread_keys(turn)})


def _check_order(messages: list[dict]) -> tuple[list[dict] | None, int | None, str, str, str]:
    """The turn order every chat template renders: a system turn first or not at all, tool turns right after the
    assistant's call, ending on the assistant."""
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
    for t, m in enumerate(messages, 1):
        before = messages[t - 2] if t > 1 else None
        if m["role"] == "tool" and not (before and (before["role"] == "tool" or before.get("tool_calls"))):
            return None, t, "role", "tool turn without a call before it", (
                "a tool turn is the output of a call the assistant made just before it (its tool_calls, or a "
                "function_call turn in ShareGPT); add that call, or drop the tool turn")
    if not any(m["role"] == "assistant" for m in messages):
        return None, None, "messages", "has no assistant turn", (
            "nothing would be trained; add the reply or drop the row")
    if messages[-1]["role"] != "assistant":
        return None, len(messages), "role", "conversation ends without an assistant reply", (
            f"the last turn is a {messages[-1]['role']} turn that nothing answers; drop it or add the reply")
    return messages, None, "", "", ""

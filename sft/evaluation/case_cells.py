"""How a case study shows its prompts and replies in markdown cells: text escaped, conversations turn by turn,
tool calls as `[call] name {arguments}` (generated ones too), tools' outputs by name."""

from __future__ import annotations

import json

from sft.core.prompts import TOOL_CALL_OPEN, parse_tool_calls


def escape_cell(text: str) -> str:
    """Text safe inside a markdown table cell: pipes escaped, line breaks as <br>."""
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def show_call(call: dict) -> str:
    """One tool call as a case study shows it: `[call] name {"arg": value}`."""
    fn = call.get("function", call)
    arguments = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"], ensure_ascii=False)
    return f"[call] {fn['name']} {arguments}"


def show_message(message: dict) -> str:
    """One turn of a prompt conversation: `role: text`, an assistant's calls after its text, a tool's name."""
    if message["role"] == "tool":
        name = f" ({message['name']})" if message.get("name") else ""
        return f"tool{name}: {message['content']}"
    parts = [message.get("content") or ""] + [show_call(c) for c in message.get("tool_calls") or []]
    return f"{message['role']}: " + " ".join(p for p in parts if p)


def show_reply(text: str) -> str:
    """A generation (or reference) as a case study shows it: each parsed <tool_call> span as `[call] name {...}`, so
    a markdown viewer does not take the tags for HTML; the raw text stays in the JSONL."""
    if TOOL_CALL_OPEN not in text:
        return text
    calls = parse_tool_calls(text)
    if calls is None:  # not a call the template writes: shown as text, its tags escaped
        return text.replace("<", "&lt;")
    before = text[:text.find(TOOL_CALL_OPEN)].strip()
    return "\n".join([before] * bool(before) + [show_call(c) for c in calls])


def prompt_cell(row: dict[str, str]) -> str:
    """The instruction, with the input below it when there is one; a conversation turn by turn, after the tools it
    may call, with the assistant's calls and the tools' outputs."""
    if "messages" in row:
        tools = [t.get("function", t)["name"] for t in row.get("tools") or []]
        return "\n".join([f"tools: {', '.join(tools)}"] * bool(tools) + [show_message(m) for m in row["messages"]])
    return row["instruction"] + (f"\n\nInput: {row['input']}" if row.get("input") else "")

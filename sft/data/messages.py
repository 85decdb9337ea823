"""One turn of a conversation read into a validated message: its role, its text (a string or a list of text
parts), an assistant's tool calls and reasoning, a tool's output, and the weight the data gives it.

Read: OpenAI/HF turns ({"role", "content", "tool_calls", "reasoning_content"}, `role: "tool"`, the legacy
`function_call` key and `role: "function"`) and ShareGPT turns ({"from", "value"}, with LLaMA-Factory's
`function_call` and `observation` turns). A bad turn gives (None, field, problem, fix): the problem short and
generic (bad rows are counted by it), the fix naming the value and what is supported.
"""

from __future__ import annotations

import json
import math
from typing import Any

MESSAGE_WEIGHT = "loss_weight"  # a validated message's own weight (only where the data gives one)
# The per-message weight keys real datasets carry: LLaMA-Factory's loss_weight (a number), Axolotl's weight (0/1)
# and train (bool), ms-swift's loss (bool). Each multiplies that message's tokens.
WEIGHT_KEYS = ("loss_weight", "weight", "train", "loss")
SPANS = "spans"  # a validated message's weighted character spans of its content: [[start, end, weight], ...]
# Character spans that weigh parts of a message: this project's [{"start", "end", "weight"}] (end exclusive) and
# Axolotl's train_detail [{"begin_offset", "end_offset", "train"}] (end_offset inclusive, as Axolotl reads it).
SPAN_KEYS = (SPANS, "train_detail")
KNOWN_MESSAGE_KEYS = ("role", "content", "from", "value") + WEIGHT_KEYS + SPAN_KEYS  # read on every turn
KEYS_OF_ROLE = {"assistant": ("tool_calls", "function_call", "reasoning_content"), "tool": ("name", "tool_call_id")}
OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"}
# ShareGPT's names; function_call is an assistant turn that only calls (its value the call's JSON), observation
# the tool's output (LLaMA-Factory).
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant",
                  "function_call": "function_call", "observation": "tool", "tool": "tool"}
SUPPORTED_ROLES = {  # what the error for an unknown role lists, per form
    False: "system, user, assistant (its calls in tool_calls) and tool (a tool's output)",
    True: "human, gpt, system, function_call (the assistant's tool call) and observation (the tool's output)",
}
TEXT_PART_TYPES = (None, "text", "input_text", "output_text")  # part types read as text (OpenAI's and its variants)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # a reasoning span leading an assistant's content


def unread_keys(turn: Any) -> list[str]:
    """The keys of one turn that are not read (a `name` on a user turn, an `id`...): reported, never silent."""
    if not isinstance(turn, dict):
        return []
    role = turn.get("role", turn.get("from"))
    role = (OPENAI_ROLES.get(role) or SHAREGPT_ROLES.get(role)) if isinstance(role, str) else None
    known = KNOWN_MESSAGE_KEYS + KEYS_OF_ROLE.get(role, ())
    return [k for k in turn if k not in known]


def check_turn(turn: Any) -> tuple[dict | None, str, str, str]:
    """One turn as a validated message, else (None, field, problem, fix)."""
    if not isinstance(turn, dict):
        return None, "(turn)", "is not an object", (
            f"got {type(turn).__name__}; write {{\"role\": ..., \"content\": ...}}")
    sharegpt = "role" not in turn and "from" in turn
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    names = SHAREGPT_ROLES if sharegpt else OPENAI_ROLES
    role = names.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
    if role is None:
        got = "no role" if role_key not in turn else f"{turn.get(role_key)!r:.30}"
        return None, role_key, "unknown role", f"got {got}; the roles read are {SUPPORTED_ROLES[sharegpt]}"
    if role == "function_call":  # ShareGPT: the value is the call (or a list of calls) as JSON
        calls, fld, problem, fix = check_calls(turn.get(content_key), content_key, from_text=True)
        msg = None if calls is None else {"role": "assistant", "content": "", "tool_calls": calls}
    else:
        msg, fld, problem, fix = _check_message(turn, role, content_key)
    if msg is None:
        return None, fld, problem, fix
    msg, fld, problem, fix = _with_weight(turn, msg)
    if msg is None:
        return None, fld, problem, fix
    return _with_spans(turn, msg, content_key)


def _check_message(turn: dict, role: str, content_key: str) -> tuple[dict | None, str, str, str]:
    """A system, user, assistant or tool turn: its text, and the keys of its role."""
    calls = None
    if role == "assistant":
        key = "tool_calls" if turn.get("tool_calls") else "function_call" if turn.get("function_call") else None
        if key is not None:
            calls, fld, problem, fix = check_calls(turn[key], key, from_text=False)
            if calls is None:
                return None, fld, problem, fix
    else:
        for key in ("tool_calls", "function_call", "reasoning_content"):
            if turn.get(key):
                return None, key, f"is on a {role} turn", (
                    f"only an assistant turn calls tools or reasons; move {key} to the assistant turn it belongs to")
    content = turn.get(content_key)
    if content is None and not calls:
        return None, content_key, "is missing", f"the {role} turn has no text; give it a string {content_key}"
    content, fld, problem, fix = _text(content, content_key)
    if content is None:
        return None, fld, problem, fix
    if role in ("user", "assistant") and not calls and not content.strip():
        return None, content_key, "is empty", f"the {role} turn is empty; drop the turn or fill it"
    msg = {"role": role, "content": content}
    if calls:
        msg["tool_calls"] = calls
    if role == "assistant":
        reasoning, fld, problem, fix = _check_reasoning(turn.get("reasoning_content"), content, content_key)
        if fld:
            return None, fld, problem, fix
        if reasoning is not None:
            msg["reasoning_content"] = reasoning
    if role == "tool":
        for key in ("name", "tool_call_id"):
            value = turn.get(key)
            if value is not None and not isinstance(value, str):
                return None, key, "is not a string", f"got {type(value).__name__} {value!r:.40}; give the {key} as text"
            if value is not None:
                msg[key] = value
    return msg, "", "", ""


def _text(content: Any, key: str) -> tuple[str | None, str, str, str]:
    """A turn's text: a string, or a list of text parts joined ({"type": "text", "text" or "value": ...})."""
    if content is None:
        return "", "", "", ""
    if isinstance(content, str):
        return content, "", "", ""
    if not isinstance(content, list):
        return None, key, "is not a string", (
            f"got {type(content).__name__} {content!r:.40}; give the text as a string or as a list of text parts "
            '[{"type": "text", "text": ...}]')
    parts = []
    for k, part in enumerate(content, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind not in TEXT_PART_TYPES:
            got = f"type {kind!r:.30}" if isinstance(part, dict) else f"{type(part).__name__} {part!r:.30}"
            return None, f"{key}[{k}]", "content part of unknown type", (
                f"part {k} is {got}; only text is supported: a string, or text parts "
                '{"type": "text", "text": ...} (images, audio and other media are not read by a text-only model)')
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            return None, f"{key}[{k}]", "text part without text", (
                f"part {k} is {part!r:.40}; a text part holds its string in `text` (or `value`)")
        bad = ("weight" in part and not (_is_number(part["weight"]) and part["weight"] >= 0)) or (
            "train" in part and not isinstance(part["train"], bool)) or ("weight" in part and "train" in part)
        if bad:
            return None, f"{key}[{k}]", "is not a valid part weight", (
                f"part {k} is {part!r:.60}; a part's weight is a number >= 0 (`weight`) or true/false (`train`), "
                "one of them: it multiplies that part's tokens")
        parts.append(text)
    return "".join(parts), "", "", ""


def check_calls(value: Any, key: str, from_text: bool) -> tuple[list[dict] | None, str, str, str]:
    """An assistant's tool calls as [{"type": "function", "function": {"name", "arguments": dict}}] (an "id" kept
    where given), from OpenAI's tool_calls, a legacy function_call, or a ShareGPT function_call turn's JSON text;
    else (None, field, problem, fix)."""
    if from_text and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return None, key, "tool call is not JSON", (
                f"{e.msg} in {value!r:.60}; a function_call turn's value is the call as JSON, "
                '{"name": "get_weather", "arguments": {"city": "Paris"}}, or a list of such calls')
    calls = value if isinstance(value, list) else [value]
    out = []
    for k, call in enumerate(calls):
        where = f"{key}[{k}]" if isinstance(value, list) else key
        fn = call.get("function") if isinstance(call, dict) and "function" in call else call
        if not isinstance(fn, dict):
            return None, where, "tool call is not an object", (
                f"got {type(fn).__name__} {fn!r:.40}; a call is {{\"type\": \"function\", \"function\": "
                '{"name": ..., "arguments": {...}}} (or {"name": ..., "arguments": {...}})')
        if isinstance(call, dict) and call.get("type", "function") != "function":
            return None, f"{where}.type", "tool call is not a function call", (
                f"got type {call.get('type')!r:.30}; only function calls are supported")
        fld = f"{where}.function" if fn is not call else where
        if not isinstance(fn.get("name"), str) or not fn["name"].strip():
            return None, f"{fld}.name", "tool call has no name", (
                f"the call {fn!r:.60} names no function; give the name of the tool it calls")
        args, problem, fix = _arguments(fn.get("arguments"), "arguments" in fn)
        if args is None:
            return None, f"{fld}.arguments", problem, fix
        item = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            item["id"] = call["id"]
        out.append(item)
    if not out:
        return None, key, "has no call", "the list of calls is empty; give at least one call or drop the turn"
    return out, "", "", ""


def _arguments(value: Any, given: bool) -> tuple[dict | None, str, str]:
    """A call's arguments as a dict, from an object or its JSON text."""
    if not given or value is None:
        return None, "tool call arguments are missing", 'give the arguments as an object ({} for a call without any)'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return None, "tool call arguments are not JSON", (
                f"{e.msg} in {value!r:.60}; give the arguments as an object or its JSON text, e.g. "
                '{"city": "Paris"}')
    if not isinstance(value, dict):
        return None, "tool call arguments are not an object", (
            f"got {type(value).__name__} {value!r:.40}; the arguments are an object of named values, e.g. "
            '{"city": "Paris"}')
    return value, "", ""


def _check_reasoning(reasoning: Any, content: str, key: str) -> tuple[str | None, str, str, str]:
    """An assistant's reasoning_content, checked against its content: a leading <think>...</think> span there is
    the other way to give it (kept in the content, as written). Empty or unclosed spans are errors."""
    lead = content.lstrip()
    if lead.startswith(THINK_OPEN):
        close = lead.find(THINK_CLOSE)
        if close < 0:
            return None, key, "reasoning span is not closed", (
                f"the {key} opens with {THINK_OPEN} but has no {THINK_CLOSE}; close the reasoning before the answer")
        # An empty span (a reply without reasoning in a reasoning model's form) is read, and weighs 0 by default
        # (DataConfig.empty_reasoning).
        if reasoning is not None:
            return None, "reasoning_content", "reasoning given twice", (
                f"the turn has reasoning_content and a leading {THINK_OPEN} span in its {key}; give one of them")
        return None, "", "", ""
    if reasoning is None:
        return None, "", "", ""
    if not isinstance(reasoning, str):
        return None, "reasoning_content", "is not a string", (
            f"got {type(reasoning).__name__} {reasoning!r:.40}; give the reasoning as text")
    return reasoning, "", "", ""  # empty: rendered as an empty block where the template shows one, weighing 0


def _with_weight(turn: dict, msg: dict) -> tuple[dict | None, str, str, str]:
    """The message with its own weight (MESSAGE_WEIGHT, the product of the weight keys the turn has)."""
    for key in (k for k in WEIGHT_KEYS if k in turn):
        value = turn[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = isinstance(value, bool) if key in ("train", "loss") else number or isinstance(value, bool)
        if not ok or (number and not (value >= 0 and math.isfinite(value))):
            want = "true or false" if key in ("train", "loss") else "a number >= 0 (or true/false)"
            return None, key, "is not a valid message weight", (
                f"got {value!r:.40}; {key} must be {want}: it multiplies this message's tokens in the loss "
                "(0 or false leaves the message out)")
        msg[MESSAGE_WEIGHT] = msg.get(MESSAGE_WEIGHT, 1.0) * float(value)
    return msg, "", "", ""


def _with_spans(turn: dict, msg: dict, key: str) -> tuple[dict | None, str, str, str]:
    """The message with its weighted character spans (SPANS, [[start, end, weight]] over its content, end exclusive),
    from `spans`, Axolotl's `train_detail` or text parts that carry `weight` or `train`; one of the three at most."""
    given = [k for k in SPAN_KEYS if turn.get(k) is not None]
    parts = _part_spans(turn.get(key))
    if len(given) + bool(parts) > 1:
        return None, given[-1], "spans given twice", (
            f"the turn weighs parts of its text with {' and '.join(given + (['its parts'] if parts else []))}; "
            "give one of them")
    if parts:
        return {**msg, SPANS: parts}, "", "", ""
    if not given:
        return msg, "", "", ""
    k, value, n = given[0], turn[given[0]], len(msg["content"])
    axolotl = k == "train_detail"
    example = ('[{"begin_offset": 0, "end_offset": 4, "train": false}]' if axolotl
               else '[{"start": 0, "end": 5, "weight": 0.5}]')
    if not isinstance(value, list):
        return None, k, "is not a list of spans", f"got {type(value).__name__} {value!r:.40}; write e.g. {example}"
    spans = []
    for j, span in enumerate(value):
        start, end, weight = ((span.get("begin_offset"), span.get("end_offset"), span.get("train")) if axolotl else
                              (span.get("start"), span.get("end"), span.get("weight"))) if isinstance(span, dict) \
            else (None, None, None)
        end = end + 1 if axolotl and _is_int(end) else end  # Axolotl's end_offset is the last character's
        ok_weight = isinstance(weight, bool) if axolotl else _is_number(weight) and weight >= 0
        if not (_is_int(start) and _is_int(end) and 0 <= start < end <= n and ok_weight):
            what = "train must be true or false" if axolotl else "weight must be a number >= 0"
            return None, f"{k}[{j}]", "is not a valid span", (
                f"got {span!r:.60}; a span covers characters of this turn's {n}-character text ({key}), with "
                f"0 <= start < end <= {n}, and {what}: e.g. {example}")
        spans.append([int(start), int(end), float(weight)])
    return {**msg, SPANS: spans}, "", "", ""


def _part_spans(content: Any) -> list[list[float]]:
    """[[start, end, weight]] of the text parts that carry a weight (`weight` a number, or `train` a boolean), in the
    joined text; [] when none does (a part's bad weight is refused by _part_weight_problem)."""
    if not isinstance(content, list) or not any(isinstance(p, dict) and ("weight" in p or "train" in p)
                                                for p in content):
        return []
    out, at = [], 0
    for part in content:
        text = part.get("text", part.get("value")) if isinstance(part, dict) else ""
        text = text if isinstance(text, str) else ""
        weight = part.get("weight", part.get("train", True)) if isinstance(part, dict) else True
        if text and float(weight) != 1.0:
            out.append([at, at + len(text), float(weight)])
        at += len(text)
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

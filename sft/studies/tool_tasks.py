"""The tool-use conversations' lm-eval tasks (sft.studies.tools), two per kind: the call and the final answer.

`sft_tool_call_<kind>`: the prompt is the conversation up to the assistant's call (its tools listed); the
generation is scored by `call_exact_match`, the calls parsed out of it (sft.core.prompts.parse_tool_calls) equal to
the gold ones as JSON objects (tool name and arguments, in any key order), and by `call_name_match`, the right
tools called whatever the arguments. `sft_tool_answer_<kind>`: the prompt is the conversation with the gold call
and the tool's reply; the generation is scored as the dialogues' last replies are (exact match, edit
similarity). A document keeps its history and tools as JSON text: lm-eval reads the task files through
`datasets`, which would merge the argument objects of different tools into one schema, adding null keys.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter

from sft.core.prompts import parse_tool_calls
from sft.data.errors import UserError
from sft.studies.dialogue_task import DialogueTask

CALL_GROUP = "sft_tool_call"  # lm-eval group of the call tasks: sft_tool_call_<kind>
ANSWER_GROUP = "sft_tool_answer"  # lm-eval group of the final-answer tasks: sft_tool_answer_<kind>
CALL_METRICS = ("call_exact_match", "call_name_match")  # the call tasks' metrics, in the summaries' order


def _calls(reference: str, prediction: str) -> tuple[list[dict], list[dict] | None]:
    """(the gold calls, the calls parsed from a generation or None where it does not parse)."""
    return json.loads(reference), parse_tool_calls(prediction)


def _canonical(call: dict) -> str:
    """A call as text that is the same for any key order (the arguments are a JSON object)."""
    return json.dumps(call, sort_keys=True, ensure_ascii=False)


def call_exact_match(references: list[str], predictions: list[str]) -> float:
    """1 when the generation's calls are the gold calls (name and arguments as JSON objects; several calls in any
    order), else 0: a wrong argument, a missing or extra call, text in place of a call and a call that does not
    parse all score 0. An argument must have the gold's JSON type too ("12" is not 12)."""
    (reference,), (prediction,) = references, predictions
    gold, got = _calls(reference, prediction)
    return float(got is not None and Counter(map(_canonical, got)) == Counter(map(_canonical, gold)))


def call_name_match(references: list[str], predictions: list[str]) -> float:
    """1 when the generation calls the gold tools (names only, any arguments), else 0 (unparseable: 0)."""
    (reference,), (prediction,) = references, predictions
    gold, got = _calls(reference, prediction)
    return float(got is not None and Counter(c["name"] for c in got) == Counter(c["name"] for c in gold))


def render_with_tools(chat_template, history: list[dict], tools: list[dict]) -> str:
    """The history and its tools through a chat callable: one that takes `tools` (sft.evaluation.tasks.render_chat),
    or lm-eval's HFLM.apply_chat_template, which takes none, through its tokenizer, with the model's template
    arguments."""
    if "tools" in inspect.signature(chat_template).parameters:
        return chat_template(history, add_generation_prompt=True, tools=tools)
    owner = getattr(chat_template, "__self__", None)
    tokenizer = getattr(owner, "tokenizer", None)
    if tokenizer is None:
        raise UserError("The tool-use tasks render their tools through the model's tokenizer, but lm-eval's chat "
                         f"template callable {chat_template!r} has none; evaluate with a Hugging Face model (hf).")
    return tokenizer.apply_chat_template(history, tools=tools, tokenize=False, add_generation_prompt=True,
                                         **(getattr(owner, "chat_template_args", None) or {}))


class ToolTask(DialogueTask):
    """A DialogueTask whose documents are tool-use conversations: `history` (JSON text of the messages, the calls
    and tool replies included) and `tools` (JSON text of their schemas) go to the model through its chat template,
    the tools listed; without one the prompt is `doc_to_text` (the history rendered in the training chat template)."""

    def chat_history(self, doc: dict) -> list[dict]:
        """The messages as written, tool calls and tool replies included."""
        return json.loads(doc["history"])

    def render_chat_prompt(self, chat_template, history: list[dict], doc: dict) -> str:
        """The history and the document's tools through the chat template."""
        return render_with_tools(chat_template, history, json.loads(doc["tools"]))


def gold_calls(message: dict) -> list[dict]:
    """An assistant message's calls as [{"name", "arguments"}] (arguments given as JSON text are read)."""
    out = []
    for call in message["tool_calls"]:
        fn = call.get("function", call)
        args = fn["arguments"]
        out.append({"name": fn["name"], "arguments": json.loads(args) if isinstance(args, str) else args})
    return out


def tool_docs(row: dict, render) -> tuple[dict, dict]:
    """(the call document, the final-answer document) of one tool-use row; render(history, tools=...) -> the
    prompt text in the training chat template."""
    messages, tools = row["messages"], row["tools"]
    at = next(i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("tool_calls"))
    call_history, answer_history = messages[:at], messages[:-1]
    base = {"tools": json.dumps(tools, ensure_ascii=False), "kind": row["kind"]}
    call = {**base, "history": json.dumps(call_history, ensure_ascii=False), "prompt": render(call_history, tools=tools),
            "answer": json.dumps(gold_calls(messages[at]), ensure_ascii=False)}
    answer = {**base, "history": json.dumps(answer_history, ensure_ascii=False),
              "prompt": render(answer_history, tools=tools), "answer": messages[-1]["content"]}
    return call, answer


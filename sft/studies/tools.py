"""Synthetic tool-use conversations for the conversational demo: the answer needs what a tool replies.

Each conversation lists two tools (the right one and another of its tool set, in random order). The user asks
something only a tool can answer: a person's age or city (drawn per conversation, so nothing before the tool's
reply tells them), whether that age is odd or even (the demo's `parity` family applied to the reply), or a sum
or product of two-digit numbers on the calculator (the demo's `add` family, whose model learns one-digit sums
only). The assistant calls the right tool with the right arguments, the tool replies, and the assistant answers
from the reply. Rows are `messages` in the OpenAI form (an assistant turn with `tool_calls` and empty content,
then a `tool` turn) with the `tools` they may call (JSON schemas), plus their `kind` and
`answer`; they are written into the dialogues' splits (sft.studies.dialogues), disjoint on everything before
the call, so no test question is a training question.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sft.data.io import write_jsonl
from sft.studies.dialogues import SYSTEM_PROMPTS, SYSTEM_SHARE, fill_unique
from sft.studies.short_families import CAPITALS
from sft.studies.synthetic import FAMILIES, check_split_sizes, derive_seed, resolve_names
from sft.studies.vocab import NAMES, decorate

AGE_RANGE = (18, 90)  # ages the people tool replies with: drawn per conversation, never guessable
OPERAND_RANGE = (10, 99)  # the calculator's operands: two digits, beyond the one-digit sums the demo teaches
CITIES: tuple[str, ...] = tuple(sorted(CAPITALS.values()))  # the cities the people tool replies with (in the vocab)


def function_schema(name: str, description: str, parameters: dict[str, str]) -> dict:
    """A tool in the OpenAI / Hugging Face form: {"type": "function", "function": {name, description, parameters}}."""
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {p: {"type": t} for p, t in parameters.items()},
                       "required": list(parameters)}}}


GET_AGE = function_schema("get_age", "Age of a person.", {"person": "string"})
GET_CITY = function_schema("get_city", "Home city of a person.", {"person": "string"})
ADD = function_schema("add", "Sum of two integers.", {"a": "integer", "b": "integer"})
MULTIPLY = function_schema("multiply", "Product of two integers.", {"a": "integer", "b": "integer"})
TOOL_SETS = {"people": (GET_AGE, GET_CITY), "calculator": (ADD, MULTIPLY)}  # the two tools each conversation lists


@dataclass(frozen=True)
class ToolKind:
    """One kind of tool-use conversation: which tools it lists, and how its question, call, reply and answer go."""

    name: str
    tool_set: str  # the key of TOOL_SETS
    draw: Callable[[random.Random], tuple[str, str, dict, str, str]]  # rng -> (question, tool, arguments, reply, answer)


AGE_QUESTIONS = ("How old is {p}?", "What is the age of {p}?", "Tell me the age of {p}.")
CITY_QUESTIONS = ("Where does {p} live?", "In which city does {p} live?", "Tell me the city of {p}.")
PARITY_QUESTIONS = ("Is the age of {p} odd or even?", "Is the age of {p} an even or an odd number?",
                    "Tell me whether the age of {p} is even or odd.")
ADD_QUESTIONS = ("Use the calculator to add {a} and {b}.", "What is {a} plus {b}? Use the calculator.",
                 "Calculate the sum of {a} and {b}.")
MULTIPLY_QUESTIONS = ("Use the calculator to multiply {a} by {b}.", "What is {a} times {b}? Use the calculator.",
                      "Calculate the product of {a} and {b}.")


def draw_age(rng: random.Random) -> tuple[str, str, dict, str, str]:
    """How old is someone: the reply is the answer."""
    person, age = rng.choice(NAMES), str(rng.randint(*AGE_RANGE))
    return rng.choice(AGE_QUESTIONS).format(p=person), "get_age", {"person": person}, age, age


def draw_city(rng: random.Random) -> tuple[str, str, dict, str, str]:
    """Where someone lives: the reply is the answer."""
    person, city = rng.choice(NAMES), rng.choice(CITIES)
    return rng.choice(CITY_QUESTIONS).format(p=person), "get_city", {"person": person}, city, city


def draw_age_parity(rng: random.Random) -> tuple[str, str, dict, str, str]:
    """Whether someone's age is odd or even: the demo's parity family answers from the reply."""
    person, age = rng.choice(NAMES), str(rng.randint(*AGE_RANGE))
    answer = FAMILIES["parity"].answer(f"Is {age} odd or even?", "")
    return rng.choice(PARITY_QUESTIONS).format(p=person), "get_age", {"person": person}, age, answer


def draw_calculator(rng: random.Random) -> tuple[str, str, dict, str, str]:
    """A sum (the demo's add family computes the reply) or a product of two two-digit numbers."""
    a, b = rng.randint(*OPERAND_RANGE), rng.randint(*OPERAND_RANGE)
    if rng.random() < 0.5:
        result = FAMILIES["add"].answer(f"Add {a} and {b}.", "")
        return rng.choice(ADD_QUESTIONS).format(a=a, b=b), "add", {"a": a, "b": b}, result, result
    result = str(a * b)
    return rng.choice(MULTIPLY_QUESTIONS).format(a=a, b=b), "multiply", {"a": a, "b": b}, result, result


TOOL_KINDS: dict[str, ToolKind] = {k.name: k for k in (
    ToolKind("age", "people", draw_age),
    ToolKind("city", "people", draw_city),
    ToolKind("age_parity", "people", draw_age_parity),
    ToolKind("calculator", "calculator", draw_calculator),
)}  # every tool-use kind, in the order rows cycle through


def make_tool_conversation(kind: str, rng: random.Random) -> dict:
    """Draw one conversation of a kind: {"messages", "tools", "kind", "answer"}."""
    spec = TOOL_KINDS[kind]
    tools = list(TOOL_SETS[spec.tool_set])
    rng.shuffle(tools)
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < SYSTEM_SHARE else []
    question, tool, arguments, reply, answer = spec.draw(rng)
    call = {"name": tool, "arguments": arguments}
    messages += [{"role": "user", "content": decorate(rng, question)},
                 {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
                 {"role": "tool", "name": tool, "content": reply},
                 {"role": "assistant", "content": answer}]
    return {"messages": messages, "tools": tools, "kind": kind, "answer": answer}


def call_index(messages: list[dict]) -> int:
    """The index of the first assistant turn that calls a tool (everything before it is the call's prompt)."""
    return next(i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("tool_calls"))


def prompt_key(row: dict) -> str:
    """What the model sees before the call (tools and turns): the splits are disjoint on it."""
    return json.dumps([row["tools"], row["messages"][:call_index(row["messages"])]], sort_keys=True)


def resolve_tool_kinds(kinds: list[str] | None) -> list[str]:
    """The requested kind names in order, defaulting to all, rejecting unknown names."""
    return resolve_names(kinds, list(TOOL_KINDS), "tool-use kinds")


def fill_tool_conversations(n: int, seed: int, kinds: list[str], seen: set[str]) -> list[dict]:
    """Draw n conversations cycling over kinds, skipping call prompts already in seen (and adding the new ones)."""
    return fill_unique(n, seed, kinds, seen, make_tool_conversation, prompt_key,
                       "tool-use conversations with distinct questions")


def add_tool_conversations(out_dir: str | Path, n_train: int, n_heldout: int, n_test: int, seed: int = 0,
                           kinds: list[str] | None = None) -> dict[str, Path]:
    """Append tool-use conversations to the train/heldout/test JSONL splits sft.studies.dialogues wrote in out_dir,
    disjoint on the call's prompt; manifest.json's counts become the files' totals, `tool_counts` the rows added."""
    check_split_sizes(n_train=n_train, n_heldout=n_heldout, n_test=n_test)
    names = resolve_tool_kinds(kinds)
    out = Path(out_dir)
    seen: set[str] = set()
    paths = {}
    for split, n in (("train", n_train), ("heldout", n_heldout), ("test", n_test)):
        path = out / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
        added = fill_tool_conversations(n, derive_seed(seed, f"tools:{split}"), names, seen)
        paths[split] = write_jsonl(path, rows + added)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"seed": seed}
    counts = {split: len(path.read_text(encoding="utf-8").splitlines()) for split, path in paths.items()}
    manifest.update(counts=counts, tool_counts={"train": n_train, "heldout": n_heldout, "test": n_test},
                    tool_kinds=names, tool_description="Tool-use conversations (sft.studies.tools) after the "
                    "dialogues in each split: tools listed, a call, the tool's reply, the answer; splits disjoint on "
                    "everything before the call.")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths

"""The synthetic tool-use conversations (sft/studies/tools.py): a call with the right arguments, an answer that needs
the tool's reply, deterministic splits disjoint on the call's prompt, written among the dialogues."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from sft.studies.dialogues import build_dialogue_dataset
from sft.studies.short_families import CAPITALS
from sft.studies.tools import (
    TOOL_KINDS,
    TOOL_SETS,
    add_tool_conversations,
    call_index,
    make_tool_conversation,
    prompt_key,
    resolve_tool_kinds,
)
from sft.studies.vocab import NAMES, find_ints


def expected(kind: str, question: str, reply: str) -> tuple[str, dict, str]:
    """(tool, arguments, answer) worked out by hand from the question and the tool's reply."""
    person = next((n for n in NAMES if n in question), None)
    numbers = find_ints(question)
    if kind == "calculator":
        tool = "multiply" if any(w in question for w in ("multiply", "times", "product")) else "add"
        return tool, {"a": numbers[0], "b": numbers[1]}, str(numbers[0] * numbers[1] if tool == "multiply"
                                                             else numbers[0] + numbers[1])
    tool = "get_city" if kind == "city" else "get_age"
    answer = ("odd" if int(reply) % 2 else "even") if kind == "age_parity" else reply
    return tool, {"person": person}, answer


@pytest.mark.parametrize("kind", list(TOOL_KINDS))
def test_every_call_and_answer_is_exact(kind):
    rng = random.Random(1)
    for _ in range(200):
        row = make_tool_conversation(kind, rng)
        *head, user, call, tool, answer = row["messages"]
        assert [m["role"] for m in head] in ([], ["system"])
        assert (user["role"], call["role"], tool["role"], answer["role"]) == ("user", "assistant", "tool", "assistant")
        assert call["content"] == "" and len(call["tool_calls"]) == 1
        fn = call["tool_calls"][0]["function"]
        name, arguments, gold = expected(kind, user["content"], tool["content"])
        assert (fn["name"], fn["arguments"], answer["content"], row["answer"]) == (name, arguments, gold, gold)
        assert tool["name"] == name
        listed = [t["function"]["name"] for t in row["tools"]]
        assert name in listed and sorted(listed) == sorted(t["function"]["name"] for t in
                                                          TOOL_SETS[TOOL_KINDS[kind].tool_set])
        if kind == "city":
            assert tool["content"] in CAPITALS.values()


@pytest.mark.parametrize("kind", ["age", "city", "age_parity"])
def test_the_answer_needs_the_tools_reply(kind):
    """The same question gets different replies, and the reply appears nowhere before the tool's turn."""
    rng = random.Random(2)
    replies: dict[str, set] = {}
    for _ in range(400):
        row = make_tool_conversation(kind, rng)
        *before, tool, _ = row["messages"]
        question = before[-2]["content"]
        replies.setdefault(question, set()).add(tool["content"])
        if kind != "age_parity":  # the answer is the reply itself, not in the question
            assert tool["content"] not in json.dumps(before)
    assert max(len(r) for r in replies.values()) > 1


def test_both_tools_are_listed_in_either_order_and_some_conversations_open_with_a_system_turn():
    rng = random.Random(3)
    rows = [make_tool_conversation("age", rng) for _ in range(300)]
    orders = Counter(tuple(t["function"]["name"] for t in r["tools"]) for r in rows)
    assert set(orders) == {("get_age", "get_city"), ("get_city", "get_age")}
    assert 0.15 < sum(r["messages"][0]["role"] == "system" for r in rows) / len(rows) < 0.35


def test_splits_are_deterministic_disjoint_on_the_call_prompt_and_follow_the_dialogues(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        build_dialogue_dataset(tmp_path / name, 12, 6, 12, seed=seed)
        add_tool_conversations(tmp_path / name, 40, 8, 16, seed=seed)
    a, b, c = ({s: (tmp_path / n / f"{s}.jsonl").read_text() for s in ("train", "heldout", "test")} for n in "abc")
    assert a == b and a["train"] != c["train"]
    rows = {s: [json.loads(line) for line in text.splitlines()] for s, text in a.items()}
    assert [len(r) for r in rows.values()] == [52, 14, 28]
    assert all("tools" not in r for r in rows["train"][:12]) and all(r["tools"] for r in rows["train"][12:])
    keys = {s: {prompt_key(r) for r in rs if r.get("tools")} for s, rs in rows.items()}
    assert len(keys["train"]) == 40 and not keys["train"] & keys["test"] and not keys["heldout"] & keys["test"]
    assert Counter(r["kind"] for r in rows["test"][12:]) == {k: 4 for k in TOOL_KINDS}
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 52, "heldout": 14, "test": 28}
    assert manifest["tool_counts"] == {"train": 40, "heldout": 8, "test": 16}
    assert call_index(rows["test"][12]["messages"]) in (1, 2)


def test_bad_kinds_are_refused():
    with pytest.raises(ValueError, match="choose from"):
        resolve_tool_kinds(["age", "weather"])

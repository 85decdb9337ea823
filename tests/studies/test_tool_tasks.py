"""The tool-use tasks (sft/studies/tool_tasks.py): the call scored by exact match of the parsed call on hand-written
generations, the answer from the tool's reply, and their prompts through the chat template, with and without one."""

from __future__ import annotations

import json
import random

import pytest

from sft.studies.tool_tasks import (
    ANSWER_GROUP,
    CALL_GROUP,
    call_exact_match,
    call_name_match,
    render_with_tools,
    tool_docs,
)
from sft.studies.tools import make_tool_conversation

GOLD = json.dumps([{"name": "add", "arguments": {"a": 12, "b": 30}}])


@pytest.mark.parametrize("generation, exact, name", [
    ('<tool_call>{"name": "add", "arguments": {"a": 12, "b": 30}}</tool_call>', 1, 1),  # the right call
    ('<tool_call>{"arguments": {"b": 30, "a": 12}, "name": "add"}</tool_call>', 1, 1),  # any key order
    ('<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 30}}\n</tool_call>', 1, 1),  # Qwen2.5's spacing
    ('<tool_call>{"name": "add", "arguments": {"a": 12, "b": 30}}', 1, 1),  # stopped before the closing tag
    ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 12, \\"b\\": 30}"}</tool_call>', 1, 1),  # arguments as text
    ('<tool_call>{"name": "add", "arguments": {"a": 12, "b": 31}}</tool_call>', 0, 1),  # a wrong argument
    ('<tool_call>{"name": "add", "arguments": {"a": "12", "b": "30"}}</tool_call>', 0, 1),  # wrong JSON types
    ('<tool_call>{"name": "add", "arguments": {"a": 12}}</tool_call>', 0, 1),  # an argument missing
    ('<tool_call>{"name": "add", "arguments": {"a": 12, "b": 30, "c": 0}}</tool_call>', 0, 1),  # one too many
    ('<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 30}}</tool_call>', 0, 0),  # the wrong tool
    ('<tool_call>{"name": "add", "arguments": {"a": 12, "b": 30}</tool_call>', 0, 0),  # unparseable
    ('<tool_call>{"name": "add", "arguments": {"a": 12, "b": 30}}</tool_call>'
     '<tool_call>{"name": "add", "arguments": {"a": 12, "b": 30}}</tool_call>', 0, 0),  # called twice
    ("42", 0, 0),  # an answer instead of a call
    ("", 0, 0),
])
def test_call_scores_on_hand_written_generations(generation, exact, name):
    assert call_exact_match([GOLD], [generation]) == exact
    assert call_name_match([GOLD], [generation]) == name


def test_several_calls_match_in_any_order():
    gold = json.dumps([{"name": "get_age", "arguments": {"person": "Anna"}},
                       {"name": "get_city", "arguments": {"person": "Anna"}}])
    swapped = ('<tool_call>{"name": "get_city", "arguments": {"person": "Anna"}}</tool_call>\n'
               '<tool_call>{"name": "get_age", "arguments": {"person": "Anna"}}</tool_call>')
    assert call_exact_match([gold], [swapped]) == 1.0
    assert call_exact_match([gold], [swapped.split("\n")[0]]) == 0.0


def test_tool_docs_hold_the_call_prompt_and_the_answer_prompt():
    row = make_tool_conversation("city", random.Random(0))
    seen = []

    def render(history, tools=None):
        seen.append((history, tools))
        return f"<{len(history)} turns>"

    call, answer = tool_docs(row, render)
    at = next(i for i, m in enumerate(row["messages"]) if m.get("tool_calls"))
    fn = row["messages"][at]["tool_calls"][0]["function"]
    assert json.loads(call["history"]) == row["messages"][:at] and call["prompt"] == f"<{at} turns>"
    assert json.loads(call["answer"]) == [{"name": fn["name"], "arguments": fn["arguments"]}]
    assert json.loads(answer["history"]) == row["messages"][:-1] and answer["answer"] == row["answer"]
    assert json.loads(answer["history"])[-1]["role"] == "tool"
    assert all(tools == row["tools"] for _, tools in seen) and json.loads(call["tools"]) == row["tools"]
    assert call_exact_match([call["answer"]], [f"<tool_call>{json.dumps(fn)}</tool_call>"]) == 1.0


def test_render_with_tools_takes_a_callable_with_tools_or_lm_evals_model_method(demo_tokenizer):
    from sft.core.tokenize import with_training_template
    from sft.evaluation.tasks import render_chat

    tok = with_training_template(demo_tokenizer, "alpaca")
    row = make_tool_conversation("age", random.Random(0))
    history = row["messages"][:-1]
    expected = tok.apply_chat_template(history, tools=row["tools"], tokenize=False, add_generation_prompt=True)
    assert expected.startswith("### Tools:\n") and expected.endswith("### Tool output:\n" + history[-1]["content"]
                                                                       + "\n\n### Response:\n")

    class HFLMLike:  # lm-eval's HFLM: apply_chat_template(chat_history, add_generation_prompt) has no tools
        tokenizer, chat_template_args = tok, {}

        def apply_chat_template(self, chat_history, add_generation_prompt=True):
            raise AssertionError("the tools would be lost")

    assert render_with_tools(render_chat(tok), history, row["tools"]) == expected
    assert render_with_tools(HFLMLike().apply_chat_template, history, row["tools"]) == expected
    with pytest.raises(ValueError, match="has none"):
        render_with_tools(lambda history, add_generation_prompt=True: "", history, row["tools"])


def test_group_names_are_the_studys():
    assert (CALL_GROUP, ANSWER_GROUP) == ("sft_tool_call", "sft_tool_answer")


def test_tool_tasks_written_with_the_dialogues_send_history_and_tools_and_score_the_gold(demo_tokenizer, tmp_path):
    """write_dialogue_tasks on a test split with dialogues and tool-use rows: the dialogue tasks as before, and per
    tool-use kind a call task and an answer task whose requests are the history and tools in the chat template
    (through lm-eval's chat pass or pre-rendered for the raw one), the gold scoring 1."""
    from sft.core.tokenize import with_training_template
    from sft.evaluation.tasks import render_chat, task_manager
    from sft.studies.dialogues import KINDS, build_dialogue_dataset
    from sft.studies.tasks import DIALOGUE_GROUP, write_dialogue_tasks
    from sft.studies.tools import TOOL_KINDS, add_tool_conversations

    build_dialogue_dataset(tmp_path / "data", 0, 0, 6, seed=0)
    paths = add_tool_conversations(tmp_path / "data", 0, 0, 8, seed=0)
    tok = with_training_template(demo_tokenizer, "alpaca")
    render, out = render_chat(tok), tmp_path / "tasks"
    names = write_dialogue_tasks(paths["test"], out, render, "alpaca", [tok.eos_token])
    assert names == ([f"{DIALOGUE_GROUP}_{k}" for k in KINDS] + [f"{CALL_GROUP}_{k}" for k in TOOL_KINDS]
                     + [f"{ANSWER_GROUP}_{k}" for k in TOOL_KINDS])
    rows = [json.loads(line) for line in paths["test"].read_text().splitlines()][6:]
    tm = task_manager([CALL_GROUP, ANSWER_GROUP], [out])
    for group, cut in ((CALL_GROUP, 1), (ANSWER_GROUP, None)):
        name = f"{group}_calculator"
        task = tm.load([name])["tasks"][name]
        mine = [r for r in rows if r["kind"] == "calculator"]
        histories = [r["messages"][:-3] if cut else r["messages"][:-1] for r in mine]
        expected = [tok.apply_chat_template(h, tools=r["tools"], tokenize=False, add_generation_prompt=True)
                    for h, r in zip(histories, mine)]
        for chat in (True, False):
            task.build_all_requests(apply_chat_template=chat, fewshot_as_multiturn=chat,
                                    chat_template=render if chat else None)
            assert [i.args[0] for i in sorted(task.instances, key=lambda i: i.doc_id)] == expected
        for doc, row in zip(task.test_docs(), mine):
            fn = row["messages"][-3]["tool_calls"][0]["function"]
            gold = f"<tool_call>{json.dumps(fn)}</tool_call>" if cut else row["answer"]
            scores = task.process_results(doc, [gold])
            assert scores == ({"call_exact_match": 1.0, "call_name_match": 1.0} if cut else
                              {"exact_match": 1.0, "edit_similarity": 1.0})

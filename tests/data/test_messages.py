"""sft.data.messages: one turn read into a validated message: OpenAI tool calls and tool turns, ShareGPT's
function_call and observation turns, content parts, reasoning, and a clear error for every shape not read."""

import json

import pytest

from sft.data.messages import check_turn, unread_keys

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.mark.parametrize("turn", [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"from": "function_call", "value": '[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]'},
])
def test_every_form_of_a_call_reads_as_openais(turn):
    msg, fld, problem, fix = check_turn(turn)
    assert (fld, problem, fix) == ("", "", "")
    calls = msg.pop("tool_calls")
    assert msg == {"role": "assistant", "content": ""}
    assert [{k: v for k, v in c.items() if k != "id"} for c in calls] == [CALL]


def test_a_tool_turn_keeps_its_name_and_call_id_and_observation_is_a_tool_turn():
    assert check_turn({"role": "tool", "content": "20C", "tool_call_id": "c1", "name": "get_weather"})[0] == \
        {"role": "tool", "content": "20C", "name": "get_weather", "tool_call_id": "c1"}
    assert check_turn({"from": "observation", "value": '{"temp": 20}'})[0] == {"role": "tool", "content": '{"temp": 20}'}
    assert check_turn({"role": "function", "name": "f", "content": ""})[0] == {"role": "tool", "content": "", "name": "f"}


def test_text_parts_are_joined_and_a_call_with_content_keeps_both():
    parts = [{"type": "text", "text": "Weather "}, {"type": "text", "value": "in Paris?"}, {"text": "!"}]
    assert check_turn({"role": "user", "content": parts})[0] == {"role": "user", "content": "Weather in Paris?!"}
    assert check_turn({"from": "human", "value": parts})[0]["content"] == "Weather in Paris?!"
    msg = check_turn({"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [CALL]})[0]
    assert msg == {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}


def test_reasoning_is_read_from_reasoning_content_or_kept_as_a_leading_think_span():
    msg = check_turn({"role": "assistant", "content": "Rome.", "reasoning_content": "25 > 20"})[0]
    assert msg == {"role": "assistant", "content": "Rome.", "reasoning_content": "25 > 20"}
    inline = {"role": "assistant", "content": "<think>25 > 20</think>\n\nRome."}
    assert check_turn(inline)[0] == inline  # as written: the template renders it as it stands


BAD = [
    ({"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}, "tool_calls[0].function.name",
     "tool call has no name", "names no function"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{city: Paris}"}}]},
     "tool_calls[0].function.arguments", "tool call arguments are not JSON", "give the arguments as an object"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}]},
     "tool_calls[0].function.arguments", "tool call arguments are not an object", "object of named values"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}, "tool_calls[0].function.arguments",
     "tool call arguments are missing", "({} for a call without any)"),
    ({"role": "assistant", "tool_calls": [{"type": "code_interpreter", "function": {"name": "f", "arguments": {}}}]},
     "tool_calls[0].type", "tool call is not a function call", "only function calls are supported"),
    ({"from": "function_call", "value": "get_weather(Paris)"}, "value", "tool call is not JSON",
     "a function_call turn's value is the call as JSON"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}, "content[1]",
     "content part of unknown type", "only text is supported"),
    ({"role": "user", "content": [{"type": "text"}]}, "content[1]", "text part without text", "in `text`"),
    ({"role": "assistant", "content": "<think>hm Rome."}, "content", "reasoning span is not closed", "</think>"),
    ({"role": "assistant", "content": "<think>a</think>b", "reasoning_content": "a"}, "reasoning_content",
     "reasoning given twice", "give one of them"),
    ({"role": "user", "content": "hi", "tool_calls": [CALL]}, "tool_calls", "is on a user turn",
     "only an assistant turn calls tools"),
    ({"role": "assistant", "content": None}, "content", "is missing", "give it a string content"),
    ({"from": "function_response", "value": "x"}, "from", "unknown role",
     "the roles read are human, gpt, system, function_call (the assistant's tool call) and observation"),
]


@pytest.mark.parametrize("turn, fld, problem, fix", BAD)
def test_every_unread_shape_names_its_field_and_what_is_supported(turn, fld, problem, fix):
    msg, got_fld, got_problem, got_fix = check_turn(turn)
    assert msg is None and (got_fld, got_problem) == (fld, problem) and fix in got_fix
    assert "human" not in got_fix or turn.get("from")  # never a hint to relabel a turn as another role


def test_keys_not_read_are_named_by_role():
    assert unread_keys({"role": "user", "content": "a", "name": "bob", "id": 3}) == ["name", "id"]
    assert unread_keys({"role": "tool", "content": "a", "name": "f", "tool_call_id": "c"}) == []
    assert unread_keys({"role": "assistant", "content": "a", "tool_calls": [], "reasoning_content": "r",
                        "thinking": "t"}) == ["thinking"]
    assert json.dumps(unread_keys("not a turn")) == "[]"


@pytest.mark.parametrize("turn", [{"role": "assistant", "content": "<think> </think>Rome."},
                                  {"role": "assistant", "content": "Rome.", "reasoning_content": ""}])
def test_an_empty_reasoning_block_is_read_not_refused(turn):
    """A reasoning model's reply without reasoning (issue #38): read, and weighed 0 by default (empty_reasoning)."""
    msg, fld, _, _ = check_turn(turn)
    assert msg is not None and not fld and msg["content"] == turn["content"]
    assert msg.get("reasoning_content") == turn.get("reasoning_content")

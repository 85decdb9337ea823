"""sft.data.conversations and the conversation rows of sft.data.rows: tool-calling data in OpenAI form and in
LLaMA-Factory's ShareGPT form (function_call / observation turns, a tools column of JSON text, a system column),
content parts, and every bad shape named by file, row, turn and field, or counted by reason when skipped."""

import json

import pandas as pd
import pytest

from sft.data.conversations import check_conversation, check_tools
from sft.data.rows import fingerprint_rows, load_rows

WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOLS = [{"type": "function", "function": WEATHER}]
OPENAI = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": [{"type": "text", "text": "Paris and Rome?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "tool_call_id": "1", "content": "20C"},
    {"role": "tool", "tool_call_id": "2", "content": "25C"},
    {"role": "assistant", "content": "Rome is warmer: 25C against 20C."},
]
CALLS = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": c}}} for c in ("Paris", "Rome")]
VALID = [
    {"role": "system", "content": "You check the weather."},
    {"role": "user", "content": "Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [{**CALLS[0], "id": "1"}, {**CALLS[1], "id": "2"}]},
    {"role": "tool", "content": "20C", "tool_call_id": "1"},
    {"role": "tool", "content": "25C", "tool_call_id": "2"},
    {"role": "assistant", "content": "Rome is warmer: 25C against 20C."},
]
# LLaMA-Factory's form of the same row: the system prompt in its own column, the tools as JSON text.
SHAREGPT = {"conversations": [
    {"from": "human", "value": "Paris and Rome?"},
    {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": c}}
                                                   for c in ("Paris", "Rome")])},
    {"from": "observation", "value": "20C"},
    {"from": "observation", "value": "25C"},
    {"from": "gpt", "value": "Rome is warmer: 25C against 20C."}],
    "system": "You check the weather.", "tools": json.dumps([WEATHER])}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_openai_form_loads_with_its_tools_and_no_row_dropped(tmp_path):
    rows, report = load_rows(write_jsonl(tmp_path / "o.jsonl", [{"messages": OPENAI, "tools": TOOLS, "id": 7}] * 3))
    assert rows == [{"messages": VALID, "tools": TOOLS}] * 3
    assert (report.rows_read, report.rows_kept, dict(report.rows_dropped)) == (3, 3, {})
    assert report.column_mapping == {"messages": "messages", "tools": "tools"} and report.ignored_columns == ["id"]
    assert not report.unknown_message_keys


def test_llama_factory_sharegpt_form_loads_as_the_same_messages(tmp_path):
    rows, report = load_rows(write_jsonl(tmp_path / "s.jsonl", [SHAREGPT] * 4))
    strip = [{k: v for k, v in m.items() if k != "tool_call_id"} for m in VALID]
    strip[2] = {"role": "assistant", "content": "", "tool_calls": CALLS}
    assert rows == [{"messages": strip, "tools": TOOLS}] * 4  # the bare schema wrapped as OpenAI's
    assert (report.rows_read, report.rows_kept, report.ignored_columns) == (4, 4, [])
    # Parquet and CSV hold the same cells (the tools and the call as JSON text, as LLaMA-Factory writes them).
    pd.DataFrame([SHAREGPT] * 2).to_parquet(tmp_path / "s.parquet")
    assert load_rows(tmp_path / "s.parquet")[0] == rows[:2]
    pd.DataFrame([{**SHAREGPT, "conversations": json.dumps(SHAREGPT["conversations"])}]).to_csv(tmp_path / "s.csv",
                                                                                                 index=False)
    assert load_rows(tmp_path / "s.csv")[0] == rows[:1]


def test_tools_are_part_of_the_fingerprint_and_plain_rows_keep_theirs(tmp_path):
    plain = [{"messages": VALID}]
    assert fingerprint_rows(plain) != fingerprint_rows([{"messages": VALID, "tools": TOOLS}])
    assert fingerprint_rows(plain) == fingerprint_rows([{"messages": VALID}])


def test_check_tools_reads_json_text_and_wraps_bare_schemas():
    assert check_tools(json.dumps([WEATHER])) == (TOOLS, "", "")
    assert check_tools(TOOLS) == (TOOLS, "", "") and check_tools([]) == (None, "", "") == check_tools("")
    assert check_tools({"name": "f"})[1] == "is not a list"
    assert check_tools("[{name: f}]")[1] == "is not JSON"
    assert check_tools([{"description": "no name"}])[1] == "has a tool without a name"


def test_a_tool_turn_needs_the_call_before_it():
    user, answer = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    out = check_conversation([user, {"role": "tool", "content": "20C"}, answer])
    assert out[1:4] == (2, "role", "tool turn without a call before it") and "add that call" in out[4]
    assert check_conversation([user, answer, {"role": "tool", "content": "x"}, answer])[1] == 3
    # after the outputs, a user turn may follow before the answer
    follow = VALID[:5] + [{"role": "user", "content": "Which is warmer?"}, VALID[5]]
    assert check_conversation(follow)[0] == follow


BAD_ROWS = [  # (record, what the error says: file, row, turn, field; the reason counted when skipped)
    ({"messages": [OPENAI[1], {"role": "tool", "content": "x"}, OPENAI[5]]},
     "line 1, turn 2, field role: tool turn without a call before it", "role tool turn without a call before it"),
    ({"messages": [OPENAI[1], {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
     "line 1, turn 2, field tool_calls[0].function.name: tool call has no name",
     "tool_calls.function.name tool call has no name"),
    ({"messages": [OPENAI[1], {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]},
     "line 1, turn 2, field tool_calls[0].function.arguments: tool call arguments are not JSON",
     "tool_calls.function.arguments tool call arguments are not JSON"),
    ({"messages": VALID, "tools": {"name": "f"}}, "line 1, field tools: is not a list", "tools is not a list"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, VALID[5]]},
     "line 1, turn 1, field content[1]: content part of unknown type (part 1 is type 'input_audio'; only text is "
     "supported", "content content part of unknown type"),
]


@pytest.mark.parametrize("record, message, _", BAD_ROWS)
def test_bad_agent_rows_name_file_row_turn_field_and_fix(tmp_path, record, message, _):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ValueError) as e:
        load_rows(path)
    assert f"{path}: {message}" in str(e.value) and "--on-bad-rows skip" in str(e.value)


def test_skip_counts_each_bad_agent_row_by_reason_and_says_where(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": OPENAI, "tools": TOOLS}] + [r for r, _, _ in BAD_ROWS])
    rows, report = load_rows(path, on_bad_rows="skip")
    assert len(rows) == 1 and report.rows_read == 1 + len(BAD_ROWS)
    assert report.rows_dropped == {reason: 1 for _, _, reason in BAD_ROWS}
    assert report.first_bad_rows[0] == f"{path}: line 2, turn 2: role tool turn without a call before it"
    summary = report.summary()
    assert f"{path}: {1 + len(BAD_ROWS)} rows read, 1 kept, {len(BAD_ROWS)} dropped (" in summary and "1 tools is not a list" in summary
    assert "first dropped: " in summary and "columns ignored: none" in summary

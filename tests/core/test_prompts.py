import pytest

from sft.core.prompts import ALPACA, Template, get_template, register_template, render_prompt, user_message


def test_alpaca_no_input_is_stanford_wording_with_newline():
    assert render_prompt("alpaca", "Say hi.") == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_alpaca_with_input():
    assert render_prompt("alpaca", "Sort.", "b a") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSort.\n\n### Input:\nb a\n\n### Response:\n"
    )


@pytest.mark.parametrize("empty", ["", None])
def test_empty_input_uses_the_no_input_form(empty):
    assert ALPACA.render("Do it.", empty) == ALPACA.render("Do it.")


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ValueError, match="alpaca"):
        get_template("vicuna")


def test_register_and_refuse_duplicates():
    t = Template(name="test-qa", prompt_input="Q: {instruction}\n{input}\nA: ", prompt_no_input="Q: {instruction}\nA: ")
    register_template(t)
    assert render_prompt("test-qa", "why?") == "Q: why?\nA: "
    with pytest.raises(ValueError, match="already registered"):
        register_template(t)


# ---------------------------------------------------------------- the training template as a chat template


def _chat_ids(tokenizer, instruction: str, input: str = "") -> list[int]:
    return tokenizer.apply_chat_template([user_message(instruction, input)], add_generation_prompt=True,
                                         tokenize=True)["input_ids"]


def _training_prompt_ids(rows: list[dict], tokenizer) -> list[list[int]]:
    """The prompt ids training used for each row (tokenize_batch: the path that runs), untruncated."""
    from sft.data.config import DataConfig
    from helpers import tokenize_batch

    cfg = DataConfig(data="unused", max_length=100_000)
    batch = {k: [r[k] for r in rows] for k in ("instruction", "input", "output")}
    table = tokenize_batch(batch, tokenizer, cfg).to_pydict()
    return [ids[:len(ids) - sum(mask)] for ids, mask in zip(table["input_ids"], table["response_mask"])]


def test_chat_template_renders_the_prompt_text_with_and_without_input():
    from transformers.utils.chat_template_utils import _compile_jinja_template  # transformers' own Jinja setup

    tmpl = _compile_jinja_template(ALPACA.chat_template())
    one = tmpl.render(messages=[{"role": "user", "content": 'Say "hi" {{ x }} é 😀'}], eos_token="</s>")
    assert one == ALPACA.render('Say "hi" {{ x }} é 😀')
    two = [{"type": "text", "text": "Sort."}, {"type": "text", "text": "b a"}]
    turns = [{"role": "user", "content": two}, {"role": "assistant", "content": "a b"}]
    assert tmpl.render(messages=turns, eos_token="</s>") == ALPACA.render("Sort.", "b a") + "a b</s>"
    # A system message (lm-eval's task description) opens the next instruction, as in the raw prompt.
    described = [{"role": "system", "content": "About algebra.\n\n"}, {"role": "user", "content": "2 + 2?"}]
    assert tmpl.render(messages=described, eos_token="</s>") == ALPACA.render("About algebra.\n\n2 + 2?")
    with pytest.raises(Exception, match="no function role"):
        tmpl.render(messages=[{"role": "function", "content": "x"}], eos_token="</s>")


TOOLS = [{"type": "function", "function": {"name": "get_age", "description": "Age.", "parameters": {
    "type": "object", "properties": {"person": {"type": "string"}}, "required": ["person"]}}},
    {"name": "add", "parameters": {"type": "object", "properties": {}}}]  # a bare schema is shown as it is
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "get_age", "arguments": {"person": "Anna"}}}]}


def test_chat_template_without_tools_renders_as_before():
    """Multi-turn conversations without tools: each user turn an alpaca prompt (a system turn opening the first
    instruction), each reply its content and EOS, as before tools were added."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    tmpl = _compile_jinja_template(ALPACA.chat_template())
    turns = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Add 3 and 4."},
             {"role": "assistant", "content": "7"}, {"role": "user", "content": "Spell that number."},
             {"role": "assistant", "content": "seven"}]
    expected = ALPACA.render("Be brief. Add 3 and 4.") + "7</s>" + ALPACA.render("Spell that number.") + "seven</s>"
    for tools in ({}, {"tools": None}, {"tools": []}):
        assert tmpl.render(messages=turns, eos_token="</s>", **tools) == expected
        assert tmpl.render(messages=turns[:-1], eos_token="</s>", add_generation_prompt=True, **tools) == \
            expected.removesuffix("seven</s>")


def test_chat_template_renders_tools_calls_and_outputs():
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from sft.core.prompts import parse_tool_calls

    tmpl = _compile_jinja_template(ALPACA.chat_template())
    turns = [{"role": "user", "content": "How old is Anna?"}, CALL, {"role": "tool", "name": "get_age", "content": "42"},
             {"role": "assistant", "content": "42"}]
    text = tmpl.render(messages=turns, tools=TOOLS, eos_token="</s>")
    tools = ('### Tools:\n{"name": "get_age", "description": "Age.", "parameters": {"type": "object", "properties": '
             '{"person": {"type": "string"}}, "required": ["person"]}}\n'
             '{"name": "add", "parameters": {"type": "object", "properties": {}}}\n\n')
    call = '<tool_call>{"name": "get_age", "arguments": {"person": "Anna"}}</tool_call>'
    assert text == (tools + ALPACA.render("How old is Anna?") + call + "</s>### Tool output:\n42\n\n### Response:\n"
                    + "42</s>")
    # The cue after a tool's output is the generation prompt, and every prefix renders as the start of the whole.
    assert tmpl.render(messages=turns[:3], tools=TOOLS, eos_token="</s>", add_generation_prompt=True) == \
        text.removesuffix("42</s>")
    for i in range(1, len(turns)):
        assert text.startswith(tmpl.render(messages=turns[:i], tools=TOOLS, eos_token="</s>"))
    assert parse_tool_calls(text) == [{"name": "get_age", "arguments": {"person": "Anna"}}]
    # Content before the calls, several calls, arguments given as JSON text: one call a line after the content.
    two = {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"function": {"name": "get_age", "arguments": '{"person": "Ben"}'}}, {"name": "add", "arguments": {"a": 1}}]}
    reply = tmpl.render(messages=[turns[0], two], eos_token="</s>").removeprefix(ALPACA.render("How old is Anna?"))
    assert reply == ('Let me look.\n<tool_call>{"name": "get_age", "arguments": {"person": "Ben"}}</tool_call>\n'
                     '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call></s>')


@pytest.mark.parametrize("text, calls", [
    ('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', [{"name": "f", "arguments": {"x": 1}}]),
    ('Sure. <tool_call>\n{"arguments": {"x": 1}, "name": "f"}\n</tool_call>', [{"name": "f", "arguments": {"x": 1}}]),
    ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}', [{"name": "f", "arguments": {"x": 1}}]),  # unclosed
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "g", "arguments": {}}</tool_call>',
     [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]),
    ("42", []),
    ('<tool_call>{"name": "f", "arguments": {"x": 1}</tool_call>', None),  # not JSON
    ('<tool_call>{"arguments": {}}</tool_call>', None),  # no name
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', None),  # arguments not an object
    ('<tool_call>["f"]</tool_call>', None),
])
def test_parse_tool_calls(text, calls):
    from sft.core.prompts import parse_tool_calls

    assert parse_tool_calls(text) == calls


def test_format_tool_calls_is_what_the_template_writes():
    from transformers.utils.chat_template_utils import _compile_jinja_template

    from sft.core.prompts import format_tool_calls

    tmpl = _compile_jinja_template(ALPACA.chat_template())
    user = {"role": "user", "content": "How old is Anna?"}
    text = tmpl.render(messages=[user, CALL], eos_token="</s>")
    assert text == ALPACA.render("How old is Anna?") + format_tool_calls(CALL["tool_calls"]) + "</s>"


@pytest.mark.slow  # 2 x 7,473 rows: 17-21 s of CPU
def test_fine_tuned_tokenizer_reproduces_training_prompt_ids_on_every_gsm8k_row(qwen_tokenizer, gsm8k_path):
    import json

    from sft.core.tokenize import with_training_template

    tok = with_training_template(qwen_tokenizer, "alpaca")
    assert qwen_tokenizer.chat_template and "im_start" in qwen_tokenizer.chat_template  # the base keeps ChatML
    rows = [{**r, "input": r.get("input") or ""} for r in json.loads(gsm8k_path.read_text())]
    # With input: each row's question gets another row's first sentence as its input.
    with_input = [{**r, "input": rows[i - 1]["instruction"].split(".")[0]} for i, r in enumerate(rows)]
    for variant in (rows, with_input):
        expected = _training_prompt_ids(variant, qwen_tokenizer)
        got = [_chat_ids(tok, r["instruction"], r["input"]) for r in variant]
        bad = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
        assert not bad, f"{len(bad)} of {len(rows)} rows differ, first {bad[:5]}"
    assert len(rows) == 7473


def test_demo_tokenizer_reproduces_training_prompt_ids(demo_root):
    import json

    from sft.core.tokenize import with_training_template
    from sft.models.tokenizer import load_tokenizer

    base = load_tokenizer(demo_root / "model/demo/base")
    tok = with_training_template(base, "alpaca")
    rows = [json.loads(line) for line in (demo_root / "Dataset/demo/train.jsonl").read_text().splitlines()]
    rows = [{**r, "input": r.get("input") or ""} for r in rows]
    assert any(r["input"] for r in rows) and any(not r["input"] for r in rows)
    expected = _training_prompt_ids(rows, base)
    assert [_chat_ids(tok, r["instruction"], r["input"]) for r in rows] == expected


def test_demo_chat_tool_conversations_tokenize_with_their_roles(demo_tokenizer):
    """The demo-chat path: the alpaca chat template on sft.studies.tools' conversations gives the ids of
    apply_chat_template(..., tools=...), the tools block as system, the call as tool_call, the tool's reply as
    tool_output and the answer as assistant."""
    import random

    from sft.core.chat import renderer_for
    from sft.core.prompts import format_tool_calls
    from sft.data.conversations import ROLE_NAMES
    from sft.studies.tools import TOOL_KINDS, make_tool_conversation

    renderer = renderer_for(demo_tokenizer, ALPACA.chat_template())
    rng = random.Random(0)
    rows = [make_tool_conversation(k, rng) for _ in range(5) for k in TOOL_KINDS]
    for row, (ids, roles, _) in zip(rows, renderer.tokens([r["messages"] for r in rows], [r["tools"] for r in rows])):
        text = demo_tokenizer.apply_chat_template(row["messages"], tools=row["tools"], chat_template=renderer.template,
                                                  tokenize=False)
        assert list(ids) == demo_tokenizer(text, add_special_tokens=False)["input_ids"]
        by_role = {}
        for i, r in zip(ids, roles):
            by_role.setdefault(ROLE_NAMES[r], []).append(i)
        call = row["messages"][-3]["tool_calls"][0]["function"]
        assert demo_tokenizer.decode(by_role["tool_call"]) == format_tool_calls([call])
        assert demo_tokenizer.decode(by_role["tool_output"]) == f"### Tool output:\n{row['messages'][-2]['content']}\n\n"
        assert demo_tokenizer.decode(by_role["system"]).startswith("### Tools:\n")
        # the call's EOS (trained like the reply it closes), then the answer and its EOS
        assert demo_tokenizer.decode(by_role["assistant"]) == f"{demo_tokenizer.eos_token}{row['answer']}" \
            f"{demo_tokenizer.eos_token}"

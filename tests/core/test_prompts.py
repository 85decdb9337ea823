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
    """The prompt ids training used for each row (tokenize_rows_batch, the path that runs), untruncated."""
    from sft.data.config import DataConfig
    from sft.core.tokenize import tokenize_rows_batch

    cfg = DataConfig(data="unused", max_length=100_000)
    batch = {k: [r[k] for r in rows] for k in ("instruction", "input", "output")}
    table = tokenize_rows_batch(batch, tokenizer, cfg).to_pydict()
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
    with pytest.raises(Exception, match="no tool role"):
        tmpl.render(messages=[{"role": "tool", "content": "x"}], eos_token="</s>")


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

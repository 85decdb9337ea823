import pytest

from sft.prompts import ALPACA, Template, get_template, register_template, render_prompt


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

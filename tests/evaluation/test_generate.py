"""sft/evaluation/generate.py's stop tokens: a model's generation-config EOS list, and a chat template's end-of-turn token
for conversation prompts. (Batching against model.generate is tested in tests/evaluation/test_case_study.py.)"""

import pytest

from helpers import CALLS_APART, force_next_token, tiny_qwen25
from sft.evaluation.generate import (
    GenerationSettings, conversation_prompt, eos_ids, generate_responses, generate_token_ids, prompt_stops, render_prompts,
)
from sft.core.prompts import get_template

pytestmark = pytest.mark.usefixtures("one_thread")
ASK = [conversation_prompt([{"role": "user", "content": "What is 2 + 3?"}])]


def test_prompt_stops_are_the_chat_templates_end_of_turn(qwen_tokenizer):
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert prompt_stops("alpaca", ASK, qwen_tokenizer) == [im_end]  # the tokenizer's own: Qwen2.5's ChatML
    alpaca = get_template("alpaca").chat_template()
    assert prompt_stops("alpaca", ASK, qwen_tokenizer, alpaca) == [qwen_tokenizer.eos_token_id]  # ends with EOS
    assert prompt_stops("alpaca", [{"instruction": "Add 2 and 3.", "input": ""}], qwen_tokenizer) == []


def test_prompt_stops_include_the_end_of_a_tool_call_and_prompts_carry_their_tools(qwen_tokenizer):
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert prompt_stops("alpaca", ASK, qwen_tokenizer, CALLS_APART) == [im_end, qwen_tokenizer.eos_token_id]
    tools = [{"type": "function", "function": {"name": "get_age", "parameters": {"type": "object", "properties": {}}}}]
    asked = [conversation_prompt([{"role": "user", "content": "How old is Anna?"}], tools=tools)]
    assert asked[0]["tools"] == tools
    (alpaca,) = render_prompts("alpaca", asked, qwen_tokenizer, get_template("alpaca").chat_template())
    assert alpaca.startswith('### Tools:\n{"name": "get_age"')
    (chatml,) = render_prompts("alpaca", asked, qwen_tokenizer)
    assert "<tools>" in chatml and '"get_age"' in chatml  # Qwen2.5 lists tools in its system turn


def test_a_base_model_asked_through_chatml_stops_at_im_end(qwen_tokenizer):
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = force_next_token(tiny_qwen25(qwen_tokenizer), im_end)  # it answers <|im_end|> at once
    assert eos_ids(model, qwen_tokenizer) == [qwen_tokenizer.eos_token_id]  # the base's config lacks <|im_end|>
    prompts = render_prompts("alpaca", ASK, qwen_tokenizer)
    assert prompts[0].endswith("<|im_start|>assistant\n")
    encoded = qwen_tokenizer(prompts, add_special_tokens=False)["input_ids"]
    s = GenerationSettings(max_new_tokens=5)
    assert generate_token_ids(model, qwen_tokenizer, encoded, s) == [[im_end] * 5]  # EOS alone: runs to the budget
    stops = prompt_stops("alpaca", ASK, qwen_tokenizer)
    assert generate_token_ids(model, qwen_tokenizer, encoded, s, stops) == [[]]
    assert generate_responses(model, qwen_tokenizer, prompts, s, stops) == [""]


def test_the_generation_configs_eos_list_stops_generation(qwen_tokenizer):
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = force_next_token(tiny_qwen25(qwen_tokenizer), im_end)
    model.generation_config.eos_token_id = [im_end, qwen_tokenizer.eos_token_id]  # what a conversation run saves
    assert eos_ids(model, qwen_tokenizer) == sorted([im_end, qwen_tokenizer.eos_token_id])
    encoded = qwen_tokenizer(render_prompts("alpaca", ASK, qwen_tokenizer), add_special_tokens=False)["input_ids"]
    assert generate_token_ids(model, qwen_tokenizer, encoded, GenerationSettings(max_new_tokens=5)) == [[]]


@pytest.mark.slow  # lm-eval launches git and pip for its logs
def test_lm_eval_through_chatml_stops_at_im_end_and_restores_the_config(qwen_tokenizer, tmp_path):
    from sft.evaluation.evaluate import run_benchmarks
    from sft.evaluation.settings import EvalConfig
    from sft.evaluation.tasks import task_manager

    (tmp_path / "test.jsonl").write_text('{"q": "What is 2 + 3?", "a": "5"}\n')
    (tmp_path / "stop_probe.yaml").write_text(
        "task: stop_probe\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'test.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\ngeneration_kwargs:\n  until: []\n  max_gen_toks: 6\n"
        "metric_list:\n  - metric: exact_match\n")
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = force_next_token(tiny_qwen25(qwen_tokenizer), im_end)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1))
    tm = task_manager(["stop_probe"], [tmp_path])
    for chat, expected in ((False, 6), (True, 1)):  # raw: EOS alone, 6 tokens; ChatML: stops at <|im_end|>
        steps.clear()
        run_benchmarks(model, qwen_tokenizer, ["stop_probe"], tm, EvalConfig(batch_size=1), chat=chat)
        assert len(steps) == expected, chat
        assert model.generation_config.eos_token_id == qwen_tokenizer.eos_token_id  # restored after the pass

"""Conversations: reading messages and ShareGPT rows, validation by turn, rendering through chat templates
(ids equal apply_chat_template's), per-role weights, all/last and truncation."""

import json
import random

import numpy as np
import pandas as pd
import pytest

from helpers import tokenize_batch
from sft.data.conversations import ASSISTANT, check_conversation
from sft.data.config import DataConfig
from sft.core.tokenize import conversation_renderer
from sft.data.rows import load_rows
from sft.core.prepare import tokenize_rows

CHAT = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And that times 4?"},
    {"role": "assistant", "content": "20"},
]
SHAREGPT = [{"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
            for m in CHAT]


def write(path, rows):
    """Write rows as the suffix of `path` says."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        pd.DataFrame([{k: json.dumps(v) for k, v in r.items()} for r in rows]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name,column,turns", [
    ("c.jsonl", "messages", CHAT), ("c.json", "conversations", SHAREGPT), ("c.parquet", "messages", CHAT),
    ("c.parquet", "conversations", SHAREGPT), ("c.csv", "messages", CHAT)])
def test_every_format_reads_messages_and_sharegpt_alike(tmp_path, name, column, turns):
    rows, report = load_rows(write(tmp_path / name, [{"id": 1, column: turns}] * 2))
    assert rows == [{"messages": CHAT}] * 2
    assert report.column_mapping == {"messages": column} and report.ignored_columns == ["id"]


def test_column_map_names_a_conversation_column(tmp_path):
    rows, _ = load_rows(write(tmp_path / "c.jsonl", [{"dialog": CHAT}]), column_map={"dialog": "messages"})
    assert rows == [{"messages": CHAT}]


BAD = [
    ({"messages": "hi"}, r"line 1, field messages: is not a list \(got str"),
    ({"messages": [{"role": "user", "content": "a"}]}, r"line 1, field messages: has no assistant turn"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     r"line 1, turn 2, field role: unknown role \(got 'bot'; the roles read are system, user, assistant"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
     r"line 1, turn 1, field content: is missing"),
    ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
     r"line 1, turn 1, field content\[1\]: content part of unknown type \(part 1 is str 'a'; only text is supported"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "model", "value": "b"}]},
     r"line 1, turn 2, field from: unknown role \(got 'model'; the roles read are human, gpt, system, function_call"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "system", "content": "c"}, {"role": "user", "content": "d"},
                   {"role": "assistant", "content": "e"}]}, r"line 1, turn 3, field role: system turn after the first"),
    ({"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"},
                   {"role": "assistant", "content": "b"}]}, r"turn 1, field role: conversation opens with an assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, r"turn 3, field role: conversation ends without an assistant"),
]


@pytest.mark.parametrize("record,pattern", BAD)
def test_bad_conversations_name_file_row_turn_and_field(tmp_path, record, pattern):
    path = write(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ValueError, match=pattern) as e:
        load_rows(path)
    assert str(path) in str(e.value) and "--on-bad-rows skip" in str(e.value)


def test_skip_counts_bad_conversations_by_reason(tmp_path):
    column = {"conversations": "conversations"}
    records = [{"messages": CHAT}] + [{"messages": r[0].get("messages", r[0].get("conversations"))} for r in BAD]
    rows, report = load_rows(write(tmp_path / "mixed.jsonl", records), on_bad_rows="skip")
    assert rows == [{"messages": CHAT}] and report.rows_read == 1 + len(BAD) and column
    assert report.rows_dropped == {
        "messages is not a list": 1, "messages has no assistant turn": 1, "role unknown role": 1,
        "content is missing": 1, "content content part of unknown type": 1, "from unknown role": 1,
        "role system turn after the first": 1, "role conversation opens with an assistant turn": 1,
        "role conversation ends without an assistant reply": 1}


def test_check_conversation_reads_json_text_only_from_csv():
    assert check_conversation(json.dumps(CHAT), from_text=True)[0] == CHAT
    assert check_conversation(json.dumps(CHAT))[2:4] == ("messages", "is not a list")


def test_a_folder_may_not_mix_conversations_and_instruction_rows(tmp_path):
    write(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}])
    write(tmp_path / "b.jsonl", [{"messages": CHAT}])
    with pytest.raises(ValueError, match="b.jsonl: holds conversations while the files before it hold instruction rows"):
        load_rows(tmp_path)


def conversations_from(rows, n, seed=0):
    """n dialogues chained from alpaca rows: 1-3 exchanges, a system turn in every third."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        turns = [{"role": "system", "content": "You solve grade-school math."}] if k % 3 == 0 else []
        for r in rng.sample(rows, rng.randint(1, 3)):
            turns += [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
        out.append(turns)
    return out


@pytest.mark.slow  # 1,200 conversations: 5 s of CPU
def test_ids_equal_apply_chat_template_on_1200_qwen_conversations(qwen_tokenizer, gsm8k_path):
    convs = conversations_from(json.loads(gsm8k_path.read_text()), 1200)
    table = tokenize_batch({"messages": convs}, qwen_tokenizer, DataConfig(max_length=4096))
    ids = table.column("input_ids").to_pylist()
    expected = [qwen_tokenizer.apply_chat_template(m, tokenize=True)["input_ids"] for m in convs]
    assert len(ids) == 1200 and sum(a == b for a, b in zip(ids, expected)) == 1200
    # The trained tokens are exactly the assistant contents, each followed by <|im_end|>.
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    weights = table.column("loss_weights").to_pylist()
    for conv, x, w in list(zip(convs, ids, weights))[:100]:
        trained = qwen_tokenizer.decode([t for t, v in zip(x, w) if v == 1])
        assert trained == "".join(m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant")
        assert sum(1 for t, v in zip(x, w) if t == im_end and v == 1) == sum(m["role"] == "assistant" for m in conv)


@pytest.mark.slow  # 1,000 conversations: 3.5 s of CPU
def test_ids_equal_apply_chat_template_with_the_alpaca_chat_template(demo_tokenizer, gsm8k_path):
    convs = conversations_from(json.loads(gsm8k_path.read_text()), 1000, seed=1)
    cfg = DataConfig(max_length=100_000, chat_template="alpaca")
    template = conversation_renderer(demo_tokenizer, cfg).template
    table = tokenize_batch({"messages": convs}, demo_tokenizer, cfg)
    expected = [demo_tokenizer.apply_chat_template(m, chat_template=template, tokenize=True)["input_ids"]
                for m in convs]
    assert table.column("input_ids").to_pylist() == expected


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_weights_by_role_and_im_end_trained_although_pad_is_eos(qwen_tokenizer, w):
    assert qwen_tokenizer.pad_token_id == qwen_tokenizer.eos_token_id  # <|endoftext|>: the trap of trl #1623
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    ids, roles, turns = renderer.tokens([CHAT])[0]
    table = tokenize_batch({"messages": [CHAT]}, qwen_tokenizer, DataConfig(prompt_loss_weight=w))
    weights = np.asarray(table.column("loss_weights").to_pylist()[0])
    labels = np.asarray(table.column("labels").to_pylist()[0])
    text = [qwen_tokenizer.decode([t]) for t in ids]
    im_end = [k for k, t in enumerate(text) if t == "<|im_end|>"]
    assert [weights[k] for k in im_end] == [w, w, 1.0, w, 1.0]  # system, user, assistant, user, assistant
    assert [turns[k] for k in im_end] == [0, 1, 2, 3, 4]
    assert qwen_tokenizer.decode([t for t, r in zip(ids, roles) if r == ASSISTANT]) == "5<|im_end|>20<|im_end|>"
    assert set(weights[roles != ASSISTANT]) == {w}  # system, user, headers and the "\n" after each <|im_end|>
    assert (labels[weights > 0] == np.asarray(ids)[weights > 0]).all() and (labels[weights == 0] == -100).all()


def test_train_on_last_weighs_earlier_replies_like_the_prompt(qwen_tokenizer):
    cfg = DataConfig(prompt_loss_weight=0.25, train_on="last")
    table = tokenize_batch({"messages": [CHAT]}, qwen_tokenizer, cfg)
    ids, w = table.column("input_ids").to_pylist()[0], table.column("loss_weights").to_pylist()[0]
    response = table.column("response_mask").to_pylist()[0]
    assert qwen_tokenizer.decode([t for t, v in zip(ids, w) if v == 1]) == "20<|im_end|>"
    assert response == [int(v == 1) for v in w] and set(w) == {0.25, 1.0}


def test_truncation_drops_earlier_turns_and_keeps_the_last_answer(qwen_tokenizer):
    long = [CHAT[0]] + [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok " * 30}] * 3
    long += CHAT[1:3]
    table = tokenize_batch({"messages": [long]}, qwen_tokenizer, DataConfig(max_length=120))
    ids, w = table.column("input_ids").to_pylist()[0], table.column("loss_weights").to_pylist()[0]
    text = qwen_tokenizer.decode(ids)
    assert len(ids) <= 120 and table.column("truncation").to_pylist() == ["turns_dropped"]
    assert text.startswith("<|im_start|>system\nYou add numbers.") and text.endswith("5<|im_end|>\n")
    assert qwen_tokenizer.decode([t for t, v in zip(ids, w) if v == 1]) == "5<|im_end|>"
    dropped = tokenize_batch({"messages": [long]}, qwen_tokenizer,
                                           DataConfig(max_length=120, truncation="drop"))
    assert dropped.num_rows == 0


def test_an_answer_longer_than_the_window_keeps_half_of_it(qwen_tokenizer):
    conv = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok " * 100}]
    table = tokenize_batch({"messages": [conv]}, qwen_tokenizer, DataConfig(max_length=64))
    w = table.column("loss_weights").to_pylist()[0]
    assert len(w) == 64 and sum(v == 1 for v in w) == 32
    assert table.column("truncation").to_pylist() == ["both_trimmed"]


def test_tokenize_rows_caches_conversations_with_the_same_keys_as_alpaca(qwen_tokenizer, tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), prompt_loss_weight=0.5)
    ds, report = tokenize_rows([{"messages": CHAT}] * 3, qwen_tokenizer, cfg)
    assert set(ds.column_names) == {"input_ids", "labels", "loss_weights", "response_mask", "length", "truncation",
                                    "roles", "turns", "message_weights", "marks", "chat", "weight_codes", "weight_scale"}
    assert report.examples_out == 3 and not report.from_cache
    again, report = tokenize_rows([{"messages": CHAT}] * 3, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path),
                                                                                        prompt_loss_weight=0.5))
    assert report.from_cache and again["input_ids"] == ds["input_ids"]


def dialogues(demo_root, n, seed):
    """n two-exchange dialogues chained from the small demo's training rows."""
    from helpers import demo_dialogues

    return demo_dialogues(demo_root, n, seed)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_messages_and_sharegpt_train_evaluate_and_go_through_eval_py(demo_root, tmp_path, capsys, w):
    from helpers import demo_config, load_script
    from sft.evaluation.evaluate import evaluate_models
    from sft.runs.layout import run_dir
    from sft.models.tokenizer import load_tokenizer
    from sft.core.train import train

    train_file = write(tmp_path / "train.jsonl", [{"messages": m} for m in dialogues(demo_root, 48, 0)])
    sharegpt = [[{"from": {"user": "human", "assistant": "gpt"}[t["role"]], "value": t["content"]} for t in m]
                for m in dialogues(demo_root, 16, 1)]
    eval_file = write(tmp_path / "heldout.json", [{"conversations": m} for m in sharegpt])
    cfg = demo_config(demo_root, run_name=f"chat-{w}", max_steps=3, eval_steps=1000, save_steps=1000,
                      overwrite=True, prompt_loss_weight=w, **{"data.data": str(train_file),
                                                                "data.eval_data": str(eval_file)})
    trainer = train(cfg)
    run = run_dir(cfg)
    assert trainer.prepared_data.info["conversations"] and trainer.prepared_data.info["eval_examples"] == 16
    # The run carries the template its conversations were rendered with (the demo tokenizer has none: alpaca's).
    saved = load_tokenizer(run)
    base = load_tokenizer(demo_root / "model/demo/base")
    assert saved.chat_template == conversation_renderer(base, cfg.data).template
    out = evaluate_models({"tuned": str(run)}, tasks=[], out=str(tmp_path / "ev"))
    heldout = json.loads((out / "heldout.json").read_text())["models"]["tuned"]
    assert heldout["response_loss"] == pytest.approx(trainer.evaluate()["eval_response_loss"], rel=1e-4)
    # Per role: every scored token is in one role; all replies are trained (train_on="all"); no system turn here.
    assert heldout["assistant_tokens"] == heldout["response_tokens"] and heldout["system_loss"] is None
    assert sum(heldout[f"{r}_tokens"] for r in ("template", "system", "user", "assistant")) == \
        heldout["response_tokens"] + heldout["prompt_tokens"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"messages": sharegpt[0][:3], "output": sharegpt[0][3]["value"]}) + "\n")
    script = load_script("eval")
    capsys.readouterr()  # training's logs
    assert script.main(["--models", f"tuned={run}", "--out", str(tmp_path / "o"), "--max-new-tokens", "4",
                        "--prompts", str(prompts)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| # | prompt | reference | tuned |" and table[2].startswith("| 1 | user: ")


def test_held_out_rows_of_the_other_kind_are_refused(qwen_tokenizer, tmp_path):
    from sft.core.prepare import prepare_data

    chats = write(tmp_path / "c.jsonl", [{"messages": CHAT}] * 4)
    alpaca = write(tmp_path / "a.jsonl", [{"instruction": "a", "output": "b"}] * 2)
    with pytest.raises(ValueError, match=r"c.jsonl holds conversations but eval_data .*a.jsonl holds instruction rows"
                                         r".*--eval-data none"):
        prepare_data(DataConfig(data=str(chats), eval_data=str(alpaca), cache_dir=str(tmp_path)), qwen_tokenizer)


def test_end_of_turn_is_im_end_in_chatml_and_eos_in_the_alpaca_chat_template(qwen_tokenizer):
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert conversation_renderer(qwen_tokenizer, DataConfig()).end_of_turn_id() == im_end
    alpaca = conversation_renderer(qwen_tokenizer, DataConfig(chat_template="alpaca"))
    assert alpaca.end_of_turn_id() == qwen_tokenizer.eos_token_id


def chatml_run(qwen_tokenizer, tmp_path, lora: bool):
    """Two steps on 8 small conversations through Qwen2.5's ChatML, from a tiny Qwen2 saved as a base model."""
    from helpers import tiny_qwen25
    from sft.core.overrides import load_config

    base = tmp_path / "base"
    tiny_qwen25(qwen_tokenizer).save_pretrained(base)
    qwen_tokenizer.save_pretrained(base)
    convs = [[{"role": "user", "content": f"What is {a} + {a + 1}?"}, {"role": "assistant", "content": str(2 * a + 1)}]
             for a in range(12)]
    overrides = {"model.model": str(base), "data.data": str(write(tmp_path / "c.jsonl", [{"messages": m}
                                                                                          for m in convs[:8]])),
                 "data.eval_data": str(write(tmp_path / "h.jsonl", [{"messages": m} for m in convs[8:]])),
                 "model_root": str(tmp_path / "model"), "tensorboard_root": str(tmp_path / "tb"),
                 "cache_dir": str(tmp_path / ".cache"), "max_length": 64, "per_device_train_batch_size": 4,
                 "max_steps": 2, "save_steps": 1, "eval_steps": 1000, "run_name": "chatml", "overwrite": True}
    if lora:
        overrides.update({"lora.r": 4, "lora.merge": True})
    return load_config("qwen2.5-0.5b-alpaca", **overrides), base


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("lora", [False, True])
def test_a_chatml_run_saves_im_end_as_an_eos_id_and_generation_stops_there(qwen_tokenizer, tmp_path, lora):
    from helpers import force_next_token
    from sft.runs.checkpoints import list_checkpoints
    from sft.evaluation.generate import (
        GenerationSettings, generate_responses, generate_token_ids, prompt_rows, render_prompts,
    )
    from sft.runs.layout import run_dir
    from sft.models.lora import MERGED_DIR
    from sft.models.load import load_model
    from sft.models.tokenizer import load_tokenizer
    from sft.core.train import train

    cfg, base = chatml_run(qwen_tokenizer, tmp_path, lora)
    train(cfg)
    im_end, eos = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"), qwen_tokenizer.eos_token_id
    run = run_dir(cfg)
    folders = [run, *list_checkpoints(run), *([run / MERGED_DIR] if lora else [])]
    assert [p.name for p in folders[1:3]] == ["checkpoint-1", "checkpoint-2"]
    for folder in folders:  # the final model (adapter), every checkpoint, the merged model
        assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [im_end, eos], folder
        assert load_model(folder).generation_config.eos_token_id == [im_end, eos], folder
    assert json.loads((base / "generation_config.json").read_text())["eos_token_id"] == eos  # the base is untouched
    assert load_tokenizer(run).eos_token == "<|endoftext|>"  # EOS (and pad) unchanged
    # The fine-tuned model, made to answer <|im_end|>, stops there: our decoding loop and transformers' generate.
    model = force_next_token(load_model(run), im_end)
    prompts = render_prompts(cfg.data.template, prompt_rows([{"messages": m} for m in [[
        {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]]], 1),
        load_tokenizer(run))
    ids = qwen_tokenizer(prompts, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert generate_token_ids(model, qwen_tokenizer, ids.tolist(), GenerationSettings(max_new_tokens=6)) == [[]]
    assert generate_responses(model, qwen_tokenizer, prompts, GenerationSettings(max_new_tokens=6)) == [""]
    out = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=6, do_sample=False)
    assert out[0, ids.shape[1]:].tolist() == [im_end]


# ---------------------------------------------------------------- agent data: tool calls, tool outputs, reasoning


def expected_roles(tokenizer, text, segments):
    """(role codes, turns) of each token of `text` from the hand-written account of where each character came from:
    a token takes its first character's role, or its last one's where that is a reply's (assistant, tool call,
    reasoning), as a BPE merge across the start of a reply belongs to the reply."""
    from sft.data.conversations import REPLY_ROLES, ROLE_NAMES

    char_role = np.concatenate([np.full(len(t), ROLE_NAMES.index(r)) for t, r, _ in segments])
    char_turn = np.concatenate([np.full(len(t), turn) for t, _, turn in segments])
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    starts = np.asarray([o[0] for o in enc.offsets])
    ends = np.maximum(np.asarray([o[1] for o in enc.offsets]), starts + 1)
    at = np.where(np.isin(char_role[ends - 1], REPLY_ROLES), ends - 1, starts)
    return char_role[at], char_turn[at], char_role, starts, ends


@pytest.mark.slow  # 1,200 conversations: 9-10 s of CPU
def test_ids_and_roles_of_1200_tool_calling_conversations_equal_qwens_template(qwen_tokenizer):
    from helpers import agent_conversations, qwen_role_segments
    from sft.data.conversations import REASONING, TOOL_CALL, TOOL_OUTPUT, check_conversation

    data = agent_conversations(1200, seed=3)
    for messages, _ in data:  # every generated conversation is valid as it stands
        assert check_conversation(messages)[0] == messages
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    got = renderer.tokens([m for m, _ in data], [t for _, t in data])
    seen = set()
    for (messages, tools), (ids, roles, turns) in zip(data, got):
        given = renderer.template_messages(messages)  # reasoning_content written into the content (no slot here)
        assert ids == qwen_tokenizer.apply_chat_template(given, tools=tools, tokenize=True)["input_ids"]
        segments = qwen_role_segments(given, tools)
        text = "".join(t for t, _, _ in segments)
        assert text == qwen_tokenizer.apply_chat_template(given, tools=tools, tokenize=False)
        want_roles, want_turns, char_role, starts, ends = expected_roles(qwen_tokenizer, text, segments)
        assert roles.tolist() == want_roles.tolist() and turns.tolist() == want_turns.tolist()
        for k in np.flatnonzero(np.asarray(roles) != char_role[starts]):  # a token of two roles: a merge at a reply
            assert roles[k] in set(char_role[starts[k]:ends[k]].tolist())
        seen |= set(roles.tolist())
    assert {TOOL_CALL, TOOL_OUTPUT, REASONING} <= seen
    shapes = [(m, t) for m, t in data if t and any(len(x.get("tool_calls") or []) > 1 for x in m)]
    assert len(shapes) > 100 and sum(not t for _, t in data) > 100  # several calls in a turn; conversations without
    assert sum(any(a["role"] == "tool" and b["role"] == "user" for a, b in zip(m, m[1:])) for m, _ in data) > 50
    assert sum(m[0]["role"] == "system" for m, t in data if t) > 100 < sum(m[0]["role"] != "system" for m, t in data if t)


def test_a_users_words_found_in_the_default_system_prompt_are_still_the_users(qwen_tokenizer):
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    for word in ("You", "a", "Qwen", "m"):  # all inside "You are Qwen, created by Alibaba Cloud..." or <|im_end|>
        conv = [{"role": "user", "content": word}, {"role": "assistant", "content": "ok"}]
        ids, roles, _ = renderer.tokens([conv])[0]
        assert qwen_tokenizer.decode([t for t, r in zip(ids, roles) if r == 2]) == word


AGENT = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "Checking both.", "reasoning_content": "Two cities, two calls.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": c}}} for c in ("Paris", "Rome")]},
    {"role": "tool", "content": "20C"}, {"role": "tool", "content": "25C"},
    {"role": "assistant", "content": "<think>25 > 20</think>\nRome is warmer."},
]
WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


def role_text(tokenizer, table, code, weight=None):
    """The text of one example's tokens of a role (and weight)."""
    ids, roles = table.column("input_ids").to_pylist()[0], table.column("roles").to_pylist()[0]
    w = table.column("loss_weights").to_pylist()[0]
    return tokenizer.decode([t for t, r, x in zip(ids, roles, w) if r == code and (weight is None or x == weight)])


@pytest.mark.parametrize("role_weights, train_on", [("", "all"), ("tool_output=0,reasoning=0.5", "all"),
                                                    ("tool_call=0.5", "last")])
def test_tool_calls_and_reasoning_weigh_like_the_reply_and_tool_outputs_like_the_prompt(qwen_tokenizer, role_weights,
                                                                                         train_on):
    from sft.data.conversations import ASSISTANT, REASONING, TOOL_CALL, TOOL_OUTPUT

    cfg = DataConfig(prompt_loss_weight=0.25, role_weights=role_weights, train_on=train_on)
    table = tokenize_batch({"messages": [AGENT], "tools": [WEATHER_TOOLS]}, qwen_tokenizer, cfg)
    roles = np.asarray(table.column("roles").to_pylist()[0])
    w = np.asarray(table.column("loss_weights").to_pylist()[0])
    response = np.asarray(table.column("response_mask").to_pylist()[0]).astype(bool)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'
    # ".\n" is one token: the reply's last character merged with the call's line break belongs to the call
    assert role_text(qwen_tokenizer, table, TOOL_CALL) == ".\n" + call % "Paris" + "\n" + call % "Rome"
    assert role_text(qwen_tokenizer, table, TOOL_OUTPUT) == ("<tool_response>\n20C\n</tool_response>\n"
                                                             "<tool_response>\n25C\n</tool_response>")
    assert role_text(qwen_tokenizer, table, REASONING) == ("<think>\nTwo cities, two calls.\n</think>\n\n"
                                                           "<think>25 > 20</think>\n")
    assert role_text(qwen_tokenizer, table, ASSISTANT) == "Checking both<|im_end|>Rome is warmer.<|im_end|>"
    first = np.asarray(table.column("turns").to_pylist()[0]) == 1  # the turn that calls
    expect = {"": {TOOL_CALL: 1.0, TOOL_OUTPUT: 0.25, REASONING: 1.0},
              "tool_output=0,reasoning=0.5": {TOOL_CALL: 1.0, TOOL_OUTPUT: 0.0, REASONING: 0.5},
              "tool_call=0.5": {TOOL_CALL: 0.5, TOOL_OUTPUT: 0.25, REASONING: 1.0}}[role_weights]
    for code, weight in expect.items():
        if train_on == "last" and code != TOOL_OUTPUT:  # the calling turn is an earlier reply: outside the loss
            assert set(w[(roles == code) & first]) == {0.25} and not response[first].any()
            assert set(w[(roles == code) & ~first]) <= {weight}
        else:
            assert set(w[roles == code]) == {weight}
    assert response.tolist() == (np.isin(roles, [ASSISTANT, TOOL_CALL, REASONING]) & (~first if train_on == "last"
                                                                                       else True)).tolist()


def test_agent_files_in_both_forms_tokenize_like_apply_chat_template(qwen_tokenizer, tmp_path):
    from helpers import agent_conversations

    data = agent_conversations(60, seed=5)
    openai = [{"messages": m, **({"tools": t} if t else {})} for m, t in data]
    path = tmp_path / "agent.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in openai))
    rows, report = load_rows(path)
    assert report.rows_kept == report.rows_read == 60
    ds, _ = tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path / "c"), max_length=8192))
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    assert ds["input_ids"] == [qwen_tokenizer.apply_chat_template(renderer.template_messages(m), tools=t,
                                                                  tokenize=True)["input_ids"] for m, t in data]


# A ChatML-like template that shows only each message's content: it drops tools and calls.
DROPS_TOOLS = ("{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' -}}"
               "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def test_a_template_that_drops_tools_or_calls_is_an_error_not_a_silent_loss(qwen_tokenizer):
    from sft.core.chat import renderer_for

    alpaca = renderer_for(qwen_tokenizer, DROPS_TOOLS)  # (the alpaca chat template renders both)
    with pytest.raises(ValueError, match="does not render the tool call 'get_weather'"):
        alpaca.tokens([AGENT[:2] + [{"role": "assistant", "content": "x"}]])
    plain = [AGENT[0], {"role": "assistant", "content": "I cannot check the weather."}]
    with pytest.raises(ValueError, match="does not render the tools"):
        alpaca.tokens([plain], [WEATHER_TOOLS])


@pytest.mark.parametrize("with_system", [False, True])
def test_the_templates_own_system_prompt_and_tool_list_keep_their_roles_weight(qwen_tokenizer, with_system):
    """A first message weighing 0 zeroes its own words only: Qwen2.5's default system prompt ("You are Qwen...",
    when the data has none) and its `# Tools` block are the template's text, weighing w like any system text."""
    from sft.data.conversations import SYSTEM

    system = [{"role": "system", "content": "Be brief.", "loss_weight": 0}] if with_system else []
    first = {**AGENT[0], "loss_weight": 0} if not with_system else AGENT[0]
    chat = system + [first, {"role": "assistant", "content": "Let me check."}]
    table = tokenize_batch({"messages": [chat], "tools": [WEATHER_TOOLS]}, qwen_tokenizer,
                                         DataConfig(prompt_loss_weight=0.5))
    at_half = role_text(qwen_tokenizer, table, SYSTEM, weight=0.5)
    zeroed = role_text(qwen_tokenizer, table, SYSTEM, weight=0.0)
    assert "# Tools" in at_half and "get_weather" in at_half
    if with_system:
        assert zeroed.strip() == "Be brief." and "Be brief" not in at_half  # ".\n\n" is one token: the message's
    else:
        assert at_half.startswith("You are Qwen, created by Alibaba Cloud") and zeroed == ""
        assert role_text(qwen_tokenizer, table, 2, weight=0.0) == AGENT[0]["content"]  # the user's words: 0


def test_a_trimmed_middle_never_leaves_part_of_a_trained_tool_call(qwen_tokenizer):
    """A long last exchange loses its prompt's middle; where that cut would land inside an earlier trained tool call
    (a broken call the model would learn), the whole example is dropped instead (counted as too long)."""
    from sft.data.conversations import TOOL_CALL

    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris " * 120}}}
    chat = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "20C"}, {"role": "assistant", "content": "Sunny, 20C."}]
    whole = conversation_renderer(qwen_tokenizer, DataConfig()).tokens([chat], [WEATHER_TOOLS])[0]
    n_call = int((whole[1] == TOOL_CALL).sum())
    assert len(whole[0]) > 200 and n_call > 100
    outcomes = set()
    for max_length in range(len(whole[0]) - 40, len(whole[0]), 8):  # cuts at several points of the call
        table = tokenize_batch({"messages": [chat], "tools": [WEATHER_TOOLS]}, qwen_tokenizer,
                                             DataConfig(max_length=max_length, prompt_loss_weight=0.0))
        if table.num_rows == 0:
            outcomes.add("dropped")
            continue
        roles = np.asarray(table.column("roles").to_pylist()[0])
        assert (roles == TOOL_CALL).sum() in (0, n_call), max_length  # the call whole, or not at all
        outcomes.add("kept")
    assert "dropped" in outcomes

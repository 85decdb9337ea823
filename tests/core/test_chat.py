"""Conversations: reading messages and ShareGPT rows, validation by turn, rendering through chat templates
(ids equal apply_chat_template's), per-role weights, all/last and truncation."""

import json
import random

import numpy as np
import pandas as pd
import pytest

from sft.data.conversations import ASSISTANT, check_conversation
from sft.data.config import DataConfig
from sft.core.tokenize import conversation_renderer, tokenize_conversations_batch
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
    with pytest.raises(ValueError, match="b.jsonl: holds conversations while the files before it hold the other"):
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


def test_ids_equal_apply_chat_template_on_1200_qwen_conversations(qwen_tokenizer, gsm8k_path):
    convs = conversations_from(json.loads(gsm8k_path.read_text()), 1200)
    table = tokenize_conversations_batch({"messages": convs}, qwen_tokenizer, DataConfig(max_length=4096))
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


def test_ids_equal_apply_chat_template_with_the_alpaca_chat_template(demo_tokenizer, gsm8k_path):
    convs = conversations_from(json.loads(gsm8k_path.read_text()), 1000, seed=1)
    cfg = DataConfig(max_length=100_000, chat_template="alpaca")
    template = conversation_renderer(demo_tokenizer, cfg).template
    table = tokenize_conversations_batch({"messages": convs}, demo_tokenizer, cfg)
    expected = [demo_tokenizer.apply_chat_template(m, chat_template=template, tokenize=True)["input_ids"]
                for m in convs]
    assert table.column("input_ids").to_pylist() == expected


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_weights_by_role_and_im_end_trained_although_pad_is_eos(qwen_tokenizer, w):
    assert qwen_tokenizer.pad_token_id == qwen_tokenizer.eos_token_id  # <|endoftext|>: the trap of trl #1623
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    ids, roles, turns = renderer.tokens([CHAT])[0]
    table = tokenize_conversations_batch({"messages": [CHAT]}, qwen_tokenizer, DataConfig(prompt_loss_weight=w))
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
    table = tokenize_conversations_batch({"messages": [CHAT]}, qwen_tokenizer, cfg)
    ids, w = table.column("input_ids").to_pylist()[0], table.column("loss_weights").to_pylist()[0]
    response = table.column("response_mask").to_pylist()[0]
    assert qwen_tokenizer.decode([t for t, v in zip(ids, w) if v == 1]) == "20<|im_end|>"
    assert response == [int(v == 1) for v in w] and set(w) == {0.25, 1.0}


def test_truncation_drops_earlier_turns_and_keeps_the_last_answer(qwen_tokenizer):
    long = [CHAT[0]] + [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok " * 30}] * 3
    long += CHAT[1:3]
    table = tokenize_conversations_batch({"messages": [long]}, qwen_tokenizer, DataConfig(max_length=120))
    ids, w = table.column("input_ids").to_pylist()[0], table.column("loss_weights").to_pylist()[0]
    text = qwen_tokenizer.decode(ids)
    assert len(ids) <= 120 and table.column("truncation").to_pylist() == ["turns_dropped"]
    assert text.startswith("<|im_start|>system\nYou add numbers.") and text.endswith("5<|im_end|>\n")
    assert qwen_tokenizer.decode([t for t, v in zip(ids, w) if v == 1]) == "5<|im_end|>"
    dropped = tokenize_conversations_batch({"messages": [long]}, qwen_tokenizer,
                                           DataConfig(max_length=120, truncation="drop"))
    assert dropped.num_rows == 0


def test_an_answer_longer_than_the_window_keeps_half_of_it(qwen_tokenizer):
    conv = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok " * 100}]
    table = tokenize_conversations_batch({"messages": [conv]}, qwen_tokenizer, DataConfig(max_length=64))
    w = table.column("loss_weights").to_pylist()[0]
    assert len(w) == 64 and sum(v == 1 for v in w) == 32
    assert table.column("truncation").to_pylist() == ["both_trimmed"]


def test_tokenize_rows_caches_conversations_with_the_same_keys_as_alpaca(qwen_tokenizer, tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), prompt_loss_weight=0.5)
    ds, report = tokenize_rows([{"messages": CHAT}] * 3, qwen_tokenizer, cfg)
    assert set(ds.column_names) == {"input_ids", "labels", "loss_weights", "response_mask", "length", "truncation",
                                    "roles", "turns", "message_weights", "chat", "weight_codes", "weight_scale"}
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

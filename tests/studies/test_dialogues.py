"""The synthetic dialogues (sft/studies/dialogues.py) and their lm-eval tasks (sft.studies.tasks.DialogueTask): exact answers,
determinism, a last turn that needs the history, and multi-turn prompts through the chat template."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from helpers import demo_config
from sft.data.rows import load_rows
from sft.core.tokenize import with_training_template
from sft.studies.dialogues import (
    KINDS, LARGER_SUM, NEXT_DAY, NEXT_MONTH, OPPOSITE_OF_IT, PARITY_OF_IT, PREVIOUS_DAY, PREVIOUS_MONTH, SMALLER_SUM, SPELL_IT, build_dialogue_dataset, make_dialogue, resolve_kinds,
)
from sft.studies.short_families import ANTONYMS, MONTHS, WEEKDAYS
from sft.studies.synthetic import FAMILIES
from sft.studies.vocab import spell_number
from sft.studies.tasks import DIALOGUE_GROUP, read_dialogue_rows, write_dialogue_tasks
from sft.studies.tool_tasks import ANSWER_GROUP, CALL_GROUP
from sft.studies.tools import TOOL_KINDS
from sft.evaluation.tasks import render_chat, task_manager


@pytest.mark.parametrize("follow_up, earlier, reply", [
    (SPELL_IT, ["7"], "seven"), (SPELL_IT, ["18"], "eighteen"), (PARITY_OF_IT, ["5"], "odd"),
    (PARITY_OF_IT, ["8"], "even"), (NEXT_DAY, ["Sunday"], "Monday"), (PREVIOUS_DAY, ["Monday"], "Sunday"),
    (NEXT_MONTH, ["December"], "January"), (PREVIOUS_MONTH, ["March"], "February"),
    (OPPOSITE_OF_IT, ["cold"], "hot"), (LARGER_SUM, ["5", "12"], "12"), (SMALLER_SUM, ["5", "12"], "5"),
])
def test_follow_ups_answer_from_the_earlier_answers(follow_up, earlier, reply):
    assert FAMILIES[follow_up.family].answer(follow_up.ask(earlier), "") == reply


def expected_reply(kind: str, follow_up_text: str, earlier: list[str]) -> str:
    """The last reply computed by hand from the earlier answers, without the families' answer functions."""
    back = any(word in follow_up_text for word in ("before", "precedes"))
    smaller = any(word in follow_up_text for word in ("smaller", "less", "lower"))
    step = -1 if back else 1
    return {
        "add_spell": lambda: spell_number(int(earlier[0])),
        "count_parity": lambda: "even" if int(earlier[0]) % 2 == 0 else "odd",
        "weekday_step": lambda: WEEKDAYS[(WEEKDAYS.index(earlier[0]) + step) % 7],
        "month_step": lambda: MONTHS[(MONTHS.index(earlier[0]) + step) % 12],
        "antonym_back": lambda: ANTONYMS[earlier[0]],
        "sums_compare": lambda: str((min if smaller else max)(int(a) for a in earlier)),
    }[kind]()


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_answer_is_exact(kind):
    rng = random.Random(1)
    for _ in range(200):
        row = make_dialogue(kind, rng)
        turns = [m for m in row["messages"] if m["role"] != "system"]
        users, replies = turns[0::2], turns[1::2]
        assert [m["role"] for m in users] == ["user"] * len(users)
        assert [m["role"] for m in replies] == ["assistant"] * len(replies)
        assert len(replies) == len(KINDS[kind].openings) + 1 and row["answer"] == replies[-1]["content"]
        for family, user, reply in zip(KINDS[kind].openings, users, replies):  # openings: their family's answer
            instruction, _, input = user["content"].partition("\n")
            assert FAMILIES[family].answer(instruction, input) == reply["content"]
        earlier = [r["content"] for r in replies[:-1]]
        assert row["answer"] == expected_reply(kind, users[-1]["content"], earlier)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_last_turn_needs_the_history(kind):
    """The last user turn names no earlier answer, and the same last turn has different replies in other dialogues."""
    rng = random.Random(2)
    replies = defaultdict(set)
    for _ in range(300):
        row = make_dialogue(kind, rng)
        last_user = row["messages"][-2]["content"]
        earlier = [m["content"] for m in row["messages"][:-2] if m["role"] == "assistant"]
        words = set(re.findall(r"[\w-]+", last_user))
        assert not words & set(earlier)
        replies[last_user].add(row["answer"])
    assert all(len(answers) > 1 for answers in replies.values())


def test_system_turns_open_some_dialogues_only():
    rng = random.Random(3)
    roles = [make_dialogue("add_spell", rng)["messages"][0]["role"] for _ in range(400)]
    assert 0.15 < roles.count("system") / len(roles) < 0.35  # SYSTEM_SHARE = 0.25


def test_splits_are_deterministic_disjoint_balanced_and_read_by_the_loader(tmp_path):
    a = build_dialogue_dataset(tmp_path / "a", 60, 12, 24, seed=5)
    b = build_dialogue_dataset(tmp_path / "b", 60, 12, 24, seed=5)
    c = build_dialogue_dataset(tmp_path / "c", 60, 12, 24, seed=6)
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in a)
    assert a["train"].read_bytes() != c["train"].read_bytes()
    rows = {s: [json.loads(line) for line in p.read_text().splitlines()] for s, p in a.items()}
    convs = {s: {json.dumps(r["messages"]) for r in rs} for s, rs in rows.items()}
    assert len(convs["train"]) == 60
    assert not convs["train"] & convs["heldout"] and not convs["train"] & convs["test"]
    assert [r["kind"] for r in rows["test"]].count("sums_compare") == 24 // len(KINDS)
    loaded, _ = load_rows(str(a["train"]))  # the data path reads the split unchanged
    assert [r["messages"] for r in loaded] == [r["messages"] for r in rows["train"]]
    assert len(read_dialogue_rows(a["test"])) == 24


def test_bad_kinds_and_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        resolve_kinds(["add_spell", "nope"])
    bad = tmp_path / "test.jsonl"
    bad.write_text(json.dumps({"instruction": "Add 1 and 2.", "output": "3", "family": "add"}) + "\n")
    with pytest.raises(ValueError, match="line 1 is not a dialogue"):
        read_dialogue_rows(bad)


def load_task(out, kind: str):
    name = f"{DIALOGUE_GROUP}_{kind}"
    return task_manager([name], [out]).load([name])["tasks"][name]


def test_dialogue_tasks_send_the_history_as_chat_turns(demo_tokenizer, tmp_path):
    """Through a chat template each request is the history's turns rendered by it; without one, the text the
    training template rendered when the task was written; the target is the last reply."""
    paths = build_dialogue_dataset(tmp_path / "data", 0, 0, 12, seed=0)
    tok = with_training_template(demo_tokenizer, "alpaca")
    render = render_chat(tok)
    out = tmp_path / "tasks"
    names = write_dialogue_tasks(paths["test"], out, render, "alpaca", [tok.eos_token])
    assert names == [f"{DIALOGUE_GROUP}_{k}" for k in KINDS]
    task = load_task(out, "sums_compare")
    docs = list(task.test_docs())
    rows = [r for r in read_dialogue_rows(paths["test"]) if r["kind"] == "sums_compare"]
    for chat in (True, False):
        task.build_all_requests(apply_chat_template=chat, fewshot_as_multiturn=chat,
                                chat_template=render if chat else None)
        contexts = [inst.args[0] for inst in sorted(task.instances, key=lambda i: i.doc_id)]
        expected = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                    for r in rows]
        assert contexts == expected  # the same text either way, the training chat template's
    for doc, row in zip(docs, rows):
        assert doc["answer"] == row["answer"] and task.doc_to_target(doc) == row["answer"]
        assert task.process_results(doc, [row["answer"]])["exact_match"] == 1.0


def test_multi_turn_requests_keep_every_turn_in_a_chat_template(qwen_tokenizer, demo_tokenizer, tmp_path):
    """With ChatML (Qwen2.5) the request holds each earlier reply as an assistant turn, not one merged message."""
    paths = build_dialogue_dataset(tmp_path / "data", 0, 0, 6, seed=0)
    out = tmp_path / "tasks"
    write_dialogue_tasks(paths["test"], out, render_chat(with_training_template(demo_tokenizer, "alpaca")),
                         "alpaca", ["<|im_end|>"])
    task = load_task(out, "add_spell")
    task.build_all_requests(apply_chat_template=True, fewshot_as_multiturn=True,
                            chat_template=render_chat(qwen_tokenizer))
    (inst,) = task.instances
    doc = inst.doc
    first, reply, last = doc["history"][-3]["content"], doc["history"][-2]["content"], doc["history"][-1]["content"]
    assert inst.args[0].endswith(f"<|im_start|>user\n{first}<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n"
                                 f"<|im_start|>user\n{last}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_demo_chat_trains_and_evaluates_dialogues(demo_root, tmp_path):
    """A few steps on dialogues (and tool-use conversations) from the small demo's base, evaluated by the CLI: every
    kind, raw and @chat, the tool-use kinds' call and answer tasks, the held-out loss of tool calls and outputs."""
    from sft.core.overrides import load_config
    from sft.studies.demo import ensure_assets
    from sft.runs.layout import run_dir
    from sft.core.train import train

    base = demo_config(demo_root)
    paths = {"demo.dialogue_dir": str(tmp_path / "Dataset/demo-chat"), "demo.dataset_dir": base.demo.dataset_dir,
             "demo.base_dir": base.demo.base_dir, "model.model": base.model.model,
             "data.data": str(tmp_path / "Dataset/demo-chat/train.jsonl"),
             "data.eval_data": str(tmp_path / "Dataset/demo-chat/heldout.jsonl"),
             "model_root": str(tmp_path / "model"), "tensorboard_root": str(tmp_path / "tb"),
             "cache_dir": str(tmp_path / ".cache"), "demo.n_dialogue_train": 48, "demo.n_dialogue_heldout": 12,
             "demo.n_dialogue_test": 12, "demo.n_tool_train": 16, "demo.n_tool_heldout": 4, "demo.n_tool_test": 8,
             **{f"demo.{k}": getattr(base.demo, k) for k in (
                 "n_train", "n_heldout", "n_test", "hidden_size", "intermediate_size", "num_hidden_layers")}}
    cfg = load_config("demo-chat", **paths, max_steps=4, eval_steps=1000, save_steps=1000, prompt_loss_weight=0.5)
    ensure_assets(cfg)
    train(cfg)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "sft", "evaluate", "--models", f"base={cfg.model.model},w={run_dir(cfg)}",
           "--limit", "2", "--batch-size", "8", "--max-gen-toks", "8", "--name", "t", "--out", str(tmp_path / "ev")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "ev" / "t").iterdir()
    summary = (run / "summary" / f"summary_{run.name}.csv").read_text()
    for task in [f"{DIALOGUE_GROUP}_{kind}" for kind in KINDS] + [f"{g}_{k}" for g in (CALL_GROUP, ANSWER_GROUP)
                                                                  for k in TOOL_KINDS]:
        assert f"{task}," in summary and f"{task}@chat," in summary
    assert "call_exact_match" in summary
    assert (run / "predictions" / "w" / f"{DIALOGUE_GROUP}_add_spell@chat.jsonl").is_file()
    heldout = json.loads((run / "heldout.json").read_text())["models"]["w"]
    assert heldout["examples"] == 16 and heldout["tool_call_tokens"] > 0 and heldout["tool_output_tokens"] > 0

"""inspect_data: statistics by group (the demo's per-family length ratios) agree with the groups inspected alone;
offline, with the demo's tokenizer."""

import json

import pytest

from sft.data.config import DataConfig
from sft.core.inspect_data import format_stats, inspect_data

ROWS = [
    {"instruction": "Count from 3 to 9.", "input": "", "output": "3, 4, 5, 6, 7, 8, 9", "family": "count_up"},
    {"instruction": "Name the capital of Peru.", "input": "", "output": "Lima", "family": "capital"},
    {"instruction": "Count from 10 to 14.", "input": "", "output": "10, 11, 12, 13, 14", "family": "count_up"},
    {"instruction": "Name the capital of Chile.", "input": "", "output": "Santiago", "family": "capital"},
    {"instruction": "Which word is last?", "input": "red cat sat", "output": "sat", "family": "last_word"},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stats_by_group_equal_each_group_inspected_alone(demo_tokenizer, tmp_path):
    cfg = DataConfig(data=str(write(tmp_path / "all.jsonl", ROWS)), cache_dir=str(tmp_path / "cache"))
    stats, ds, rows = inspect_data(cfg, demo_tokenizer, by="family")
    assert list(stats["groups"]) == ["count_up", "capital", "last_word"]  # order of first appearance
    assert "family" not in stats["ignored_columns"] and all("family" not in r for r in rows)
    assert sum(g["examples"] for g in stats["groups"].values()) == len(ds) == 5
    for family, g in stats["groups"].items():
        alone = [{k: v for k, v in r.items() if k != "family"} for r in ROWS if r["family"] == family]
        cfg_alone = DataConfig(data=str(write(tmp_path / f"{family}.jsonl", alone)), cache_dir=cfg.cache_dir)
        ref, _, _ = inspect_data(cfg_alone, demo_tokenizer)
        assert g["examples"] == ref["examples"] == len(alone)
        assert g["prompt_tokens_mean"] == pytest.approx(ref["prompt_tokens"] / len(alone))
        assert g["response_tokens_mean"] == pytest.approx(ref["response_tokens"] / len(alone))
        assert g["instruction_output_ratio"] == pytest.approx(ref["instruction_output_ratio"])
        assert g["generation_ratio_Rg"] == pytest.approx(ref["generation_ratio_Rg"])
    # Counted by hand for one group: the two answers' tokens, plus one EOS each.
    answers = demo_tokenizer(["Lima", "Santiago"], add_special_tokens=False)["input_ids"]
    assert stats["groups"]["capital"]["response_tokens_mean"] == (len(answers[0]) + len(answers[1]) + 2) / 2
    assert stats["groups"]["count_up"]["generation_ratio_Rg"] > stats["groups"]["capital"]["generation_ratio_Rg"]
    assert "| capital | 2 | " in format_stats(stats)


def test_grouping_by_a_missing_column_names_the_row(demo_tokenizer, tmp_path):
    rows = [dict(ROWS[0]), {k: v for k, v in ROWS[1].items() if k != "family"}]
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2, field family: is missing"):
        inspect_data(DataConfig(data=str(path), cache_dir=str(tmp_path / "cache")), demo_tokenizer, by="family")


def test_a_group_dropped_whole_by_truncation_is_reported_not_a_crash(demo_tokenizer, tmp_path):
    long = {"instruction": "Which word is last?", "input": " ".join(["cat"] * 80), "output": "cat", "family": "long"}
    path = write(tmp_path / "d.jsonl", [ROWS[1], long, ROWS[3], long])
    cfg = DataConfig(data=str(path), max_length=64, truncation="drop", cache_dir=str(tmp_path / "cache"))
    stats, ds, _ = inspect_data(cfg, demo_tokenizer, by="family")
    assert len(ds) == 2 and stats["rows_dropped"] == {"too long (truncation=drop)": 2}
    assert stats["groups"]["long"]["examples"] == 0 and stats["groups"]["long"]["rows"] == 2
    assert stats["groups"]["capital"]["examples"] == 2
    assert "| long | 0 (all 2 rows longer than max_length, dropped) |" in format_stats(stats)
    with pytest.raises(ValueError, match=r"all 2 rows are longer than max_length=64.*--truncation trim"):
        inspect_data(DataConfig(data=str(write(tmp_path / "l.jsonl", [long, long])), max_length=64,
                                truncation="drop", cache_dir=cfg.cache_dir), demo_tokenizer, by="family")


def test_conversations_are_counted_by_role_and_shown_by_turn(qwen_tokenizer, tmp_path):
    from sft.core.inspect_data import render_example

    chat = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "And that times 4?"},
            {"role": "assistant", "content": "20"}]
    cfg = DataConfig(data=str(write(tmp_path / "c.jsonl", [{"messages": chat}] * 3)), prompt_loss_weight=0.5,
                     train_on="last", cache_dir=str(tmp_path / "cache"))
    stats, ds, _ = inspect_data(cfg, qwen_tokenizer)
    # The counts of docs/data.md's example: 46 tokens a row, read from the tokenized rows' role column; a turn's
    # markup (<|im_start|>user\n, <|im_end|>\n) is the template's, only its words are the role's (issue #28).
    assert stats["tokens_by_role"] == {"template": 69, "system": 12, "user": 42, "assistant": 15}
    assert sum(stats["tokens_by_role"].values()) == 3 * 46 == stats["prompt_tokens"] + stats["response_tokens"]
    shown = render_example(ds[0], qwen_tokenizer, colour=False)
    assert shown.startswith("[[turn 1 template, weight 0.5: <|im_start|>system\n]][[turn 1 system, weight 0.5: You add "
                            "numbers.")
    assert "[[turn 3 assistant, weight 0.5: 5<|im_end|>]]" in shown and "[[turn 5 assistant, weight 1: 20<|im_end|>]]" \
        in shown


def test_the_weights_table_shows_each_token_with_its_role_and_weight(demo_tokenizer, tmp_path):
    from sft.core.inspect_data import token_weights_table

    cfg = DataConfig(data=str(write(tmp_path / "d.jsonl", ROWS[1:2])), prompt_loss_weight=0.25,
                     cache_dir=str(tmp_path / "cache"))
    _, ds, _ = inspect_data(cfg, demo_tokenizer)
    example = ds[0]
    table = token_weights_table(example, demo_tokenizer)
    lines = table.splitlines()
    assert lines[0] == "weights set by sft.core.weights.step_weights"
    rows = lines[2:-1]
    assert len(rows) == len(example["input_ids"])
    names = ["template", "system", "user", "assistant"]
    assert [r.split()[-2:] for r in rows] == [[names[r], f"{w:g}"]
                                              for r, w in zip(example["roles"], example["loss_weights"])]
    assert rows[-1].split()[-3:] == ["<|endoftext|>", "assistant", "1"]  # EOS is the reply's, weight 1
    assert {r.split()[-2] for r in rows} == {"template", "user", "assistant"}  # the preamble and headers apart
    count = {name: sum(1 for r in rows if r.split()[-2] == name) for name in ("template", "user", "assistant")}
    assert lines[-1].startswith(f"tokens by role: template {count['template']} at 0.25, user {count['user']} at "
                                f"0.25, assistant {count['assistant']} at 1;")
    assert f"adds {sum(example['loss_weights'][1:]):g} to the step's sum" in lines[-1]
    short = token_weights_table(example, demo_tokenizer, max_tokens=3).splitlines()
    assert len(short) == 2 + 3 + 2 and short[-2].endswith(f"{len(rows) - 3} more tokens")


def test_the_weights_table_names_the_conversation_weights(qwen_tokenizer, tmp_path):
    from sft.core.inspect_data import token_weights_table

    chat = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    cfg = DataConfig(data=str(write(tmp_path / "c.jsonl", [{"messages": chat}])), prompt_loss_weight=0,
                     cache_dir=str(tmp_path / "cache"))
    _, ds, _ = inspect_data(cfg, qwen_tokenizer)
    table = token_weights_table(ds[0], qwen_tokenizer)
    assert table.startswith("weights set by sft.core.weights.step_weights")
    assert [line.split()[-2:] for line in table.splitlines() if line.split()[1:2] == ["5"]] == [["assistant", "1"]]
    assert any(line.split()[-2:] == ["template", "0"] for line in table.splitlines())


@pytest.mark.slow  # inspect-data twice, each loading the 18 MB tokenizer: 4-6 s of CPU
def test_agent_data_reports_tool_roles_and_the_first_bad_rows_in_text_and_json(tmp_path, capsys):
    from helpers import QWEN_TOKENIZER, TOOL_SCHEMAS
    from sft.cli.main import main

    call = {"from": "function_call", "value": json.dumps({"name": "now", "arguments": {}})}
    good = {"conversations": [{"from": "human", "value": "Time?"}, call, {"from": "observation", "value": "9:00"},
                              {"from": "gpt", "value": "It is nine."}], "tools": json.dumps(TOOL_SCHEMAS[3:])}
    bad = {"conversations": [{"from": "human", "value": "Time?"}, {"from": "observation", "value": "9:00"},
                             {"from": "gpt", "value": "Nine."}]}
    data = write(tmp_path / "agent.jsonl", [good, bad, good])
    args = ["inspect-data", "--data", str(data), "--tokenizer", str(QWEN_TOKENIZER), "--on-bad-rows", "skip",
            "--cache-dir", str(tmp_path / "cache"), "--prompt-loss-weight", "0.5", "--role-weights", "tool_output=0"]
    assert main(args + ["--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    where = f"{data}: line 2, turn 2: role tool turn without a call before it"
    assert stats["first_bad_rows"] == [where] and stats["rows_dropped"] == {"role tool turn without a call before it": 1}
    tokens, weights = stats["tokens_by_role"], stats["weight_by_role"]
    assert tokens["tool_call"] > 0 and weights["tool_call"] == tokens["tool_call"]  # trained like the reply
    assert tokens["tool_output"] > 0 and weights["tool_output"] == 0  # --role-weights tool_output=0
    assert "reasoning" not in tokens  # an agent role is reported where the data has it
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"first_bad_rows             {where}" in text and "'tool_call': " in text


@pytest.mark.slow  # the 18 MB tokenizer loaded twice (the command's, the fixture): 3.5-4.5 s of CPU at load 11-15
def test_plain_text_exports_every_weight_one_and_the_eos(qwen_tokenizer, tmp_path, capsys):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    texts = ["Paris is the capital of France.", "Seven, eight, nine, ten."]
    data = write(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "export.jsonl"
    assert main(["inspect-data", "--data", str(data), "--tokenizer", str(QWEN_TOKENIZER), "--export", str(out),
                 "--prompt-loss-weight", "0", "--show", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "[[text, weight 1: Paris is the capital of France.<|endoftext|>]]" in capsys.readouterr().out
    tok = qwen_tokenizer
    for t, line in zip(texts, out.read_text().splitlines()):
        ex = json.loads(line)
        assert ex["input_ids"] == tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert set(ex["roles"]) == {"text"} and set(ex["weights"]) == {1.0}

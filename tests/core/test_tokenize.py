"""sft.core.tokenize and sft.core.prepare: tokenization with loss weights (known answers on the demo's tokenizer,
the exact boundary with Qwen2.5's), truncation, and the tokenized cache. (Loading rows: tests/data/test_rows.py.)"""

import numpy as np
import pytest

from helpers import tokenize_batch
from sft.core.prepare import tokenize_rows
from sft.core.prompts import render_prompt
from sft.core.tokenize import truncate_example
from sft.core.weights import IGNORE_INDEX
from sft.data.config import DataConfig
from sft.data.rows import fingerprint_rows, load_rows

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Sort the words.", "input": "b a c", "output": "a b c"},
]


# ---------------------------------------------------------------- known answers: the code that runs, offline

W = [0.0, 0.1, 1.0]
NO_INPUT = {"instruction": "Name the capital of Peru.", "input": "", "output": "Lima"}
WITH_INPUT = {"instruction": "Count the words in the input.", "input": "red cat sat", "output": "3"}


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_one(tokenizer, row, **cfg):
    """tokenize_batch (the map function training caches, weighted) on one row; its example, or None."""
    out = tokenize_batch({k: [v] for k, v in row.items()}, tokenizer, DataConfig(**cfg)).to_pylist()
    return out[0] if out else None


def expected(prompt, response, w):
    """What training must see for a prompt and response of token ids: weights, labels and the response mask."""
    return {
        "input_ids": prompt + response,
        "labels": ([IGNORE_INDEX] * len(prompt) if w == 0 else prompt) + response,
        "loss_weights": [np.float32(w)] * len(prompt) + [1.0] * len(response),
        "response_mask": [0] * len(prompt) + [1] * len(response),
        "length": len(prompt) + len(response),
    }


@pytest.mark.parametrize("row", [NO_INPUT, WITH_INPUT], ids=["no-input", "input"])
@pytest.mark.parametrize("w", W)
def test_labels_and_weights_known_answer(demo_tokenizer, row, w):
    eos = demo_tokenizer.eos_token_id
    assert eos == 0 and ids(demo_tokenizer, "Lima") == [demo_tokenizer.convert_tokens_to_ids("Lima")]  # one token
    prompt = ids(demo_tokenizer, render_prompt("alpaca", row["instruction"], row["input"]))
    assert ("### Input:" in demo_tokenizer.decode(prompt)) == bool(row["input"])
    ex = tokenize_one(demo_tokenizer, row, prompt_loss_weight=w)
    # The response and its EOS weigh 1, the prompt w; labels are the ids (unshifted), -100 exactly where w = 0.
    assert {k: ex[k] for k in expected([], [], w)} == expected(prompt, ids(demo_tokenizer, row["output"]) + [eos], w)
    assert ex["truncation"] == "ok"
    assert sum(ex["loss_weights"]) == pytest.approx(w * len(prompt) + len(ex["input_ids"]) - len(prompt))


@pytest.mark.parametrize("w", W)
def test_a_long_prompt_loses_its_middle_and_keeps_the_response(demo_tokenizer, w):
    row = {**WITH_INPUT, "input": " ".join(["cat"] * 60), "output": "60"}
    prompt = ids(demo_tokenizer, render_prompt("alpaca", row["instruction"], row["input"]))
    response = ids(demo_tokenizer, "60") + [demo_tokenizer.eos_token_id]
    assert len(prompt) > 60 and len(response) == 3  # digits are single tokens in Qwen2's split
    ex = tokenize_one(demo_tokenizer, row, prompt_loss_weight=w, max_length=32)
    # 32 = 29 prompt tokens (the first 15 and the last 14: half of them, at most 16, from the end) + 3 response.
    kept = prompt[:15] + prompt[-14:]
    assert {k: ex[k] for k in expected([], [], w)} == expected(kept, response, w)
    assert ex["truncation"] == "prompt_trimmed"
    assert demo_tokenizer.decode(prompt[-14:]).endswith("### Response:\n")  # the cue stays next to the response


@pytest.mark.parametrize("w", W)
def test_a_long_response_keeps_half_the_window_without_eos(demo_tokenizer, w):
    row = {**WITH_INPUT, "input": " ".join(["cat"] * 60), "output": ", ".join(map(str, range(10, 40)))}
    prompt = ids(demo_tokenizer, render_prompt("alpaca", row["instruction"], row["input"]))
    response = ids(demo_tokenizer, row["output"])
    ex = tokenize_one(demo_tokenizer, row, prompt_loss_weight=w, max_length=32)
    # Both too long: the response keeps half the window (16), the prompt its first 8 and last 8 tokens.
    assert {k: ex[k] for k in expected([], [], w)} == expected(prompt[:8] + prompt[-8:], response[:16], w)
    assert ex["truncation"] == "both_trimmed" and demo_tokenizer.eos_token_id not in ex["input_ids"]


def test_a_short_prompt_is_kept_whole_and_the_response_cut(demo_tokenizer):
    row = {**NO_INPUT, "output": ", ".join(map(str, range(10, 60)))}
    prompt = ids(demo_tokenizer, render_prompt("alpaca", row["instruction"], ""))
    assert len(prompt) < 32  # so the response gets the rest of the 64-token window
    ex = tokenize_one(demo_tokenizer, row, prompt_loss_weight=0.1, max_length=64)
    response = ids(demo_tokenizer, row["output"])[: 64 - len(prompt)]
    assert {k: ex[k] for k in expected([], [], 0.1)} == expected(prompt, response, 0.1)
    assert ex["truncation"] == "response_trimmed"


def test_drop_policy_drops_the_long_row_and_keeps_the_others_columns(demo_tokenizer):
    long = {**WITH_INPUT, "input": " ".join(["cat"] * 60), "family": "count"}
    batch = {k: [long[k], v] for k, v in {**NO_INPUT, "family": "capital"}.items()}
    table = tokenize_batch(batch, demo_tokenizer, DataConfig(max_length=64, truncation="drop"))
    assert table.num_rows == 1 and table.column("family").to_pylist() == ["capital"]
    kept = table.to_pylist()[0]
    assert kept["input_ids"] == tokenize_one(demo_tokenizer, NO_INPUT)["input_ids"]


def test_truncate_example_edge_cases():
    prompt = list(range(100, 160))
    fitted, kept_response, status = truncate_example(prompt, [1, 2, 3, 9], 40)
    assert status == "prompt_trimmed" and kept_response == [1, 2, 3, 9] and len(fitted) == 36
    assert fitted == prompt[:20] + prompt[-16:]  # the instruction at the start, the "### Response:" cue at the end
    fitted, kept_response, status = truncate_example(list(range(100, 200)), list(range(300, 400)), 64)
    assert status == "both_trimmed" and len(kept_response) == 32  # never less than half the window
    assert truncate_example(list(range(100)), [1], 50, truncation="drop") is None


def test_tokenize_rows_matches_the_batch_function_and_counts_drops(demo_tokenizer, tmp_path):
    rows = [NO_INPUT, {**WITH_INPUT, "input": " ".join(["cat"] * 60)}, WITH_INPUT]
    cfg = DataConfig(prompt_loss_weight=0.1, max_length=64, truncation="drop", cache_dir=str(tmp_path))
    ds, report = tokenize_rows(rows, demo_tokenizer, cfg)
    assert report.examples_in == 3 and report.examples_out == 2 and report.examples_dropped_too_long == 1
    assert ds["input_ids"] == [tokenize_one(demo_tokenizer, r)["input_ids"] for r in (rows[0], rows[2])]


# ---------------------------------------------------------------- the real Qwen2.5 vocabulary (../shared)


def test_boundary_is_exact_with_qwen_tokenizer(qwen_tokenizer, tmp_path):
    # "### Response:\n" followed by a response starting with a newline or a space is where
    # BPE would merge across the boundary if prompt and response were tokenized together.
    rows = [
        {"instruction": "Say it.", "input": "", "output": "\nIndented answer"},
        {"instruction": "Say it.", "input": "ctx", "output": "   spaced"},
        {"instruction": "Add.", "input": "", "output": "42"},
    ]
    for w in (0.0, 1.0):
        cfg = DataConfig(prompt_loss_weight=w, cache_dir=str(tmp_path))
        ds, _ = tokenize_rows(rows, qwen_tokenizer, cfg)
        for row, ex in zip(rows, ds):
            prompt_ids = qwen_tokenizer(render_prompt("alpaca", row["instruction"], row["input"]),
                                        add_special_tokens=False)["input_ids"]
            n_p = len(prompt_ids)
            assert ex["input_ids"][:n_p] == prompt_ids  # the prompt's tokens are a prefix of the example's
            assert ex["response_mask"] == [0] * n_p + [1] * (len(ex["input_ids"]) - n_p)
            assert qwen_tokenizer.decode(ex["input_ids"][n_p:-1]) == row["output"]
    joint = qwen_tokenizer(render_prompt("alpaca", "Say it.") + "\nIndented answer")["input_ids"]
    separate = ds[0]["input_ids"][:-1]
    assert joint != separate  # the merge that tokenizing apart avoids really happens here


def test_eos_is_trained_although_it_is_the_pad_id(qwen_tokenizer, tmp_path):
    from sft.core.collate import WeightedLMCollator

    assert qwen_tokenizer.eos_token_id == qwen_tokenizer.pad_token_id == 151643
    ds, _ = tokenize_rows(ROWS, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path)))
    for ex in ds:
        assert ex["input_ids"][-1] == 151643 and ex["labels"][-1] == 151643 and ex["loss_weights"][-1] == 1.0
    batch = WeightedLMCollator(pad_token_id=qwen_tokenizer.pad_token_id)([ds[0], ds[1]])
    short = 0 if len(ds[0]["input_ids"]) < len(ds[1]["input_ids"]) else 1
    n = len(ds[short]["input_ids"])
    # The real EOS is attended to and labelled; only the padding after it is not.
    assert batch["attention_mask"][short, n - 1] == 1 and batch["labels"][short, n - 1] == 151643
    assert (batch["attention_mask"][short, n:] == 0).all() and (batch["labels"][short, n:] == -100).all()
    assert (batch["input_ids"][short, n:] == 151643).all()


def test_truncation_keeps_response_tokens_with_qwen(qwen_tokenizer, tmp_path):
    rows = [{"instruction": "Summarise.", "input": "word " * 400, "output": "A short summary."},
            {"instruction": "Write.", "input": "", "output": "long " * 400}]
    ds, report = tokenize_rows(rows, qwen_tokenizer, DataConfig(max_length=128, cache_dir=str(tmp_path)))
    assert report.examples_truncated == 2 and report.examples_dropped_too_long == 0
    first, second = ds[0], ds[1]
    assert len(first["input_ids"]) <= 128 and len(second["input_ids"]) <= 128
    assert qwen_tokenizer.decode([t for t, r in zip(first["input_ids"], first["response_mask"]) if r]) == (
        "A short summary.<|endoftext|>")
    n_prompt = len(second["response_mask"]) - sum(second["response_mask"])
    assert n_prompt < 64 and sum(second["response_mask"]) == 128 - n_prompt  # a short prompt is kept whole
    assert qwen_tokenizer.eos_token_id not in second["input_ids"]  # the cut response has no EOS
    assert qwen_tokenizer.decode(first["input_ids"]).count("### Response:") == 1


def test_gsm8k_loads_and_tokenizes_with_cache(qwen_tokenizer, gsm8k_path, tmp_path):
    rows, report = load_rows(gsm8k_path)
    assert report.rows_kept == 7473 and not report.rows_dropped
    cfg = DataConfig(cache_dir=str(tmp_path))
    ds, _ = tokenize_rows(rows[:500], qwen_tokenizer, cfg)
    assert list(tmp_path.glob("tokenized-train-*.arrow"))  # cached on disk, keyed by data and settings
    again, _ = tokenize_rows(rows[:500], qwen_tokenizer, cfg)
    assert again["input_ids"] == ds["input_ids"]
    assert fingerprint_rows(rows[:500]) != fingerprint_rows(rows[1:501])


# ---------------------------------------------------------------- plain text: every token a target


@pytest.mark.parametrize("w, end_of_turn", [(0.0, "turn"), (0.5, "none")])
def test_plain_text_is_its_tokens_and_eos_every_one_weighing_one(qwen_tokenizer, tmp_path, w, end_of_turn):
    from sft.data.conversations import TEXT

    texts = ["Paris is the capital of France.", "Count: 7, 8, 9."]
    cfg = DataConfig(data="x", cache_dir=str(tmp_path), prompt_loss_weight=w, end_of_turn=end_of_turn)
    ds, report = tokenize_rows([{"text": t} for t in texts], qwen_tokenizer, cfg, name="text")
    assert report.examples_out == 2 and report.truncation_counts == {"ok": 2}
    for t, ex in zip(texts, ds):
        assert ex["input_ids"] == ids(qwen_tokenizer, t) + [qwen_tokenizer.eos_token_id]
        assert set(ex["roles"]) == {TEXT} and ex["loss_weights"] == [1.0] * len(ex["input_ids"])
        assert ex["labels"] == ex["input_ids"] and all(ex["response_mask"])


def test_a_long_text_keeps_its_start_or_is_dropped(qwen_tokenizer, tmp_path):
    text = " ".join(["word"] * 80)
    for truncation, kept in (("trim", [ids(qwen_tokenizer, text)[:32]]), ("drop", [])):
        cfg = DataConfig(data="x", cache_dir=str(tmp_path), max_length=32, truncation=truncation)
        ds, report = tokenize_rows([{"text": text}], qwen_tokenizer, cfg, name=f"long-{truncation}")
        assert ds["input_ids"] == kept, truncation  # trimmed: its start, without the EOS (it does not end there)
    assert report.examples_dropped_too_long == 1

"""`python -m sft plan` and the step arithmetic: against the Trainer itself, the seed's run and a hand count."""

import json
import math

import numpy as np
import pytest

from helpers import SHARED, demo_config
from sft.core.overrides import load_config
from sft.data.splits import split_indices
from sft.core.costs import GIB, GPUS, HEAD_CHUNK_SLACK, head_chunk_tokens, memory_estimate, optimizer_steps
from sft.core.plan import head_positions, plan_run
from sft.core.prepare import prepare_data
from sft.core.prompts import render_prompt

ALPACA_CLEANED_ROWS = 51_760  # yahma/alpaca-cleaned's train split


def test_the_seeds_step_count_and_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset as resolved in an empty folder, whatever this checkout's Dataset/ holds
    # The seed's run: all 51,760 rows, 3 epochs of batch 4, no accumulation, no held-out rows.
    assert optimizer_steps(ALPACA_CLEANED_ROWS, 4, 1, 3.0)["max_steps"] == 38_820
    # The preset as configured: 2% held out (1,035 rows), batch 4 x 4 accumulation.
    cfg = load_config("qwen2.5-0.5b-alpaca")
    d, t = cfg.data, cfg.train
    train, held = split_indices(ALPACA_CLEANED_ROWS, d.eval_size, d.split_seed)
    assert (len(train), len(held)) == (50_725, 1_035)
    steps = optimizer_steps(len(train), t.per_device_train_batch_size, t.gradient_accumulation_steps,
                            t.num_train_epochs)
    assert steps == {"micro_batches_per_epoch": 12_682, "steps_per_epoch": 3_171, "max_steps": 9_513,
                     "examples_per_step": 16}
    # --gradient-accumulation-steps 1 keeps the seed's step size; the held-out rows still make it 38,046.
    assert optimizer_steps(len(train), 4, 1, 3.0)["max_steps"] == 38_046
    # Several processes: accelerate gives each ceil(batches / world) micro-batches.
    assert optimizer_steps(len(train), 4, 4, 3.0, world_size=8)["max_steps"] == 3 * math.ceil(math.ceil(12_682 / 8) / 4)


@pytest.mark.slow
def test_step_arithmetic_equals_the_trainers(demo_root, one_thread):
    from sft.core.train import build_trainer, train

    # A real run: 30 rows, batch 4 (8 micro-batches, the last of 2), accumulation 3, 2 epochs -> 3 x 2 steps.
    cfg = demo_config(demo_root, max_rows=30, per_device_train_batch_size=4, gradient_accumulation_steps=3,
                      num_train_epochs=2.0, eval_steps=1000, save_steps=1000, logging_steps=1000, run_name="steps",
                      overwrite=True)
    trainer = train(cfg)
    assert trainer.state.max_steps == trainer.state.global_step == optimizer_steps(30, 4, 3, 2.0)["max_steps"] == 6
    # The Trainer's own count for other shapes, drop_last and fractional epochs included.
    for batch, accum, epochs, drop_last in ((8, 1, 1.0, False), (7, 2, 1.5, False), (7, 2, 2.0, True),
                                            (3, 4, 0.3, False)):
        c = demo_config(demo_root, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                        num_train_epochs=epochs, dataloader_drop_last=drop_last, run_name="steps")
        t = build_trainer(c, model=trainer.model, tokenizer=trainer.processing_class, data=trainer.prepared_data)
        n = len(t.train_dataset)
        expected = t.set_initial_training_values(t.args, t.get_train_dataloader())[-1]
        assert optimizer_steps(n, batch, accum, epochs, drop_last=drop_last)["max_steps"] == expected, (batch, accum)


ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour of the sky."},
    {"instruction": "Reverse the word.", "input": "stressed", "output": "desserts"},
    {"instruction": "Translate to French.", "input": "Good morning, my friend.", "output": "Bonjour, mon ami."},
    {"instruction": "Say hello.", "input": "", "output": "Hello! How can I help you today?"},
]


@pytest.fixture(scope="module")
def plan_root(tmp_path_factory, qwen_tokenizer):
    """The real Qwen2.5-0.5B config.json and tokenizer (no weights: a plan does not need them) and 5 rows."""
    from sft.studies.reference import build_reference_fixture

    root = tmp_path_factory.mktemp("plan")
    build_reference_fixture(root, SHARED, tiny=False, tokenizer=qwen_tokenizer)  # the session's: no second load
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    return root


def _plan(root, monkeypatch, **overrides):
    monkeypatch.chdir(root)  # the preset finds model/ and Dataset/ in the working folder, as a user's would
    cfg = load_config("qwen2.5-0.5b-alpaca", data=str(root / "rows.jsonl"), eval_data=str(root / "held.jsonl"),
                      cache_dir=str(root / ".cache"), **overrides)
    return plan_run(cfg)


@pytest.mark.slow  # two plans (each loads the 18 MB tokenizer and builds Qwen2.5-0.5B on the meta device): 8 s of CPU
def test_plan_figures_against_a_hand_count(plan_root, monkeypatch, qwen_tokenizer):
    tok = qwen_tokenizer
    prompt = [len(tok(render_prompt("alpaca", r["instruction"], r["input"] or None), add_special_tokens=False)
                  ["input_ids"]) for r in ROWS]
    response = [len(tok(r["output"], add_special_tokens=False)["input_ids"]) + 1 for r in ROWS]  # + EOS
    lengths = np.array(prompt) + np.array(response)
    p = _plan(plan_root, monkeypatch, per_device_train_batch_size=5, gradient_accumulation_steps=1)

    d = p["data"]
    assert (d["train_examples"], d["heldout_examples"], d["truncated"]) == (5, 2, 0)
    assert (d["prompt_tokens"], d["response_tokens"]) == (sum(prompt), sum(response))
    # One batch of 5: padded and grouped pad every example to the longest; packed pads nothing.
    pad = 5 * int(lengths.max()) - int(lengths.sum())
    assert p["by_batching"]["padded"]["padding_per_epoch"] == p["by_batching"]["grouped"]["padding_per_epoch"] == pad
    assert p["by_batching"]["packed"] == {"tokens_per_epoch": int(lengths.sum()), "padding_per_epoch": 0,
                                          "padding_share": 0.0}
    assert p["batching"] == "packed" and p["steps"]["max_steps"] == 3  # one step per epoch, 3 epochs

    m = p["model"]  # Qwen2.5-0.5B's published size, from config.json alone
    assert m["parameters"] == 494_032_768 and m["embedding_parameters"] == 151_936 * 896 and m["tied_embeddings"]
    body = 494_032_768 - 151_936 * 896
    attention = sum(4 * 24 * 896 * n * (n + 1) / 2 for n in lengths)
    # w = 0 with the selective head: the head runs on the response tokens only.
    train = 3 * (6 * body * lengths.sum() + 6 * 151_936 * 896 * sum(response) + 3 * attention)
    assert p["flops"]["train"] == pytest.approx(train, rel=1e-12)
    held = lengths[:2]
    n_evals = 3 // 500 + 1  # eval_steps 500 > 3 steps: only the final evaluation
    assert p["flops"]["eval"] == pytest.approx(
        n_evals * (2 * 494_032_768 * held.sum() + sum(4 * 24 * 896 * n * (n + 1) / 2 for n in held)), rel=1e-12)

    mem = p["memory_bytes"]  # the preset: fp32 weights (bf16 autocast), fp32 gradients and AdamW's two fp32 states
    assert (mem["weights"], mem["gradients"], mem["adamw_states"]) == (4 * 494_032_768, 4 * 494_032_768,
                                                                       8 * 494_032_768)
    bf16 = _plan(plan_root, monkeypatch, per_device_train_batch_size=5, gradient_accumulation_steps=1,
                 dtype="bfloat16")["memory_bytes"]  # pure bf16: half of each
    assert (bf16["weights"], bf16["gradients"], bf16["adamw_states"]) == (2 * 494_032_768, 2 * 494_032_768,
                                                                          4 * 494_032_768)
    per_token = 2 * (4 * 896 + 4 * 896 + 4 * 128 + 4 * 4864) + 8 * 896
    assert mem["activations"] == 5 * int(lengths.max()) * 24 * per_token
    # Selective head under bf16 autocast: one fp32 chunk of 883 positions (worked on in place) and the bf16
    # product; the tied embedding's dense fp32 gradient; the CUDA context.
    assert mem["lm_head"] == min(883, 5 * int(lengths.max())) * 151_936 * (4 + 2)
    assert mem["tied_embedding_gradient"] == 4 * 151_936 * 896 and mem["cuda_context"] == GIB
    assert p["peak_memory_bytes"] == sum(mem.values())
    for g, gpu in zip(p["gpus"], GPUS):
        assert g["hours"] * 3600 == pytest.approx(p["flops"]["total"] / (gpu.peak_flops * 0.4))
        assert g["fits"]


def test_memory_estimate_of_the_lm_head():
    shape = {"parameters": 1000, "vocab": 151_936, "hidden": 64, "embedding_parameters": 151_936 * 64,
             "tied_embeddings": True, "layers": 1, "q_dim": 64, "kv_dim": 32, "intermediate": 128}
    rows = head_chunk_tokens(151_936) + head_chunk_tokens(151_936) // HEAD_CHUNK_SLACK
    assert rows == 883 + 110  # the largest chunk: a 512 MiB one with a remainder of up to 1/8 shared in (576 MiB)
    fp32 = memory_estimate(shape, 4, 5000, act_bytes=4, context_bytes=0)
    assert fp32["lm_head"] == rows * 151_936 * 4  # one fp32 chunk, worked on in place; no cast, no extra grad
    assert memory_estimate(shape, 4, 946, act_bytes=4)["lm_head"] == 946 * 151_936 * 4  # 946 positions: one chunk
    assert fp32["tied_embedding_gradient"] == 4 * 151_936 * 64 and fp32["cuda_context"] == 0
    assert memory_estimate(shape, 4, 100, act_bytes=4)["lm_head"] == 100 * 151_936 * 4  # fewer tokens than a chunk
    bf16 = memory_estimate(shape, 2, 5000, act_bytes=2)  # bf16 weights: the fp32 gradient accumulator too
    assert bf16["lm_head"] == rows * 151_936 * 6 + 4 * 151_936 * 64
    full = memory_estimate(shape, 4, 5000, act_bytes=4, selective=False)
    assert full["lm_head"] == 5000 * 151_936 * 12  # logits, log-softmax and its gradient, fp32
    assert memory_estimate(shape | {"tied_embeddings": False}, 4, 10)["tied_embedding_gradient"] == 0


@pytest.mark.slow  # a plan: 5 s of CPU
def test_plan_steps_and_unmasked_head(plan_root, monkeypatch):
    p = _plan(plan_root, monkeypatch, per_device_train_batch_size=2, gradient_accumulation_steps=2,
              prompt_loss_weight=1.0, batching="padded")
    # ceil(5 / 2) = 3 micro-batches, ceil(3 / 2) = 2 steps per epoch, 3 epochs.
    assert p["steps"]["micro_batches_per_epoch"] == 3 and p["steps"]["max_steps"] == 6
    assert p["batching"] == "padded" and p["by_batching"]["padded"]["padding_per_epoch"] > 0
    # w = 1: the head runs on every position that has a next token.
    assert p["flops"]["head_tokens_per_epoch"] == p["data"]["real_tokens_per_epoch"] - 5


@pytest.mark.slow  # two plans: 9 s of CPU
def test_plan_cli_prints_and_errors(plan_root, monkeypatch, capsys):
    from sft.cli.main import main

    monkeypatch.chdir(plan_root)
    assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "rows.jsonl", "--eval-data", "held.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "optimizer steps" in out and "H100 SXM" in out and "RTX 4090" in out and "494,032,768 parameters" in out
    # No data: Dataset/ holds nothing usable and the hub copy is unreachable offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "no/such.json"]) == 2
    assert "no/such.json: no such file or folder" in capsys.readouterr().err


CHATS = [[{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"},
          {"role": "assistant", "content": "5"}, {"role": "user", "content": "And that times 4?"},
          {"role": "assistant", "content": "20"}],
         [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]] * 3


@pytest.mark.parametrize("train_on", ["all", "last"])
@pytest.mark.slow  # two plans: 9-10 s of CPU
def test_plan_counts_the_tokens_of_each_role_of_conversations(plan_root, monkeypatch, capsys, qwen_tokenizer,
                                                              train_on):
    from sft.cli.main import main
    from sft.data.conversations import ROLE_NAMES
    from sft.data.config import DataConfig
    from sft.core.tokenize import conversation_renderer

    (plan_root / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    monkeypatch.chdir(plan_root)
    cfg = load_config("qwen2.5-0.5b-alpaca", data="chats.jsonl", eval_size=2, train_on=train_on,
                      cache_dir=str(plan_root / ".cache"))
    d = plan_run(cfg)["data"]
    train_idx, _ = split_indices(len(CHATS), 2, cfg.data.split_seed)
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    roles = np.concatenate([renderer.tokens([CHATS[i]])[0][1] for i in train_idx])
    # template, system, user, assistant; the agent roles (tool_call, tool_output, reasoning) only where present
    assert d["tokens_by_role"] == {name: int((roles == code).sum()) for code, name in enumerate(ROLE_NAMES[:4])}
    assert sum(d["tokens_by_role"].values()) == d["real_tokens_per_epoch"]
    untrained = d["tokens_by_role"]["assistant"] - d["response_tokens"]
    assert (untrained > 0) == (train_on == "last")
    assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "chats.jsonl", "--eval-size", "2",
                 "--train-on", train_on]) == 0
    assert (f"by role: template {d['tokens_by_role']['template']:,} + system {d['tokens_by_role']['system']:,}"
            in capsys.readouterr().out)


@pytest.mark.slow  # a plan: 6 s of CPU
def test_plan_prints_what_loading_dropped_and_ignored_and_counts_tool_roles(plan_root, monkeypatch, capsys, caplog):
    import logging

    from helpers import agent_conversations
    from sft.cli.main import main

    rows = [{"messages": m, "tools": t, "source": "synthetic"} for m, t in agent_conversations(8, seed=1) if t]
    rows.append({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]})
    (plan_root / "agent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(plan_root)
    with caplog.at_level(logging.INFO, logger="sft"):
        assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "agent.jsonl", "--eval-size", "2",
                     "--on-bad-rows", "skip"]) == 0
    logged = caplog.text
    assert f"agent.jsonl: {len(rows)} rows read, {len(rows) - 1} kept, 1 dropped (1 role tool turn without a call" in logged
    assert f"first dropped: agent.jsonl: line {len(rows)}, turn 2" in logged and "columns ignored: source" in logged
    out = capsys.readouterr().out
    assert "+ tool_call " in out and "+ tool_output " in out

# A reply with a message weight of 0 (LLaMA-Factory's key): its tokens are never scored, whatever the spec.
WEIGHTED_CHATS = [CHATS[0][:2] + [dict(CHATS[0][2], loss_weight=0)] + CHATS[0][3:], CHATS[1]] * 3


@pytest.mark.parametrize("settings", [
    {},  # w = 0: the trained replies only
    {"role_weights": "user=0.5"},  # w = 0, the user's words too
    pytest.param({"role_weights": "template=0,system=0", "prompt_loss_weight_end": 1.0},  # a ramp: the user's
                 marks=pytest.mark.slow),  # words after step 1; and a plan, whose FLOPs count them: 5 s of CPU
    {"train_on": "last"},  # w = 0: the last reply only
    {"prompt_loss_weight": 1.0, "role_weights": "template=0"},  # unmasked but for the markup
])
def test_plan_head_positions_follow_the_whole_weight_spec(plan_root, monkeypatch, qwen_tokenizer, settings):
    from sft.data.conversations import ASSISTANT, ROLE_NAMES, TEMPLATE
    from sft.data.config import DataConfig
    from sft.core.tokenize import conversation_renderer

    (plan_root / "weighted_chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in WEIGHTED_CHATS))
    monkeypatch.chdir(plan_root)
    cfg = load_config("qwen2.5-0.5b-alpaca", data="weighted_chats.jsonl", eval_size=2,
                      cache_dir=str(plan_root / ".cache"), **settings)
    train = prepare_data(cfg.data, qwen_tokenizer).train
    # By hand: the weight of every target token (each example's first token is none), at the ramp's largest w.
    w = max(settings.get("prompt_loss_weight", 0.0), settings.get("prompt_loss_weight_end", 0.0))
    roles_w = dict(pair.split("=") for pair in settings["role_weights"].split(",")) if "role_weights" in settings else {}
    roles_w = {k: float(v) for k, v in roles_w.items()}
    train_idx, _ = split_indices(len(WEIGHTED_CHATS), 2, cfg.data.split_seed)
    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    expected = 0
    for i in train_idx:
        chat = WEIGHTED_CHATS[i]
        _, roles, turns = renderer.tokens([chat])[0]
        last = max(t for t, m in enumerate(chat) if m["role"] == "assistant")
        for role, turn in zip(roles[1:], turns[1:]):
            message = chat[turn].get("loss_weight", 1.0)
            if role == TEMPLATE:
                weight = roles_w.get("template", w)
            elif role == ASSISTANT:
                trained = settings.get("train_on", "all") == "all" or turn == last
                weight = (roles_w.get("assistant", 1.0) if trained else w) * message
            else:
                weight = roles_w.get(ROLE_NAMES[role], w) * message
            expected += weight > 0
    assert 0 < head_positions(train, cfg.data.weight_spec()) == expected < sum(train["length"]) - len(train_idx)
    if "prompt_loss_weight_end" not in settings:
        return
    p = plan_run(cfg)  # the plan's FLOPs count them (one plan: each takes seconds)
    assert p["flops"]["head_tokens_per_epoch"] == expected
    body, head = p["model"]["body_parameters"], p["model"]["embedding_parameters"]
    tokens = p["by_batching"]["packed"]["tokens_per_epoch"]
    assert p["flops"]["train"] == pytest.approx(3 * (6 * body * tokens + 6 * head * expected
                                                     + 3 * p["flops"]["attention_forward_per_epoch"]), rel=1e-12)
    assert f"at w = {w:g}" in p["flops"]["head_tokens_note"]


@pytest.mark.slow  # plans: 10.2 s of CPU
def test_untrained_and_truncated_examples_are_dropped_counted_and_printed(plan_root, monkeypatch, capsys, caplog):
    """A conversation whose only reply the data weighs 0 teaches nothing at w = 0 (every weight 0): it is dropped
    and counted, at every w alike (the regimes stay paired); truncation counts are on the console, not only in the
    manifest."""
    import logging

    from sft.cli.main import main
    from sft.models.tokenizer import load_tokenizer

    quiet = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue.", "loss_weight": 0}]
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    rows = [CHATS[0], quiet, long, CHATS[1], quiet, CHATS[0]] * 4  # 24 rows: 8 untrained, 4 long
    (plan_root / "weights.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    (plan_root / "held-chats.jsonl").write_text(json.dumps({"messages": CHATS[1]}) + "\n")
    monkeypatch.chdir(plan_root)
    for w in (0.0, 1.0):
        cfg = load_config("qwen2.5-0.5b-alpaca", data="weights.jsonl", eval_data="held-chats.jsonl",
                          max_length=128, prompt_loss_weight=w, cache_dir=str(plan_root / ".cache"))
        data = prepare_data(cfg.data, load_tokenizer(cfg.model))
        tok = data.info["train_tokenize"]
        assert tok["examples_dropped_untrained"] == 8 and tok["examples_out"] == 16, tok
        assert tok["truncation_counts"] == {"ok": 12, "prompt_trimmed": 4}
        assert all(sum(r) > 0 for r in data.train["response_mask"])
    with caplog.at_level(logging.INFO, logger="sft"):
        assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "weights.jsonl", "--eval-data",
                     "held-chats.jsonl", "--max-length", "128"]) == 0
    assert ("train split: 16 of 24 examples kept; 4 truncated (4 prompt_trimmed); 8 dropped: no trained token"
            in caplog.text), caplog.text[-2000:]


@pytest.mark.slow  # a plan: 4.8-5.2 s of CPU at load 15
def test_plan_of_plain_text_counts_every_token_as_a_target(plan_root, monkeypatch, qwen_tokenizer):
    texts = [{"text": f"{r['instruction']} {r['output']}"} for r in ROWS]
    (plan_root / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    monkeypatch.chdir(plan_root)
    cfg = load_config("qwen2.5-0.5b-alpaca", data="texts.jsonl", eval_size=1, cache_dir=str(plan_root / ".cache"))
    p = plan_run(cfg)
    train_idx, _ = split_indices(len(texts), 1, cfg.data.split_seed)
    lengths = [len(qwen_tokenizer(texts[i]["text"], add_special_tokens=False)["input_ids"]) + 1 for i in train_idx]
    d = p["data"]  # every token (EOS included) is a target: no prompt tokens, the head on every predicted position
    assert d["prompt_tokens"] == 0 and d["response_tokens"] == d["real_tokens_per_epoch"] == sum(lengths)
    assert head_positions(prepare_data(cfg.data, qwen_tokenizer).train, cfg.data.weight_spec()) == sum(lengths) - len(lengths)


@pytest.mark.slow  # a plan: 6 s of CPU
def test_plan_counts_the_examples_and_tokens_of_each_source_of_a_mixture(plan_root, monkeypatch, capsys, caplog):
    import logging

    from sft.cli.main import main

    (plan_root / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    monkeypatch.chdir(plan_root)
    with caplog.at_level(logging.INFO, logger="sft"):
        assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "rows.jsonl:0.7,more.jsonl:0.3",
                     "--eval-size", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["data"]
    # 4 + 19 training examples: rows gives 0.7 x 23 = 16.1 -> 16 (its 4 each 4 times), more 6.9 -> 7 of its 19
    assert {k: (v["examples"], v["available_examples"]) for k, v in d["sources"].items()} == {"rows": (16, 4),
                                                                                              "more": (7, 19)}
    assert d["train_examples"] == 23 and d["heldout_examples"] == 2
    assert sum(v["tokens"] for v in d["sources"].values()) == d["real_tokens_per_epoch"]
    assert sum(v["response_tokens"] for v in d["sources"].values()) == d["response_tokens"]
    assert "mixture rows: share 0.7000, 4 training examples -> 16 drawn (fewer than its share: repeated, every " \
           "example 4x)" in caplog.text
    assert "mixture more: share 0.3000, 19 training examples -> 7 drawn (12 not drawn: a seeded choice of 7)" in caplog.text
    assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", "--data", "rows.jsonl:0.7,more.jsonl:0.3",
                 "--eval-size", "1"]) == 0
    assert (f"source rows: 16 examples (share 0.7000 of 23, drawn from 4), {d['sources']['rows']['tokens']:,} tokens"
            in capsys.readouterr().out)

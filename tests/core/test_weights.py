"""Roles in the tokenized data, weights at batch time (issue #28): the WeightSpec, role weights, message weights,
the cache that serves every weight, the normalisers against float64 hand computations, and the schedule."""

import copy
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from helpers import demo_config, tokenize_batch
from sft.core.loss import weighted_cross_entropy
from sft.core.overrides import apply_overrides, load_config
from sft.core.prepare import tokenize_rows
from sft.core.train import build_trainer
from sft.core.weights import add_weight_columns
from sft.data.config import DataConfig
from sft.data.conversations import ASSISTANT, REASONING, TEMPLATE, USER
from sft.data.rows import load_rows
from sft.data.weights import CLOSING, WeightSpec

ROW = {"instruction": "Add the numbers.", "input": "3 and 4", "output": "7"}
CHAT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And times 4?"}, {"role": "assistant", "content": "20"}]


def _one(tokenizer, row, **cfg):
    return tokenize_batch({k: [v] for k, v in row.items()}, tokenizer, DataConfig(**cfg)).to_pylist()[0]


def test_alpaca_rows_carry_template_user_and_assistant_roles(qwen_tokenizer):
    ex = _one(qwen_tokenizer, ROW)
    ids, roles = np.asarray(ex["input_ids"]), np.asarray(ex["roles"])
    text = lambda code: qwen_tokenizer.decode(ids[roles == code])  # noqa: E731
    # the instruction and the input; a token that covers any of their characters is theirs (Qwen merges ".\n\n")
    assert text(USER) == "Add the numbers.\n\n3 and 4"
    assert text(ASSISTANT) == "7<|endoftext|>"  # the response and its EOS
    assert "### Instruction:" in text(TEMPLATE) and "Below is an instruction" in text(TEMPLATE)
    assert ex["turns"] == [0] * int((roles != ASSISTANT).sum()) + [1] * int((roles == ASSISTANT).sum())
    assert ex["message_weights"] == [1.0] * len(ids) and ex["chat"] is False


@pytest.mark.parametrize("w", [0.0, 0.1, 0.5, 1.0])
def test_weights_from_roles_equal_the_old_baked_in_weights_bit_for_bit(qwen_tokenizer, w):
    ex = _one(qwen_tokenizer, ROW, prompt_loss_weight=w)
    response = np.asarray(ex["roles"]) == ASSISTANT
    old = np.where(response, 1.0, w).astype(np.float32)  # what tokenization stored before roles (CACHE_VERSION 4)
    assert np.asarray(ex["loss_weights"], dtype=np.float32).tobytes() == old.tobytes()
    assert ex["response_mask"] == response.astype(int).tolist()


def test_role_weights_override_w_for_the_roles_named(qwen_tokenizer):
    ex = _one(qwen_tokenizer, ROW, prompt_loss_weight=1.0, role_weights={"template": 0.0, "user": 0.5})
    weights, roles = np.asarray(ex["loss_weights"]), np.asarray(ex["roles"])
    assert set(weights[roles == TEMPLATE]) == {0.0} and set(weights[roles == USER]) == {0.5}
    assert set(weights[roles == ASSISTANT]) == {1.0}
    labels = np.asarray(ex["labels"])
    assert (labels[roles == TEMPLATE] == -100).all() and (labels[roles == USER] == np.asarray(ex["input_ids"])[roles == USER]).all()


def test_role_weights_read_from_flags_and_overrides_alike(tmp_path):
    cfg = load_config("demo", role_weights="template=0,system=0,user=0.5", prompt_loss_weight_end=1.0,
                      loss_normalizer="weighted_tokens")
    spec = cfg.data.weight_spec()
    assert spec.role_weights == {"template": 0.0, "system": 0.0, "user": 0.5}
    # template, system, user, assistant, tool_call, tool_output, reasoning, an untrained reply
    assert spec.table(0.25) == [0.0, 0.0, 0.5, 1.0, 1.0, 0.25, 1.0, 1.0, 0.25]  # text 1 always
    cfg = apply_overrides(load_config("demo"), {"role_weights": {"user": 1}})
    assert cfg.data.role_weights == {"user": 1.0}


@pytest.mark.parametrize("overrides, message", [
    ({"role_weights": "tool=0"}, "unknown role 'tool'; the roles are template, system, user, assistant"),
    ({"role_weights": "user=-1"}, "the weight of user must be a number >= 0"),
    ({"role_weights": "text=0.5"}, "plain text \\(role text\\) always weighs 1"),
    ({"role_weights": {"user": float("nan")}}, "the weight of user must be a number >= 0"),
    ({"role_weights": "user"}, "Cannot read .user. for role_weights"),
    ({"prompt_loss_weight_end": 1.5}, "--prompt-loss-weight-end must be in \\[0, 1\\]"),
    ({"loss_normalizer": "mean"}, "--loss-normalizer must be one of weight_sum, response_tokens, weighted_tokens"),
])
def test_bad_weight_settings_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("demo", **overrides)


def test_one_cache_serves_every_weight_setting(qwen_tokenizer, tmp_path):
    rows = [ROW, {"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    seen = []
    for w, roles in ((0.0, {}), (1.0, {}), (0.5, {"template": 0}), (0.0, {"user": 1})):
        ds, report = tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path), prompt_loss_weight=w,
                                                                    role_weights=roles))
        seen.append((report.from_cache, ds[0]["loss_weights"]))
    assert [c for c, _ in seen] == [False, True, True, True]  # tokenized once
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 1
    assert len({tuple(w) for _, w in seen}) == 4  # and every setting got its own weights


def _chat_file(tmp_path, turns):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": turns}) + "\n")
    return path


def _export(tmp_path, capsys, data, *flags):
    """`inspect-data --export --json` through the CLI: the exported lines and the printed statistics."""
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    out = tmp_path / "masks.jsonl"
    assert main(["inspect-data", "--data", str(data), "--tokenizer", str(QWEN_TOKENIZER), "--export", str(out),
                 *flags, "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    return [json.loads(x) for x in out.read_text().splitlines()], json.loads(capsys.readouterr().out)


def _trained(tokenizer, line):
    """The tokens of an exported line that weigh more than 0, decoded one by one."""
    return [tokenizer.decode([i]) for i, w in zip(line["input_ids"], line["weights"]) if w > 0]


def _plan_counts(tmp_path, tokenizer, data, **cfg):
    """What plan counts for a data file: the head's positions and the first example's trained reply tokens."""
    from sft.core.plan import head_positions
    from sft.core.prepare import prepare_data

    config = DataConfig(data=str(data), eval_data=str(data), cache_dir=str(tmp_path / "cache"), **cfg)
    train = prepare_data(config, tokenizer).train
    return head_positions(train, config.weight_spec()), sum(train[0]["response_mask"])


@pytest.mark.parametrize("key, value, factor", [("loss_weight", 0, 0.0), ("loss_weight", 0.25, 0.25),
                                                ("weight", 0, 0.0), ("train", False, 0.0), ("loss", True, 1.0)])
def test_message_weights_from_the_data_multiply_the_message(qwen_tokenizer, tmp_path, key, value, factor):
    turns = [dict(t) for t in CHAT]
    turns[1][key] = value  # the first reply
    rows, report = load_rows(_chat_file(tmp_path, turns))
    ex = tokenize_batch({"messages": [rows[0]["messages"]]}, qwen_tokenizer, DataConfig()).to_pylist()[0]
    roles, turn_of, w = map(np.asarray, (ex["roles"], ex["turns"], ex["loss_weights"]))
    first, last = (roles == ASSISTANT) & (turn_of == 1), (roles == ASSISTANT) & (turn_of == 3)
    assert set(w[first]) == {factor} and set(w[last]) == {1.0}
    assert not report.unknown_message_keys


@pytest.mark.parametrize("key, value", [("loss_weight", "high"), ("loss_weight", -1), ("train", 1), ("weight", None)])
def test_a_bad_message_weight_names_file_row_turn_and_field(tmp_path, key, value):
    turns = [dict(t) for t in CHAT]
    turns[1][key] = value
    with pytest.raises(ValueError, match=rf"c.jsonl: line 1, turn 2, field {key}: is not a valid message weight"):
        load_rows(_chat_file(tmp_path, turns))


def test_unknown_message_keys_are_reported_not_dropped_silently(tmp_path):
    turns = [dict(t) for t in CHAT]
    turns[1]["name"] = "bot"
    turns[3]["name"] = "bot"
    _, report = load_rows(_chat_file(tmp_path, turns))
    assert report.unknown_message_keys == {"name": 2} and report.to_dict()["unknown_message_keys"] == {"name": 2}


def test_train_on_last_weighs_earlier_replies_like_the_prompt():
    roles = np.asarray([TEMPLATE, USER, ASSISTANT, TEMPLATE, USER, ASSISTANT])
    turns = np.asarray([0, 0, 1, 2, 2, 3])
    table = pa.table({"input_ids": [list(range(6))], "roles": [roles.tolist()], "turns": [turns.tolist()],
                      "message_weights": [[1.0] * 6]})
    ex = add_weight_columns(table, WeightSpec(prompt_loss_weight=0.3, train_on="last", role_weights={"user": 0.7}))
    ex = ex.to_pylist()[0]
    assert ex["loss_weights"] == pytest.approx([0.3, 0.7, 0.3, 0.3, 0.7, 1.0]) and ex["response_mask"] == [0] * 5 + [1]


# ---------------------------------------------------------------- normalisers, float64 by hand


def _hand_loss(trainer, batches, normalizer: str, table: list[float]) -> float:
    """The plain loss (sft.core.loss.weighted_cross_entropy) over the micro-batches, in float64 from the model's full
    logits, with its weights and normaliser worked out here from the batches' columns (not by target_weights)."""
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            keys = ("input_ids", "attention_mask", "position_ids")
            logits = trainer.model(**{k: b[k] for k in keys if k in b}, use_cache=False).logits.double()
            ids = b["input_ids"]
            valid = torch.ones(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool)  # position t predicts token t + 1
            if "attention_mask" in b:
                valid &= b["attention_mask"][:, 1:].bool()
            if "position_ids" in b and "attention_mask" not in b:
                valid &= b["position_ids"][:, 1:] != 0
            codes, scale = b["weight_codes"][:, 1:], b["weight_scale"][:, 1:].double()
            w = torch.tensor(table, dtype=torch.float64)[codes.long()] * scale * valid
            num += float(weighted_cross_entropy(logits, ids, torch.nn.functional.pad(w, (0, 1)), 1.0))
            if normalizer == "weight_sum":
                den += float(w.sum())
            elif normalizer == "response_tokens":
                den += float((b["response_mask"][:, 1:].bool() & valid).sum())
            else:
                den += float(((w > 0) & valid).sum())
    return num / den


@pytest.mark.parametrize("normalizer", ["weight_sum", "response_tokens", "weighted_tokens"])
@pytest.mark.parametrize("batching", ["packed", "padded"])
def test_normalisers_equal_a_float64_hand_computation_over_accumulation(demo_root, normalizer, batching):
    cfg = demo_config(demo_root, prompt_loss_weight=0.3, role_weights={"template": 0.0}, loss_normalizer=normalizer,
                      batching=batching, run_name=f"norm-{normalizer}-{batching}")
    trainer = build_trainer(cfg)
    trainer.model.train()  # the training branch: the step's normaliser, not each micro-batch's
    examples = [trainer.train_dataset[i] for i in range(8)]
    collate = trainer.data_collator
    micro = [collate(examples[i:i + 2]) for i in range(0, 8, 2)]
    n = trainer._get_num_items_in_batch(micro, torch.device("cpu"))
    loss = sum(float(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=n).detach()) for b in micro)
    expected = _hand_loss(trainer, micro, normalizer, cfg.data.weight_spec().table())
    assert loss == pytest.approx(expected, rel=2e-5)
    # gradient accumulation 4 x 2 is the same step as one batch of 8
    whole = collate(examples)
    n8 = trainer._get_num_items_in_batch([whole], torch.device("cpu"))
    assert float(trainer.compute_loss(trainer.model, dict(whole), num_items_in_batch=n8)) == pytest.approx(loss, rel=1e-5)


def test_the_schedule_ramps_w_linearly_and_each_step_uses_its_own(demo_root):
    spec = WeightSpec(prompt_loss_weight=1.0, prompt_loss_weight_end=0.0)
    assert [spec.prompt_weight_at(s, 5) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert WeightSpec(prompt_loss_weight=0.2).prompt_weight_at(3, 5) == 0.2  # no schedule: constant
    cfg = demo_config(demo_root, prompt_loss_weight=1.0, prompt_loss_weight_end=0.0, run_name="ramp")
    trainer = build_trainer(cfg)
    trainer.state.max_steps = 5
    trainer.model.train()
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    for step, w in ((0, 1.0), (2, 0.5), (4, 0.0)):
        trainer.state.global_step = step
        n = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        loss = float(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n).detach())
        assert loss == pytest.approx(_hand_loss(trainer, [batch], "weight_sum", spec.table(w)), rel=2e-5), step


@pytest.mark.slow
def test_a_resumed_run_continues_the_ramp_where_it_stopped(demo_root):
    from sft.core.train import train

    common = dict(prompt_loss_weight=1.0, prompt_loss_weight_end=0.0, max_steps=4, save_steps=2, eval_steps=100,
                  logging_steps=1)
    whole = train(demo_config(demo_root, run_name="ramp-whole", **common))
    logged = [h["prompt_loss_weight"] for h in whole.state.log_history if "prompt_loss_weight" in h]
    assert logged == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0]
    # the same run stopped after its checkpoint at step 2, then resumed from it
    part = build_trainer(demo_config(demo_root, run_name="ramp-part", **{**common, "max_steps": 4}))
    part.train(resume_from_checkpoint=str(whole.args.output_dir) + "/checkpoint-2")
    again = [(h["step"], h["loss"], h["prompt_loss_weight"]) for h in part.state.log_history if "prompt_loss_weight" in h]
    first = [(h["step"], h["loss"], h["prompt_loss_weight"]) for h in whole.state.log_history if "prompt_loss_weight" in h]
    assert again[-2:] == first[-2:]  # steps 3 and 4: the same w and the same loss, bit for bit on the CPU
    assert math.isclose(again[-1][2], 0.0)


# ---------------------------------------------------------------- inspect-data: auditable masks


def _sharegpt(tmp_path, extra: dict | None = None):
    turns = [{"from": "human", "value": "What is 2 + 3?"}, {"from": "gpt", "value": "5", **(extra or {})},
             {"from": "human", "value": "And times 4?"}, {"from": "gpt", "value": "20"}]
    path = tmp_path / "share.jsonl"
    path.write_text(json.dumps({"conversations": turns}) + "\n" + json.dumps({"conversations": turns[:2]}) + "\n")
    return path


@pytest.mark.slow  # the 18 MB tokenizer loaded twice (the command's, the fixture): 2.5 s of CPU, 5.5 s loaded
def test_inspect_data_counts_qwens_default_system_prompt_as_system(tmp_path, capsys, qwen_tokenizer):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    data = _sharegpt(tmp_path, {"name": "bot"})
    assert main(["inspect-data", "--data", str(data), "--tokenizer", str(QWEN_TOKENIZER), "--json",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    stats = json.loads(capsys.readouterr().out)
    # "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", in both conversations
    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    n = len(qwen_tokenizer(default)["input_ids"])
    assert stats["tokens_by_role"]["system"] == 2 * n
    assert stats["tokens_by_role"]["user"] == 2 * 8 + 5  # "What is 2 + 3?" twice, "And times 4?" once
    assert stats["weight_by_role"] == {"template": 0.0, "system": 0.0, "user": 0.0, "assistant": 7.0}
    assert stats["unknown_message_keys"] == {"name": 2}  # the key the project does not read, said out loud


def test_inspect_data_exports_roles_and_final_weights_per_token(tmp_path, capsys):
    lines, stats = _export(tmp_path, capsys, _sharegpt(tmp_path, {"loss_weight": 0}),
                           "--prompt-loss-weight", "0.5", "--role-weights", "template=0")
    # the second conversation's only reply weighs 0: it teaches nothing, and is dropped and counted (#39)
    assert len(lines) == 1 and [len(x["input_ids"]) for x in lines] == [len(x["roles"]) for x in lines]
    for line in lines:
        by = {}
        for role, w in zip(line["roles"], line["weights"]):
            by.setdefault(role, set()).add(w)
        assert by["template"] == {0.0} and by["system"] == {0.5} and by["user"] == {0.5}
    # the first reply (loss_weight 0) weighs 0, the second 1
    assert set(lines[0]["weights"][i] for i, r in enumerate(lines[0]["roles"]) if r == "assistant") == {0.0, 1.0}
    assert stats["exported"] == {"path": str(tmp_path / "masks.jsonl"), "examples": 1}


@pytest.mark.parametrize("flags, message", [
    (["--role-weights", "tools=1"], "unknown role 'tools'"),
    (["--prompt-loss-weight-end", "2"], "--prompt-loss-weight-end must be in"),
    (["--loss-normalizer", "tokens"], "--loss-normalizer must be one of"),
])
def test_bad_weight_flags_exit_2_with_one_paragraph(tmp_path, capsys, flags, message):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    assert main(["inspect-data", "--data", str(_sharegpt(tmp_path)), "--tokenizer", str(QWEN_TOKENIZER), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_bad_message_weight_exits_2_naming_the_row_and_turn(tmp_path, capsys):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    data = _sharegpt(tmp_path, {"weight": "yes"})
    assert main(["inspect-data", "--data", str(data), "--tokenizer", str(QWEN_TOKENIZER),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "share.jsonl: line 1, turn 2, field weight: is not a valid message weight" in err
    assert not list((tmp_path / "cache").glob("*.arrow"))  # nothing half-written in the cache


# ---------------------------------------------------------------- the sweep's weight axes


def test_sweep_axes_make_one_variant_per_combination():
    from sft.studies.variants import split_axes

    shared, variants = split_axes({"data.role_weights": ["template=0,1"], "data.prompt_loss_weight_end": None,
                                   "train.learning_rate": "1e-3", "data.loss_normalizer": "weight_sum,response_tokens"})
    assert shared == {"data.prompt_loss_weight_end": None, "train.learning_rate": "1e-3"}
    assert [label for label, _ in variants] == ["rw-template0_norm-weight_sum", "rw-template0_norm-response_tokens",
                                               "rw-template1_norm-weight_sum", "rw-template1_norm-response_tokens"]
    assert variants[2][1] == {"data.role_weights": {"template": 1.0}, "data.loss_normalizer": "weight_sum"}
    assert split_axes({"data.data": "x"}) == ({"data.data": "x"}, [("", {})])  # no axis: the plain sweep
    with pytest.raises(ValueError, match="unknown role 'tmpl'"):
        split_axes({"data.role_weights": ["tmpl=0,1"]})


@pytest.mark.slow
def test_a_sweep_over_role_weights_tokenizes_once_and_compares_the_variants(demo_root, tmp_path, monkeypatch):
    from helpers import demo_cli_args
    from sft.cli.main import main

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    assert main(["sweep", *demo_cli_args(demo_root), "--cache-dir", str(cache), "--role-weights", "template=0,1",
                 "--prompt-loss-weights", "0.5", "--seeds", "2", "--name", "axes", "--heldout-only",
                 "--max-steps", "2", "--eval-steps", "2", "--save-steps", "2", "--plot", "sweep.png"]) == 0
    # 4 runs (2 variants x 2 seeds), one tokenization of each split
    assert len(list((demo_root / "model/demo").glob("sweep-axes-rw-template*/w0.5_s*/run_manifest.json"))) == 4
    assert len(list(cache.glob("tokenized-train-*.arrow"))) == 1 and len(list(cache.glob("tokenized-eval-*.arrow"))) == 1
    rows = (tmp_path / "evaluation_results/raw/sweep-axes/variants.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,metric,prompt_loss_weight,variant,baseline,seeds,diff,ci_low,ci_high")
    assert any(r.startswith("heldout,response_loss,0.5,rw-template1,rw-template0,2,") for r in rows)


# ---------------------------------------------------------------- the end-of-turn token (issue #38)

# A template that renders the stop token at the start of the next message (and none after the last one): the
# closing <|im_end|> of a reply is rendered as the next turn's first token.
STOP_LEADS_NEXT = ("{%- for m in messages %}{%- if not loop.first %}<|im_end|>{% endif %}<|im_start|>{{ m.role }}\n"
                   "{{ m.content }}{%- endfor %}{%- if add_generation_prompt %}<|im_end|><|im_start|>assistant\n"
                   "{% endif %}")


def _pieces(tokenizer, ex, code=ASSISTANT):
    """(turn, text) of each token of role `code`, with its weight."""
    return [(t, tokenizer.decode([i]), w) for i, r, t, w in zip(ex["input_ids"], ex["roles"], ex["turns"],
                                                                 ex["loss_weights"]) if r == code]


@pytest.mark.parametrize("mode, first, last", [("turn", 1.0, 1.0), ("last", 0.0, 1.0), ("none", 0.0, 0.0)])
def test_end_of_turn_weighs_each_replys_closing_token_as_set(qwen_tokenizer, mode, first, last):
    ex = tokenize_batch({"messages": [CHAT]}, qwen_tokenizer, DataConfig(end_of_turn=mode)).to_pylist()[0]
    # By hand: Qwen2.5 writes "5" and "20" as digits, each reply closed by <|im_end|>.
    assert _pieces(qwen_tokenizer, ex) == [(1, "5", 1.0), (1, "<|im_end|>", first),
                                           (3, "2", 1.0), (3, "0", 1.0), (3, "<|im_end|>", last)]
    assert sum(m & CLOSING for m in ex["marks"]) == 2 and sum(ex["response_mask"]) == 3 + (first > 0) + (last > 0)
    assert set(np.asarray(ex["loss_weights"])[np.asarray(ex["roles"]) != ASSISTANT]) == {0.0}


@pytest.mark.parametrize("mode, eos", [("turn", 1.0), ("last", 1.0), ("none", 0.0)])
def test_end_of_turn_on_instruction_rows_is_the_eos(qwen_tokenizer, mode, eos):
    ex = _one(qwen_tokenizer, ROW, end_of_turn=mode)
    assert _pieces(qwen_tokenizer, ex) == [(1, "7", 1.0), (1, "<|endoftext|>", eos)]
    cut = _one(qwen_tokenizer, {**ROW, "output": "seven " * 40}, end_of_turn=mode, max_length=32)
    assert cut["truncation"].endswith("_trimmed") and sum(cut["marks"]) == 0  # a cut reply has no closing token
    assert set(w for _, _, w in _pieces(qwen_tokenizer, cut)) == {1.0}


def test_a_stop_token_rendered_at_the_next_message_belongs_to_the_reply_it_closes(qwen_tokenizer):
    chat = CHAT + [{"role": "user", "content": "Thanks."}, {"role": "assistant", "content": "OK"}]
    from sft.core.chat import renderer_for
    renderer = renderer_for(qwen_tokenizer, STOP_LEADS_NEXT)
    assert renderer.next_turn_closing() == "<|im_end|>"
    ids, roles, turns = renderer.tokens([chat])[0]
    assert ids == qwen_tokenizer.apply_chat_template(chat, chat_template=STOP_LEADS_NEXT, tokenize=True)["input_ids"]
    pieces = [(int(t), qwen_tokenizer.decode([i]), int(r)) for i, r, t in zip(ids, roles, turns)]
    # By hand: each <|im_end|> is the last token of the turn before it; a reply's is the reply's (assistant).
    im_end = [(t, r) for t, s, r in pieces if s == "<|im_end|>"]
    assert im_end == [(0, TEMPLATE), (1, ASSISTANT), (2, TEMPLATE), (3, ASSISTANT), (4, TEMPLATE)]
    assert renderer.end_of_turn_id() == qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenizer = copy.deepcopy(qwen_tokenizer)
    tokenizer.chat_template = STOP_LEADS_NEXT  # the tokenizer's own template (--chat-template auto)
    for mode, expected in (("turn", [1.0, 1.0]), ("none", [0.0, 0.0])):
        ex = tokenize_batch({"messages": [chat]}, tokenizer, DataConfig(end_of_turn=mode)).to_pylist()[0]
        got = [w for _, s, w in _pieces(qwen_tokenizer, ex) if s == "<|im_end|>"]
        assert got == expected  # the last reply, "OK", has no closing token: the template renders none


@pytest.mark.slow  # 1,200 conversations: 7.3 s of CPU
def test_end_of_turn_none_on_1200_qwen_conversations_drops_exactly_one_im_end_per_reply(qwen_tokenizer, gsm8k_path):
    from test_chat import conversations_from

    convs = conversations_from(json.loads(gsm8k_path.read_text()), 1200)
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    tables = {m: tokenize_batch({"messages": convs}, qwen_tokenizer, DataConfig(max_length=4096, end_of_turn=m))
              for m in ("turn", "last", "none")}
    base, ids = tables["turn"], np.concatenate(tables["turn"].column("input_ids").to_pylist())
    for mode, table in tables.items():  # the same ids, roles and turns whatever the setting
        for name in ("input_ids", "roles", "turns", "message_weights", "marks"):
            assert table.column(name).equals(base.column(name))
    w = {m: np.concatenate(t.column("loss_weights").to_pylist()) for m, t in tables.items()}
    replies = sum(m["role"] == "assistant" for c in convs for m in c)
    dropped = (w["turn"] > 0) & (w["none"] == 0)
    assert dropped.sum() == replies and set(ids[dropped]) == {im_end}
    assert ((w["turn"] > 0) & (w["last"] == 0)).sum() == replies - len(convs)


@pytest.mark.slow  # an export and a plan: 3.9-4.4 s of CPU at load 15
def test_end_of_turn_in_the_export_and_the_plan(tmp_path, capsys, qwen_tokenizer):
    data = _chat_file(tmp_path, CHAT)
    [line], stats = _export(tmp_path, capsys, data, "--end-of-turn", "last")
    assert _trained(qwen_tokenizer, line) == ["5", "2", "0", "<|im_end|>"]  # by hand: the first reply's <|im_end|> left out
    assert stats["weight_by_role"]["assistant"] == 4.0
    heads = {mode: _plan_counts(tmp_path, qwen_tokenizer, data, end_of_turn=mode) for mode in ("turn", "none")}
    assert heads == {"turn": (5, 5), "none": (3, 3)}


def test_a_bad_end_of_turn_exits_2_naming_the_values(tmp_path, capsys):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    assert main(["inspect-data", "--data", str(_chat_file(tmp_path, CHAT)), "--tokenizer", str(QWEN_TOKENIZER),
                 "--end-of-turn", "all"]) == 2
    err = capsys.readouterr().err
    assert "--end-of-turn must be one of turn, last, none, got 'all'" in err and err.count("\n") == 1


# ---------------------------------------------------------------- sample weights (issue #38)


def _rows_file(tmp_path, rows, name="r.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_sample_weight_multiplies_every_token_of_its_row(qwen_tokenizer, tmp_path):
    rows, report = load_rows(_rows_file(tmp_path, [{**ROW, "sample_weight": 0.5}, {**ROW, "sample_weight": None},
                                                   {**ROW, "sample_weight": 3}]))
    assert [r["sample_weight"] for r in rows] == [0.5, 1.0, 3.0] and "sample_weight" not in report.ignored_columns
    ds, _ = tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path / "c"), prompt_loss_weight=0.2,
                                                           role_weights={"template": 0.0}))
    plain = _one(qwen_tokenizer, ROW, prompt_loss_weight=0.2, role_weights={"template": 0.0})
    for ex, sw in zip(ds, (0.5, 1.0, 3.0)):
        # by hand: template 0, user 0.2 * sw, the response and its EOS 1 * sw
        roles = np.asarray(ex["roles"])
        hand = np.select([roles == TEMPLATE, roles == USER], [0.0, np.float32(0.2) * np.float32(sw)], np.float32(sw))
        assert np.asarray(ex["loss_weights"], dtype=np.float32).tobytes() == hand.astype(np.float32).tobytes()
        assert ex["input_ids"] == plain["input_ids"] and ex["roles"] == plain["roles"]
        assert ex["response_mask"] == plain["response_mask"]


def test_a_row_weighed_0_is_dropped_and_counted(qwen_tokenizer, tmp_path):
    rows, _ = load_rows(_rows_file(tmp_path, [{**ROW, "sample_weight": 0}, {**ROW, "sample_weight": 2.5}]))
    ds, report = tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path / "c")))
    assert len(ds) == 1 and report.examples_dropped_untrained == 1 and ds[0]["sample_weight"] == 2.5


def test_without_the_column_nothing_changes(qwen_tokenizer, tmp_path):
    rows, _ = load_rows(_rows_file(tmp_path, [ROW]))
    assert rows == [{"instruction": ROW["instruction"], "input": ROW["input"], "output": ROW["output"]}]
    ds, _ = tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path / "c"), prompt_loss_weight=0.3))
    assert "sample_weight" not in ds.column_names
    assert ds[0]["loss_weights"] == _one(qwen_tokenizer, ROW, prompt_loss_weight=0.3)["loss_weights"]


@pytest.mark.parametrize("value, shown", [(-1, "-1"), ("heavy", "'heavy'"), (True, "True"), (float("nan"), "nan")])
def test_a_bad_sample_weight_names_file_row_and_field(tmp_path, value, shown):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**ROW, "sample_weight": 1}) + "\n" + json.dumps({**ROW, "sample_weight": value}) + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl: line 2, field sample_weight: is not a valid sample weight \(got "
                                         rf"{shown}; it must be a number >= 0"):
        load_rows(path)
    rows, report = load_rows(path, on_bad_rows="skip")
    assert len(rows) == 1 and report.rows_dropped == {"sample_weight is not a valid sample weight": 1}


def test_sample_weights_from_a_csv_and_a_mapped_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("instruction,output,w\nAdd.,7,0.25\nAdd.,8,\n")
    rows, report = load_rows(path, column_map={"w": "sample_weight"})
    assert [r["sample_weight"] for r in rows] == [0.25, 1.0] and report.column_mapping["sample_weight"] == "w"


def test_sample_weights_on_gsm8k_scale_each_rows_weights_exactly(qwen_tokenizer, gsm8k_path, tmp_path):
    data = json.loads(gsm8k_path.read_text())[:300]
    weights = [round(0.25 * (i % 9), 2) + 0.1 for i in range(len(data))]
    plain, _ = load_rows(_rows_file(tmp_path, data, "plain.jsonl"))
    weighted, _ = load_rows(_rows_file(tmp_path, [{**r, "sample_weight": w} for r, w in zip(data, weights)]))
    cfg = DataConfig(cache_dir=str(tmp_path / "c"), prompt_loss_weight=0.1, max_length=1024)
    a, _ = tokenize_rows(plain, qwen_tokenizer, cfg)
    b, _ = tokenize_rows(weighted, qwen_tokenizer, cfg)
    assert a["input_ids"] == b["input_ids"] and a["roles"] == b["roles"] and a["response_mask"] == b["response_mask"]
    for x, y, w in zip(a["loss_weights"], b["loss_weights"], weights):
        expected = (np.asarray(x, dtype=np.float32) * np.float32(w)).astype(np.float32)
        assert np.asarray(y, dtype=np.float32).tobytes() == expected.tobytes()


def test_sample_weights_in_the_export(tmp_path, capsys):
    data = _rows_file(tmp_path, [{"messages": CHAT, "sample_weight": 0.5}, {"messages": CHAT}])
    lines, stats = _export(tmp_path, capsys, data, "--prompt-loss-weight", "0.2")
    for line, sw in zip(lines, (0.5, 1.0)):  # by hand: w = 0.2 outside the replies, 1 on them, times the row's weight
        for role, w in zip(line["roles"], line["weights"]):
            assert w == pytest.approx((1.0 if role == "assistant" else 0.2) * sw)
    assert stats["weight_by_role"]["assistant"] == pytest.approx(1.5 * 5)  # 5 reply tokens each


@pytest.mark.parametrize("normalizer, factor", [("weight_sum", 1.0), ("response_tokens", 2.0),
                                                ("weighted_tokens", 2.0)])
def test_sample_weights_meet_each_normaliser_as_documented(demo_root, tmp_path, normalizer, factor):
    """Doubling every sample weight leaves weight_sum's loss as it is (a weighted mean) and doubles the token-count
    normalisers' (their denominators do not count weights); each equals a float64 hand computation."""
    rows = [json.loads(x) for x in (demo_root / "Dataset/demo/train.jsonl").read_text().splitlines()][:16]
    losses = []
    for scale in (1.0, 2.0):
        path = _rows_file(tmp_path, [{**r, "sample_weight": scale * (0.5 + (i % 3))} for i, r in enumerate(rows)],
                          f"w{scale}.jsonl")
        cfg = demo_config(demo_root, data=str(path), prompt_loss_weight=0.3, loss_normalizer=normalizer,
                          batching="padded", run_name=f"sw-{normalizer}")
        trainer = build_trainer(cfg)
        trainer.model.train()
        examples = [trainer.train_dataset[i] for i in range(8)]
        micro = [trainer.data_collator(examples[i:i + 2]) for i in range(0, 8, 2)]
        n = trainer._get_num_items_in_batch(micro, torch.device("cpu"))
        loss = sum(float(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=n).detach()) for b in micro)
        # by hand: the role table times each example's sample weight (the demo's rows carry no message weights)
        sw = [e["sample_weight"] for e in examples]
        for k, b in enumerate(micro):
            b["weight_scale"] = torch.tensor(sw[2 * k:2 * k + 2])[:, None] * torch.ones_like(b["weight_scale"])
        assert loss == pytest.approx(_hand_loss(trainer, micro, normalizer, cfg.data.weight_spec().table()), rel=2e-5)
        losses.append(loss)
    assert losses[1] == pytest.approx(factor * losses[0], rel=1e-5)


# ---------------------------------------------------------------- reasoning across turns (issue #38)

THINKING = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "<think>add</think>\n\n5"},
            {"role": "user", "content": "Times 4?"}, {"role": "assistant", "content": "20", "reasoning_content": ""}]


def _reasoning_pieces(tokenizer, **cfg):
    ex = tokenize_batch({"messages": [THINKING]}, tokenizer, DataConfig(**cfg)).to_pylist()[0]
    return [(t, tokenizer.decode([i]), w) for i, r, t, w in zip(ex["input_ids"], ex["roles"], ex["turns"],
                                                                ex["loss_weights"]) if r == REASONING]


def test_an_empty_reasoning_block_weighs_0_by_default(qwen_tokenizer):
    # By hand: Qwen2.5's template has no reasoning slot, so the empty reasoning_content is written into the content
    # as "<think>\n\n</think>\n\n" (ChatRenderer.template_messages); the first reply's span is "<think>add</think>\n\n".
    thought = [(1, "<th", 1.0), (1, "ink", 1.0), (1, ">", 1.0), (1, "add", 1.0), (1, "</", 1.0), (1, "think", 1.0),
               (1, ">\n\n", 1.0)]
    empty = [(3, "<th", 0.0), (3, "ink", 0.0), (3, ">\n\n", 0.0), (3, "</", 0.0), (3, "think", 0.0), (3, ">\n\n", 0.0)]
    assert _reasoning_pieces(qwen_tokenizer) == thought + empty
    assert _reasoning_pieces(qwen_tokenizer, empty_reasoning="train") == thought + [(t, s, 1.0) for t, s, _ in empty]


def test_reasoning_history_drop_renders_earlier_turns_without_their_reasoning(qwen_tokenizer, tmp_path):
    dropped = _reasoning_pieces(qwen_tokenizer, reasoning_history="drop")
    assert [t for t, _, _ in dropped] == [3] * 6  # only the last reply's (empty) block is left
    ex = tokenize_batch({"messages": [THINKING]}, qwen_tokenizer,
                             DataConfig(reasoning_history="drop")).to_pylist()[0]
    by_hand = [THINKING[0], {"role": "assistant", "content": "5"}, THINKING[2],
               {"role": "assistant", "content": "<think>\n\n</think>\n\n20"}]
    assert ex["input_ids"] == qwen_tokenizer.apply_chat_template(by_hand, tokenize=True)["input_ids"]
    # part of the cache key: keep and drop are two tokenizations, each read back
    rows = [{"messages": THINKING}]
    seen = [tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path), reasoning_history=h))[1].from_cache
            for h in ("keep", "drop", "keep", "drop")]
    assert seen == [False, False, True, True]


def test_reasoning_history_drop_on_300_agent_conversations(qwen_tokenizer):
    from helpers import agent_conversations
    from sft.core.tokenize import conversation_renderer, drop_history_reasoning

    renderer = conversation_renderer(qwen_tokenizer, DataConfig())
    data = agent_conversations(300, seed=3)
    convs, tools = [m for m, _ in data], [t for _, t in data]
    table = tokenize_batch({"messages": [json.dumps(m) for m in convs], "tools": [json.dumps(t) for t in tools]},
                                qwen_tokenizer, DataConfig(max_length=100_000, reasoning_history="drop")).to_pylist()
    assert len(table) == 300
    had = 0
    for ex, messages, tool_list in zip(table, convs, tools):
        last_user = max(k for k, m in enumerate(messages) if m["role"] == "user")
        # Qwen2.5's template has no reasoning slot: the last turns' reasoning_content is written into their content
        kept = renderer.template_messages(drop_history_reasoning(messages))
        expected = qwen_tokenizer.apply_chat_template(kept, tools=tool_list, tokenize=True)["input_ids"]
        assert ex["input_ids"] == expected
        roles, turns = np.asarray(ex["roles"]), np.asarray(ex["turns"])
        assert not ((roles == REASONING) & (turns < last_user)).any()  # no reasoning before the last user turn
        had += any(m.get("reasoning_content") or m["content"].startswith("<think>")
                   for m in messages[:last_user] if m["role"] == "assistant")
    assert had > 30  # the data had history reasoning to drop


@pytest.mark.slow  # an export and a plan: 3.6 s of CPU at load 11-14, near the limit
def test_reasoning_controls_in_the_export_and_the_plan(tmp_path, capsys, qwen_tokenizer):
    data = _chat_file(tmp_path, THINKING)
    [line], stats = _export(tmp_path, capsys, data, "--reasoning-history", "drop")
    # by hand: "5<|im_end|>" and "20<|im_end|>" trained; the first reply's reasoning gone, the empty block at 0
    assert _trained(qwen_tokenizer, line) == ["5", "<|im_end|>", "2", "0", "<|im_end|>"]
    assert [w for r, w in zip(line["roles"], line["weights"]) if r == "reasoning"] == [0.0] * 6
    assert stats["tokens_by_role"]["reasoning"] == 6
    heads = {mode: _plan_counts(tmp_path, qwen_tokenizer, data, empty_reasoning=mode) for mode in ("ignore", "train")}
    assert heads == {"ignore": (12, 12), "train": (18, 18)}  # 7 + 2 + 3 reply tokens, and the 6 of the empty block


@pytest.mark.parametrize("flags, message", [(["--empty-reasoning", "zero"], "--empty-reasoning must be ignore or train"),
                                            (["--reasoning-history", "last"], "--reasoning-history must be keep or drop")])
def test_bad_reasoning_settings_exit_2(tmp_path, capsys, flags, message):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    assert main(["inspect-data", "--data", str(_chat_file(tmp_path, THINKING)), "--tokenizer", str(QWEN_TOKENIZER),
                 *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ---------------------------------------------------------------- spans inside a message (issue #38)

SPANNED = [{"role": "user", "content": "Say hi."},
           {"role": "assistant", "content": "Sure! Hello there.",
            "spans": [{"start": 0, "end": 5, "weight": 0}, {"start": 13, "end": 18, "weight": 2}]}]


def _reply(tokenizer, chat, **cfg):
    from sft.data.conversations import check_conversation

    messages, *problem = check_conversation(chat)
    assert messages is not None, problem
    ex = tokenize_batch({"messages": [messages]}, tokenizer, DataConfig(**cfg)).to_pylist()[0]
    return [(tokenizer.decode([i]), w) for i, r, w in zip(ex["input_ids"], ex["roles"], ex["loss_weights"])
            if r == ASSISTANT], ex


@pytest.mark.parametrize("shape", ["spans", "train_detail", "parts"])
def test_spans_weigh_characters_and_a_straddling_token_takes_the_lower_side(qwen_tokenizer, shape):
    chat = [dict(m) for m in SPANNED]
    if shape == "train_detail":  # Axolotl's shape: end_offset is the span's last character; train a boolean
        chat[1]["spans"] = None
        chat[1] = {k: v for k, v in chat[1].items() if k != "spans"}
        chat[1]["train_detail"] = [{"begin_offset": 0, "end_offset": 4, "train": False}]
    elif shape == "parts":
        chat[1] = {"role": "assistant", "content": [{"type": "text", "text": "Sure!", "weight": 0},
                                                    {"type": "text", "text": " Hello t"},
                                                    {"type": "text", "text": "here.", "weight": 2}]}
    pieces, ex = _reply(qwen_tokenizer, chat)
    # By hand: "Sure! Hello there." is Sure|!| Hello| there|. in Qwen2.5; characters 0-4 weigh 0, 13-17 weigh 2:
    # " there" (characters 11-16) straddles the boundary at 13 and takes the lower side, 1.
    two = 2.0 if shape != "train_detail" else 1.0
    assert pieces == [("Sure", 0.0), ("!", 0.0), (" Hello", 1.0), (" there", 1.0), (".", two), ("<|im_end|>", 1.0)]
    plain = tokenize_batch({"messages": [[SPANNED[0], {"role": "assistant", "content": "Sure! Hello there."}]]},
                                qwen_tokenizer, DataConfig()).to_pylist()[0]
    assert ex["input_ids"] == plain["input_ids"] and ex["roles"] == plain["roles"]


def test_spans_survive_truncation_on_the_tokens_kept(qwen_tokenizer):
    long_user = {"role": "user", "content": "Think about this. " * 60}
    chat = [long_user, SPANNED[1]]
    pieces, ex = _reply(qwen_tokenizer, chat, max_length=64)
    assert ex["truncation"] == "prompt_trimmed" and len(ex["input_ids"]) == 64
    assert pieces == [("Sure", 0.0), ("!", 0.0), (" Hello", 1.0), (" there", 1.0), (".", 2.0), ("<|im_end|>", 1.0)]


@pytest.mark.slow  # 300 conversations: 6.4 s of CPU at load 11-14
def test_spans_on_300_agent_conversations_weigh_exactly_their_characters(qwen_tokenizer):
    """Real-shaped data: a span over the whole of each reply's text at weight 0.5 halves exactly the tokens of that
    text and no other (ids unchanged)."""
    import random

    from helpers import agent_conversations

    rng = random.Random(5)
    data = agent_conversations(300, seed=7)
    cfg = DataConfig(max_length=100_000)
    spanned, count = [], 0
    for messages, _ in data:
        out = []
        for m in messages:
            if m["role"] == "assistant" and m["content"].strip() and not m["content"].startswith("<think>") \
                    and rng.random() < 0.5:
                m = {**m, "spans": [[0, len(m["content"]), 0.5]]}
                count += 1
            out.append(m)
        spanned.append(out)
    batch = lambda convs: {"messages": [json.dumps(m) for m in convs],  # noqa: E731
                           "tools": [json.dumps(t) for _, t in data]}
    a = tokenize_batch(batch([m for m, _ in data]), qwen_tokenizer, cfg).to_pylist()
    b = tokenize_batch(batch(spanned), qwen_tokenizer, cfg).to_pylist()
    assert count > 100
    for x, y, messages in zip(a, b, spanned):
        assert x["input_ids"] == y["input_ids"] and x["roles"] == y["roles"]
        wx, wy = np.asarray(x["message_weights"]), np.asarray(y["message_weights"])
        halved = wy == wx * 0.5
        assert ((wy == wx) | halved).all()
        text = qwen_tokenizer.decode([i for i, h in zip(y["input_ids"], halved & (wx > 0)) if h])
        # the halved tokens spell the spanned replies' texts, one after the other (a merge at a reply's start stays 1)
        spans = [m["content"] for m in messages if m.get("spans")]
        assert all(s.strip()[1:] in text for s in spans)


@pytest.mark.parametrize("spans, message", [
    ([{"start": 0, "end": 99, "weight": 1}], "field spans[0]: is not a valid span (got {'start': 0, 'end': 99"),
    ([{"start": 0, "end": 2, "weight": -1}], "weight must be a number >= 0"),
    ("all", "field spans: is not a list of spans"),
])
def test_a_bad_span_names_file_row_turn_and_field(tmp_path, spans, message):
    turns = [dict(t) for t in SPANNED]
    turns[1]["spans"] = spans
    with pytest.raises(ValueError, match=r"c.jsonl: line 1, turn 2, ") as e:
        load_rows(_chat_file(tmp_path, turns))
    assert message in str(e.value)


@pytest.mark.slow  # an export and a plan: 3.9 s of CPU at load 11-14, near the limit
def test_spans_in_the_export_and_the_plan(tmp_path, capsys, qwen_tokenizer):
    data = _chat_file(tmp_path, SPANNED)
    [line], stats = _export(tmp_path, capsys, data)
    assert [w for r, w in zip(line["roles"], line["weights"]) if r == "assistant"] == [0.0, 0.0, 1.0, 1.0, 2.0, 1.0]
    assert stats["weight_by_role"]["assistant"] == 5.0
    assert _plan_counts(tmp_path, qwen_tokenizer, data) == (4, 4)


# ---------------------------------------------------------------- weight rules (issue #38)


@pytest.mark.parametrize("rules", ["assistant:/[0-9]+/=0;user:Say=0.5", [
    {"role": "assistant", "regex": "[0-9]+", "weight": 0}, {"role": "user", "literal": "Say", "weight": 0.5}]])
def test_weight_rules_weigh_matched_text_within_a_role(qwen_tokenizer, rules):
    chat = [{"role": "user", "content": "Say 12."}, {"role": "assistant", "content": "Sure: 12 and 3."}]
    cfg = DataConfig(weight_rules=rules, prompt_loss_weight=1.0)
    ex = tokenize_batch({"messages": [chat]}, qwen_tokenizer, cfg).to_pylist()[0]
    pieces = [(qwen_tokenizer.decode([i]), r, w) for i, r, w in zip(ex["input_ids"], ex["roles"], ex["loss_weights"])
              if r in (USER, ASSISTANT)]
    # By hand: the user's "Say" at 0.5 (its "12" is the user's: the rule names the assistant only); the reply's digits
    # (Qwen2.5 writes each digit apart) at 0, the rest 1.
    assert pieces == [("Say", USER, 0.5), (" ", USER, 1.0), ("1", USER, 1.0), ("2", USER, 1.0), (".", USER, 1.0),
                      ("Sure", ASSISTANT, 1.0), (":", ASSISTANT, 1.0), (" ", ASSISTANT, 1.0), ("1", ASSISTANT, 0.0),
                      ("2", ASSISTANT, 0.0), (" and", ASSISTANT, 1.0), (" ", ASSISTANT, 1.0), ("3", ASSISTANT, 0.0),
                      (".", ASSISTANT, 1.0), ("<|im_end|>", ASSISTANT, 1.0)]


def test_weight_rules_are_part_of_the_cache_key(qwen_tokenizer, tmp_path):
    rows = [{"messages": CHAT}]
    seen = [tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path), weight_rules=r))[1].from_cache
            for r in ("", "assistant:5=0", "assistant:5=0.5", "", "assistant:5=0")]
    assert seen == [False, False, False, True, True]  # a change of rules re-tokenizes; the same rules read back


def test_weight_rules_on_gsm8k_conversations_zero_exactly_the_results(qwen_tokenizer, gsm8k_path):
    """Real-shaped data: GSM8K's answers write each step's result after '='; a rule weighing '= N' 0 in the replies
    zeroes exactly the tokens that hold a character of such a match (the straddling rule: ')=' goes too), found here
    independently from Qwen2.5's own offsets over apply_chat_template's text, and leaves every other token as it was."""
    import re

    from test_chat import conversations_from

    convs = conversations_from(json.loads(gsm8k_path.read_text()), 200, seed=2)
    plain = tokenize_batch({"messages": convs}, qwen_tokenizer, DataConfig(max_length=4096)).to_pylist()
    ruled = tokenize_batch({"messages": convs}, qwen_tokenizer,
                           DataConfig(max_length=4096, weight_rules="assistant:/= ?[0-9]+/=0")).to_pylist()
    total = 0
    for x, y, conv in zip(plain, ruled, convs):
        assert x["input_ids"] == y["input_ids"]
        wx, wy = np.asarray(x["loss_weights"]), np.asarray(y["loss_weights"])
        zeroed = (wx > 0) & (wy == 0)
        assert (wy[~zeroed] == wx[~zeroed]).all()
        text = qwen_tokenizer.apply_chat_template(conv, tokenize=False)
        matched, at = np.zeros(len(text), dtype=bool), 0
        for m in conv:
            at = text.find(m["content"], at)
            if m["role"] == "assistant":
                for found in re.finditer("= ?[0-9]+", m["content"]):
                    matched[at + found.start():at + found.end()] = True
                    total += 1
            at += len(m["content"])
        enc = qwen_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == x["input_ids"]
        expected = [bool(matched[a:b].any()) for a, b in enc["offset_mapping"]]
        assert zeroed.tolist() == expected
    assert total > 500


@pytest.mark.parametrize("rules, message", [
    ("assistant=0", "is not ROLE:PATTERN=WEIGHT"),
    ("bot:hi=0", "unknown role 'bot'"),
    ("assistant:/[/=0", "is not a regular expression"),
    ("assistant:hi=-1", "must be a number >= 0"),
])
def test_bad_weight_rules_exit_2(tmp_path, capsys, rules, message):
    from helpers import QWEN_TOKENIZER
    from sft.cli.main import main

    assert main(["inspect-data", "--data", str(_chat_file(tmp_path, CHAT)), "--tokenizer", str(QWEN_TOKENIZER),
                 "--weight-rules", rules]) == 2
    err = capsys.readouterr().err
    assert message in err and "--weight-rules" in err and err.count("\n") == 1


@pytest.mark.slow  # an export and a plan: 3.6 s of CPU at load 11-14, near the limit
def test_weight_rules_in_the_export_and_the_plan(tmp_path, capsys, qwen_tokenizer):
    data = _chat_file(tmp_path, CHAT)
    [line], _ = _export(tmp_path, capsys, data, "--weight-rules", "assistant:0=0")
    assert _trained(qwen_tokenizer, line) == ["5", "<|im_end|>", "2", "<|im_end|>"]  # by hand: the "0" of "20" weighs 0
    assert _plan_counts(tmp_path, qwen_tokenizer, data, weight_rules="assistant:0=0") == (4, 4)

"""sft/core/trainer.py: the loss per role and per source that every log carries, against the model's own NLL."""

import json
from collections import defaultdict

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import demo_config
from sft.core.loss import token_nll
from sft.core.train import train
from sft.data.conversations import ROLE_NAMES
from sft.runs.layout import run_dir, tensorboard_dir


@pytest.mark.slow  # one optimizer step through the Trainer
def test_the_loss_per_source_and_per_role_is_the_models_nll_grouped(demo_root, tmp_path):
    rows = (demo_root / "Dataset/demo/train.jsonl").read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(rows[:12]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(rows[12:40]) + "\n")
    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, ratio: 1}\n"
                                       "- {path: b.jsonl, ratio: 1, role_weights: {user: 0.5}}\n")
    # One step of one micro-batch holding every example (a's 10 drawn 18 times, 18 of b's 26), logged at step 1;
    # the held-out split is each source's 2 held-out rows.
    cfg = demo_config(demo_root, run_name="mixture", data=str(tmp_path / "mix.yaml"), eval_data=None,
                      eval_size=2, max_steps=1,
                      per_device_train_batch_size=64, gradient_accumulation_steps=1, logging_steps=1, eval_steps=1,
                      save_steps=1, prompt_loss_weight=0.1, overwrite=True)
    trainer = train(cfg)
    log = next(h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h)

    # By hand: the base model's NLL of every token, grouped by the role of the token predicted and by source.
    model = AutoModelForCausalLM.from_pretrained(cfg.model.model).eval()
    nll_sum, count = defaultdict(float), defaultdict(int)
    weighted, weights = 0.0, 0.0
    for ex in trainer.train_dataset:
        with torch.no_grad():
            nll = token_nll(model(input_ids=torch.tensor([ex["input_ids"]])).logits, torch.tensor([ex["input_ids"]]))
        nll = nll[0, :-1].double()  # position t predicts token t + 1
        w = torch.tensor(ex["loss_weights"][1:], dtype=torch.float64)
        weighted, weights = weighted + float((w * nll).sum()), weights + float(w.sum())
        for t, (code, response) in enumerate(zip(ex["weight_codes"][1:], ex["response_mask"][1:])):
            # every token by its role; a source's response tokens (the trained reply) by its source
            for group in (f"{ROLE_NAMES[code]}_loss", *([f"source_{'ab'[ex['source']]}_loss"] if response else [])):
                nll_sum[group] += float(nll[t])
                count[group] += 1
    by_hand = {k: nll_sum[k] / count[k] for k in nll_sum}
    assert set(by_hand) == {"template_loss", "user_loss", "assistant_loss", "source_a_loss", "source_b_loss"}
    assert {k: log[k] for k in by_hand} == pytest.approx(by_hand, rel=1e-4, abs=1e-5)
    # b's user tokens weigh 0.5, a's 0.1: the logged loss is sum(w * nll) / sum(w) with each source's weights
    assert log["loss"] == pytest.approx(weighted / weights, rel=1e-4)
    # the sources' losses weighted by their response tokens give response_loss (instruction rows: the assistant's)
    total = sum(count[f"source_{s}_loss"] for s in "ab")
    by_sources = sum(log[f"source_{s}_loss"] * count[f"source_{s}_loss"] for s in "ab") / total
    assert by_sources == pytest.approx(log["response_loss"], rel=1e-5)
    assert total == count["assistant_loss"] and log["response_loss"] == pytest.approx(by_hand["assistant_loss"], 1e-4)

    evals = next(h for h in trainer.state.log_history if "eval_loss" in h)
    assert {"eval_source_a_loss", "eval_source_b_loss", "eval_user_loss", "eval_assistant_loss"} <= evals.keys()
    saved = json.loads((run_dir(cfg) / "log_history.json").read_text())
    assert "source_b_loss" in saved[0] and "user_loss" in saved[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(tensorboard_dir(cfg))).Reload().Tags()["scalars"])
    assert {"train/source_a_loss", "train/source_b_loss", "train/user_loss", "train/assistant_loss",
            "eval/source_a_loss", "eval/user_loss"} <= tags


def test_the_groups_of_a_micro_batch_by_hand(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM, TrainingArguments

    from sft.core.loss import target_weights
    from sft.core.trainer import WeightedLossTrainer
    from sft.data.weights import UNTRAINED, WeightSpec

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = WeightedLossTrainer(model=model, args=args, weight_spec=WeightSpec(), source_names=["a", "b"])
    # Two examples of 5 tokens (padded batch): roles template, user, assistant, untrained reply, assistant.
    codes = torch.tensor([[0, 2, 3, UNTRAINED, 3], [0, 2, 2, 3, 3]])
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5, [1] * 4 + [0]]),
             "weight_codes": codes, "weight_scale": torch.ones(2, 5), "source": torch.tensor([[0] * 5, [1] * 5]),
             "response_mask": (codes == 3).long(), "loss_weights": (codes == 3).float()}
    masks = target_weights(batch)
    nll = torch.arange(1.0, 11.0).view(2, 5)  # position t's NLL (it predicts token t + 1)
    scored = masks["response"] + masks["prompt"]  # every real target scored (a logging step)
    trainer._accumulate(nll, masks, scored, "train", batch)
    logs = trainer._drain("train")
    # example 0 predicts user (1), assistant (2), untrained (3), assistant (4); example 1 user (6), user (7),
    # assistant (8) and nothing after its last real token
    assert {k: v for k, v in logs.items() if k.endswith("_loss") and k not in ("response_loss", "prompt_loss")} == {
        "user_loss": (1 + 6 + 7) / 3, "assistant_loss": (2 + 4 + 8) / 3, "untrained_reply_loss": 3.0,
        "source_a_loss": (2 + 4) / 2, "source_b_loss": 8.0}  # a source's response tokens only
    assert logs["response_loss"] == (2 + 4 + 8) / 3

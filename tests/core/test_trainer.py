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

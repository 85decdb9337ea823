"""sft/core/train.py and sft/core/trainer.py: the weighted loss, its normalisation over a whole step, logs, checkpoints and resume."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import ROOT, TESTS, demo_cli_args, demo_config
from sft.runs.checkpoints import can_resume_from, last_complete_checkpoint, list_checkpoints
from sft.runs.layout import run_dir, tensorboard_dir
from sft.core.config import load_run_config
from sft.runs.manifest import read_manifest
from sft.core.train import build_trainer, resume_checkpoint, train
from sft.core.loss import token_nll, weighted_cross_entropy


def test_token_nll_matches_the_models_own_shifted_loss(demo_root):
    trainer = build_trainer(demo_config(demo_root, prompt_loss_weight=1.0, run_name="nll", batching="padded"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"].masked_fill(batch["attention_mask"] == 0, -100))
        nll = token_nll(out.logits, batch["input_ids"])
    # With w = 1 every real token is a target: our unshifted labels + shift in token_nll equal HF's loss.
    valid = torch.nn.functional.pad(batch["attention_mask"][:, 1:], (0, 1)).bool()
    torch.testing.assert_close(nll[valid].mean(), out.loss, rtol=1e-5, atol=1e-6)
    # The loss's definition at w = 1 (every real target weighs 1, normalised by their count) is HF's own loss.
    plain = weighted_cross_entropy(out.logits, batch["input_ids"], valid.float(), valid.sum())
    torch.testing.assert_close(plain, out.loss, rtol=1e-5, atol=1e-6)


def _step_gradients(trainer, batches):
    """Loss and gradients of one optimizer step made of `batches`, through the Trainer's own code."""
    model = trainer.model
    model.zero_grad()
    n = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    loss = sum(trainer.training_step(model, dict(b), n) for b in batches)
    return loss, [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.slow  # optimizer steps through the Trainer (training_step)
@pytest.mark.parametrize("w", [0.0, 0.1, 1.0])
def test_gradient_accumulation_4x2_equals_batch_8(demo_root, w):
    trainer = build_trainer(demo_config(demo_root, prompt_loss_weight=w, run_name=f"ga{w}"))
    examples = [trainer.train_dataset[i] for i in range(8)]
    collate = trainer.data_collator
    big_loss, big = _step_gradients(trainer, [collate(examples)])
    acc_loss, acc = _step_gradients(trainer, [collate(examples[i:i + 2]) for i in range(0, 8, 2)])
    # float32 on the CPU: the same sums in another order, so equal to ~1e-6 relative.
    torch.testing.assert_close(acc_loss, big_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(acc, big):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The bug this guards against: averaging per-micro-batch means weighs the tokens of short micro-batches up.
    trainer.model.zero_grad()
    for i in range(0, 8, 2):
        (trainer.compute_loss(trainer.model, dict(collate(examples[i:i + 2]))) / 4).backward()
    naive = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    exact = torch.cat([g.flatten() for g in big])
    assert (naive - exact).norm() > 1e-2 * exact.norm()


@pytest.mark.slow
def test_accumulated_training_run_matches_big_batch_run(demo_root):
    common = dict(max_steps=2, optim="sgd", learning_rate=0.5, warmup_ratio=0.0, lr_scheduler_type="constant",
                  eval_steps=1000, save_steps=1000, prompt_loss_weight=0.1, overwrite=True)
    runs = {}
    for name, bs, ga in (("bs8", 8, 1), ("bs2ga4", 2, 4)):
        cfg = demo_config(demo_root, run_name=name, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                          **common)
        trainer = train(cfg)
        runs[name] = (load_file(run_dir(cfg) / "model.safetensors"),
                      [h["loss"] for h in trainer.state.log_history if "loss" in h])
    (w_big, loss_big), (w_acc, loss_acc) = runs["bs8"], runs["bs2ga4"]
    assert loss_big == pytest.approx(loss_acc, rel=1e-5)
    for k in w_big:
        torch.testing.assert_close(w_acc[k], w_big[k], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_short_run_lowers_held_out_response_loss_and_logs_everything(demo_root):
    cfg = demo_config(demo_root, run_name="short", max_steps=30, logging_steps=5, eval_steps=15, save_steps=15,
                      learning_rate=3e-3, overwrite=True)
    trainer = train(cfg)
    history = trainer.state.log_history
    evals = [h["eval_response_loss"] for h in history if "eval_response_loss" in h]
    base = build_trainer(demo_config(demo_root, run_name="short-base"))
    base_loss = base.evaluate()["eval_response_loss"]
    assert evals[-1] < base_loss - 1.0, (base_loss, evals)
    train_logs = [h for h in history if "loss" in h and "response_loss" in h]
    assert train_logs and all({"prompt_loss", "response_perplexity", "train_tokens_per_second"} <= h.keys()
                              for h in train_logs)
    assert {"eval_prompt_loss", "eval_response_perplexity"} <= next(h for h in history if "eval_loss" in h).keys()
    # the loss per role in every log; one source: no source_<name>_loss (and no source column in the batches)
    assert all({"template_loss", "user_loss", "assistant_loss"} <= h.keys() for h in train_logs)
    assert not any(k.startswith("source_") for h in history for k in h)
    assert "source" not in trainer.train_dataset.column_names

    # Checkpoints, final model, manifest that loads back, TensorBoard tags.
    out = run_dir(cfg)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-15", "checkpoint-30"]
    assert all(can_resume_from(p) for p in list_checkpoints(out))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and manifest["data"]["data_fingerprint"]
    assert load_run_config(out) == cfg
    # Instruction rows end with EOS: the generation config (its EOS ids) is the base model's, unchanged.
    base_generation = json.loads((demo_root / "model/demo/base/generation_config.json").read_text())
    for folder in (out, *list_checkpoints(out)):
        assert json.loads((folder / "generation_config.json").read_text()) == base_generation, folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir(cfg))).Reload()
    assert {"train/response_loss", "train/prompt_loss", "eval/response_loss", "eval/prompt_loss",
            "eval/response_perplexity"} <= set(events.Tags()["scalars"])


@pytest.mark.slow  # optimizer steps through the Trainer
def test_plain_text_trains_with_every_token_a_target(demo_root, tmp_path):
    rows = [json.loads(line) for line in (demo_root / "Dataset/demo/train.jsonl").read_text().splitlines()]
    texts = [{"text": " ".join(x for x in (r["instruction"], r["input"], r["output"]) if x)} for r in rows]
    for name, part in (("train", texts[:-32]), ("held", texts[-32:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(t) + "\n" for t in part))
    cfg = demo_config(demo_root, run_name="text", data=str(tmp_path / "train.jsonl"),
                      eval_data=str(tmp_path / "held.jsonl"), max_steps=20, logging_steps=5, eval_steps=20,
                      save_steps=20, learning_rate=3e-3, overwrite=True)  # w = 0: irrelevant to plain text
    trainer = train(cfg)
    logs = [h for h in trainer.state.log_history if "response_loss" in h]
    # every token a target: no prompt loss, and the loss is the response loss (a mean of the interval's steps
    # against a mean over its tokens: equal up to the steps' different token counts)
    assert logs and all("prompt_loss" not in h and h["loss"] == pytest.approx(h["response_loss"], rel=0.03)
                        for h in logs), logs
    base = build_trainer(demo_config(demo_root, run_name="text-base", data=cfg.data.data,
                                     eval_data=cfg.data.eval_data)).evaluate()
    final = trainer.state.log_history[-2] if "eval_response_loss" not in trainer.state.log_history[-1] else \
        trainer.state.log_history[-1]
    assert final["eval_response_loss"] < base["eval_response_loss"] - 1.0, (base, final)


@pytest.mark.slow
def test_clipping_stats_are_the_logged_gradient_norms(demo_root):
    # A log every step: the Trainer's own grad_norm (before clipping) of every step is in the history, so the run's
    # clipped share and median norm in the manifest can be recomputed from it. max_grad_norm 2.9 sits inside the
    # norms of the small demo's first 12 steps at lr 3e-3 (2.7 to 3.1: some clip, some do not).
    cfg = demo_config(demo_root, run_name="clip", max_steps=12, logging_steps=1, eval_steps=100, save_steps=100,
                      learning_rate=3e-3, max_grad_norm=2.9, overwrite=True)
    train(cfg)
    history = json.loads((run_dir(cfg) / "log_history.json").read_text())
    steps = [h for h in history if "grad_norm" in h and "loss" in h]
    norms = [h["grad_norm"] for h in steps]
    assert len(norms) == 12 and all(h["grad_clipped_share"] == float(h["grad_norm"] > 2.9) for h in steps)
    assert all(h["grad_norm_median"] == pytest.approx(h["grad_norm"], rel=1e-5) for h in steps)
    results = read_manifest(run_dir(cfg))["results"]["train"]
    share = sum(n > 2.9 for n in norms) / 12
    assert 0 < share < 1, norms
    assert results["train_grad_clipped_share"] == pytest.approx(share)
    assert results["train_grad_norm_median"] == pytest.approx(statistics.median(norms), rel=1e-5)
    assert results["train_grad_norm_steps"] == 12
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir(cfg))).Reload()
    assert {"train/grad_clipped_share", "train/grad_norm_median"} <= set(events.Tags()["scalars"])


def fake_run(root, steps, status=None, complete=True):
    """A run folder in the state a run leaves it: checkpoint-N folders (with or without their trainer state, as a
    kill mid-save leaves the last one) and the manifest's status and config; the states are whole torch.save files
    (a resume parses them)."""
    cfg = demo_config(root, run_name=f"state-{len(list((root / 'model/demo').glob('state-*')))}")
    out = run_dir(cfg)
    for i, step in enumerate(steps):
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        names = ["model.safetensors", "optimizer.pt", "scheduler.pt"]
        names += ["trainer_state.json"] if complete or i < len(steps) - 1 else []
        for name in names:
            if name.endswith(".pt"):
                torch.save({}, ckpt / name)
            else:
                (ckpt / name).write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.zeros(1)}, ckpt / "model.safetensors")  # a header that opens
    if status is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_manifest.json").write_text(json.dumps({"status": status, "config": cfg.to_dict()}))
    return cfg, out


def test_resume_decides_by_the_run_folder(tmp_path):
    def decide(cfg, **switches):
        for k, v in switches.items():
            setattr(cfg.train, k, v)
        return resume_checkpoint(cfg)

    cfg, _ = fake_run(tmp_path, [])
    assert decide(cfg) is None  # a new run starts from the base model
    cfg, out = fake_run(tmp_path, [3, 6], status="training")
    assert decide(cfg) == str(out / "checkpoint-6")  # stopped part-way: auto continues from the last one
    cfg, out = fake_run(tmp_path, [3, 6], status="training", complete=False)
    assert decide(cfg) == str(out / "checkpoint-3")  # checkpoint-6 was cut off while being saved
    with pytest.raises(ValueError, match=r"not finished \(checkpoints: checkpoint-3, checkpoint-6\); nothing was"):
        decide(cfg, resume="false")
    cfg, out = fake_run(tmp_path, [3, 6], status="complete")
    with pytest.raises(ValueError, match=r"holds a finished run .*set resume \(--resume.*set overwrite \(--overwrite"):
        decide(cfg)
    assert decide(cfg, resume="true") == str(out / "checkpoint-6")
    assert decide(cfg, resume="auto", overwrite=True) is None  # start again: train() deletes the checkpoints
    cfg, _ = fake_run(tmp_path, [], status="complete")  # finished, its checkpoints pruned: still refused
    with pytest.raises(ValueError, match="holds a finished run; nothing was changed"):
        decide(cfg)
    assert all(p.is_dir() for p in (tmp_path / "model/demo").glob("state-*/checkpoint-*"))  # nothing deleted


@pytest.mark.slow
def test_a_finished_run_is_kept_unless_overwrite(demo_root):
    cfg = demo_config(demo_root, run_name="twice", max_steps=2, save_steps=1, eval_steps=100, overwrite=True)
    train(cfg)
    saved = {p: p.stat().st_mtime_ns for p in run_dir(cfg).rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="holds a finished run"):
        train(demo_config(demo_root, run_name="twice", max_steps=2))
    assert {p: p.stat().st_mtime_ns for p in run_dir(cfg).rglob("*") if p.is_file()} == saved
    trainer = train(demo_config(demo_root, run_name="twice", max_steps=3, save_steps=1, eval_steps=100, resume=True))
    assert trainer.state.global_step == 3 and [p.name for p in list_checkpoints(run_dir(cfg))] == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert (run_dir(cfg) / "checkpoint-1" / "trainer_state.json").stat().st_mtime_ns == saved[
        run_dir(cfg) / "checkpoint-1" / "trainer_state.json"]  # continued, not started again


def _cli(root, *args):
    return [sys.executable, "-m", "sft", "train", *demo_cli_args(root), "--seed", "7", "--logging-steps", "5",
            "--eval-steps", "1000", *args]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(demo_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    # 45 steps (an epoch is 40: 320 rows in batches of 8), killed after checkpoint-20: the resumed run continues
    # mid-epoch and crosses into the second epoch, where the data order must go on as in the straight run.
    steps = ["--max-steps", "45", "--save-steps", "5", "--prompt-loss-weight", "0.1"]
    subprocess.run(_cli(demo_root, "--run-name", "straight", "--overwrite", *steps), check=True, env=env,
                   capture_output=True, cwd=tmp_path)
    cfg = demo_config(demo_root, run_name="killed")
    proc = subprocess.Popen(_cli(demo_root, "--run-name", "killed", "--overwrite", *steps), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        last = last_complete_checkpoint(run_dir(cfg))
        if last is not None and last.name == "checkpoint-20":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (run_dir(cfg) / "model.safetensors").exists()
    subprocess.run(_cli(demo_root, "--run-name", "killed", "--resume", *steps), check=True, env=env,
                   capture_output=True, cwd=tmp_path)
    straight = load_file(run_dir(demo_config(demo_root, run_name="straight")) / "model.safetensors")
    resumed = load_file(run_dir(cfg) / "model.safetensors")
    # CPU, same seed, same data order: resuming restores the model, optimizer, scheduler and RNG states.
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    history = json.loads((run_dir(cfg) / "log_history.json").read_text())
    assert history[-1]["step"] == 45
    # The clipping stats cover all 45 steps, the 20 before the kill read back from checkpoint-20: the same norms.
    stats = ("train_grad_clipped_share", "train_grad_norm_median", "train_grad_norm_steps")
    straight_stats = read_manifest(run_dir(demo_config(demo_root, run_name="straight")))["results"]["train"]
    resumed_stats = read_manifest(run_dir(cfg))["results"]["train"]
    assert [resumed_stats[k] for k in stats] == pytest.approx([straight_stats[k] for k in stats], rel=1e-5)
    assert resumed_stats["train_grad_norm_steps"] == 45


GOLDEN_LOSSES = TESTS / "golden" / "train_losses.json"


def _three_sgd_steps(trainer) -> list[float]:
    """The losses of 3 optimizer steps (batches of 8 in the dataset's order, SGD at lr 0.05), by the Trainer's own code."""
    torch.manual_seed(0)
    examples = [trainer.train_dataset[i] for i in range(24)]
    losses = []
    for s in range(3):
        loss, grads = _step_gradients(trainer, [trainer.data_collator(examples[8 * s:8 * s + 8])])
        with torch.no_grad():
            for p, g in zip(trainer.model.parameters(), grads):
                p -= 0.05 * g
        losses.append(float(loss))
    return losses


@pytest.mark.slow  # 3 optimizer steps through the Trainer, 3 times
def test_losses_match_golden_values(demo_root):
    # Golden values (torchtune's practice): any change to tokenization, weighting, packing, the selective head or
    # the loss's normalisation moves these numbers. Regenerate on purpose only: UPDATE_GOLDEN=1 pytest -k golden.
    got = {str(w): _three_sgd_steps(build_trainer(demo_config(demo_root, prompt_loss_weight=w, run_name=f"golden{w}")))
           for w in (0.0, 0.1, 1.0)}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN_LOSSES.write_text(json.dumps(got, indent=2) + "\n")
    golden = json.loads(GOLDEN_LOSSES.read_text())
    for w, losses in got.items():
        # fp32 on another CPU sums in another order: equal to ~1e-6; 1e-4 still catches any change of meaning.
        assert losses == pytest.approx(golden[w], rel=1e-4), (w, losses, golden[w])


def test_stop_at_end_of_turn_puts_the_token_before_eos_once():
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from sft.core.chat import stop_at_end_of_turn

    base = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=151643))  # Qwen2.5 base
    assert stop_at_end_of_turn(base, 151645, 151643) and base.generation_config.eos_token_id == [151645, 151643]
    assert stop_at_end_of_turn(base, 151645, 151643) and base.generation_config.eos_token_id == [151645, 151643]
    instruct = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=[151645, 151643]))  # as shipped
    assert stop_at_end_of_turn(instruct, 151645, 151643) and instruct.generation_config.eos_token_id == [151645, 151643]
    for end in (151643, None):  # the alpaca chat template ends a turn with EOS; a template may end on no special
        plain = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=151643))
        assert not stop_at_end_of_turn(plain, end, 151643) and plain.generation_config.eos_token_id == 151643
    # A template that ends a tool call on its own token (Llama 3.1's <|eom_id|>): generation stops there too.
    calls = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=151643))
    assert stop_at_end_of_turn(calls, 151645, 151643, 151644)
    assert calls.generation_config.eos_token_id == [151645, 151644, 151643]
    assert stop_at_end_of_turn(calls, 151645, 151643, 151645) and calls.generation_config.eos_token_id == [
        151645, 151644, 151643]
    calls_only = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=151643))
    assert stop_at_end_of_turn(calls_only, 151643, 151643, 151644)
    assert calls_only.generation_config.eos_token_id == [151644, 151643]


def test_end_of_call_is_the_token_that_closes_a_turn_holding_a_call(qwen_tokenizer):
    """Qwen2.5's ChatML and the alpaca chat template close a call as any turn (<|im_end|>, EOS); a template that
    closes calls apart gives that token; a template that shows no call, none."""
    from helpers import CALLS_APART
    from sft.core.chat import end_of_call_id, renderer_for
    from sft.core.prompts import ALPACA

    im_end, eos = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>"), qwen_tokenizer.eos_token_id
    assert end_of_call_id(renderer_for(qwen_tokenizer, qwen_tokenizer.chat_template)) == im_end
    assert end_of_call_id(renderer_for(qwen_tokenizer, ALPACA.chat_template())) == eos
    apart = renderer_for(qwen_tokenizer, CALLS_APART)
    assert (apart.end_of_turn_id(), end_of_call_id(apart)) == (im_end, eos)
    no_calls = "{%- for m in messages -%}{{- m['content'] + '<|im_end|>' -}}{%- endfor -%}"
    assert end_of_call_id(renderer_for(qwen_tokenizer, no_calls)) is None

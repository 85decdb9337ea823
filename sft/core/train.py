"""Fine-tuning on the HF Trainer with a weighted token loss that logs prompt and response loss apart.

The loss of an optimizer step is  sum_t(w_t * nll_t) / sum_t(w_t)  over every micro-batch of the
step and every process, with w_t = 1 on response tokens (and EOS) and `prompt_loss_weight` on
prompt tokens. Besides it, every log has the unweighted mean loss over response tokens
(`response_loss`) and over prompt tokens (`prompt_loss`), which mean the same in every regime,
so the masked and unmasked curves can be compared on one chart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from sft.core.chat import stop_at_end_of_turn
from sft.core.collate import PackedWeightedLMCollator, WeightedLMCollator
from sft.core.config import ExperimentConfig, check_run_folder
from sft.core.loss import selected_nll, shift_left, target_weights, token_nll
from sft.core.prepare import PreparedData, prepare_data
from sft.core.tokenize import with_training_template
from sft.models import attention
from sft.models.checks import check_inputs
from sft.models.load import load_model, merge_adapter
from sft.models.lora import (
    MERGED_DIR,
    add_adapter,
    check_lora,
    is_adapter_dir,
    quantization_config,
)
from sft.models.tokenizer import load_tokenizer
from sft.runs.callbacks import auto_clean_callback
from sft.core.run_folder import RunFolder, check_data, resume_checkpoint  # noqa: F401 (resume_checkpoint: API)
from sft.runs.layout import run_dir, tensorboard_dir
from sft.runs.manifest import write_manifest

logger = logging.getLogger("sft")
RUN_TOTALS = "RunTotals"  # the key of the run's totals in trainer_state.json's stateful_callbacks
SUMS = ("response_nll", "response_tokens", "prompt_nll", "prompt_tokens", "tokens")  # accumulated between logs


class WeightedLossTrainer(Trainer):
    """A Trainer whose loss is the weighted token loss, normalised over the whole optimizer step."""

    # Our loss is already divided by the weight of the whole accumulated step (see
    # _get_num_items_in_batch), so the Trainer must not divide it again by the accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, selective_head: bool = True, adapter_generation_config: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selective_head = selective_head  # head and cross-entropy only at positions that need them
        self.adapter_generation_config = adapter_generation_config  # save it beside a LoRA adapter too (see _save)
        self._sums = {split: torch.zeros(len(SUMS), dtype=torch.float64) for split in ("train", "eval")}
        self._last_log_time = time.perf_counter()
        # The whole run's loss sum, steps, tokens and training seconds up to the checkpoint resumed from (saved in
        # trainer_state.json's stateful_callbacks as RUN_TOTALS), so summaries cover the run, not this session.
        self._run_offset = {"loss_sum": 0.0, "steps": 0, "tokens": 0.0, "seconds": 0.0}
        self._session_tokens = 0.0
        self._session_start = time.perf_counter()

    def train(self, *args: Any, **kwargs: Any):
        """The Trainer's train, timing this session from its start (not from building the Trainer)."""
        self._session_start = self._last_log_time = time.perf_counter()
        return super().train(*args, **kwargs)

    def _load_callback_state(self) -> None:
        """On resume: read the run's totals so far back from the checkpoint's trainer state."""
        saved = self.state.stateful_callbacks.pop(RUN_TOTALS, None)
        if isinstance(saved, dict):
            self._run_offset.update({k: v for k, v in saved.items() if k in self._run_offset})
        super()._load_callback_state()

    def run_totals(self) -> dict[str, float]:
        """The loss sum, steps, tokens and training seconds of the whole run so far (every session)."""
        pending_loss = getattr(self, "_tr_loss", None)
        off = self._run_offset
        return {
            "loss_sum": off["loss_sum"] + getattr(self, "_total_loss_scalar", 0.0)
            + (float(pending_loss) if pending_loss is not None else 0.0),
            "steps": self.state.global_step,
            "tokens": off["tokens"] + self._session_tokens + float(self._sums["train"][4]),
            "seconds": off["seconds"] + time.perf_counter() - self._session_start,
        }

    def _save_checkpoint(self, model, trial) -> None:
        """Save the run's totals with the checkpoint (inside trainer_state.json, written last)."""
        self.state.stateful_callbacks[RUN_TOTALS] = self.run_totals()
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The Trainer's save (final model and checkpoints), plus the generation config beside a LoRA adapter when
        asked: peft saves the adapter without it, and a conversation run's end-of-turn stop lives there."""
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if self.adapter_generation_config and self.args.should_save and isinstance(model, PeftModel):
            model.generation_config.save_pretrained(output_dir or self.args.output_dir)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """The total loss weight of the optimizer step: all its micro-batches, on all processes.

        The Trainer counts labels != -100 here; with weights the normaliser is their sum.
        """
        total = sum(target_weights(b)["weights"].sum() for b in batch_samples)
        total = torch.as_tensor(total, dtype=torch.float32, device=device)
        if self.args.world_size > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """sum(w * nll) / sum(w), with sum(w) over the whole step when training."""
        masks = target_weights(inputs)
        weighted, nll, scored, outputs = self._token_nll(model, inputs, masks)
        if model.training and num_items_in_batch is not None:
            loss = weighted / num_items_in_batch.clamp_min(1e-8)
            # DDP averages gradients over processes, while our denominator already covers them all.
            loss = loss * self.accelerator.num_processes
        else:
            loss = weighted / masks["weights"].sum().clamp_min(1e-8)
        self._accumulate(nll, masks, scored, "train" if model.training else "eval")
        return (loss, outputs) if return_outputs else loss

    def _token_nll(self, model, inputs, masks):
        """(sum of w * nll, per-position NLL [B, T] (detached), mask of positions scored, model outputs)."""
        model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        if not self.selective_head:
            outputs = model(**model_inputs, use_cache=False)
            nll = token_nll(outputs.logits, inputs["input_ids"])
            return (nll * masks["weights"]).sum(), nll.detach(), masks["response"] + masks["prompt"], outputs
        # logits_to_keep=1: the model's own head runs on one position only; we take the final hidden states.
        outputs = model(**model_inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        hidden = outputs.hidden_states[-1].flatten(0, 1)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        targets = shift_left(inputs["input_ids"]).flatten()
        weights = masks["weights"].flatten()
        nll = torch.zeros_like(weights)
        scored = (weights > 0).to(weights.dtype)
        trained = weights.nonzero().squeeze(1)  # the only positions whose logits reach the gradient
        weighted, nll_trained = selected_nll(hidden[trained], head, targets[trained], weights[trained])
        nll[trained] = nll_trained
        # Zero-weight positions are scored (without gradient) only when a log will report them:
        # every evaluation, and the training steps that end in a log (masked regime's prompt_loss).
        if not model.training or self._logs_this_step():
            seen = (masks["response"] + masks["prompt"]).flatten() > 0
            extra = (seen & (weights == 0)).nonzero().squeeze(1)
            with torch.no_grad():
                _, nll[extra] = selected_nll(hidden[extra].detach(), head, targets[extra], weights[extra])
            scored[extra] = 1.0
        # outputs.logits holds the last position only; nothing downstream reads it (prediction_loss_only).
        return weighted, nll.view_as(masks["weights"]), scored.view_as(masks["weights"]), outputs

    def _logs_this_step(self) -> bool:
        """True while computing an optimizer step that ends with a training log."""
        step = self.state.global_step + 1
        return step % max(self.args.logging_steps, 1) == 0 or (step == 1 and self.args.logging_first_step)

    def _accumulate(self, nll, masks, scored, split: str) -> None:
        """Add this micro-batch's response/prompt NLL sums and token count to the running log sums."""
        seen_prompt = masks["prompt"] * scored  # prompt positions scored in this micro-batch
        sums = torch.stack([
            (nll * masks["response"]).sum(), masks["response"].sum(),
            (nll * seen_prompt).sum(), seen_prompt.sum(),
            (masks["response"] + masks["prompt"]).sum(),
        ]).double()
        # Kept on the device until a log reads them: a .cpu() here would wait on the GPU every micro-batch.
        self._sums[split] = self._sums[split].to(sums.device) + sums

    def _drain(self, split: str) -> dict[str, float]:
        """Reduce the accumulated sums over processes, reset them, and turn them into means."""
        sums = self._sums[split].to(self.args.device)
        if self.args.world_size > 1:
            sums = self.accelerator.reduce(sums.to(torch.float32), reduction="sum").double()
        self._sums[split] = torch.zeros_like(self._sums[split])
        r_nll, r_n, p_nll, p_n, tokens = sums.tolist()
        out = {"response_loss": r_nll / r_n if r_n else float("nan")}
        out["response_perplexity"] = math.exp(min(out["response_loss"], 50.0))
        if p_n:  # none scored: a masked run between logging steps
            out["prompt_loss"] = p_nll / p_n
        out["tokens"] = tokens
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add response/prompt loss and tokens per second to every training log."""
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            metrics = self._drain("train")
            now = time.perf_counter()
            tokens = metrics.pop("tokens")
            self._session_tokens += tokens
            logs["train_tokens_per_second"] = round(tokens / max(now - self._last_log_time, 1e-9), 1)
            self._last_log_time = now
            logs.update({k: round(v, 6) for k, v in metrics.items()})
        elif "train_loss" in logs and "train_runtime" in logs:  # the summary at the end: over the whole run
            totals = self.run_totals()  # the Trainer has added the last steps' loss to _total_loss_scalar already
            totals["loss_sum"] -= float(getattr(self, "_tr_loss", 0.0))
            logs["train_loss"] = totals["loss_sum"] / max(totals["steps"], 1)
            logs["train_tokens_per_second"] = round(totals["tokens"] / max(totals["seconds"], 1e-9), 1)
            logs["train_run_seconds"] = round(totals["seconds"], 1)
        super().log(logs, start_time)

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        """Run the Trainer's evaluation, then add the held-out response/prompt loss and perplexity."""
        self._sums["eval"] = torch.zeros_like(self._sums["eval"])
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        metrics = self._drain("eval")
        metrics.pop("tokens")
        output.metrics.update({f"{prefix}_{k}": v for k, v in metrics.items()})
        return output


# ---------------------------------------------------------------- a run


def use_bf16(setting: str) -> bool:
    """bf16 mixed precision where asked, or 'auto' = where the GPU supports it."""
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return str(setting).lower() in ("true", "1", "yes")


def resolve_batching(setting: str) -> str:
    """'auto' = packed: no padding, the same batches as padded, fastest in bench/throughput.py."""
    if setting == "auto":
        return "packed"
    if setting not in ("padded", "grouped", "packed"):
        raise ValueError(f"batching must be auto, padded, grouped or packed, got {setting!r}.")
    return setting


def build_training_arguments(cfg: ExperimentConfig) -> TrainingArguments:
    """TrainingArguments with every field the run relies on set explicitly."""
    t = cfg.train
    args = dict(
        output_dir=str(run_dir(cfg)),
        run_name=t.run_name,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        average_tokens_across_devices=True,  # our normaliser is summed over processes (see the Trainer above)
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a share of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=use_bf16(t.bf16),
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,  # the same example order in every regime: paired comparisons
        # grouped: batches of similar lengths (little padding); otherwise a plain seeded shuffle.
        train_sampling_strategy="group_by_length" if resolve_batching(t.batching) == "grouped" else "random",
        length_column_name="length",
        remove_unused_columns=False,  # keep loss_weights and response_mask for compute_loss
        label_names=["labels"],
        prediction_loss_only=True,  # never gather vocabulary-sized logits during evaluation
        report_to=[],  # TensorBoard is added as a callback with the project's folder layout
        # Without CUDA, processes started by torchrun / accelerate join a gloo group only when told so
        # (and a single process must not be told so: it would look for a process group).
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(t.extra) - known)
    if unknown:
        raise ValueError(f"extra holds {', '.join(map(repr, unknown))}, which TrainingArguments has no field for: "
                         "extra takes TrainingArguments fields only (e.g. --extra optim=adamw_torch_fused, or the "
                         "field as its own flag, --optim adamw_torch_fused); see `python -m sft train --help`.")
    args.update(t.extra)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"TrainingArguments refused these settings ({e}); fix the value named there (the flags "
                         "and train.extra are listed by `python -m sft train --help`).") from None


def build_model(cfg: ExperimentConfig, args: TrainingArguments):
    """The model to train: the base, with a fresh LoRA adapter on top when cfg.lora is set (QLoRA: a 4-bit base)."""
    lora = cfg.lora
    if is_adapter_dir(cfg.model.model):
        raise ValueError(f"{cfg.model.model} is a LoRA adapter, not a base model: train from a full model, e.g. the "
                         f"adapter merged into its base (--merge writes <run>/{MERGED_DIR}/).")
    quantization = quantization_config(torch.bfloat16 if args.bf16 else torch.float32) if lora and lora.qlora else None
    model = load_model(cfg.model, quantization)
    if resolve_batching(cfg.train.batching) == "packed" and cfg.model.attn_implementation is None:
        # One causal SDPA per packed example (sft/attention.py); set model.attn_implementation to
        # "flash_attention_2" on a GPU with flash-attn installed for its variable-length kernel.
        model.set_attn_implementation(attention.NAME)
    if lora is None:
        return model
    with torch.random.fork_rng(devices=[]):  # the adapter's random init (lora_A) is the seed's, in every regime
        torch.manual_seed(cfg.train.seed)
        return add_adapter(model, lora, cfg.train.selective_head, bool(args.gradient_checkpointing))


def build_trainer(cfg: ExperimentConfig, model=None, tokenizer=None, data: PreparedData | None = None,
                  args: TrainingArguments | None = None, callbacks: list | None = None):
    """Everything a run needs, wired into a WeightedLossTrainer (nothing is trained yet)."""
    args = args if args is not None else build_training_arguments(cfg)
    batching = resolve_batching(cfg.train.batching)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    if data is None:
        with args.main_process_first(desc="tokenizing the data"):  # once, then read from the cache by other ranks
            data = prepare_data(cfg.data, tokenizer)
    model = model if model is not None else build_model(cfg, args)
    model.config.use_cache = False  # no KV cache while training
    # Conversations teach the model to end a reply with the template's end-of-turn token (<|im_end|> in ChatML,
    # not EOS): saved as an extra EOS id with the final model and every checkpoint. Instruction rows: unchanged.
    turn_stop = stop_at_end_of_turn(model, data.end_of_turn, tokenizer.eos_token_id)
    tb = TensorBoardCallback()
    # transformers 5 dropped TrainingArguments.logging_dir: the callback takes its folder from this attribute.
    tb.logging_dir = str(tensorboard_dir(cfg))
    callbacks = [tb, *(callbacks or [])]  # the caller's own TrainerCallbacks run after TensorBoard's
    if cfg.train.auto_clean is not None:  # prune checkpoints as they are saved (sft/prune.py)
        callbacks.append(auto_clean_callback(cfg.train.auto_clean))
    trainer = WeightedLossTrainer(
        model=model,
        args=args,
        data_collator=(PackedWeightedLMCollator if batching == "packed" else WeightedLMCollator)(
            pad_token_id=tokenizer.pad_token_id),
        selective_head=cfg.train.selective_head,
        adapter_generation_config=turn_stop,
        train_dataset=data.train,
        eval_dataset=data.eval,
        # saved with every checkpoint: the prompt template as a chat template, or the one conversations went through
        processing_class=with_training_template(tokenizer, cfg.data.template, data.chat_template),
        callbacks=callbacks,
    )
    trainer.prepared_data = data
    return trainer


def train(cfg: ExperimentConfig, tokenizer=None, data: PreparedData | None = None,
          callbacks: list | None = None) -> WeightedLossTrainer:
    """Run a fine-tune end to end: data, model, Trainer, checkpoints, final model and manifest.

    The base model and data must exist: the entry points (CLI, notebooks, `sft demo`, the sweep) build the
    demo's with sft.studies.demo.ensure_assets first. They are checked before anything is written.
    """
    check_run_folder(cfg)  # a run name outside model/<preset>/, or the base model's folder
    checked = check_inputs(cfg, tokenizer=tokenizer)  # model folder, tokenizer, data folder (exit code 2 on the CLI)
    if cfg.lora is not None:
        check_lora(cfg.lora)  # bad LoRA settings, or QLoRA without a CUDA GPU
    tokenizer = checked if checked is not None else tokenizer
    args = build_training_arguments(cfg)  # under torchrun / accelerate this also joins the process group
    with RunFolder(cfg, args) as folder:  # the lock first (rank 0, for every process); released on every exit
        checkpoint = resume_checkpoint(cfg, args.world_size)
        trainer = build_trainer(cfg, tokenizer=tokenizer, data=data, args=args,
                                callbacks=[*(callbacks or []), FirstCheckpoint(folder)])
        if checkpoint is not None:
            check_data(run_dir(cfg), trainer.prepared_data.info)
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not trainer.is_fsdp_enabled:
            logger.warning("FSDP was asked for (accelerate config), but this accelerate runs FSDP only on GPUs (its "
                           "AcceleratorState keeps DistributedType.MULTI_CPU on the CPU): this run is plain data "
                           "parallel, every process holding the whole model")
        folder.start_over()  # overwrite: the old run moved aside only now that the model and data loaded
        return _train(cfg, trainer, checkpoint)


def _train(cfg: ExperimentConfig, trainer: WeightedLossTrainer, checkpoint: str | None) -> WeightedLossTrainer:
    out = run_dir(cfg)
    if trainer.is_world_process_zero():
        write_manifest(out, cfg, trainer.prepared_data.info, status="training", world_size=trainer.args.world_size)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))  # the final model (LoRA: the adapter) and tokenizer, at the run folder's top
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if evals and evals[-1]["step"] == trainer.state.global_step:  # the last step was just evaluated
        metrics = evals[-1]
    else:
        metrics = trainer.evaluate()  # every process takes part in the (sharded) evaluation
    if trainer.is_world_process_zero():
        results = {"train": result.metrics, "eval": metrics}
        if cfg.lora is not None and cfg.lora.merge:  # a full model beside the adapter, with the same manifest
            merge_adapter(out, out / MERGED_DIR, "auto" if cfg.lora.qlora else cfg.model.dtype)
            write_manifest(out / MERGED_DIR, cfg, trainer.prepared_data.info, status="complete", results=results)
        write_manifest(out, cfg, trainer.prepared_data.info, status="complete", results=results,
                       world_size=trainer.args.world_size)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return trainer


class FirstCheckpoint(TrainerCallback):
    """Tells the run folder when a checkpoint is saved: an overwritten run moved aside can then go."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_save(self, args, state, control, **kwargs):
        self.folder.saved_checkpoint()

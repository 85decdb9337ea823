"""Fine-tuning: the run's arguments, model, data and Trainer built from its config, and the run carried out.

The loss itself, its normaliser and its logs are the Trainer's (sft.core.trainer.WeightedLossTrainer); what
happens to the run folder (locks, resume, overwrite) is sft.core.run_folder's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from datetime import datetime, timezone

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from sft.core.chat import stop_at_end_of_turn
from sft.core.collate import PackedWeightedLMCollator, WeightedLMCollator
from sft.core.config import ExperimentConfig, check_run_folder
from sft.core.prepare import PreparedData, prepare_data
from sft.core.run_folder import (
    RunFolder,
    check_data,
    read_saved_manifest,
    resume_checkpoint,
)
from sft.core.tokenize import with_training_template
from sft.core.trainer import WeightedLossTrainer
from sft.data.errors import UserError
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
from sft.runs.checkpoints import checkpoint_step
from sft.runs.layout import run_dir, tensorboard_dir
from sft.runs.manifest import write_manifest

logger = logging.getLogger("sft")


def use_bf16(setting: str) -> bool:
    """bf16 mixed precision where asked, or 'auto' = where the GPU supports it."""
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return str(setting).lower() == "true"  # TrainConfig has read it strictly: auto, true or false


def resolve_batching(setting: str) -> str:
    """'auto' = packed: no padding, the same batches as padded, fastest in bench/throughput.py."""
    if setting == "auto":
        return "packed"
    if setting not in ("padded", "grouped", "packed"):
        raise UserError(f"batching must be auto, padded, grouped or packed, got {setting!r}.")
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
        average_tokens_across_devices=True,  # our normaliser is summed over processes (sft.core.trainer)
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
        raise UserError(f"extra holds {', '.join(map(repr, unknown))}, which TrainingArguments has no field for: "
                         "extra takes TrainingArguments fields only (e.g. --extra optim=adamw_torch_fused, or the "
                         "field as its own flag, --optim adamw_torch_fused); see `python -m sft train --help`.")
    args.update(t.extra)
    try:
        return TrainingArguments(**args)
    except (TypeError, ValueError) as e:
        raise UserError(f"TrainingArguments refused these settings ({e}); fix the value named there (the flags "
                         "and train.extra are listed by `python -m sft train --help`).") from None


def build_model(cfg: ExperimentConfig, args: TrainingArguments):
    """The model to train: the base, with a fresh LoRA adapter on top when cfg.lora is set (QLoRA: a 4-bit base)."""
    lora = cfg.lora
    if is_adapter_dir(cfg.model.model):
        raise UserError(f"{cfg.model.model} is a LoRA adapter, not a base model: train from a full model, e.g. the "
                         f"adapter merged into its base (--lora-merge writes <run>/{MERGED_DIR}/).")
    quantization = quantization_config(torch.bfloat16 if args.bf16 else torch.float32) if lora and lora.qlora else None
    model = load_model(cfg.model, quantization)
    if resolve_batching(cfg.train.batching) == "packed" and cfg.model.attn_implementation is None:
        # One causal SDPA per packed example (sft/models/attention.py); set model.attn_implementation to
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
    # Conversations teach the model to end a reply (and a tool call) with the template's end-of-turn token
    # (<|im_end|> in ChatML, not EOS): saved as an extra EOS id with the final model and every checkpoint.
    # Instruction rows: unchanged.
    turn_stop = stop_at_end_of_turn(model, data.end_of_turn, tokenizer.eos_token_id, data.end_of_call)
    tb = TensorBoardCallback()
    # transformers 5 dropped TrainingArguments.logging_dir: the callback takes its folder from this attribute.
    tb.logging_dir = str(tensorboard_dir(cfg))
    callbacks = [tb, *(callbacks or [])]  # the caller's own TrainerCallbacks run after TensorBoard's
    if cfg.train.auto_clean is not None:  # prune checkpoints as they are saved (sft/runs/prune.py)
        callbacks.append(auto_clean_callback(cfg.train.auto_clean))
    trainer = WeightedLossTrainer(
        model=model,
        args=args,
        data_collator=(PackedWeightedLMCollator if batching == "packed" else WeightedLMCollator)(
            pad_token_id=tokenizer.pad_token_id),
        selective_head=cfg.train.selective_head,
        adapter_generation_config=turn_stop,
        weight_spec=data.weight_spec or cfg.data.weight_spec(),  # a mixture's sources may weigh roles their own way
        source_names=data.sources,  # a mixture: the loss per source is logged (source_<name>_loss)
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
                                callbacks=[StopWhenNonFinite(), *(callbacks or []), FirstCheckpoint(folder)])
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
    segments = session_segments(cfg, out, checkpoint, trainer.args.world_size)
    if trainer.is_world_process_zero():
        write_manifest(out, cfg, trainer.prepared_data.info, status="training", world_size=trainer.args.world_size,
                       segments=segments)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    segments[-1].update(to_step=trainer.state.global_step, ended_at=_now())
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
            write_manifest(out / MERGED_DIR, cfg, trainer.prepared_data.info, status="complete", results=results,
                           segments=segments)
        write_manifest(out, cfg, trainer.prepared_data.info, status="complete", results=results,
                       world_size=trainer.args.world_size, segments=segments)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return trainer


class StopWhenNonFinite(TrainerCallback):
    """Stop a run whose parameters went NaN or inf (a non-finite loss makes them so at the same step's update), at
    the end of that optimizer step, before anything of it is saved: `--learning-rate inf` trained to exit 0 with
    every parameter NaN, and the Trainer's logging_nan_inf_filter hides a NaN loss from the logs. One fused norm per
    parameter group and one host sync a step (the Trainer syncs on the loss every micro-batch already)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = [p.detach() for p in model.parameters() if p.requires_grad] if model is not None else []
        if not params or torch.isfinite(torch.stack(torch._foreach_norm(params)).sum()):
            return
        # A non-finite sum of norms may also be huge finite weights overflowing: look tensor by tensor.
        bad = next((n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()), None)
        if bad is None:
            return
        raise UserError(
            f"Training stopped at optimizer step {state.global_step} of {state.max_steps}: the parameters became "
            f"NaN or inf (first: {bad}), so every later step would be too; nothing of this step was saved, and "
            f"checkpoints saved before it are kept. Lower the learning rate (--learning-rate, now "
            f"{args.learning_rate}) or the warm-up's end, clip gradients (--max-grad-norm, now {args.max_grad_norm}), "
            "or check the data for extreme values; then train again (--overwrite), or resume from a checkpoint "
            "before the divergence.")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def session_segments(cfg: ExperimentConfig, out, checkpoint: str | None, world_size: int) -> list[dict]:
    """The run's history for its manifest: the earlier sessions (a resume keeps them) and this one."""
    earlier = list(read_saved_manifest(out).get("segments") or []) if checkpoint is not None else []
    start = checkpoint_step(checkpoint) if checkpoint is not None else 0
    return earlier + [{"started_at": _now(), "resumed_from": os.path.basename(checkpoint) if checkpoint else None,
                       "from_step": start, "to_step": None, "world_size": world_size, "config": cfg.to_dict()}]


class FirstCheckpoint(TrainerCallback):
    """Tells the run folder when a checkpoint is saved: an overwritten run moved aside can then go."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder

    def on_save(self, args, state, control, **kwargs):
        self.folder.saved_checkpoint()

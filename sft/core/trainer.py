"""The Trainer with the weighted token loss: the step's normaliser, the logs of response and prompt loss apart,
held-out metrics, and totals that cover the whole run across resumes.

The loss of an optimizer step is  sum_t(w_t * nll_t) / sum_t(w_t)  over every micro-batch of the
step and every process (or, with loss_normalizer, divided by the trained assistant tokens or the
tokens of non-zero weight), with w_t computed at that step from each token's role by the run's
WeightSpec: 1 on response tokens (and EOS), `prompt_loss_weight` (or its schedule's value, or the
role's own weight) on the others. Besides it, every log has the unweighted mean loss over response tokens
(`response_loss`) and over prompt tokens (`prompt_loss`), which mean the same in every regime,
so the masked and unmasked curves can be compared on one chart.

The loss's definition is sft.core.loss.weighted_cross_entropy; compute_loss computes it through the selective head
(sft.core.loss.selective_head_loss) and divides by the step's normaliser, summed here over micro-batches and processes.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer

from sft.core.loss import batch_normalizer, selective_head_loss, shift_left, target_weights, token_nll
from sft.data.conversations import ROLE_NAMES
from sft.data.mixture import SOURCE
from sft.data.weights import UNTRAINED, WeightSpec

RUN_TOTALS = "RunTotals"  # the key of the run's totals in trainer_state.json's stateful_callbacks
SUMS = ("response_nll", "response_tokens", "prompt_nll", "prompt_tokens", "tokens")  # accumulated between logs
# The loss per role logged as <role>_loss (the role of the token predicted, as the held-out metrics name them), by the
# batch's weight_codes: a reply role counts its tokens inside the loss, and the reply tokens outside it (train_on="last":
# earlier turns' text, tool calls and reasoning, one slot) are untrained_reply_loss.
ROLE_GROUPS = (*ROLE_NAMES[:UNTRAINED], "untrained_reply")  # index = weight_codes (the untrained slot last)
NORM_DIGITS = 6  # significant digits of each step's gradient norm kept in the checkpoint (the run's clipping stats)


class WeightedLossTrainer(Trainer):
    """A Trainer whose loss is the weighted token loss, normalised over the whole optimizer step."""

    # Our loss is already divided by the weight of the whole accumulated step (see
    # _get_num_items_in_batch), so the Trainer must not divide it again by the accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, selective_head: bool = True, adapter_generation_config: bool = False,
                 weight_spec: WeightSpec | None = None, source_names: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Roles -> weights at every step (w may follow a schedule) and the normaliser; None = the batches'
        # loss_weights as they are, normalised by their sum.
        self.weight_spec = weight_spec
        self.selective_head = selective_head  # head and cross-entropy only at positions that need them
        self.adapter_generation_config = adapter_generation_config  # save it beside a LoRA adapter too (see _save)
        self._sums = {split: torch.zeros(len(SUMS), dtype=torch.float64) for split in ("train", "eval")}
        # A mixture's sources, in the order of the examples' `source` index: logged as source_<name>_loss.
        self.source_names = list(source_names or [])
        # NLL sum (row 0) and scored tokens (row 1) of each role (ROLE_GROUPS), then of each source, between logs.
        self._groups = {split: torch.zeros(2, len(ROLE_GROUPS) + len(self.source_names), dtype=torch.float64)
                        for split in ("train", "eval")}
        self._last_log_time = time.perf_counter()
        # The whole run's loss sum, steps, tokens and training seconds up to the checkpoint resumed from (saved in
        # trainer_state.json's stateful_callbacks as RUN_TOTALS), so summaries cover the run, not this session.
        self._run_offset = {"loss_sum": 0.0, "steps": 0, "tokens": 0.0, "seconds": 0.0, "grad_norms": []}
        # Every optimizer step's gradient norm before clipping, as the Trainer computes it: this session's, read (one
        # device sync) at each log; _pending holds the steps since the last log, still on the device.
        self._grad_norms: list[float] = []
        self._pending_norms: list = []
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
            "grad_norms": off["grad_norms"] + self._grad_norms + self._read_norms(keep=True),
        }

    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's norm of this optimizer step's gradient (before clipping), also kept for the clipping stats."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None:
            self._pending_norms.append(grad_norm.detach() if isinstance(grad_norm, torch.Tensor) else grad_norm)
        return grad_norm

    def _read_norms(self, keep: bool = False) -> list[float]:
        """The gradient norms of the steps since the last log, as floats (moved to this session's list unless keep)."""
        norms = [float(f"{float(n):.{NORM_DIGITS}g}") for n in self._pending_norms]
        if not keep:
            self._grad_norms += norms
            self._pending_norms = []
        return norms

    def clipping_stats(self, norms: list[float]) -> dict[str, float]:
        """grad_clipped_share: the share of the steps whose gradient norm exceeded max_grad_norm, so that clipping
        scaled the step down (none where max_grad_norm <= 0: clipping is off); grad_norm_median: their median norm."""
        finite = [n for n in norms if math.isfinite(n)]
        if not finite:
            return {}
        out = {"grad_norm_median": round(float(statistics.median(finite)), 6)}
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            out["grad_clipped_share"] = round(sum(n > self.args.max_grad_norm for n in norms) / len(norms), 6)
        return out

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

    def prompt_weight(self) -> float | None:
        """w at the current optimizer step (the schedule's value; constant without one)."""
        if self.weight_spec is None:
            return None
        return self.weight_spec.prompt_weight_at(self.state.global_step, self.state.max_steps)

    def _weight_table(self) -> list[float] | None:
        """This step's weight per role code (WeightSpec.table), or None to use the batches' loss_weights."""
        return None if self.weight_spec is None else self.weight_spec.tables(self.prompt_weight())

    def _denominator(self, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro-batch's share of the normaliser under the run's loss_normalizer (sft.core.loss.batch_normalizer)."""
        return batch_normalizer(masks, self.weight_spec.loss_normalizer if self.weight_spec is not None else "weight_sum")

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor:
        """The normaliser of the optimizer step: all its micro-batches, on all processes.

        The Trainer counts labels != -100 here; with weights the default normaliser is their sum.
        """
        table = self._weight_table()
        total = sum(self._denominator(target_weights(b, table)) for b in batch_samples)
        total = torch.as_tensor(total, dtype=torch.float32, device=device)
        if self.args.world_size > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """sum(w * nll) / the normaliser (default sum(w)), over the whole step when training."""
        masks = target_weights(inputs, self._weight_table())
        weighted, nll, scored, outputs = self._token_nll(model, inputs, masks)
        if model.training and num_items_in_batch is not None:
            loss = weighted / num_items_in_batch.clamp_min(1e-8)
            # DDP averages gradients over processes, while our denominator already covers them all.
            loss = loss * self.accelerator.num_processes
        else:
            loss = weighted / self._denominator(masks).clamp_min(1e-8)
        self._accumulate(nll, masks, scored, "train" if model.training else "eval", inputs)
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
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        # Zero-weight positions are scored (without gradient) only when a log will report them:
        # every evaluation, and the training steps that end in a log (masked regime's prompt_loss).
        logged = not model.training or self._logs_this_step()
        seen = (masks["response"] + masks["prompt"]) > 0 if logged else None
        weighted, nll, scored = selective_head_loss(outputs.hidden_states[-1], head, inputs["input_ids"],
                                                    masks["weights"], score=seen)
        # outputs.logits holds the last position only; nothing downstream reads it (prediction_loss_only).
        return weighted, nll, scored, outputs

    def _logs_this_step(self) -> bool:
        """True while computing an optimizer step that ends with a training log."""
        step = self.state.global_step + 1
        return step % max(self.args.logging_steps, 1) == 0 or (step == 1 and self.args.logging_first_step)

    def _accumulate(self, nll, masks, scored, split: str, inputs: dict | None = None) -> None:
        """Add this micro-batch's response/prompt NLL sums and token count to the running log sums, and the NLL and
        tokens of each role (those scored) and of each source of a mixture (its response tokens): the loss's own
        per-token NLL, grouped."""
        seen_prompt = masks["prompt"] * scored  # prompt positions scored in this micro-batch
        sums = torch.stack([
            (nll * masks["response"]).sum(), masks["response"].sum(),
            (nll * seen_prompt).sum(), seen_prompt.sum(),
            (masks["response"] + masks["prompt"]).sum(),
        ]).double()
        # Kept on the device until a log reads them: a .cpu() here would wait on the GPU every micro-batch.
        self._sums[split] = self._sums[split].to(sums.device) + sums
        if inputs is None or "weight_codes" not in inputs:
            return
        # Each position scored goes to the group of the token it predicts (t + 1): scatter_add, never bincount,
        # which syncs with the GPU to size its output.
        seen = ((masks["response"] + masks["prompt"]) * scored).flatten()
        values = torch.stack([nll.flatten() * seen, seen]).double()
        groups = self._groups[split].to(values.device)
        groups.scatter_add_(1, shift_left(inputs["weight_codes"]).long().flatten().expand(2, -1), values)
        if self.source_names and SOURCE in inputs:  # a source's response tokens, as response_loss counts them
            response = masks["response"].flatten()
            slot = shift_left(inputs[SOURCE]).long().flatten() + len(ROLE_GROUPS)
            groups.scatter_add_(1, slot.expand(2, -1), torch.stack([nll.flatten() * response, response]).double())
        self._groups[split] = groups

    def _drain(self, split: str) -> dict[str, float]:
        """Reduce the accumulated sums over processes, reset them, and turn them into means."""
        sums = torch.cat([self._sums[split].to(self.args.device), self._groups[split].to(self.args.device).flatten()])
        if self.args.world_size > 1:  # one all-reduce for the response/prompt sums and the groups
            sums = self.accelerator.reduce(sums.to(torch.float32), reduction="sum").double()
        self._sums[split] = torch.zeros_like(self._sums[split])
        self._groups[split] = torch.zeros_like(self._groups[split])
        sums, (group_nll, group_n) = sums[:len(SUMS)], sums[len(SUMS):].view(2, -1).tolist()
        r_nll, r_n, p_nll, p_n, tokens = sums.tolist()
        out = {"response_loss": r_nll / r_n if r_n else float("nan")}
        out["response_perplexity"] = math.exp(min(out["response_loss"], 50.0))
        if p_n:  # none scored: a masked run between logging steps
            out["prompt_loss"] = p_nll / p_n
        # Unweighted means: each role's tokens scored since the last log (a role weighing 0 is scored on the logging
        # step's batch only, as prompt_loss is); each source's response tokens, so that source_<name>_loss means the
        # same in every regime, as response_loss does, and the sources' losses weighted by their response tokens
        # give response_loss.
        names = [f"{r}_loss" for r in ROLE_GROUPS] + [f"source_{n}_loss" for n in self.source_names]
        out.update({name: total / n for name, total, n in zip(names, group_nll, group_n) if n})
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
            logs.update(self.clipping_stats(self._read_norms()))  # the steps since the last log (TensorBoard)
            if self.weight_spec is not None and self.weight_spec.prompt_loss_weight_end is not None:
                # the schedule's w of the step just taken (TensorBoard: train/prompt_loss_weight)
                logs["prompt_loss_weight"] = self.weight_spec.prompt_weight_at(self.state.global_step - 1,
                                                                               self.state.max_steps)
        elif "train_loss" in logs and "train_runtime" in logs:  # the summary at the end: over the whole run
            totals = self.run_totals()  # the Trainer has added the last steps' loss to _total_loss_scalar already
            totals["loss_sum"] -= float(getattr(self, "_tr_loss", 0.0))
            logs["train_loss"] = totals["loss_sum"] / max(totals["steps"], 1)
            logs["train_tokens_per_second"] = round(totals["tokens"] / max(totals["seconds"], 1e-9), 1)
            logs["train_run_seconds"] = round(totals["seconds"], 1)
            # over every step of the run, across resumes: into the manifest's results.train (CLIPPING_STATS)
            logs.update({f"train_{k}": v for k, v in self.clipping_stats(totals["grad_norms"]).items()})
            logs["train_grad_norm_steps"] = len(totals["grad_norms"])  # the steps those two cover
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

"""The weighted token loss: its definition first (`weighted_cross_entropy`), then how training computes it.

`weighted_cross_entropy` is the loss, in a dozen lines: next-token cross-entropy at every position, times the
position's weight w (from its token's role, `target_weights`), summed and divided by the normaliser. Everything
below it computes the same number with less memory, and tests/core/test_loss.py checks that it does, in value and
in gradient.

Why not train with the definition: it materialises the logits of every position. A causal LM's head turns every
position's hidden state into vocabulary-sized logits; with the prompt masked (w = 0) about half the positions never
reach the loss, and for Qwen2.5-0.5B the logits of a 16K-token step are ~10 GB in fp32 before their gradient. So
`selective_head_loss` runs the head on the positions of non-zero weight only, in chunks (`selected_nll`), with the
gradient of each chunk computed while its logits exist (as Liger's fused linear cross-entropy does): the full
tokens x vocabulary tensor is never materialised. A chunk holds the positions whose fp32 logits fit in
HEAD_CHUNK_BYTES (883 at Qwen2.5's 151,936-token vocabulary), the chunks of a batch are of equal size and a small
remainder joins them rather than streaming the head's weight once more for a few rows (`head_chunk_rows`: 946
positions make one chunk), and a chunk is worked on in place, so the head needs one chunk and the fp32 gradient of
its weight, whatever the batch; bench/real_vocab.py measures it against TRL's chunked loss and Cut Cross-Entropy.
Written here rather than taken from Liger because the loss needs per-token weights and per-token NLLs (for the
response/prompt logs), which Liger's kernel does not return, and because it must run on the CPU.

The normaliser of a micro-batch is `batch_normalizer`; the Trainer sums it over the optimizer step's micro-batches
and processes (sft.core.trainer.WeightedLossTrainer._get_num_items_in_batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sft.core.costs import head_chunk_rows, head_chunk_tokens
from sft.core.weights import step_weights
from sft.data.errors import UserError


def weighted_cross_entropy(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor,
                           normalizer: float | torch.Tensor) -> torch.Tensor:
    """The loss, by definition: sum over positions t of w_t * -log p(token t + 1 | tokens up to t), / normalizer.

    logits [B, T, V] (the model's, every position); input_ids [B, T]; weights [B, T] aligned with the predicting
    position (target_weights' "weights": 0 on padding, on the last position and wherever the role weighs 0);
    normalizer: the step's (batch_normalizer summed over the step). Training computes the same with
    selective_head_loss, which never holds [B, T, V] logits.
    """
    # fp32 at least: in bf16 the log-probabilities of a 151k vocabulary lose their tail.
    logprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    targets = shift_left(input_ids)  # position t is scored on token t + 1 (the last on a dummy 0, weighted 0)
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]: -log p(next token)
    return (weights * nll).sum() / normalizer


def shift_left(x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """x[:, t + 1] at position t (the last position gets `fill`): aligns token t + 1 with its predictor."""
    return F.pad(x[:, 1:], (0, 1), value=fill)


def target_weights(batch: dict[str, torch.Tensor], table: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Weights and masks aligned with the predicting position: position t scores token t + 1.

    table: the role table of this step (WeightSpec.table(w)), from which the weights are computed
    (sft.core.weights.step_weights); None = the batch's loss_weights (the run's starting w).
    A packed batch has no attention mask (every position is real), and no position may predict
    the first token of the next example: those are found from position_ids == 0.
    """
    mask = batch.get("attention_mask")
    valid = shift_left(mask).to(torch.float32) if mask is not None else shift_left(torch.ones_like(batch["input_ids"]))
    valid = valid.to(torch.float32)
    if mask is None and "position_ids" in batch:  # packed: no target across an example boundary
        valid = valid * shift_left(batch["position_ids"] != 0).to(torch.float32)
    response = shift_left(batch["response_mask"]).to(torch.float32) * valid
    weights = batch["loss_weights"] if table is None else step_weights(batch, table)
    return {"weights": shift_left(weights) * valid, "response": response, "prompt": valid - response}


def batch_normalizer(masks: dict[str, torch.Tensor], how: str = "weight_sum") -> torch.Tensor:
    """One micro-batch's share of the normaliser (WeightSpec.loss_normalizer), from target_weights' masks: the sum of
    weights (weight_sum, the default), the trained assistant tokens (response_tokens) or the tokens of non-zero
    weight (weighted_tokens)."""
    if how == "response_tokens":
        return masks["response"].sum()
    if how == "weighted_tokens":
        return (masks["weights"] > 0).to(torch.float32).sum()
    return masks["weights"].sum()


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of the next token from full logits, [B, T], 0 at the last position: weighted_cross_entropy's
    `nll` (bit for bit: F.cross_entropy is the same log_softmax and gather), for the trainer's full-logits path
    (selective_head=False), whose logs need each position's NLL.

    The targets are shifted instead of the logits: `logits[:, :-1]` would copy the whole
    tokens x vocabulary tensor, shifting the ids copies B x T integers.
    """
    targets = shift_left(input_ids, fill=-100)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none", ignore_index=-100)
    return nll.view_as(input_ids)


# ------------------------------------------------------------ the optimisation: the same loss, without the logits
# weighted_cross_entropy holds [B, T, V] fp32 logits and their gradient (~10 GB for a 16K-token step at Qwen2.5's
# 151,936-token vocabulary). What follows computes the same sum, in value and in gradient, one chunk of the
# weighted positions at a time (see the module's docstring; tests/core/test_loss.py checks the equality).


def selective_head_loss(hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor, weights: torch.Tensor,
                        score: torch.Tensor | None = None, chunk: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weighted_cross_entropy's numerator, sum(w * nll), from the final hidden states [B, T, H] and the LM head,
    without the [B, T, V] logits: the head runs on the positions of non-zero weight only (selected_nll).

    Returns (sum of w * nll, per-position NLL [B, T] detached, mask of the positions scored [B, T]). Positions of
    weight 0 that `score` ([B, T] bool) marks get their NLL too, without gradient (the logs' prompt_loss); the rest
    have NLL 0. input_ids and weights as weighted_cross_entropy takes them.
    """
    hidden = hidden.flatten(0, 1)
    targets = shift_left(input_ids).flatten()
    flat = weights.flatten()
    nll = torch.zeros_like(flat)
    scored = (flat > 0).to(flat.dtype)
    trained = flat.nonzero().squeeze(1)  # the only positions whose logits reach the gradient
    weighted, nll[trained] = selected_nll(hidden[trained], head, targets[trained], flat[trained], chunk)
    if score is not None:
        extra = (score.flatten() & (flat == 0)).nonzero().squeeze(1)
        with torch.no_grad():
            _, nll[extra] = selected_nll(hidden[extra].detach(), head, targets[extra], flat[extra], chunk)
        scored[extra] = 1.0
    return weighted, nll.view_as(weights), scored.view_as(weights)


def selected_nll(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, token_weights: torch.Tensor,
                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w * nll, per-row nll) for selected rows of hidden states [K, H] through a bias-free head.

    `chunk` positions go through the head at a time (by default as many as HEAD_CHUNK_BYTES of logits hold), give or
    take: the chunks are of equal size, a remainder of up to 1/8 of a chunk shared among them (costs.head_chunk_rows).
    """
    if getattr(head, "bias", None) is not None:
        raise UserError("The selective head supports bias-free output layers (Qwen, Llama, Mistral); set "
                        "selective_head=False in the train config for this model.")
    if hidden.shape[0] == 0:
        zero = hidden.sum() * 0.0 + head.weight.sum() * 0.0  # keeps the graph connected for DDP
        return zero, hidden.new_zeros(0, dtype=torch.float32)
    chunk = head_chunk_rows(hidden.shape[0], chunk or head_chunk_tokens(head.weight.shape[0]))
    return _WeightedLinearCrossEntropy.apply(hidden, head.weight, targets, token_weights.to(torch.float32), chunk)


class _WeightedLinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(h_i @ W^T, y_i) and the per-row NLL, chunk by chunk, gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, chunk):
        # A frozen head (LoRA) needs no weight gradient: skipping it saves a third of the head's FLOPs.
        needs_h, needs_w = hidden.requires_grad, weight.requires_grad
        needs_grad = needs_h or needs_w
        nll = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if needs_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_w else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s : s + chunk], targets[s : s + chunk]
            rows = torch.arange(len(y), device=y.device)
            # The only [chunk, vocab] tensor. Every step below works in place: torch.logsumexp would
            # allocate a second one, and so would a separate softmax.
            logits = (h @ weight.T).float()
            nll[s : s + chunk], total = _target_nll_(logits, y, rows)
            if needs_grad:
                # d(w_i * nll_i)/d logits_i = w_i * softmax_i - w_i * onehot(y_i), built in place in `logits`
                # (one pass: the softmax's division and the token weight are a single scale per row).
                scale = token_weights[s : s + chunk]
                logits.mul_((scale / total)[:, None])
                logits[rows, y] -= scale
                if needs_h:
                    grad_h[s : s + chunk] = (logits.to(weight.dtype) @ weight).to(hidden.dtype)
                if needs_w:
                    grad_w.addmm_(logits.T, h.float())
            del logits  # before the next chunk's matmul allocates its own: one chunk alive at a time
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll)
        return (nll * token_weights).sum(), nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        grad_h, grad_w = ctx.saved_tensors
        # Scaled in place, so the [vocab, hidden] gradient is never copied. A second backward through
        # the same graph (retain_graph=True) fails on autograd's version check instead of going wrong.
        gh = grad_h.mul_(grad_loss.to(grad_h.dtype)) if ctx.needs_input_grad[0] and grad_h is not None else None
        gw = grad_w.mul_(grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] and grad_w is not None else None
        return gh, gw, None, None, None


def _target_nll_(logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL of each row's target, sum of exp(z - max z)) from fp32 logits [chunk, vocab], which become
    exp(z - max z) in place: torch.logsumexp's own steps, without its [chunk, vocab] temporary."""
    target = logits[rows, y]
    top = logits.amax(dim=1)
    total = logits.sub_(top[:, None]).exp_().sum(dim=1)
    return top + total.log() - target, total


@torch.no_grad()
def scored_nll(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
               chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row NLL, whether the target is the top token) of rows of hidden states [K, H], without gradient:
    the held-out metrics' head, a chunk of positions at a time."""
    chunk = head_chunk_rows(len(targets), chunk or head_chunk_tokens(head.weight.shape[0]))
    nll = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    hit = torch.empty(len(targets), dtype=torch.bool, device=hidden.device)
    for s in range(0, len(targets), chunk):
        y = targets[s : s + chunk]
        logits = head(hidden[s : s + chunk]).float()
        hit[s : s + chunk] = logits.argmax(-1) == y  # before the NLL overwrites the logits
        nll[s : s + chunk], _ = _target_nll_(logits, y, torch.arange(len(y), device=y.device))
        del logits
    return nll, hit

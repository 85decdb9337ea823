"""The arithmetic of a run's cost: optimizer steps, FLOPs, peak memory, GPU time; no model, no torch.

Formulas (all stated in `sft plan`'s output too):
* FLOPs = 6 N_body T + 6 V d T_head + 3 A, with N_body the parameters outside the embedding and
  LM head, T the tokens computed (padding included), T_head the positions the head runs on (with
  --selective-head those whose target weighs > 0 at the schedule's largest w under the whole weight
  spec, else T) and A the forward attention FLOPs, 4 L q_dim n(n+1)/2 per example of n tokens
  (causal); held-out evaluations add 2 N_body T + ...
* Memory = weights + gradients + AdamW's two states, each in the dtype the weights are loaded in
  on the GPU (model.dtype "auto" = bf16: the Trainer's bf16=True then only autocasts, there is no
  fp32 master copy), + activations of the largest possible micro-batch (batch x longest example)
  + the LM head (`head_bytes`: its largest chunk of fp32 logits with the selective head) + a tied embedding's dense
  gradient + 1 GiB of CUDA context, summed as if all were alive at once. bench/real_vocab.py checks
  `memory_estimate` against a measured peak.
* Adapters (docs/lora.md): the same run as full fine-tuning, LoRA (frozen bf16 base; adapter, its
  gradients and AdamW states in fp32) and QLoRA (NF4 linear layers, the rest fp32), side by side,
  with 4 N_body T + 4 V d T_head + 3 A + 6 N_adapter T training FLOPs for the two adapter methods
  (no weight gradient of frozen weights), and which of them fits each GPU.

The head's chunk size (`head_chunk_tokens`, `head_chunk_rows`) lives here too: sft.core.loss runs its chunks at that
size and the memory estimate counts its largest chunk (`head_chunk_peak_rows`). Light on purpose: the command line reads MFU from here for `plan --help`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sft.core.config import ExperimentConfig

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    """A GPU's dense bf16 tensor-core peak and its memory."""

    name: str
    peak_flops: float  # FLOP/s, bf16 dense (no sparsity)
    memory_gib: float


GPUS = (
    Gpu("H100 SXM 80GB (989 TFLOP/s bf16 dense)", 989e12, 80.0),
    Gpu("RTX 4090 24GB (165 TFLOP/s bf16 dense, fp32 accumulate)", 165.2e12, 24.0),
)
MFU = 0.4  # assumed model FLOPs utilisation; not measured here (bench/gpu_throughput.py measures it on a GPU)
CUDA_CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspaces and allocator slack (assumed)
# bitsandbytes NF4 with double quantization: 4 bits a weight + one 8-bit absmax per 64-weight block + one fp32
# constant per 256 blocks (the QLoRA paper's 0.127 bits a parameter).
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
METHODS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}  # the methods the plan compares


HEAD_CHUNK_TOKENS = 1024  # the most positions per head chunk (small vocabularies: fewer, larger matmuls)
HEAD_CHUNK_BYTES = 512 * 2**20  # fp32 logits of one chunk: 883 positions at Qwen2.5's 151,936-row vocabulary
# A remainder of up to 1/HEAD_CHUNK_SLACK of a chunk is shared among the other chunks instead of making a small chunk
# of its own, which would stream the whole [V, d] head weight through its 3 products once more for a few rows: a
# chunk then holds up to 9/8 of HEAD_CHUNK_BYTES (993 rows, 576 MiB at Qwen2.5), and never more.
HEAD_CHUNK_SLACK = 8


def head_chunk_tokens(vocab: int, budget: int | None = None) -> int:
    """Positions per head chunk: as many fp32 logits rows as `budget` (HEAD_CHUNK_BYTES) holds, at most 1,024."""
    budget = HEAD_CHUNK_BYTES if budget is None else budget
    return max(1, min(HEAD_CHUNK_TOKENS, budget // (4 * vocab)))


def head_chunk_rows(n: int, chunk: int) -> int:
    """Rows per chunk for n positions, `chunk` (head_chunk_tokens) being a chunk's budget: the fewest chunks that hold
    them with at most chunk // HEAD_CHUNK_SLACK rows over in all, of equal size (946 -> one of 946; 2,000 -> 3 of 667)."""
    chunks = max(1, math.ceil((n - chunk // HEAD_CHUNK_SLACK) / chunk))
    return max(1, math.ceil(n / chunks))


def head_chunk_peak_rows(tokens: int, vocab: int) -> int:
    """The largest chunk of fp32 logits rows the selective head makes for at most `tokens` positions (any selection)."""
    chunk = head_chunk_tokens(vocab)
    return min(tokens, chunk + chunk // HEAD_CHUNK_SLACK)


def optimizer_steps(n_examples: int, per_device_batch: int, grad_accum: int = 1, epochs: float = 1.0,
                    max_steps: int = -1, world_size: int = 1, drop_last: bool = False) -> dict[str, int]:
    """The HF Trainer's step count (transformers 5 `set_initial_training_values`, accelerate's batch sharding).

    Micro-batches per epoch per process L = ceil(ceil(n / b) / world) (floors with drop_last);
    optimizer steps per epoch = ceil(L / accumulation) (at least 1); total = ceil(epochs x that),
    unless max_steps > 0.
    """
    batches = n_examples // per_device_batch if drop_last else math.ceil(n_examples / per_device_batch)
    per_process = batches // world_size if drop_last else math.ceil(batches / world_size)
    per_epoch = max(math.ceil(per_process / grad_accum), 1)
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    return {"micro_batches_per_epoch": per_process, "steps_per_epoch": per_epoch, "max_steps": total,
            "examples_per_step": per_device_batch * grad_accum * world_size}


def attention_flops(lengths: np.ndarray, layers: int, q_dim: int) -> float:
    """Forward attention FLOPs (QK^T and AV, causal: n(n+1)/2 pairs per example of n tokens)."""
    n = lengths.astype(np.float64)
    return float(4 * layers * q_dim * (n * (n + 1) / 2).sum())


def activation_bytes_per_token(shape: dict[str, Any], act_bytes: int) -> int:
    """Bytes one token keeps for the backward pass in one decoder layer (no gradient checkpointing).

    Saved inputs of: the two RMSNorms (plus their fp32 copies), q/k/v, RoPE, attention (q, k, v, out),
    o_proj, gate/up, the SiLU and the product, down_proj: 4h + 4 q_dim + 4 kv_dim + 4 i elements.
    """
    h, q, kv, i = shape["hidden"], shape["q_dim"], shape["kv_dim"], shape["intermediate"]
    return act_bytes * (4 * h + 4 * q + 4 * kv + 4 * i) + 4 * 2 * h


def head_bytes(shape: dict[str, Any], tokens: int, selective: bool, weight_bytes: int, compute_bytes: int) -> int:
    """Bytes of the LM head and its cross-entropy at their peak, for a micro-batch of `tokens` positions.

    Selective head (sft/core/loss.py): its largest chunk of fp32 logits (worked on in place; head_chunk_peak_rows), and
    the 16-bit product it is cast from when the compute is 16-bit (autocast); with 16-bit weights, its fp32 [V, d] gradient
    accumulator (with fp32 weights that is the weight's gradient, counted apart). Full logits: the logits
    in the compute dtype, their fp32 copy (none when the compute is fp32), the log-softmax and its
    gradient, all tokens x V.
    """
    vocab, cast = shape["vocab"], compute_bytes if compute_bytes < 4 else 0
    if not selective:
        return tokens * vocab * (cast + 3 * 4)
    rows = head_chunk_peak_rows(tokens, vocab)
    return rows * vocab * (4 + cast) + (shape["embedding_parameters"] * 4 if weight_bytes < 4 else 0)


def memory_estimate(shape: dict[str, Any], weight_bytes: int, tokens: int, act_bytes: int = 2,
                    selective: bool = True, context_bytes: int = int(CUDA_CONTEXT_GIB * GIB)) -> dict[str, int]:
    """The parts of a training step's peak memory, for a micro-batch of `tokens` positions (AdamW, no checkpointing)."""
    params = shape["parameters"]
    return {
        "weights": params * weight_bytes, "gradients": params * weight_bytes, "adamw_states": 2 * params * weight_bytes,
        "activations": tokens * shape["layers"] * activation_bytes_per_token(shape, act_bytes),
        "lm_head": head_bytes(shape, tokens, selective, weight_bytes, act_bytes),
        # The input embedding's backward makes a dense [V, d] gradient before adding it to the tied head's.
        "tied_embedding_gradient": shape["embedding_parameters"] * weight_bytes if shape["tied_embeddings"] else 0,
        "cuda_context": context_bytes,
    }


def gpu_weight_bytes(cfg: ExperimentConfig) -> int:
    """Bytes per parameter as loaded on a bf16-capable GPU: "auto" and "bfloat16" are bf16, "float16" fp16."""
    return 4 if cfg.model.dtype == "float32" else 2


def run_method(cfg: ExperimentConfig) -> str:
    """full, lora or qlora: what the run's config trains."""
    return "full" if cfg.lora is None else "qlora" if cfg.lora.qlora else "lora"


def activation_memory(shape: dict[str, Any], tokens: int, checkpointing: bool) -> int:
    """Activations kept for the backward pass of a micro-batch of `tokens` tokens, in bf16.

    With gradient checkpointing only each layer's input is kept, and one layer's activations are
    recomputed at a time.
    """
    per_layer = activation_bytes_per_token(shape, 2)
    if checkpointing:
        return tokens * (shape["layers"] * 2 * shape["hidden"] + per_layer)
    return tokens * shape["layers"] * per_layer


def method_memory(method: str, shape: dict[str, Any], weight_bytes: int, common: dict[str, int]) -> dict[str, int]:
    """Peak-memory parts of one method: full (weights, gradients, AdamW in `weight_bytes` each), LoRA (frozen
    weights in `weight_bytes`; adapter, its gradients and AdamW in fp32) or QLoRA (NF4 linear weights; the rest
    upcast to fp32 by peft's prepare_model_for_kbit_training; one linear layer dequantized to bf16 at a time)."""
    n = shape["parameters"]
    if method == "full":
        # A tied embedding's backward makes a dense [V, d] gradient before adding it to the head's (frozen under LoRA).
        tied = shape["embedding_parameters"] * weight_bytes if shape.get("tied_embeddings") else 0
        return {"weights": n * weight_bytes, "gradients": n * weight_bytes, "adamw_states": 2 * n * weight_bytes,
                "tied_embedding_gradient": tied, **common}
    a = shape["adapter_parameters"]
    if method == "lora":
        frozen = {"frozen_weights": n * weight_bytes}
    else:
        q = shape["quantized_parameters"]
        frozen = {"frozen_weights": math.ceil(q * NF4_BYTES) + 4 * (n - q),
                  "dequantized_layer": 2 * shape["largest_linear"]}
    return {**frozen, "adapter": 4 * a, "gradients": 4 * a, "adamw_states": 8 * a, **common}


def train_flops(method: str, shape: dict[str, Any], tokens: float, head_tokens: float, attn: float) -> float:
    """Training FLOPs of one epoch: 6 N T for full fine-tuning; 4 N T + 6 N_adapter T for LoRA / QLoRA, whose
    frozen weights need no weight gradient (only the gradient of their input)."""
    body, head = shape["body_parameters"], shape["embedding_parameters"]
    if method == "full":
        return 6 * body * tokens + 6 * head * head_tokens + 3 * attn
    return 4 * body * tokens + 4 * head * head_tokens + 3 * attn + 6 * shape["adapter_parameters"] * tokens


def gpu_rows(flops: float, peak: int, tokens: float, world_size: int, mfu: float) -> list[dict[str, Any]]:
    """Time at the stated MFU and whether the peak memory fits, on each GPU of GPUS."""
    rows = []
    for gpu in GPUS:
        seconds = flops / (gpu.peak_flops * mfu) / world_size
        rows.append({"gpu": gpu.name, "mfu": mfu, "hours": seconds / 3600, "fits": peak <= gpu.memory_gib * GIB,
                     "memory_gib": gpu.memory_gib, "train_tokens_per_second": tokens / seconds})
    return rows


def compare_methods(cfg: ExperimentConfig, shape: dict[str, Any], common: dict[str, int], flops: dict[str, float],
                    world_size: int, mfu: float) -> list[dict[str, Any]]:
    """Full fine-tuning (the config's dtype), LoRA (a bf16 base) and QLoRA (a 4-bit base) of this run, side by side.

    `flops` holds the run's tokens and attention per epoch, the epochs and the evaluations' FLOPs.
    """
    rows = []
    for method in METHODS:
        memory = method_memory(method, shape, gpu_weight_bytes(cfg) if method == "full" else 2, common)
        total = flops["epochs"] * train_flops(method, shape, flops["tokens"], flops["head_tokens"], flops["attn"])
        total += flops["eval"]
        peak = sum(memory.values())
        trainable = shape["parameters"] if method == "full" else shape["adapter_parameters"]
        rows.append({"method": method, "trainable_parameters": trainable, "memory_bytes": memory,
                     "peak_memory_bytes": peak, "flops": total,
                     "gpus": gpu_rows(total, peak, flops["tokens"] * flops["epochs"], world_size, mfu)})
    return rows

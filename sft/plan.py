"""What a run will cost, before it starts: `python -m sft plan --preset ... [overrides]`.

Tokenizes the data exactly as training will (the same cache), then prints the examples, the
tokens (prompt / response / padding by batching mode), the optimizer steps (the HF Trainer's own
arithmetic, `optimizer_steps`), the FLOPs, a peak-memory estimate for a bf16 GPU run, and the time
at a stated MFU on an H100 SXM and on a 24 GB RTX 4090. Needs the model's config.json and
tokenizer only, not its weights.

Formulas (all stated in the output too):
* FLOPs = 6 N_body T + 6 V d T_head + 3 A, with N_body the parameters outside the embedding and
  LM head, T the tokens computed (padding included), T_head the positions the head runs on
  (weight > 0 with --selective-head, else T) and A the forward attention FLOPs,
  4 L q_dim n(n+1)/2 per example of n tokens (causal); held-out evaluations add 2 N_body T + ...
* Memory = weights + gradients + AdamW's two states, each in the dtype the weights are loaded in
  on the GPU (model.dtype "auto" = bf16: the Trainer's bf16=True then only autocasts, there is no
  fp32 master copy), + activations of the largest possible micro-batch (batch x longest example)
  + the LM head (`head_bytes`) + a tied embedding's dense gradient + 1 GiB of CUDA context, summed as
  if all were alive at once (`memory_estimate`). bench/real_vocab.py checks it against a measured peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.trainer_pt_utils import get_length_grouped_indices

from sft.checks import check_inputs
from sft.config import ExperimentConfig
from sft.data import prepare_data
from sft.loss import head_chunk_tokens
from sft.modeling import load_tokenizer, looks_local

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


def micro_batches(lengths: np.ndarray, batch: int, batching: str, grad_accum: int, seed: int) -> list[np.ndarray]:
    """One epoch's micro-batches (example indices) in the order the Trainer's sampler draws them, seeded.

    The same algorithms as the Trainer's (a random permutation; length-grouped mega-batches), with a
    torch generator seeded by the run's seed: the padding is that of the run's batch composition in
    distribution, not the identical order (accelerate reseeds its sampler every epoch).
    """
    g = torch.Generator().manual_seed(seed)
    if batching == "grouped":  # the Trainer groups by train_batch_size x accumulation
        order = np.asarray(get_length_grouped_indices(lengths.tolist(), batch * grad_accum, generator=g))
    else:
        order = torch.randperm(len(lengths), generator=g).numpy()
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def batch_tokens(lengths: np.ndarray, batches: list[np.ndarray], batching: str) -> tuple[int, int]:
    """(tokens computed, padding tokens) of the given micro-batches: packed rows hold no padding."""
    real = int(lengths.sum())
    if batching == "packed":
        return real, 0
    computed = int(sum(len(b) * lengths[b].max() for b in batches))
    return computed, computed - real


def attention_flops(lengths: np.ndarray, layers: int, q_dim: int) -> float:
    """Forward attention FLOPs (QK^T and AV, causal: n(n+1)/2 pairs per example of n tokens)."""
    n = lengths.astype(np.float64)
    return float(4 * layers * q_dim * (n * (n + 1) / 2).sum())


def model_shape(model: str) -> dict[str, Any]:
    """Parameter counts and dimensions from config.json alone (the model is built on the meta device)."""
    try:
        cfg = AutoConfig.from_pretrained(model)
    except Exception as e:  # offline, unknown id, no config: say what the plan needs
        raise ValueError(f"Cannot read the config of {model!r} ({type(e).__name__}): put at least its config.json "
                         "and tokenizer files into model/qwen2.5/transformers/0.5b/1/ (the weights are not needed "
                         "for a plan), or pass --model.model PATH.") from None
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in net.parameters())  # tied weights are counted once
    vocab, hidden = cfg.vocab_size, cfg.hidden_size
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    kv = getattr(cfg, "num_key_value_heads", heads)
    return {
        "architecture": (cfg.architectures or [type(net).__name__])[0], "parameters": total,
        "embedding_parameters": vocab * hidden, "tied_embeddings": tied,
        "body_parameters": total - vocab * hidden * (1 if tied else 2),  # outside embedding and head
        "layers": cfg.num_hidden_layers, "hidden": hidden, "q_dim": heads * head_dim, "kv_dim": kv * head_dim,
        "intermediate": cfg.intermediate_size, "vocab": vocab,
    }


def activation_bytes_per_token(shape: dict[str, Any], act_bytes: int) -> int:
    """Bytes one token keeps for the backward pass in one decoder layer (no gradient checkpointing).

    Saved inputs of: the two RMSNorms (plus their fp32 copies), q/k/v, RoPE, attention (q, k, v, out),
    o_proj, gate/up, the SiLU and the product, down_proj: 4h + 4 q_dim + 4 kv_dim + 4 i elements.
    """
    h, q, kv, i = shape["hidden"], shape["q_dim"], shape["kv_dim"], shape["intermediate"]
    return act_bytes * (4 * h + 4 * q + 4 * kv + 4 * i) + 4 * 2 * h


def head_bytes(shape: dict[str, Any], tokens: int, selective: bool, weight_bytes: int, compute_bytes: int) -> int:
    """Bytes of the LM head and its cross-entropy at their peak, for a micro-batch of `tokens` positions.

    Selective head (sft/loss.py): one chunk of fp32 logits, worked on in place, and the 16-bit product it
    is cast from when the compute is 16-bit (autocast); with 16-bit weights, its fp32 [V, d] gradient
    accumulator (with fp32 weights that is the weight's gradient, counted apart). Full logits: the logits
    in the compute dtype, their fp32 copy (none when the compute is fp32), the log-softmax and its
    gradient, all tokens x V.
    """
    vocab, cast = shape["vocab"], compute_bytes if compute_bytes < 4 else 0
    if not selective:
        return tokens * vocab * (cast + 3 * 4)
    rows = min(tokens, head_chunk_tokens(vocab))
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


def plan_run(cfg: ExperimentConfig, world_size: int = 1, mfu: float = MFU, batching: str | None = None
             ) -> dict[str, Any]:
    """Every figure of the plan, as a JSON-ready dict."""
    if world_size < 1:
        raise ValueError(f"--world-size must be at least 1, got {world_size}.")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], e.g. 0.4, got {mfu}.")
    model = cfg.model.model
    if cfg.demo is not None:  # the demo's model is built by `build-demo`, so it needs no download checks
        if not Path(model).is_dir():
            raise ValueError(f"{model} does not exist yet: build the demo first with `python -m sft build-demo`.")
        tokenizer = load_tokenizer(cfg.model)
        shape = model_shape(model)
    elif looks_local(model):  # the folder's files, architecture and tokenizer first: the most precise messages
        tokenizer = check_inputs(cfg, weights=False)
        shape = model_shape(model)
    else:  # a hub id: reading its config first is the clear error when offline
        shape = model_shape(model)
        tokenizer = check_inputs(cfg, weights=False)
    t, d = cfg.train, cfg.data
    data = prepare_data(d, tokenizer)  # the split and tokenization training will use (and cache for it)
    train, held = data.train, data.eval
    lengths = np.asarray(train["length"], dtype=np.int64)
    response = np.asarray([sum(m) for m in train["response_mask"]], dtype=np.int64)
    real = int(lengths.sum())
    mode = batching or ("packed" if t.batching == "auto" else t.batching)
    drop_last = bool(t.extra.get("dataloader_drop_last", False))
    steps = optimizer_steps(len(lengths), t.per_device_train_batch_size, t.gradient_accumulation_steps,
                            t.num_train_epochs, t.max_steps, world_size, drop_last)
    epochs_run = steps["max_steps"] / steps["steps_per_epoch"]  # exact for whole epochs
    by_mode = {}
    for m in ("padded", "grouped", "packed"):
        batches = micro_batches(lengths, t.per_device_train_batch_size, m, t.gradient_accumulation_steps, t.seed)
        computed, padding = batch_tokens(lengths, batches, m)
        by_mode[m] = {"tokens_per_epoch": computed, "padding_per_epoch": padding,
                      "padding_share": padding / computed if computed else 0.0}
    computed = by_mode[mode]["tokens_per_epoch"]
    scored = int(response.sum()) if d.prompt_loss_weight == 0 else real - len(lengths)  # head positions, weight > 0
    head_tokens = scored if t.selective_head else computed
    body, head = shape["body_parameters"], shape["embedding_parameters"]
    attn = attention_flops(lengths, shape["layers"], shape["q_dim"])
    train_flops = epochs_run * (6 * body * computed + 6 * head * head_tokens + 3 * attn)
    held_len = np.asarray(held["length"], dtype=np.int64)
    eval_batches = [np.arange(i, min(i + t.per_device_eval_batch_size, len(held_len)))
                    for i in range(0, len(held_len), t.per_device_eval_batch_size)]
    eval_computed, _ = batch_tokens(held_len, eval_batches, mode)
    n_evals = steps["max_steps"] // t.eval_steps + (1 if steps["max_steps"] % t.eval_steps else 0)
    eval_flops = n_evals * (2 * (body + head) * eval_computed
                            + attention_flops(held_len, shape["layers"], shape["q_dim"]))
    total_flops = train_flops + eval_flops

    pb = gpu_weight_bytes(cfg)
    mb_tokens = t.per_device_train_batch_size * int(lengths.max())  # the largest micro-batch possible
    memory = memory_estimate(shape, pb, mb_tokens, act_bytes=2, selective=t.selective_head)
    peak = sum(memory.values())
    gpus = []
    for gpu in GPUS:
        seconds = total_flops / (gpu.peak_flops * mfu) / world_size
        gpus.append({"gpu": gpu.name, "mfu": mfu, "hours": seconds / 3600, "fits": peak <= gpu.memory_gib * GIB,
                     "memory_gib": gpu.memory_gib, "train_tokens_per_second": computed * epochs_run / seconds})
    return {
        "preset": cfg.preset, "run_name": t.run_name, "prompt_loss_weight": d.prompt_loss_weight,
        "data": {"source": d.data, "train_examples": len(lengths), "heldout_examples": len(held_len),
                 "eval_size": d.eval_size, "split_seed": d.split_seed, "max_rows": d.max_rows,
                 "max_length": d.max_length, "truncated": data.info["train_tokenize"]["examples_truncated"],
                 "prompt_tokens": real - int(response.sum()), "response_tokens": int(response.sum()),
                 "real_tokens_per_epoch": real, "longest_example": int(lengths.max())},
        "batching": mode, "by_batching": by_mode,
        "steps": {**steps, "per_device_batch": t.per_device_train_batch_size,
                  "gradient_accumulation_steps": t.gradient_accumulation_steps, "world_size": world_size,
                  "epochs": t.num_train_epochs if t.max_steps <= 0 else epochs_run, "drop_last": drop_last},
        "model": {"path": model, **shape},
        "flops": {"train": train_flops, "eval": eval_flops, "total": total_flops, "evaluations": n_evals,
                  "head_tokens_per_epoch": head_tokens, "attention_forward_per_epoch": attn,
                  "formula": "6 N_body T + 6 V d T_head + 3 A per epoch; evaluations 2 (N_body + V d) T + A"},
        "memory_bytes": memory, "peak_memory_bytes": peak,
        "memory_note": (("fp32 weights, gradients and AdamW states, bf16 autocast" if pb == 4 else
                         "bf16 weights, gradients and AdamW states: bf16=True only autocasts, there is no fp32 master "
                         "copy") + f" (model.dtype {cfg.model.dtype!r} on a bf16 GPU); activations "
                        f"of {t.per_device_train_batch_size} x {int(lengths.max())} tokens in bf16, no gradient "
                        f"checkpointing; {'selective' if t.selective_head else 'full-logits'} LM head; the parts "
                        "summed as if all were alive at once; estimate, +-30%"),
        "gpus": gpus,
    }


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _hours(h: float) -> str:
    return f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min"


def format_plan(p: dict[str, Any]) -> str:
    """The plan as a few labelled lines (the README's reference section pastes this)."""
    d, s, m, f, mem = p["data"], p["steps"], p["model"], p["flops"], p["memory_bytes"]
    lines = [f"plan: preset {p['preset']}, run {p['run_name']} (w = {p['prompt_loss_weight']:g})"]
    held = f"eval_size {d['eval_size']:g}" if d["heldout_examples"] else "eval_data"
    lines.append(f"data      {d['source']}: {d['train_examples']:,} training examples, {d['heldout_examples']:,} "
                 f"held-out ({held}, split_seed {d['split_seed']}), max_length {d['max_length']}, "
                 f"{d['truncated']:,} truncated, longest {d['longest_example']}")
    lines.append(f"tokens    per epoch: {d['real_tokens_per_epoch']:,} real = {d['prompt_tokens']:,} prompt + "
                 f"{d['response_tokens']:,} response (EOS included)")
    for mode, b in p["by_batching"].items():
        mark = "  <- this run" if mode == p["batching"] else ""
        lines.append(f"          {mode:7s}: {b['tokens_per_epoch']:,} computed, {b['padding_per_epoch']:,} padding "
                     f"({100 * b['padding_share']:.1f}%){mark}")
    lines.append(f"steps     ceil({d['train_examples']:,} / {s['per_device_batch']}) batches over {s['world_size']} "
                 f"process(es) = {s['micro_batches_per_epoch']:,} micro-batches per epoch per process; / "
                 f"{s['gradient_accumulation_steps']} accumulation = {s['steps_per_epoch']:,} steps per epoch; "
                 f"x {s['epochs']:g} epochs = {s['max_steps']:,} optimizer steps of {s['examples_per_step']} examples")
    lines.append(f"model     {m['path']}: {m['architecture']}, {m['parameters']:,} parameters ({m['layers']} layers, "
                 f"hidden {m['hidden']}, vocabulary {m['vocab']:,}, embedding {m['embedding_parameters']:,}"
                 f"{' tied' if m['tied_embeddings'] else ''}; {m['body_parameters']:,} outside embedding and head)")
    lines.append(f"FLOPs     {f['total']:.3e} = training {f['train']:.3e} + {f['evaluations']} held-out evaluations "
                 f"{f['eval']:.3e}  [{f['formula']}; T_head {f['head_tokens_per_epoch']:,} per epoch]")
    parts = ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in mem.items())
    lines.append(f"memory    peak ~{_gib(p['peak_memory_bytes'])} per GPU = {parts}")
    lines.append(f"          ({p['memory_note']})")
    for g in p["gpus"]:
        fits = "fits" if g["fits"] else f"does NOT fit in {g['memory_gib']:g} GiB"
        lines.append(f"time      {g['gpu']}, x{s['world_size']}: {_hours(g['hours'])} at {100 * g['mfu']:.0f}% MFU "
                     f"(assumed, not measured; {g['train_tokens_per_second']:,.0f} tokens/s); {fits}")
    return "\n".join(lines)

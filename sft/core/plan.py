"""What a run will cost, before it starts: `python -m sft plan --preset ... [overrides]`.

Tokenizes the data exactly as training will (the same cache), then prints the examples, the
tokens (prompt / response / padding by batching mode), the optimizer steps (the HF Trainer's own
arithmetic, `optimizer_steps`), the FLOPs, a peak-memory estimate for a bf16 GPU run, and the time
at a stated MFU on an H100 SXM and on a 24 GB RTX 4090 (formulas: sft.core.costs). Needs the model's
config.json and tokenizer only, not its weights: the model is built on the meta device for its shape.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.trainer_pt_utils import get_length_grouped_indices

from sft.core.config import ExperimentConfig, LoraSettings
from sft.core.costs import (
    CUDA_CONTEXT_GIB,
    GIB,
    METHODS,
    MFU,
    activation_memory,
    attention_flops,
    compare_methods,
    gpu_rows,
    gpu_weight_bytes,
    head_bytes,
    method_memory,
    optimizer_steps,
    run_method,
    train_flops,
)
from sft.core.prepare import prepare_data
from sft.data.errors import UserError
from sft.data.mixture import SOURCE
from sft.data.stats import tokens_by_role
from sft.data.weights import WeightSpec
from sft.models.checks import check_inputs
from sft.models.lora import lora_config
from sft.models.tokenizer import load_tokenizer, looks_local


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


def model_shape(model: str, lora: LoraSettings | None = None) -> dict[str, Any]:
    """Parameter counts and dimensions from config.json alone (the model is built on the meta device).

    Also the weights a 4-bit base quantizes (every nn.Linear but the LM head, as transformers' bitsandbytes
    integration does) and the trainable parameters of the LoRA adapter `lora` (default: LoraSettings()).
    """
    try:
        cfg = AutoConfig.from_pretrained(model)
    except Exception as e:  # offline, unknown id, no config: say what the plan needs
        raise UserError(f"Cannot read the config of {model!r} ({type(e).__name__}): put at least its config.json "
                         "and tokenizer files into model/qwen2.5/transformers/0.5b/1/ (the weights are not needed "
                         "for a plan), or pass --model.model PATH.") from None
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in net.parameters())  # tied weights are counted once
    linear = [m.weight.numel() for m in net.modules()
              if isinstance(m, torch.nn.Linear) and m is not net.get_output_embeddings()]
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
        "quantized_parameters": sum(linear), "largest_linear": max(linear),
        "adapter_parameters": adapter_parameters(net, lora or LoraSettings()),
    }


def adapter_parameters(net, lora: LoraSettings) -> int:
    """Trainable parameters of a LoRA adapter on a model, counted by peft itself on the meta device."""
    with torch.device("meta"):
        wrapped = get_peft_model(net, lora_config(lora))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def shape_and_tokenizer(cfg: ExperimentConfig) -> tuple[dict[str, Any], Any]:
    """The model's shape and the run's tokenizer, checked in the order that gives the clearest error."""
    model = cfg.model.model
    if cfg.demo is not None:  # the demo's model is built by `build-demo`, so it needs no download checks
        if not Path(model).is_dir():
            raise UserError(f"{model} does not exist yet: build the demo first with `python -m sft build-demo`.")
        return model_shape(model, cfg.lora), load_tokenizer(cfg.model)
    if looks_local(model):  # the folder's files, architecture and tokenizer first: the most precise messages
        tokenizer = check_inputs(cfg, weights=False)
        return model_shape(model, cfg.lora), tokenizer
    shape = model_shape(model, cfg.lora)  # a hub id: reading its config first is the clear error when offline
    return shape, check_inputs(cfg, weights=False)


def plan_run(cfg: ExperimentConfig, world_size: int = 1, mfu: float = MFU, batching: str | None = None
             ) -> dict[str, Any]:
    """Every figure of the plan, as a JSON-ready dict."""
    if world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {world_size}.")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], e.g. 0.4, got {mfu}.")
    shape, tokenizer = shape_and_tokenizer(cfg)
    t, d = cfg.train, cfg.data
    data = prepare_data(d, tokenizer)  # the split and tokenization training will use (and cache for it)
    lengths = np.asarray(data.train["length"], dtype=np.int64)
    response = np.asarray([sum(m) for m in data.train["response_mask"]], dtype=np.int64)
    held_len = np.asarray(data.eval["length"], dtype=np.int64)
    mode = batching or ("packed" if t.batching == "auto" else t.batching)
    drop_last = bool(t.extra.get("dataloader_drop_last", False))
    steps = optimizer_steps(len(lengths), t.per_device_train_batch_size, t.gradient_accumulation_steps,
                            t.num_train_epochs, t.max_steps, world_size, drop_last)
    by_mode = {m: padding_of(lengths, t, m) for m in ("padded", "grouped", "packed")}
    work = run_flops(cfg, shape, lengths, data.train, held_len, steps, by_mode[mode]["tokens_per_epoch"], mode,
                     data.weight_spec)
    mb_tokens = t.per_device_train_batch_size * int(lengths.max())  # the largest micro-batch possible
    checkpointing = bool(t.extra.get("gradient_checkpointing", False))
    common = {"activations": activation_memory(shape, mb_tokens, checkpointing),
              "lm_head": head_bytes(shape, mb_tokens, t.selective_head, gpu_weight_bytes(cfg), 2),
              "cuda_context": int(CUDA_CONTEXT_GIB * GIB)}
    method = run_method(cfg)
    memory = method_memory(method, shape, gpu_weight_bytes(cfg), common)
    peak = sum(memory.values())
    total = work["train"] + work["eval"]
    return {
        "preset": cfg.preset, "run_name": t.run_name, "prompt_loss_weight": d.prompt_loss_weight,
        "data": data_figures(d, data, lengths, response, len(held_len)),
        "batching": mode, "by_batching": by_mode,
        "steps": {**steps, "per_device_batch": t.per_device_train_batch_size,
                  "gradient_accumulation_steps": t.gradient_accumulation_steps, "world_size": world_size,
                  "epochs": t.num_train_epochs if t.max_steps <= 0 else work["epochs"], "drop_last": drop_last},
        "model": {"path": cfg.model.model, **shape},
        "method": method, "lora": dataclasses.asdict(cfg.lora or LoraSettings()),
        "flops": {k: work[k] for k in ("train", "eval", "evaluations", "head_tokens_per_epoch", "head_tokens_note",
                                       "attention_forward_per_epoch", "formula")} | {"total": total},
        "memory_bytes": memory, "peak_memory_bytes": peak,
        "memory_note": memory_note(cfg, method, mb_tokens // t.per_device_train_batch_size, checkpointing),
        "gpus": gpu_rows(total, peak, work["tokens"] * work["epochs"], world_size, mfu),
        "methods": compare_methods(cfg, shape, common, work, world_size, mfu),
    }


def data_figures(d, data, lengths: np.ndarray, response: np.ndarray, heldout: int) -> dict[str, Any]:
    """The plan's data section: examples, split, truncation and tokens (conversations: also per role)."""
    roles = tokens_by_role(data.train)  # None for instruction rows
    return {"source": d.data, "train_examples": len(lengths), "heldout_examples": heldout,
            "eval_size": d.eval_size, "split_seed": d.split_seed, "max_rows": d.max_rows,
            "max_length": d.max_length, "truncated": data.info["train_tokenize"]["examples_truncated"],
            "prompt_tokens": int(lengths.sum() - response.sum()), "response_tokens": int(response.sum()),
            "real_tokens_per_epoch": int(lengths.sum()), "longest_example": int(lengths.max()),
            **({"tokens_by_role": roles} if roles else {}), **({"sources": source_figures(data, lengths, response)}
                                                              if data.sources else {})}


def source_figures(data, lengths: np.ndarray, response: np.ndarray) -> dict[str, dict[str, Any]]:
    """A mixture's training examples and tokens per epoch by source (after the draw: repeats counted), with its
    share and the examples it had before the draw."""
    source = np.asarray(data.train[SOURCE], dtype=np.int64)
    out = {}
    for k, (name, mix) in enumerate(zip(data.sources, data.info["mixture"])):
        mine = source == k
        out[name] = {"share": mix["share"], "available_examples": mix["training_examples"],
                     "examples": int(mine.sum()), "tokens": int(lengths[mine].sum()),
                     "response_tokens": int(response[mine].sum())}
    return out


def padding_of(lengths: np.ndarray, t, mode: str) -> dict[str, Any]:
    """Tokens computed and padding of one epoch in a batching mode."""
    batches = micro_batches(lengths, t.per_device_train_batch_size, mode, t.gradient_accumulation_steps, t.seed)
    computed, padding = batch_tokens(lengths, batches, mode)
    return {"tokens_per_epoch": computed, "padding_per_epoch": padding,
            "padding_share": padding / computed if computed else 0.0}


def largest_prompt_weight(spec: WeightSpec) -> float:
    """The largest w of the run: the schedule's end where it ramps up, else the starting w."""
    end = spec.prompt_loss_weight_end
    return float(max(spec.prompt_loss_weight, spec.prompt_loss_weight if end is None else end))


def head_positions(train, spec: WeightSpec) -> int:
    """Positions the selective head runs on in an epoch: those whose target (the next token) weighs more than 0 at
    the schedule's largest w, under every setting of the spec (role_weights, train_on, the messages' own weights).

    A position's weight is non-zero at some step exactly when it is at that w (a weight is its role's, w or fixed,
    times the message's), so a ramp that starts or ends at 0 is counted as if w > 0 on all its steps: one step over.
    """
    table = train.with_format("arrow")[:]  # the rows in the dataset's order, as one pyarrow table
    codes = pc.list_flatten(table.column("weight_codes")).to_numpy().astype(np.int64)
    scale = pc.list_flatten(table.column("weight_scale")).to_numpy()
    lengths = pc.list_value_length(table.column("weight_codes")).to_numpy().astype(np.int64)
    tables = np.asarray(spec.tables(largest_prompt_weight(spec)), dtype=np.float32)
    if tables.ndim == 2:  # a mixture whose sources weigh roles their own way: each token by its source's table
        source = np.repeat(np.asarray(table.column(SOURCE), dtype=np.int64), lengths) if SOURCE in \
            table.column_names else np.full(len(codes), len(tables) - 1)
        tables = tables[source, codes]
    else:
        tables = tables[codes]
    scored = tables * scale > 0
    starts = np.cumsum(lengths) - lengths
    scored[starts[lengths > 0]] = False  # an example's first token is no position's target
    return int(scored.sum())


def run_flops(cfg: ExperimentConfig, shape: dict[str, Any], lengths: np.ndarray, train,
              held_len: np.ndarray, steps: dict[str, int], computed: int, mode: str,
              spec: WeightSpec | None = None) -> dict[str, Any]:
    """Training and evaluation FLOPs of the run, and the per-epoch token counts they are made of (spec: the run's
    weight spec, a mixture's with its sources' role weights; default cfg.data's)."""
    t = cfg.train
    epochs = steps["max_steps"] / steps["steps_per_epoch"]  # exact for whole epochs
    spec = spec or cfg.data.weight_spec()
    head_tokens = head_positions(train, spec) if t.selective_head else computed
    head_note = (f"the positions whose target weighs > 0 at w = {largest_prompt_weight(spec):g}, role and message "
                 "weights included" if t.selective_head else "every position: no selective head")
    attn = attention_flops(lengths, shape["layers"], shape["q_dim"])
    eval_batches = [np.arange(i, min(i + t.per_device_eval_batch_size, len(held_len)))
                    for i in range(0, len(held_len), t.per_device_eval_batch_size)]
    eval_computed, _ = batch_tokens(held_len, eval_batches, mode)
    n_evals = steps["max_steps"] // t.eval_steps + (1 if steps["max_steps"] % t.eval_steps else 0)
    body, head = shape["body_parameters"], shape["embedding_parameters"]
    eval_flops = n_evals * (2 * (body + head) * eval_computed + attention_flops(held_len, shape["layers"],
                                                                                  shape["q_dim"]))
    formula = ("6 N_body T + 6 V d T_head + 3 A per epoch" if cfg.lora is None else
               "4 N_body T + 4 V d T_head + 3 A + 6 N_adapter T per epoch (frozen weights: no weight gradient)")
    return {"train": epochs * train_flops(run_method(cfg), shape, computed, head_tokens, attn), "eval": eval_flops,
            "evaluations": n_evals, "head_tokens_per_epoch": head_tokens, "attention_forward_per_epoch": attn,
            "formula": formula + "; evaluations 2 (N_body + V d) T + A", "head_tokens_note": head_note, "epochs": epochs, "tokens": computed,
            "head_tokens": head_tokens, "attn": attn}


def memory_note(cfg: ExperimentConfig, method: str, longest: int, checkpointing: bool) -> str:
    """What the run's memory estimate assumes."""
    fp32 = gpu_weight_bytes(cfg) == 4
    dtype = f"(model.dtype {cfg.model.dtype!r} on a bf16 GPU)"
    if method == "full":
        weights = ("fp32 weights, gradients and AdamW states, bf16 autocast " if fp32 else "bf16 weights, gradients "
                   "and AdamW states: bf16=True only autocasts, there is no fp32 master copy ") + dtype
    elif method == "lora":
        half = "; --model.dtype auto loads it in bf16, half the size" if fp32 else " on a bf16 GPU"
        weights = (f"frozen {'fp32' if fp32 else 'bf16'} base (model.dtype {cfg.model.dtype!r}{half}), fp32 adapter, "
                   "gradients and AdamW states")
    else:
        weights = "NF4 base (linear layers), the rest in fp32; fp32 adapter, gradients and AdamW states"
    act = "with gradient checkpointing" if checkpointing else "no gradient checkpointing"
    return (f"{weights}; activations of {cfg.train.per_device_train_batch_size} x {longest} tokens in bf16, {act}; "
            "estimate, +-30%")


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
    if "tokens_by_role" in d:  # conversations: the response is the trained assistant tokens
        r = d["tokens_by_role"]
        reply = sum(r.get(name, 0) for name in ("assistant", "tool_call", "reasoning"))  # the replies' tokens
        lines.append("          by role: " + " + ".join(f"{name} {n:,}" for name, n in r.items())
                     + f" ({d['response_tokens']:,} trained, {reply - d['response_tokens']:,} in earlier replies "
                     "outside the loss)")
    for name, src in d.get("sources", {}).items():  # a mixture: what each source gives an epoch
        lines.append(f"          source {name}: {src['examples']:,} examples (share {src['share']:.4f} of "
                     f"{d['train_examples']:,}, drawn from {src['available_examples']:,}), {src['tokens']:,} tokens "
                     f"({src['response_tokens']:,} response)")
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
                 f"{f['eval']:.3e}  [{f['formula']}; T_head {f['head_tokens_per_epoch']:,} per epoch: {f['head_tokens_note']}]")
    parts = ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in mem.items())
    lines.append(f"memory    peak ~{_gib(p['peak_memory_bytes'])} per GPU = {parts}")
    lines.append(f"          ({p['memory_note']})")
    for g in p["gpus"]:
        fits = "fits" if g["fits"] else f"does NOT fit in {g['memory_gib']:g} GiB"
        lines.append(f"time      {g['gpu']}, x{s['world_size']}: {_hours(g['hours'])} at {100 * g['mfu']:.0f}% MFU "
                     f"(assumed, not measured; {g['train_tokens_per_second']:,.0f} tokens/s); {fits}")
    return "\n".join(lines + format_methods(p))


def format_methods(p: dict[str, Any]) -> list[str]:
    """The full / LoRA / QLoRA comparison: trainable parameters, peak memory, time and fit on each GPU."""
    lora, n = p["lora"], p["model"]["parameters"]
    lines = [f"methods   the same run as full fine-tuning (model.dtype), LoRA (bf16 base) and QLoRA (NF4 base), the "
             f"adapter r={lora['r']} alpha={lora['alpha']:g} on {lora['target_modules']}; * = this run"]
    for row in p["methods"]:
        mark = "*" if row["method"] == p["method"] else " "
        gpus = "; ".join(f"{g['gpu'].split(' (')[0]} {_hours(g['hours'])}, "
                         f"{'fits' if g['fits'] else 'does NOT fit'}" for g in row["gpus"])
        lines.append(f"        {mark} {METHODS[row['method']]:16s} {row['trainable_parameters']:,} trainable "
                     f"({100 * row['trainable_parameters'] / n:.2f}%), peak ~{_gib(row['peak_memory_bytes'])}: {gpus}")
    return lines

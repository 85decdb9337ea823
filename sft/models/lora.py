"""LoRA and QLoRA adapters through peft: the config a run's `lora` section becomes, and wrapping a model in it.

The base weights stay frozen; only the adapters' A and B matrices (and any `modules_to_save`) train.
QLoRA loads the frozen base in 4-bit NF4 through bitsandbytes, which needs a CUDA GPU: on a machine
without one it is an error, never a silent fall-back to a full-precision base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from sft.data.errors import UserError
from sft.runs.layout import MANIFEST

ADAPTER_CONFIG = "adapter_config.json"  # peft's config file: its presence makes a folder an adapter folder
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's adapter weights
MERGED_DIR = "merged"  # <run>/merged/: base + adapter as one full model, written with lora.merge
BIASES = ("none", "all", "lora_only")  # peft's bias modes


def names(value: Any) -> str | list[str] | None:
    """'all-linear' as it is; 'q_proj,v_proj' (or a list) as a list of module names; None/'' as None."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return value if value == "all-linear" else [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def lora_config(settings) -> LoraConfig:
    """peft's LoraConfig of a run's LoraSettings, with its values checked."""
    if settings.r < 1:
        raise UserError(f"lora.r must be at least 1 (the rank of the adapter), got {settings.r}.")
    if not 0 <= settings.dropout < 1:
        raise UserError(f"lora.dropout must be in [0, 1), got {settings.dropout}.")
    if settings.bias not in BIASES:
        raise UserError(f"lora.bias must be one of {', '.join(BIASES)}, got {settings.bias!r}.")
    targets = names(settings.target_modules)
    if targets is None:
        raise UserError("lora.target_modules is empty: use all-linear or module names such as q_proj,v_proj.")
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
                      bias=settings.bias, modules_to_save=names(settings.modules_to_save), task_type="CAUSAL_LM")


def quantization_config(compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's 4-bit base (NF4, double quantization), or a ValueError where bitsandbytes cannot run."""
    if not torch.cuda.is_available():
        raise UserError("lora.qlora needs a CUDA GPU: bitsandbytes' 4-bit base weights have no CPU kernels here, "
                         "and falling back to a full-precision base would silently train another setup. Drop "
                         "--lora.qlora (plain LoRA runs on the CPU) or run on a GPU.")
    try:
        import bitsandbytes  # noqa: F401  (an optional dependency: only QLoRA needs it)
    except ImportError:
        raise UserError("lora.qlora needs bitsandbytes: `pip install bitsandbytes` (a CUDA build of torch is "
                         "needed too), or drop --lora.qlora.") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def check_lora(settings) -> None:
    """Refuse bad LoRA settings, and QLoRA where it cannot run, before a run writes anything."""
    lora_config(settings)
    if settings.qlora:
        quantization_config(torch.bfloat16)


def add_adapter(model, settings, selective_head: bool = True, gradient_checkpointing: bool = False) -> PeftModel:
    """The model wrapped in a fresh LoRA adapter: base weights frozen, adapter weights trainable."""
    config = lora_config(settings)
    if getattr(model, "is_loaded_in_4bit", False):  # QLoRA: norms in fp32, base frozen (peft's recipe)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    wrapped = get_peft_model(model, config)
    head = wrapped.get_output_embeddings()
    if selective_head and hasattr(head, "lora_A"):
        # The selective head multiplies by head.weight directly, which would leave the adapter's B @ A out.
        raise UserError("lora.target_modules adapts the LM head, which the selective head cannot apply: leave the "
                         "head out of target_modules (all-linear does), or set --selective-head false.")
    return wrapped


def is_adapter_dir(path: str | Path) -> bool:
    """True for a folder written by peft's save_pretrained (a LoRA run, one of its checkpoints)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model of an adapter folder: adapter_config.json's base_model_name_or_path if it exists, else the
    model of the run manifest beside it (the run folder's, or its parent's for a checkpoint)."""
    p = Path(path)
    base = json.loads((p / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if base and (Path(base).exists() or not base.startswith((".", "/", "model/"))):
        return base
    for folder in (p, p.parent):
        if (folder / MANIFEST).is_file():
            return json.loads((folder / MANIFEST).read_text())["config"]["model"]["model"]
    raise UserError(f"{p}: the adapter's base model {base!r} does not exist and no {MANIFEST} names it; put the "
                     f"base model there, or fix base_model_name_or_path in {p / ADAPTER_CONFIG}.")

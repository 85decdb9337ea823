"""Models loaded from a hub id or a local folder (full weights or a peft adapter on its base), and an adapter merged.

Weights load from safetensors and `trust_remote_code` stays off unless the model config asks for it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
)

from sft.data.errors import UserError
from sft.models.lora import adapter_base, is_adapter_dir
from sft.models.tokenizer import _check_local, load_tokenizer


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' = bfloat16 on a GPU that supports it, else float32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}.") from None


def load_model(model_cfg, quantization=None):
    """The causal LM of a ModelConfig (or a path), from a local folder or the hub, safetensors only.

    An adapter folder (a LoRA run or checkpoint: adapter_config.json) loads as its base model with the adapter
    on top (a peft PeftModel), the base found by sft.models.lora.adapter_base. `quantization` (QLoRA's
    BitsAndBytesConfig) loads the base in 4-bit on this process's GPU.
    """
    if isinstance(model_cfg, (str, Path)):
        return load_weights(str(model_cfg), quantization=quantization)
    return load_weights(model_cfg.model, model_cfg.dtype, model_cfg.attn_implementation, model_cfg.trust_remote_code,
                        quantization)


def load_weights(path: str, dtype: str = "auto", attn: str | None = None, remote: bool = False, quantization=None):
    """load_model's work, for a path and the ModelConfig fields it needs."""
    _check_local(path, "Model")
    if is_adapter_dir(path):
        base = load_weights(adapter_base(path), dtype, attn, remote, quantization)
        if (Path(path) / "generation_config.json").is_file():  # a conversation run's end-of-turn stop (sft.core.train)
            base.generation_config = GenerationConfig.from_pretrained(path)
        return PeftModel.from_pretrained(base, path)
    kwargs = {"dtype": resolve_dtype(dtype), "trust_remote_code": remote, "use_safetensors": True}
    if attn:
        kwargs["attn_implementation"] = attn
    if quantization is not None:  # bitsandbytes quantizes while placing the weights on this process's GPU
        kwargs.update(quantization_config=quantization, device_map={"": torch.cuda.current_device()})
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "auto") -> Path:
    """Write base + adapter as one full model (weights W + scale * B @ A) and the tokenizer into out_dir.

    The base is reloaded unquantized in `dtype` (for QLoRA too, as peft advises: merging into 4-bit weights
    would round the update away).
    """
    merged = load_weights(str(adapter_dir), dtype).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    load_tokenizer(str(adapter_dir)).save_pretrained(str(out))
    return out

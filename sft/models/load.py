"""The tiny Qwen2-style base model and byte-level BPE tokenizer that the offline demo builds for itself."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

from sft.models.lora import adapter_base, is_adapter_dir

# ---------------------------------------------------------------- loading any base model (demo or real)


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id: owner/name ids such as Qwen/Qwen2.5-0.5B (whose '.5B' is no file
    suffix) go to the hub."""
    return (Path(path).exists() or path.startswith((".", "/", "~", "model/", "model\\\\", "Dataset/"))
            or path.count("/") > 1)


def _check_local(path: str, what: str) -> None:
    """A path-like name that does not exist gets a clear message instead of a hub lookup error."""
    if looks_local(path) and not Path(path).exists():
        hint = ("run `make demo` or `python -m sft build-demo` to build the demo base model"
                if "demo" in path else "download the model there, or pass a hub id such as Qwen/Qwen2.5-0.5B")
        raise ValueError(f"{what} folder {path!r} does not exist: {hint}.")


def load_tokenizer(model_cfg) -> PreTrainedTokenizerFast:
    """The tokenizer of a ModelConfig (or a path), with a pad token (= EOS where it has none)."""
    if isinstance(model_cfg, (str, Path)):
        path, remote = str(model_cfg), False
    else:
        path, remote = model_cfg.tokenizer or model_cfg.model, model_cfg.trust_remote_code
    _check_local(path, "Tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:  # e.g. Llama; Qwen2.5 already has pad == eos
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' = bfloat16 on a GPU that supports it, else float32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}.") from None


def load_model(model_cfg, quantization=None):
    """The causal LM of a ModelConfig (or a path), from a local folder or the hub, safetensors only.

    An adapter folder (a LoRA run or checkpoint: adapter_config.json) loads as its base model with the adapter
    on top (a peft PeftModel), the base found by sft.lora.adapter_base. `quantization` (QLoRA's
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

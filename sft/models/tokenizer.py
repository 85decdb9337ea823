"""Tokenizers loaded from a hub id or a local folder, and the rule that tells the two apart.

Apart from model loading on purpose: `inspect-data` and `plan` need a tokenizer, not torch's models or peft.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from sft.data.errors import UserError


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
        raise UserError(f"{what} folder {path!r} does not exist: {hint}.")


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

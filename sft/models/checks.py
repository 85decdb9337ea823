"""Checks of a downloaded base model and dataset before a run writes anything.

Every failure is a one-line `UserError` that names the path and the fix (the command line
turns it into exit code 2): a model folder missing files, an architecture the project cannot
fine-tune, a tokenizer whose EOS or pad differ from the model's, a `Dataset/` folder holding
no usable file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from sft.data.errors import UserError
from sft.data.files import data_files
from sft.models.tokenizer import load_tokenizer, looks_local
from sft.runs.layout import BUILD_INFO, MANIFEST

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # one file, or the index of sharded files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # a fast tokenizer, as Qwen2.5 ships it
DOWNLOAD = "hf download Qwen/Qwen2.5-0.5B --local-dir {path}"  # the fix for an incomplete reference model folder


DEMO_FIX = ("point --model.model at a model folder (config.json, model.safetensors and the tokenizer), or drop it to "
            "train from the demo's own base, which `python -m sft build-demo` builds")


def check_model_dir(path: str | Path, weights: bool = True, tokenizer: bool = True,
                    fix: str | None = None) -> dict[str, Any]:
    """The config.json of a complete causal-LM folder (Hugging Face layout), or a ValueError saying what to fetch."""
    p = Path(path)
    fix = fix or f"download the whole model there, e.g. `{DOWNLOAD.format(path=p)}`"
    if p.is_file():
        raise UserError(f"{p} is a file, not a model folder: {fix}.")
    if not p.is_dir():
        raise UserError(f"Model folder {p} does not exist: {fix}, or pass --model.model with a hub id.")
    missing = ["config.json"] if not (p / "config.json").is_file() else []
    if weights and not any((p / w).is_file() for w in WEIGHTS):
        found = sorted(x.name for x in p.glob("*.bin")) or ["none"]
        missing.append(f"weights ({' or '.join(WEIGHTS)}; found {', '.join(found)}: only safetensors are loaded)")
    if tokenizer:
        missing += [f for f in TOKENIZER_FILES if not (p / f).is_file()]
    if missing:
        raise UserError(f"Model folder {p} lacks {', '.join(missing)}: {fix}.")
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p / 'config.json'} is not valid JSON ({e}): {fix}.") from None
    archs = config.get("architectures") or []
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
    if causal is None or not archs or not all(a.endswith("ForCausalLM") for a in archs):
        raise UserError(f"{p / 'config.json'}: architecture {'/'.join(archs) or '(none)'} (model_type "
                         f"{config.get('model_type')!r}) is not a causal LM that AutoModelForCausalLM loads, so it "
                         f"cannot be fine-tuned here: download the base causal LM, e.g. `{DOWNLOAD.format(path=p)}`.")
    return config


def _ids(value: Any) -> set[int]:
    return set(value) if isinstance(value, list) else ({value} if value is not None else set())


def check_tokenizer_matches(model_path: str | Path, config: dict[str, Any], tokenizer) -> None:
    """Refuse a tokenizer whose EOS or pad are not the model's, or whose vocabulary outgrows its embedding."""
    p = Path(model_path)
    eos = _ids(config.get("eos_token_id"))
    gen = p / "generation_config.json"
    if gen.is_file():
        eos |= _ids(json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id"))
    fix = "use the tokenizer that came with the model (drop --model.tokenizer, or re-download the model folder)"
    if eos and tokenizer.eos_token_id not in eos:
        raise UserError(f"{p}: the tokenizer's EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}) is not the "
                         f"model's eos_token_id {sorted(eos)}, so the model would never learn to stop: {fix}.")
    pad = config.get("pad_token_id")
    if pad is not None and tokenizer.pad_token_id != pad:
        raise UserError(f"{p}: the tokenizer's pad id {tokenizer.pad_token_id} is not the model's pad_token_id {pad}: "
                         f"{fix}.")
    if config.get("vocab_size") and len(tokenizer) > config["vocab_size"]:
        raise UserError(f"{p}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                         f"{config['vocab_size']} rows: {fix}.")


def weights_sha256(model_dir: str | Path) -> str:
    """The SHA-256 of a model folder's model.safetensors: what a base built by the project records at build."""
    digest = hashlib.sha256()
    with (Path(model_dir) / "model.safetensors").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_base_weights(model_dir: str | Path) -> None:
    """A base built by the project (it has build_info.json) must still hold the weights it was built with."""
    p = Path(model_dir)
    try:
        recorded = json.loads((p / BUILD_INFO).read_text()).get("weights_sha256")
    except (OSError, json.JSONDecodeError):
        return
    fix = (f"delete {p} and rebuild it (`python -m sft build-demo`, or any demo command), then train again; runs "
           "belong in their own folders (--run-name NAME), never in the base's")
    if recorded is None:
        if (p / MANIFEST).is_file() or any(p.glob("checkpoint-*")):
            raise UserError(f"{p} is the base model, but a training run wrote into it ({MANIFEST} or checkpoints "
                             f"there), so its weights may be fine-tuned ones: {fix}.")
        return
    if (p / "model.safetensors").is_file() and weights_sha256(p) != recorded:
        raise UserError(f"The base model {p} has changed since it was built: its model.safetensors no longer "
                         f"matches the weights_sha256 in {BUILD_INFO} (a run or a copy wrote over it), so runs would "
                         f"start from other weights: {fix}.")


def check_inputs(cfg, weights: bool = True, tokenizer=None):
    """Check the run's base model, tokenizer and data folder (every preset); return the loaded tokenizer."""
    if Path(cfg.data.data).is_dir() and not data_files(cfg.data.data):
        raise UserError(f"{cfg.data.data}/ holds no data file: put your dataset there (e.g. alpaca_data_cleaned.json) "
                         "or pass --data PATH or a hub id such as yahma/alpaca-cleaned.")
    model = cfg.model.model
    if not looks_local(model):  # a hub id: transformers checks the files while downloading
        try:
            return tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
        except OSError as e:  # offline, unknown id, gated: say where a download goes instead
            raise UserError(f"Cannot load {model!r} from the Hugging Face Hub ({type(e).__name__}): download it "
                             f"with `{DOWNLOAD.format(path='model/qwen2.5/transformers/0.5b/1')}` (the preset's "
                             "local folder), or pass --model.model PATH.") from None
    config = check_model_dir(model, weights=weights, tokenizer=cfg.model.tokenizer is None,
                             fix=DEMO_FIX if cfg.demo is not None else None)
    check_base_weights(model)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    check_tokenizer_matches(model, config, tokenizer)
    return tokenizer

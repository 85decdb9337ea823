"""The models given to an evaluation: `label=path` pairs parsed, each described (run manifest or build info),
the base models checked against the runs, and the prompt formats each one gets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sft.core.tokenize import fingerprint_tokenizer
from sft.data.errors import UserError
from sft.models.checks import check_model_dir
from sft.models.lora import adapter_base, is_adapter_dir
from sft.models.tokenizer import looks_local
from sft.runs.layout import BUILD_INFO, MANIFEST
from sft.runs.manifest import CLIPPING_STATS, read_manifest

LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---------------------------------------------------------------- models


def parse_models(spec: str) -> dict[str, str]:
    """Read `label=PATH,label=PATH` into an ordered {label: path}."""
    models: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        label, sep, path = part.partition("=")
        if not sep or not label or not path:
            raise UserError(f"--models takes LABEL=PATH pairs separated by commas, e.g. "
                             f"base=model/demo/base,masked=model/demo/masked; got {part!r}.")
        if not LABEL.match(label):
            raise UserError(f"Model label {label!r} may hold only letters, digits, '_', '.' and '-' "
                             "(it names files and columns).")
        if label in models:
            raise UserError(f"Model label {label!r} is given twice; give each model its own label.")
        models[label] = path
    if not models:
        raise UserError("--models is empty; pass e.g. base=model/demo/base,masked=model/demo/masked.")
    return models


def describe_model(path: str) -> dict[str, Any]:
    """What a model is: its path and manifest (a fine-tuned run) or build info (the demo base)."""
    p = Path(path)
    info: dict[str, Any] = {"path": str(path)}
    if looks_local(str(path)) and not is_adapter_dir(p):  # a folder missing files, or a file: a clear error now
        check_model_dir(p, tokenizer=False, fix="pass a model folder (a finished run such as model/demo/masked, a "
                                                "checkpoint-N folder, the base model) or a hub id")
    if (p / MANIFEST).is_file():
        m = read_manifest(p)
        if m.get("status") != "complete":
            raise UserError(f"{path}: the run's manifest says status={m.get('status')!r}, so there is no final "
                             "model yet. Finish it with `python -m sft train --resume`, or evaluate a checkpoint "
                             "folder instead.")
        keep = ("preset", "run_name", "prompt_loss_weight", "template", "status", "written_at", "git_commit")
        info["manifest"] = {k: m.get(k) for k in keep}
        info["manifest"]["eval_fingerprint"] = m.get("data", {}).get("eval_fingerprint")
        info["manifest"]["eval_response_loss"] = m.get("results", {}).get("eval", {}).get("eval_response_loss")
        trained = m.get("results", {}).get("train", {})
        for key in CLIPPING_STATS:  # the optimiser's regime (sft.core.trainer.WeightedLossTrainer.clipping_stats); absent in older runs
            if key in trained:
                info["manifest"][key] = trained[key]
        info["manifest"]["base_model"] = m.get("config", {}).get("model", {}).get("model")
        if m.get("base_weights_sha256"):  # absent in runs trained before it was recorded
            info["manifest"]["base_weights_sha256"] = m["base_weights_sha256"]
        # provenance (python -m sft pages provenance): the training's wall time (train_run_seconds: every session of a
        # resumed run), where and by what command it ran; absent in runs trained before they were recorded
        for key in ("train_runtime", "train_run_seconds"):
            if key in trained:
                info["manifest"][key] = trained[key]
        for key in ("machine", "command"):
            if key in m:
                info["manifest"][key] = m[key]
    elif (p / BUILD_INFO).is_file():
        b = json.loads((p / BUILD_INFO).read_text())
        info["build_info"] = {k: b.get(k) for k in ("fingerprint", "num_parameters", "build_version")}
    if is_adapter_dir(p):  # a LoRA adapter: evaluated on top of its base model
        info["adapter_of"] = adapter_base(p)
    return info


def base_model_warnings(models: dict[str, str], info: dict[str, dict], tokenizers: dict) -> list[str]:
    """Flag a listed base model that is no longer the one a run was tuned from (its tokenizer changed since)."""
    prints = {label: fingerprint_tokenizer(tok) for label, tok in tokenizers.items()}
    for label in models:
        info[label]["tokenizer_fingerprint"] = prints[label]
    out = []
    for run, i in info.items():
        base = i.get("manifest", {}).get("base_model")
        for label, path in models.items():
            same = base and Path(path).exists() and Path(base).exists() and Path(path).resolve() == Path(base).resolve()
            if same and label != run and prints[label] != prints[run]:
                out.append(f"{label} ({path}) is not the model {run} was tuned from: their tokenizers differ, so the "
                           "base was rebuilt after that run (e.g. by build-demo on new data). Rebuild or retrain.")
    return out


# ---------------------------------------------------------------- lm-eval


def prompt_formats(models: dict[str, str], info: dict[str, dict], tokenizers: dict, choice: str) -> dict[str, list]:
    """{label: the prompt formats it is evaluated in}: "raw" (lm-eval's prompt as is) and/or "chat" (its template)."""
    formats = {}
    for label in models:
        tuned = "manifest" in info[label]
        formats[label] = {"auto": ["raw", "chat"] if tuned else ["raw"], "raw": ["raw"], "chat": ["chat"],
                          "both": ["raw", "chat"]}[choice]
        if "chat" in formats[label] and not tokenizers[label].chat_template:
            raise UserError(f"{label} ({models[label]}) has no chat template in its tokenizer, so --prompt-format "
                             f"{choice} cannot render its prompts. Use --prompt-format auto or raw, or retrain it "
                             "with this version (fine-tuned models save their training template).")
    return formats

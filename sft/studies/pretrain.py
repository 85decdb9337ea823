"""The demo's pretrained base: the tiny random init trained on the plain-text corpus (sft.studies.corpus) with the
project's own trainer (every token of role `text`, w irrelevant), cached like the random base by a fingerprint of
its config, corpus and code, with its gate figures in build_info.json."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from sft.core.overrides import load_config
from sft.core.prepare import tokenize_rows
from sft.core.train import train
from sft.data.config import DataConfig
from sft.data.conversations import ASSISTANT, TEMPLATE, USER
from sft.data.errors import UserError
from sft.data.rows import load_rows
from sft.models.checks import check_base_weights, weights_sha256
from sft.models.tokenizer import load_tokenizer
from sft.runs.layout import BUILD_INFO, run_dir
from sft.studies import corpus as corpus_module
from sft.studies import facts, prose, tiny_model
from sft.studies.tiny_model import TinyModelConfig, ensure_demo_base, read_build_fingerprint

PRETRAIN_RUN = "base-pretraining"  # the pretraining run's folder, beside the base (model/demo/base-pretraining)
RANDOM_INIT = ".base-random-init"  # the random init it starts from, beside the base
BUILD_CODE = (corpus_module.__file__, prose.__file__, facts.__file__, __file__, tiny_model.__file__)  # editing one rebuilds the base


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file the demo wrote."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def pretrain_settings(demo) -> dict:
    """The demo settings the pretrained base depends on (beyond the model's shape and seed)."""
    return {"epochs": demo.pretrain_epochs, "batch_size": demo.pretrain_batch_size,
            "learning_rate": demo.pretrain_learning_rate, "corpus_seed": demo.corpus_seed}


def base_fingerprint(cfg: TinyModelConfig, demo, corpus_paths: dict[str, Path], sft_train: Path) -> str:
    """Hash of the model config, the pretraining settings, the corpus and SFT rows (the tokenizer's texts) and the
    code that builds them."""
    h = hashlib.sha256(json.dumps({"config": asdict(cfg), "pretrain": pretrain_settings(demo)}, sort_keys=True).encode())
    for path in (corpus_paths["train"], corpus_paths["heldout"], Path(sft_train)):
        h.update(Path(path).read_bytes())
    for source in BUILD_CODE:
        h.update(Path(source).read_bytes())
    return h.hexdigest()


def ensure_pretrained_base(demo, cfg: TinyModelConfig, corpus_paths: dict[str, Path], sft_paths: dict[str, Path]) -> Path:
    """Build (or reuse) the pretrained demo base in demo.base_dir; return it."""
    out = Path(demo.base_dir)
    fp = base_fingerprint(cfg, demo, corpus_paths, sft_paths["train"])
    if read_build_fingerprint(out) == fp:
        check_base_weights(out)
        return out
    if out.exists() and ((out / "run_manifest.json").is_file() or any(out.glob("checkpoint-*"))):
        raise UserError(f"{out} holds a training run, not only the demo base: move that run elsewhere, delete {out}, "
                        "and run the command again.")
    corpus_texts = [r["text"] for r in read_jsonl(corpus_paths["train"])]
    init = ensure_demo_base(out.parent / RANDOM_INIT, sft_paths["train"], cfg, extra_texts=corpus_texts)
    wall, cpu = time.perf_counter(), time.process_time()
    run, metrics = pretrain(demo, init, corpus_paths)
    timing = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
              "torch_threads": torch.get_num_threads()}
    staging = out.parent / f".{out.name}.building"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(init, staging)  # the tokenizer and config of the init; the weights are replaced next
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        if (run / name).is_file():
            shutil.copy2(run / name, staging / name)
    info = json.loads((staging / BUILD_INFO).read_text(encoding="utf-8"))
    info.update({
        "fingerprint": fp, "weights_sha256": weights_sha256(staging), "init_weights_sha256": info["weights_sha256"],
        "pretraining": {**pretrain_settings(demo), **metrics, **timing, "run": str(run),
                        "corpus_tokens": corpus_tokens(staging, corpus_paths)},
        "gate": gate_figures(staging, init, sft_paths["heldout"]),
    })
    (staging / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def pretrain(demo, init: Path, corpus_paths: dict[str, Path]) -> tuple[Path, dict]:
    """Train the random init on the corpus with sft.core.train (text rows: every token a target); return the run
    folder and its final held-out corpus loss."""
    base = Path(demo.base_dir)
    # The pretraining run is the base's cache, always rebuilt whole: what an interrupted build left of it (the run
    # an --overwrite keeps aside until its first checkpoint) is dropped here, not left for the user to restore.
    for old in [*base.parent.glob(f"{PRETRAIN_RUN}.old-*"), *(base.parent / "tensorboard").glob(f"*/{PRETRAIN_RUN}_*.old-*")]:
        shutil.rmtree(old)
    cfg = load_config(
        "demo", data=str(corpus_paths["train"]), eval_data=str(corpus_paths["heldout"]), model=str(init),
        model_root=str(base.parent.parent), run_name=PRETRAIN_RUN, tensorboard_root=str(base.parent / "tensorboard"),
        num_train_epochs=demo.pretrain_epochs, per_device_train_batch_size=demo.pretrain_batch_size,
        learning_rate=demo.pretrain_learning_rate, eval_steps=10**9, save_steps=10**9, logging_steps=20,
        overwrite=True, max_length=512)  # packed, as the fine-tunes
    trainer = train(cfg)
    evals = [h for h in trainer.state.log_history if "eval_response_loss" in h]
    return run_dir(cfg), {"steps": trainer.state.global_step, "heldout_corpus_loss": evals[-1]["eval_response_loss"]}


def corpus_tokens(base: Path, corpus_paths: dict[str, Path]) -> dict[str, int]:
    """The corpus's size in the demo tokenizer's tokens (EOS of each document included)."""
    tok = load_tokenizer(base)
    return {name: sum(len(ids) + 1 for ids in tok([r["text"] for r in read_jsonl(path)],
                                                  add_special_tokens=False)["input_ids"])
            for name, path in corpus_paths.items()}


def gate_figures(base: Path, init: Path, sft_heldout: Path) -> dict:
    """The base's (and its random init's) mean loss on the SFT held-out rows' tokens, beside ln V (a uniform
    guess): the prompt's (template and user tokens together), the template's (Alpaca's preamble and headers, which
    the corpus never shows), the user's (instruction and input) and the response's. The pretrained base should
    model the user's words far below ln V; the template it meets first in fine-tuning, as Qwen2.5 meets it."""
    tok = load_tokenizer(base)
    rows, _ = load_rows(sft_heldout)
    ds, _ = tokenize_rows(rows, tok, DataConfig(data=str(sft_heldout), max_length=256,
                                                cache_dir=str(base.parent / ".cache")), name="gate")
    out = {"ln_vocab": math.log(len(tok)), "sft_heldout_rows": len(rows)}
    for name, folder in (("base", base), ("random_init", init)):
        out[name] = role_losses(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ds)
    out["prompt_loss_below_ln_vocab"] = out["ln_vocab"] - out["base"]["prompt_loss"]
    out["user_loss_below_ln_vocab"] = out["ln_vocab"] - out["base"]["user_loss"]
    return out


@torch.no_grad()
def role_losses(model, ds) -> dict[str, float]:
    """Mean next-token loss over the tokenized rows' targets, by the target's role: prompt (template and user),
    template, user and response (assistant)."""
    model.eval()
    groups = {"prompt": (TEMPLATE, USER), "template": (TEMPLATE,), "user": (USER,), "response": (ASSISTANT,)}
    sums = {name: [0.0, 0] for name in groups}
    for ex in ds:
        ids = torch.tensor([ex["input_ids"]])
        nll = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:],
                                                reduction="none")
        roles = torch.tensor(ex["roles"][1:])
        for name, codes in groups.items():
            mask = torch.isin(roles, torch.tensor(codes))
            sums[name][0] += float(nll[mask].sum())
            sums[name][1] += int(mask.sum())
    return {f"{name}_loss": total / n for name, (total, n) in sums.items() if n}

"""Training throughput: the project's batching modes in both regimes against TRL's SFTTrainer, in one run.

    python bench/throughput.py [--steps 30] [--batch-size 16] [--skip-trl]

Workload (the issue's): ../shared/data/gsm8k_alpaca.json, a 4-layer, 128-wide Qwen2 with a
4K-token BPE vocabulary trained here on the same data, fp32 on the CPU, batch 16, the same
steps, learning rate and seed for every configuration. For each configuration it prints the
useful-token fraction (real tokens / token slots the model computed), useful tokens per
second (real tokens / wall time of trainer.train()) and the final training loss. TRL
(`pip install -r bench/requirements.txt`) is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft.core.overrides import load_config
from sft.data.config import DataConfig
from sft.data.stats import length_stats
from sft.data.rows import load_rows
from sft.core.prepare import tokenize_rows
from sft.studies.tiny_model import TinyModelConfig, build_base_model, train_tokenizer
from sft.models.tokenizer import load_tokenizer
from sft.core.prompts import render_prompt
from sft.core.train import build_trainer

DATA = ROOT.parent / "shared" / "data" / "gsm8k_alpaca.json"  # the workload named by the issue
QWEN = ROOT.parent / "shared" / "tokenizers" / "qwen2.5"  # for the token-length figures
MODEL = TinyModelConfig(vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=512, max_position_embeddings=1024)
MAX_LENGTH = 512  # tokens per example (no GSM8K example is longer with either tokenizer)
LEARNING_RATE = 1e-3  # the same for every configuration
SEED = 0


class CountingCollator:
    """Wraps a collator and counts the real tokens and the token slots of every batch it makes."""

    def __init__(self, collate):
        self.collate, self.real, self.slots = collate, 0, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        ids = batch["input_ids"]
        self.slots += ids.numel()
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else ids.numel()
        return batch


def timed_train(trainer) -> dict:
    """Train with a counting collator; return the figures of one configuration."""
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    torch.manual_seed(SEED)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"useful_fraction": counter.real / counter.slots, "useful_tokens_per_s": counter.real / seconds,
            "final_loss": losses[-1], "seconds": seconds}


def run_project(work: Path, model_dir: Path, mode: str, w: float, steps: int, batch: int) -> dict:
    """The project's Trainer in one batching mode and regime."""
    cfg = load_config(
        "demo", **{"data.data": str(DATA), "data.eval_data": "None", "eval_size": 0.02, "model.model": str(model_dir),
                   "max_length": MAX_LENGTH, "prompt_loss_weight": w, "batching": mode, "max_steps": steps,
                   "per_device_train_batch_size": batch, "learning_rate": LEARNING_RATE, "warmup_ratio": 0.0,
                   "lr_scheduler_type": "constant", "logging_steps": steps, "eval_strategy": "no",
                   "save_strategy": "no", "seed": SEED, "cache_dir": str(work / "cache"),
                   "model_root": str(work / "runs"), "tensorboard_root": str(work / "tb"),
                   "run_name": f"{mode}-{w:g}", "disable_tqdm": "true"})
    cfg.demo = None  # the model and data here are the benchmark's, not the demo's
    return timed_train(build_trainer(cfg))


def run_trl(work: Path, model_dir: Path, config: str, w: float, steps: int, batch: int) -> dict:
    """TRL's SFTTrainer on the same prompt/completion data, model and settings."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sft.models.load import load_model

    rows, _ = load_rows(DATA)
    ds = datasets.Dataset.from_list([
        {"prompt": render_prompt("alpaca", r["instruction"], r["input"]), "completion": r["output"]} for r in rows])
    extra = {"defaults": {}, "group_by_length": {"train_sampling_strategy": "group_by_length"},
             "packing": {"packing": True}}[config]
    args = SFTConfig(
        output_dir=str(work / f"trl-{config}-{w:g}"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, seed=SEED, data_seed=SEED,
        max_length=MAX_LENGTH, completion_only_loss=(w == 0.0), logging_steps=steps, save_strategy="no",
        eval_strategy="no", report_to=[], disable_tqdm=True, bf16=False, use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=False, **extra)
    tokenizer = load_tokenizer(model_dir)
    trainer = SFTTrainer(model=load_model(model_dir), args=args, train_dataset=ds, processing_class=tokenizer)
    return timed_train(trainer)


def build_model(work: Path) -> Path:
    """A 4K-vocabulary BPE trained on the workload, and the 4-layer, 128-wide Qwen2 on top."""
    rows, _ = load_rows(DATA)
    texts = [render_prompt("alpaca", r["instruction"], r["input"]) + r["output"] for r in rows]
    out = work / "model"
    tokenizer = train_tokenizer(texts, MODEL.vocab_size, out, model_max_length=MODEL.max_position_embeddings)
    build_base_model(MODEL, tokenizer, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-trl", action="store_true", help="only the project's configurations")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: this benchmark needs the project's ../shared folder beside the repo.")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_model(work)
        if QWEN.exists():
            rows, _ = load_rows(DATA)
            qwen = load_tokenizer(QWEN)
            ds, _ = tokenize_rows(rows, qwen, DataConfig(max_length=MAX_LENGTH, cache_dir=str(work / "cache")))
            s = length_stats(ds)
            print(f"GSM8K with the Qwen2.5 tokenizer: mean {s['length_mean']:.0f} tokens, p50 {s['length_p50']:.0f}, "
                  f"p99 {s['length_p99']:.0f}, max {s['length_max']}; response share "
                  f"{s['response_tokens'] / (s['response_tokens'] + s['prompt_tokens']):.2f}", flush=True)
        for w in (0.0, 1.0):
            regime = "masked" if w == 0 else "unmasked"
            for mode in ("padded", "grouped", "packed"):
                r = run_project(work, model_dir, mode, w, args.steps, args.batch_size)
                results.append({"who": "sft", "config": mode, "regime": regime, **r})
                print(json.dumps(results[-1]), flush=True)
            if not args.skip_trl:
                for config in ("defaults", "group_by_length", "packing"):
                    r = run_trl(work, model_dir, config, w, args.steps, args.batch_size)
                    results.append({"who": "trl", "config": config, "regime": regime, **r})
                    print(json.dumps(results[-1]), flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_table(results: list[dict]) -> None:
    """A markdown table with each configuration's speed relative to TRL's best in the same regime."""
    print("\n| regime | trainer | batching | useful-token fraction | useful tokens/s | final loss | vs TRL best |")
    print("|---|---|---|---|---|---|---|")
    for regime in ("masked", "unmasked"):
        rows = [r for r in results if r["regime"] == regime]
        trl = [r["useful_tokens_per_s"] for r in rows if r["who"] == "trl"]
        best = max(trl) if trl else None
        for r in rows:
            ratio = f"{r['useful_tokens_per_s'] / best:.2f}x" if best else "-"
            print(f"| {regime} | {r['who']} | {r['config']} | {r['useful_fraction']:.2f} | "
                  f"{r['useful_tokens_per_s']:,.0f} | {r['final_loss']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()

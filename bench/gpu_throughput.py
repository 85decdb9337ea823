"""GPU throughput of the project's training step on the exact Qwen2.5-0.5B architecture (random weights).

    python bench/gpu_throughput.py [--steps 20] [--tokens-per-step 16384] [--peak-tflops 989]
    python bench/gpu_throughput.py --small --steps 2      # a tiny config on the CPU (what the tests run)

The project's Trainer (WeightedLossTrainer: packed batches, selective LM head, bf16 where supported)
on GSM8K examples (alpaca-like lengths, ../shared) with the Qwen2.5 tokenizer, for both regimes, then
the peers on the same model, data, batch size, learning rate and seed (bench/peers.py; on a GPU by
default, on the CPU with --peers): TRL's SFTTrainer (padding-free, its fused chunked LM head; bf16
weights like the project's run), and the project's Trainer with Liger's fused linear cross-entropy or
Cut Cross-Entropy as its LM head, where installed. Prints tokens/s, MFU = 6 x parameters x tokens/s /
peak (989 TFLOP/s dense bf16 for an H100 SXM) and peak GPU memory of each. 30M tokens (3 epochs of
alpaca-cleaned) at the printed rate gives the training time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft.models import attention
from sft.core.overrides import load_config
from sft.core.prepare import prepare_data
from sft.models.load import load_model
from sft.models.tokenizer import load_tokenizer
from sft.core.train import build_trainer

DATA = ROOT.parent / "shared" / "data" / "gsm8k_alpaca.json"
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "qwen2.5"
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                  rms_norm_eps=1e-6)  # the published Qwen2.5-0.5B config
SMALL = dict(QWEN25_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             intermediate_size=128)  # same vocabulary, tiny body: for the CPU test
ALPACA_TOKENS = 30e6  # about 3 epochs of alpaca-cleaned


def build_model(shape: dict, tokenizer, out: Path) -> int:
    """A randomly initialised Qwen2 of the given shape, saved where the Trainer can load it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model.num_parameters()


def main() -> None:
    from bench.peers import using_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after 3 warm-up steps)")
    parser.add_argument("--tokens-per-step", type=int, default=16384, help="about this many tokens per step")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--small", action="store_true", help="a tiny body (for a CPU smoke test)")
    parser.add_argument("--peers", action="store_true", help="also run the peers on the CPU (always on a GPU)")
    args = parser.parse_args()
    if not DATA.exists() or not TOKENIZER.exists():
        sys.exit(f"{DATA.parent.parent} is absent: this benchmark needs the project's ../shared folder.")
    gpu = torch.cuda.is_available()
    if not gpu and not args.small:
        sys.exit("No CUDA GPU here: run with --small for the CPU smoke test, or on a GPU machine.")
    tokenizer = load_tokenizer(TOKENIZER)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model(SMALL if args.small else QWEN25_05B, tokenizer, model_dir)
        flash = gpu and _has_flash_attn()
        print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'}; parameters: {n_params / 1e6:.1f}M; "
              f"attention: {'flash_attention_2' if flash else 'sdpa_varlen'}", flush=True)
        peers, notes = (peer_runs() if gpu or args.peers else ([], []))
        for note in notes:
            print(f"note: {note}", flush=True)
        for w in (0.0, 1.0):
            for label, who, extra in [("sft (selective head)", "sft", None), *peers]:
                with using_head(extra if who == "sft" else None):  # a peer's head in the project's Trainer
                    trainer = build_run(who, extra, w, args, Path(tmp), model_dir, flash)
                    tps, memory = measure(trainer)
                mfu = 6 * n_params * tps / (args.peak_tflops * 1e12)
                print(f"{'masked' if w == 0 else 'unmasked':8s} {label}: {tps:,.0f} tokens/s, MFU {100 * mfu:.1f}% "
                      f"(peak {args.peak_tflops:g} TFLOP/s), peak memory {memory:.1f} GiB; 30M tokens in "
                      f"{ALPACA_TOKENS / tps / 60:.1f} min", flush=True)
                del trainer
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()


def peer_runs() -> tuple[list[tuple[str, str, str]], list[str]]:
    """(label, trainer, loss type or head) of each peer that can run here, and notes on those that cannot."""
    from bench.peers import head_available, trl_loss_types

    notes: list[str] = []
    runs = [(f"trl (loss_type {lt})", "trl", lt) for lt in trl_loss_types(notes)]
    runs += [(f"sft with the {name} head", "sft", name) for name in ("liger", "cce") if head_available(name, notes)]
    return runs, notes


def build_run(who: str, extra: str | None, w: float, args, tmp: Path, model_dir: Path, flash: bool):
    """The project's Trainer (with a peer's head when `extra` names one) or TRL's, on the same data and settings."""
    from bench.peers import build_trl_trainer

    gpu = torch.cuda.is_available()
    batch = max(1, args.tokens_per_step // 170)  # GSM8K examples average 170 tokens
    cfg = load_config("qwen2.5-0.5b-alpaca", **{
        "data.data": str(DATA), "eval_size": 0.02, "model.model": str(model_dir),
        "model.dtype": "bfloat16" if gpu else "float32", "batching": "packed",
        "model.attn_implementation": "flash_attention_2" if flash else "None",
        "prompt_loss_weight": w, "max_steps": args.steps + 3, "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-5, "logging_steps": 10 ** 6,
        "eval_strategy": "no", "save_strategy": "no", "bf16": "false", "cache_dir": f"{tmp}/cache",
        "model_root": f"{tmp}/runs", "tensorboard_root": f"{tmp}/tb", "run_name": f"w{w:g}",
        "disable_tqdm": "true", "optim": "adamw_torch_fused" if gpu else "adamw_torch"})
    if who == "sft":
        return build_trainer(cfg)
    tokenizer = load_tokenizer(cfg.model)
    data = prepare_data(cfg.data, tokenizer).train.select_columns(["input_ids", "labels"])  # the project's tokens
    model = load_model(cfg.model)
    model.set_attn_implementation("flash_attention_2" if flash else attention.NAME)
    return build_trl_trainer(model, tokenizer, data, f"{tmp}/trl", extra, max_steps=args.steps + 3,
                             per_device_train_batch_size=batch, learning_rate=1e-5, seed=cfg.train.seed,
                             data_seed=cfg.train.seed, bf16=False, optim="adamw_torch_fused" if gpu else "adamw_torch")


def measure(trainer) -> tuple[float, float]:
    """Train; tokens/s of the steps after the warm-up, and the peak GPU memory in GiB (NaN on the CPU)."""
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    timer = StepTimer(warmup=3, counter=counter)
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    memory = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else float("nan")
    return timer.tokens / timer.seconds, memory


class StepTimer(TrainerCallback):
    """Times the steps after a warm-up and counts their tokens (the collator counts every batch it makes)."""

    def __init__(self, warmup: int, counter: "TokenCounter"):
        self.warmup, self.counter = warmup, counter
        self.tokens, self.seconds, self._t0, self._tokens0 = 0, 0.0, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:  # the next batch is not collated yet (no dataloader workers)
            _sync()
            self._t0, self._tokens0 = time.perf_counter(), self.counter.tokens

    def on_train_end(self, args, state, control, **kwargs):
        _sync()
        self.seconds = time.perf_counter() - self._t0
        self.tokens = self.counter.tokens - self._tokens0


class TokenCounter:
    """Wraps the collator and counts the tokens of every batch."""

    def __init__(self, collate):
        self.collate, self.tokens = collate, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.tokens += batch["input_ids"].numel()  # packed: every slot is a real token
        return batch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


if __name__ == "__main__":
    main()

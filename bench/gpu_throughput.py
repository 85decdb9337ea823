"""GPU throughput of the project's training step on the exact Qwen2.5-0.5B architecture (random weights).

    python bench/gpu_throughput.py [--steps 20] [--tokens-per-step 16384] [--peak-tflops 989]
    python bench/gpu_throughput.py --small --steps 2      # a tiny config on the CPU (what the tests run)

The project's Trainer (WeightedLossTrainer: packed batches, selective LM head, bf16 where supported)
on GSM8K examples (alpaca-like lengths, ../shared) with the Qwen2.5 tokenizer, for both regimes.
Prints tokens/s, MFU = 6 x parameters x tokens/s / peak (989 TFLOP/s dense bf16 for an H100 SXM) and
peak GPU memory. 30M tokens (3 epochs of alpaca-cleaned) at the printed rate gives the training time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft.config import load_config  # noqa: E402
from sft.modeling import load_tokenizer  # noqa: E402
from sft.train import build_trainer  # noqa: E402

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after 3 warm-up steps)")
    parser.add_argument("--tokens-per-step", type=int, default=16384, help="about this many tokens per step")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--small", action="store_true", help="a tiny body (for a CPU smoke test)")
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
        for w in (0.0, 1.0):
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
            trainer = build_trainer(cfg)
            counter = TokenCounter(trainer.data_collator)
            trainer.data_collator = counter
            timer = StepTimer(warmup=3, counter=counter)
            trainer.add_callback(timer)
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            trainer.train()
            tps = timer.tokens / timer.seconds
            mfu = 6 * n_params * tps / (args.peak_tflops * 1e12)
            memory = torch.cuda.max_memory_allocated() / 2 ** 30 if gpu else float("nan")
            print(f"{'masked' if w == 0 else 'unmasked':8s}: {tps:,.0f} tokens/s, MFU {100 * mfu:.1f}% "
                  f"(peak {args.peak_tflops:g} TFLOP/s), peak memory {memory:.1f} GiB; 30M tokens in "
                  f"{ALPACA_TOKENS / tps / 60:.1f} min", flush=True)


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

"""Helpers shared by the tests (no fixtures: those are in conftest.py): the repository's paths, the small demo's
settings as overrides, config and command-line arguments, and tiny models. Tests import them with
`from helpers import ...` (pyproject.toml puts tests/ on pytest's pythonpath, for every sub-folder)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"  # the tests' data (golden/, fixtures/) and the scripts they launch (paused_train.py)
SHARED = ROOT.parent / "shared"  # the project's shared assets live beside the repo, never inside it
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"
GSM8K = SHARED / "data" / "gsm8k_alpaca.json"

# A ChatML-like chat template that closes a turn holding a tool call with <|endoftext|>, its other turns with
# <|im_end|> (tests of the end of a tool call).
CALLS_APART = ("{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' -}}{%- if m.tool_calls -%}"
               "{{- m.tool_calls[0].function.name + '<|endoftext|>' -}}{%- else -%}{{- m['content'] + '<|im_end|>' -}}"
               "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
               "{%- endif -%}")

SMALL_DEMO = dict(n_train=320, n_heldout=64, n_test=64, hidden_size=64, intermediate_size=256, num_hidden_layers=2)


def demo_overrides(root: Path) -> dict:
    """Overrides that make the demo preset small and put every path under `root`."""
    root = Path(root)
    paths = {
        "demo.dataset_dir": str(root / "Dataset/demo"),
        "demo.base_dir": str(root / "model/demo/base"),
        "data.data": str(root / "Dataset/demo/train.jsonl"),
        "data.eval_data": str(root / "Dataset/demo/heldout.jsonl"),
        "model.model": str(root / "model/demo/base"),
        "model_root": str(root / "model"),
        "tensorboard_root": str(root / "tensorboard_events"),
        "cache_dir": str(root / ".cache"),
    }
    small = {f"demo.{k}": v for k, v in SMALL_DEMO.items()}
    return {**paths, **small, "per_device_train_batch_size": 8}


def demo_config(root: Path, **overrides):
    """The demo preset, small, with every path under `root` (nothing is written to the repo)."""
    from sft.core.overrides import load_config

    return load_config("demo", **{**demo_overrides(root), **overrides})


def demo_cli_args(root: Path) -> list[str]:
    """The same small, relocated demo as command-line overrides, for subprocess tests."""
    cfg = demo_config(root)
    pairs = {
        "--demo.dataset-dir": cfg.demo.dataset_dir, "--demo.base-dir": cfg.demo.base_dir,
        "--data.data": cfg.data.data, "--data.eval-data": cfg.data.eval_data, "--model.model": cfg.model.model,
        "--model-root": cfg.train.model_root, "--tensorboard-root": cfg.train.tensorboard_root,
        "--cache-dir": cfg.data.cache_dir, "--per-device-train-batch-size": "8",
        **{f"--demo.{k.replace('_', '-')}": str(v) for k, v in SMALL_DEMO.items()},
    }
    return [x for kv in pairs.items() for x in kv]


def demo_dialogues(root: Path, n: int, seed: int) -> list[list[dict]]:
    """n two-exchange conversations (messages) chained from the small demo's training rows."""
    import json
    import random

    rows = [json.loads(line) for line in (Path(root) / "Dataset/demo/train.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        turns = []
        for r in rng.sample(rows, 2):
            turns += [{"role": "user", "content": r["instruction"] + (f"\n{r['input']}" if r.get("input") else "")},
                      {"role": "assistant", "content": r["output"]}]
        out.append(turns)
    return out


def load_script(name: str):
    """A top-level script (eval.py, auto_clean.py) as a module: `eval` cannot be imported by name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_qwen25(tokenizer, seed: int = 0):
    """A randomly initialised one-layer Qwen2 with Qwen2.5's special ids (EOS <|endoftext|>, none for
    <|im_end|>, as the base model ships) over the tokenizer's whole vocabulary."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.eos_token_id
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos)
    return model


def force_next_token(model, token: int):
    """Make the model choose `token` every step (its head replaced by a bias on that token): a model that would
    write it forever unless generation stops there."""
    import torch

    hidden = model.get_output_embeddings().in_features
    head = torch.nn.Linear(hidden, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 10.0
    model.set_output_embeddings(head)
    return model

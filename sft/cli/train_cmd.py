"""`sft train`, `sft build-demo`, `sft demo`: fine-tuning, and the offline demo that drives it."""

from __future__ import annotations

import argparse

import torch

from sft.core.overrides import load_config
from sft.core.train import train
from sft.studies.demo import ensure_assets, ensure_demo_assets, gate_line, run_demo, run_demo_chat


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune with the preset, the flags and any config or TrainingArguments override."""
    cfg = load_config(args.preset, **args.overrides)
    ensure_assets(cfg)  # the demo builds its data and base model on first use
    try:
        train(cfg)
    finally:
        # Under torchrun / accelerate: leave the process group before the interpreter exits. Otherwise Gloo's
        # worker threads can still hold tensors at finalisation and a rank aborts after training finished
        # ("terminate called without an active exception", SIGABRT; seen under load in test_distributed).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def cmd_build_demo(args: argparse.Namespace) -> int:
    """Write the synthetic data (and dialogues, with --chat) and build the tiny base model of the demo preset."""
    cfg = load_config("demo-chat" if args.chat or args.preset == "demo-chat" else "demo", **args.overrides)
    base = ensure_demo_assets(cfg.demo)
    print(f"demo base model: {base}\n{gate_line(base)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole offline study (what `make demo` runs), or its conversational part with --chat (`make demo-chat`)."""
    if args.chat or args.preset == "demo-chat":
        run_demo_chat(overrides=args.overrides)
    else:
        run_demo(overrides=args.overrides)
    return 0

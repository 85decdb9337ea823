"""The peers the benchmarks compare with: TRL's SFTTrainer, and Cut Cross-Entropy or Liger as the project's LM head.

Used by bench/real_vocab.py (CPU) and bench/gpu_throughput.py (GPU). A peer that is not installed, or
that cannot run on this device, is left out with a note saying why; `pip install -r bench/requirements.txt`
installs TRL and Cut Cross-Entropy (Liger's kernels are Triton GPU kernels: install liger-kernel on a GPU
machine).
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import warnings

import torch

import sft.core.loss


def cce_selected_nll(hidden, head, targets, token_weights, chunk=None):
    """sft.core.loss.selected_nll's contract through Cut Cross-Entropy: its Triton kernel on a GPU, else torch.compile."""
    from cut_cross_entropy import linear_cross_entropy

    impl = "cce" if hidden.is_cuda else "torch_compile"
    nll = linear_cross_entropy(hidden, head.weight, targets, reduction="none", impl=impl)
    return (nll * token_weights).sum(), nll.detach().to(torch.float32)


def liger_selected_nll(hidden, head, targets, token_weights, chunk=None):
    """sft.core.loss.selected_nll's contract through Liger's fused linear cross-entropy (summed: weights must be 1).

    Liger returns no per-token NLL with a usable gradient here, so the per-row NLL (read only by the logs)
    is NaN: the benchmarks log nothing.
    """
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    if not bool((token_weights == 1).all()):
        raise ValueError("Liger's fused linear cross-entropy has no per-token weights: run it at w = 0 or w = 1.")
    loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, hidden, targets)
    return loss, torch.full(targets.shape, float("nan"), device=hidden.device)


HEADS = {"cce": cce_selected_nll, "liger": liger_selected_nll}
HEAD_MODULES = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}


@contextlib.contextmanager
def using_head(name: str | None):
    """The project's Trainer with a peer's fused head in place of sft/core/loss.py's (None: the project's own)."""
    original = sft.core.loss.selected_nll
    if name is not None:
        # the one seam, which sft.core.loss.selective_head_loss calls: (hidden, head, targets, weights) -> (sum, nll)
        sft.core.loss.selected_nll = HEADS[name]
    try:
        yield
    finally:
        sft.core.loss.selected_nll = original


def head_available(name: str, notes: list[str]) -> bool:
    """Whether a peer's head can run here; if not, a note saying why."""
    if name == "liger" and not torch.cuda.is_available():
        notes.append("Liger's fused linear cross-entropy not run: its kernels are Triton GPU kernels.")
        return False
    try:
        importlib.import_module(HEAD_MODULES[name])
    except ImportError as e:  # cut_cross_entropy imports triton at import time, also for its torch.compile path
        notes.append(f"{name} not run: {e} (pip install -r bench/requirements.txt)")
        return False
    if name == "cce" and not torch.cuda.is_available():
        notes.append("Cut Cross-Entropy's kernels are Triton GPU kernels: on the CPU it runs its other "
                     "implementation, impl='torch_compile' (the logits of the scored rows, under torch.compile).")
    return True


def trl_loss_types(notes: list[str]) -> list[str]:
    """TRL's loss types to run: "nll", and "chunked_nll" unless this TRL version makes it an alias of "nll"."""
    if importlib.util.find_spec("trl") is None:
        notes.append("TRL not run: it is not installed (pip install -r bench/requirements.txt)")
        return []
    import trl
    from trl import SFTConfig

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        chunked = SFTConfig(output_dir=tmp, loss_type="chunked_nll", use_cpu=not torch.cuda.is_available()).loss_type
    if chunked == "nll":
        notes.append(f"TRL {trl.__version__}: SFTConfig turns loss_type 'chunked_nll' into 'nll' (a deprecated alias; "
                     "'nll' itself is the chunked fused LM head), so one row stands for both.")
        return ["nll"]
    return ["nll", "chunked_nll"]


def build_trl_trainer(model, tokenizer, dataset, output_dir: str, loss_type: str, **settings):
    """TRL's SFTTrainer on a tokenized dataset (input_ids, labels -100 where not trained), padding-free.

    Padding-free with the dataset's own labels: each batch is the project's packed row, token for token.
    `settings` are SFTConfig fields (steps, batch size, learning rate, seed, sampler, precision).
    """
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=output_dir, loss_type=loss_type, padding_free=True, max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},  # tokenized already, labels included
        gradient_checkpointing=False,  # SFTConfig turns it on by default; the project's runs do not use it
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10**6,
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(), **settings)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)

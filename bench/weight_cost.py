"""What building loss weights from roles costs, against a training step (issue #28: under 2%).

Since the tokenized cache holds roles instead of weights, every optimizer step computes its weights
(sft.core.weights.step_weights: a table lookup by role code times the message weight) twice per micro-batch:
once for the step's normaliser (_get_num_items_in_batch) and once in compute_loss. This times exactly those
calls on real GSM8K batches (Qwen2.5 tokenizer), against the WeightedLossTrainer's own training step of a model
(default: a small Qwen2 over Qwen2.5's whole vocabulary, whose cheap step is the worst case for the share;
--model PATH for a real one). It also times the one-off pass that adds the weight columns to the dataset
(with_weights), which replaced re-tokenizing for every new weight, and what the loss per role and per source of
every log adds to a step (issue #38: the NLL grouped by role, and by source in a mixture).

    python bench/weight_cost.py                       # CPU, small model, 4 x 2 micro-batches of 4 examples
    python bench/weight_cost.py --model Qwen/Qwen2.5-0.5B --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, TrainingArguments  # noqa: E402

from sft.core.collate import PackedWeightedLMCollator  # noqa: E402
from sft.core.loss import target_weights  # noqa: E402
from sft.core.prepare import tokenize_rows  # noqa: E402
from sft.core.trainer import WeightedLossTrainer  # noqa: E402
from sft.core.weights import with_weights  # noqa: E402
from sft.data.config import DataConfig  # noqa: E402
from sft.data.mixture import SOURCE  # noqa: E402
from sft.data.rows import load_rows  # noqa: E402

SHARED = ROOT.parent / "shared"


def timed(fn, repeat: int) -> float:
    """Median seconds of fn() over `repeat` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers/qwen2.5"))
    p.add_argument("--data", default=str(SHARED / "data/gsm8k_alpaca.json"))
    p.add_argument("--model", help="a model folder or hub id; default: a 2-layer Qwen2 over Qwen2.5's vocabulary")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4, help="examples per micro-batch")
    p.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rows, _ = load_rows(args.data)
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(cache_dir=cache, prompt_loss_weight=0.1, role_weights={"template": 0.0})
        ds, _ = tokenize_rows(rows, tokenizer, cfg)
        weigh = timed(lambda: with_weights(ds, cfg.weight_spec()), 3)
    if args.model:
        model = Qwen2ForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model.to(args.device).train()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, report_to=[], use_cpu=args.device == "cpu",
                                  per_device_train_batch_size=args.batch,
                                  gradient_accumulation_steps=args.accumulation, remove_unused_columns=False)
        trainer = WeightedLossTrainer(model=model, args=targs, weight_spec=cfg.weight_spec(),
                                      data_collator=PackedWeightedLMCollator(tokenizer.pad_token_id), train_dataset=ds)
        trainer.state.max_steps = 100
        n = args.batch * args.accumulation
        micro = [trainer.data_collator([ds[i] for i in range(k, k + args.batch)]) for k in range(0, n, args.batch)]
        micro = [{k: v.to(args.device) for k, v in b.items()} for b in micro]
        tokens = sum(int(b["input_ids"].numel()) for b in micro)

        def weights_of_a_step():  # what roles -> weights adds per optimizer step: normaliser + each loss
            table = trainer._weight_table()
            total = sum(trainer._denominator(target_weights(b, table)) for b in micro)
            for b in micro:
                target_weights(b, trainer._weight_table())
            return total

        def old_weights_of_a_step():  # the same with the cached loss_weights (before roles)
            total = sum(target_weights(b)["weights"].sum() for b in micro)
            for b in micro:
                target_weights(b)
            return total

        def training_step():
            num = trainer._get_num_items_in_batch(micro, torch.device(args.device))
            for b in micro:
                trainer.training_step(model, dict(b), num)
            model.zero_grad(set_to_none=True)

        # The loss per role (and, in a mixture, per source) that every log carries: the micro-batch's per-token NLL
        # grouped by two scatter_add_ calls in _accumulate. Timed on the step's own masks (any NLL values cost the same),
        # against the response/prompt sums alone (what _accumulate did before), with one source and with two.
        mixed = WeightedLossTrainer(model=model, args=targs, weight_spec=cfg.weight_spec(), source_names=["a", "b"],
                                    data_collator=trainer.data_collator, train_dataset=ds)
        scored = []
        for b in micro:
            masks = target_weights(b, trainer._weight_table())
            source = (torch.arange(b["input_ids"].shape[1], device=args.device) % 2).expand_as(b["input_ids"])
            scored.append((b, {**b, SOURCE: source}, masks, torch.rand_like(masks["weights"]),
                           (masks["weights"] > 0).float()))

        def sums_of_a_step():  # the response/prompt sums alone
            for b, _, masks, nll, seen in scored:
                trainer._accumulate(nll, masks, seen, "train")

        def roles_of_a_step():  # with the loss per role (one source: no source column)
            for b, _, masks, nll, seen in scored:
                trainer._accumulate(nll, masks, seen, "train", b)

        def sources_of_a_step():  # with the loss per role and per source (a mixture of two)
            for _, b, masks, nll, seen in scored:
                mixed._accumulate(nll, masks, seen, "train", b)

        w_new, w_old, step = (timed(f, args.repeat) for f in (weights_of_a_step, old_weights_of_a_step, training_step))
        sums, roles, sources = (timed(f, args.repeat) for f in (sums_of_a_step, roles_of_a_step, sources_of_a_step))
    result = {"device": args.device, "model": args.model or "2-layer Qwen2 (hidden 64) over Qwen2.5's vocabulary",
              "tokens_per_step": tokens, "training_step_s": round(step, 4),
              "weights_from_roles_per_step_s": round(w_new, 6), "cached_weights_per_step_s": round(w_old, 6),
              "share_of_step_percent": round(100 * w_new / step, 3),
              "extra_over_cached_percent": round(100 * (w_new - w_old) / step, 3),
              "with_weights_pass_s": round(weigh, 3), "with_weights_rows": len(ds),
              "log_sums_per_step_s": round(sums, 6), "loss_per_role_per_step_s": round(roles, 6),
              "loss_per_role_and_source_per_step_s": round(sources, 6),
              "loss_per_role_extra_percent_of_step": round(100 * (roles - sums) / step, 4),
              "loss_per_source_extra_percent_of_step": round(100 * (sources - sums) / step, 4)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

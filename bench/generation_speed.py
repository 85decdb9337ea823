"""Batched vs one-prompt-at-a-time generation on a demo model: the timings and the speed-ups.

    python bench/generation_speed.py                      # model/demo/masked, 64 prompts, batches of 16 and 64
    python bench/generation_speed.py --model PATH --prompts 128 --batch-sizes 32,128 --threads 1

Not a test: timings depend on the machine and its load (each is the best of --repeats runs, the
settings taking turns). On a CPU it uses one thread unless told otherwise: the demo model is too
small to gain from more, and on a busy machine threads waiting on each other make every timing
several times slower and erratic. It also counts the greedy outputs that are identical both
ways: left padding and batching must not change what a model generates.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing


def best_times(runs: dict, repeats: int) -> dict[str, tuple[float, list[str]]]:
    """The fastest of `repeats` calls of each run, in seconds, and what it returned.

    The runs take turns, so a burst of load elsewhere on the machine slows one round of each
    rather than every repeat of one.
    """
    best: dict[str, tuple[float, list[str]]] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            out = fn()
            took = time.perf_counter() - start
            if name not in best or took < best[name][0]:
                best[name] = (took, out)
    return best


def main(argv: list[str] | None = None) -> int:
    """Time one at a time and each batch size; print the speed-ups."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="model/demo/masked", help="a model folder (default: the demo's masked run)")
    p.add_argument("--prompts", type=int, default=64, help="number of synthetic prompts")
    p.add_argument("--batch-sizes", default="16,64", help="comma-separated batch sizes to time")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--template", default="alpaca")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest counts")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on a CPU)")
    args = p.parse_args(argv)

    import torch

    from sft.evaluation.generate import generate_responses, render_prompts

    from sft.evaluation.settings import GenerationSettings
    from sft.models.load import load_model
    from sft.models.tokenizer import load_tokenizer
    from sft.studies.synthetic import generate_rows

    if not (Path(args.model) / "config.json").is_file():
        print(f"error: no model in {args.model}; run `make demo` (or train one with `python -m sft train`) "
              "or pass --model PATH.", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads or device == "cpu":
        torch.set_num_threads(args.threads or 1)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model).to(device)
    prompts = render_prompts(args.template, generate_rows(args.prompts, seed=7))

    def one_at_a_time() -> list[str]:
        """The plain loop: model.generate() for each prompt on its own (greedy, stop at EOS)."""
        out = []
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
            ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, use_cache=True,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out

    def run(batch_size: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        return generate_responses(model, tokenizer, prompts, settings)

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    run(max(sizes))  # warm-up: first-call costs aside
    runs = {"one at a time": one_at_a_time, **{f"batches of {b}": (lambda b=b: run(b)) for b in sizes}}
    best = best_times(runs, args.repeats)
    t_single, single = best.pop("one at a time")
    print(f"model {args.model} on {device} ({torch.get_num_threads()} threads), {len(prompts)} prompts, "
          f"max_new_tokens={args.max_new_tokens}, greedy, best of {args.repeats}")
    print(f"{'one at a time':<16}  {t_single:7.2f} s  {len(prompts) / t_single:7.1f} prompts/s  (model.generate per prompt)")
    for name, (t, out) in best.items():
        same = sum(x == y for x, y in zip(single, out))
        print(f"{name:<16}  {t:7.2f} s  {len(prompts) / t:7.1f} prompts/s  speed-up {t_single / t:5.2f}x  "
              f"identical outputs {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

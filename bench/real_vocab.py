"""Speed and memory at the real vocabulary on the CPU: the selective head against TRL and Cut Cross-Entropy.

    python bench/real_vocab.py [--layers 2] [--steps 4] [--batch-size 8] [--json FILE]
    python bench/real_vocab.py --smoke          # a 64-wide body, 2 steps of 2 examples (what the CI test runs)

Workload: the Qwen2.5-0.5B shape (151,936-row tied embedding, hidden 896, 14/2 heads, intermediate
4,864, rope theta 1e6) with --layers decoder layers instead of 24 (random weights), fp32, the Qwen2.5
tokenizer and GSM8K from ../shared. Every configuration trains on the same rows in the same order
(sequential sampler, batches of --batch-size examples packed into one row with position ids), with the
same learning rate, AdamW and seed, each in its own process so that its peak resident memory is its own.
Configurations, at w = 0 (masked), w = 1 (unmasked) and w = 0.1 where the trainer has per-token weights:
the project's Trainer with the selective head (the default) and with it off (full logits); TRL's
SFTTrainer (padding-free, its fused LM head; `loss_type` "chunked_nll" too where TRL keeps it apart from
"nll"); the project's Trainer with Cut Cross-Entropy's `linear_cross_entropy` as the head. TRL and CCE
are benchmark-only dependencies (`pip install -r bench/requirements.txt`); a missing one is reported.

Printed per configuration: useful tokens/s (real tokens of the timed steps / their wall time; the first
step is a warm-up and not timed), tokens per CPU-second (the same tokens / the process's CPU time: less
sensitive to other load on the machine), the peak resident memory of its process, the mean training loss
of its steps (the Trainer's `training_loss`), and its speed and memory as ratios to TRL's fastest run in
the same regime. With --repeats N every configuration runs N times, the rounds in alternating order, and
its fastest round counts. Then the check that all configurations trained alike (the same tokens, losses
within LOSS_RTOL), and `python -m sft plan`'s memory estimate for this run beside the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "gsm8k_alpaca.json"
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "qwen2.5"
LEARNING_RATE = 1e-4  # the same for every configuration
SEED = 0
WARMUP_STEPS = 1  # untimed: allocations, torch.compile for CCE
LOSS_RTOL = 1e-3  # the losses of one regime must agree to this relative tolerance (fp32, other summation orders)
GIB = 1024**3
REGIMES = ((0.0, "masked (w = 0)"), (1.0, "unmasked (w = 1)"), (0.1, "w = 0.1"))


def build_model(out: Path, layers: int, smoke: bool) -> int:
    """The Qwen2.5-0.5B shape with `layers` decoder layers (random weights), saved with the Qwen2.5 tokenizer."""
    from bench.gpu_throughput import QWEN25_05B, SMALL
    from bench.gpu_throughput import build_model as save_model
    from sft.models.tokenizer import load_tokenizer

    shape = dict(SMALL if smoke else QWEN25_05B, num_hidden_layers=1 if smoke else layers)
    return save_model(shape, load_tokenizer(TOKENIZER), out)


def write_rows(work: Path, n: int) -> tuple[Path, Path]:
    """n GSM8K rows drawn with the seed (the training rows, in order) and 2 others (the held-out file)."""
    import random

    rows = json.loads(DATA.read_text())
    picked = random.Random(SEED).sample(range(len(rows)), n + 2)
    train, held = work / "rows.json", work / "heldout.json"
    train.write_text(json.dumps([rows[i] for i in picked[:n]]))
    held.write_text(json.dumps([rows[i] for i in picked[n:]]))
    return train, held


def project_config(spec: dict):
    """The project's config for one configuration: the qwen2.5 preset on the benchmark's model and rows."""
    from sft.core.overrides import load_config

    work = Path(spec["work"])
    return load_config("qwen2.5-0.5b-alpaca", **{
        "data.data": spec["rows"], "data.eval_data": spec["heldout"], "model.model": spec["model"],
        "model.dtype": "float32", "bf16": "false", "batching": "packed", "prompt_loss_weight": spec["w"],
        "selective_head": spec.get("selective_head", True), "max_steps": spec["steps"],
        "per_device_train_batch_size": spec["batch"], "gradient_accumulation_steps": 1,
        "learning_rate": LEARNING_RATE, "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "seed": SEED,
        "logging_steps": 10**6, "logging_first_step": "false", "eval_strategy": "no", "save_strategy": "no",
        "train_sampling_strategy": "sequential", "cache_dir": str(work / "cache"), "model_root": str(work / "runs"),
        "tensorboard_root": str(work / "tb"), "run_name": spec["name"], "disable_tqdm": "true"})


# ---------------------------------------------------------------- one configuration (in a child process)


def rss_bytes() -> int:
    """The resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_project_trainer(spec: dict):
    """The project's Trainer, with a peer's head (spec "head": cce) in place of sft/core/loss.py's where asked."""
    from sft.core.train import build_trainer

    return build_trainer(project_config(spec))


def build_trl_trainer(spec: dict):
    """TRL's SFTTrainer on the same tokens and labels (the project's tokenization), on the same model and attention."""
    import datasets

    from bench.peers import build_trl_trainer as build
    from sft.models import attention
    from sft.data.config import DataConfig
    from sft.data.rows import load_rows
    from sft.core.prepare import tokenize_rows
    from sft.models.load import load_model
    from sft.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec["model"])
    # labels -100 where the weight is 0: the prompt at w = 0, nothing at w = 1 (TRL drops each example's first target)
    tok, _ = tokenize_rows(load_rows(spec["rows"])[0], tokenizer, DataConfig(
        max_length=512, prompt_loss_weight=spec["w"], cache_dir=str(Path(spec["work"]) / "cache")))
    ds = datasets.Dataset.from_dict({"input_ids": tok["input_ids"], "labels": tok["labels"]})
    model = load_model(spec["model"])
    model.set_attn_implementation(attention.NAME)  # the same attention kernel as the project's packed rows
    return build(model, tokenizer, ds, str(Path(spec["work"]) / spec["name"]), spec["loss_type"],
                 max_steps=spec["steps"], per_device_train_batch_size=spec["batch"], learning_rate=LEARNING_RATE,
                 seed=SEED, data_seed=SEED, train_sampling_strategy="sequential", bf16=False)


class StepClock(TrainerCallback):
    """Wall and CPU time (all threads of the process) from the end of the warm-up steps to the end of training."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds, self.cpu_seconds = warmup, (0.0, 0.0), 0.0, 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = (time.perf_counter(), time.process_time())

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start[0]
        self.cpu_seconds = time.process_time() - self.start[1]


def run_one(spec: dict) -> dict:
    """Train one configuration; its timing, loss and this process's peak memory."""
    import torch

    from bench.peers import using_head

    torch.manual_seed(SEED)
    baseline = rss_bytes()  # the interpreter and the libraries, before the model and the data
    with using_head(spec.get("head")):
        return train_one(spec, baseline)


def train_one(spec: dict, baseline: int) -> dict:
    """Build one configuration's trainer, train, and return its figures."""
    from bench.gpu_throughput import TokenCounter

    trainer = build_trl_trainer(spec) if spec["who"] == "trl" else build_project_trainer(spec)
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    timer = StepClock(warmup=WARMUP_STEPS)
    trainer.add_callback(timer)
    before = rss_bytes()
    out = trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"useful_tokens_per_s": spec["timed_tokens"] / timer.seconds, "seconds": timer.seconds,
            "cpu_seconds": timer.cpu_seconds, "loss": out.training_loss, "tokens_seen": counter.tokens,
            "peak_rss": peak, "rss_baseline": baseline, "rss_before_train": before}


# ---------------------------------------------------------------- the run


def configurations(steps: int, batch: int) -> tuple[list[dict], list[str]]:
    """Every configuration to run, and why any peer is left out."""
    from bench.peers import head_available, trl_loss_types

    specs, notes = [], []
    for w in (0.0, 1.0, 0.1):
        specs.append({"who": "sft", "config": "selective head (default)", "w": w})
        specs.append({"who": "sft", "config": "full logits", "w": w, "selective_head": False})
    loss_types = trl_loss_types(notes)
    for w in (0.0, 1.0):  # TRL has no per-token weights: w = 0.1 is not expressible
        specs += [{"who": "trl", "config": f"loss_type {lt}", "w": w, "loss_type": lt} for lt in loss_types]
    if head_available("cce", notes):
        impl = "cce" if _cuda() else "torch_compile"
        specs += [{"who": "cce", "config": f"CCE head, impl {impl}", "w": w, "head": "cce"} for w in (0.0, 1.0, 0.1)]
    for i, s in enumerate(specs):
        s.update(name=f"c{i}", steps=steps, batch=batch)
    return specs, notes


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_child(spec: dict, work: Path) -> dict:
    """One configuration in a fresh process (its own peak RSS); its figures, or why it failed."""
    out = work / f"{spec['name']}.json"
    log = work / f"{spec['name']}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), "--child-out", str(out)],
                             stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if res.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"configuration {spec['who']} {spec['config']} w={spec['w']:g} failed:\n{tail}")
    return {**spec, **json.loads(out.read_text())}


def run_round(specs: list[dict], common: dict, work: Path) -> dict[str, dict]:
    """Every configuration once, in the given order: name -> figures."""
    out = {}
    for spec in specs:
        start = time.perf_counter()
        r = run_child({**spec, **common}, work)
        out[spec["name"]] = r
        print(f"  {r['who']:4s} {r['config']:28s} w={r['w']:<4g} {r['useful_tokens_per_s']:9,.1f} tokens/s  peak "
              f"{r['peak_rss'] / GIB:5.2f} GiB  loss {r['loss']:.5f}  (process {time.perf_counter() - start:.0f} s)",
              flush=True)
    return out


def best_of(runs: list[dict]) -> dict:
    """One configuration's fastest round (wall time), its lowest CPU time, and the highest peak RSS of all rounds."""
    best = dict(max(runs, key=lambda r: r["useful_tokens_per_s"]))
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in runs)
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    best["losses"] = sorted({r["loss"] for r in runs})  # a deterministic run: one value
    return best


def plan_estimate(spec: dict, tokens: int) -> dict:
    """`python -m sft plan`'s peak memory for this run as it prints it, and its formula at this run's conditions."""
    from sft.core.costs import memory_estimate
    from sft.core.plan import model_shape
    from sft.core.plan import plan_run

    printed = plan_run(project_config(spec))
    shape = model_shape(spec["model"])
    # fp32 weights and activations, no CUDA context, the largest step's packed row.
    here = {head: memory_estimate(shape, 4, tokens, act_bytes=4, selective=head == "selective", context_bytes=0)
            for head in ("selective", "full")}
    return {"printed": printed["peak_memory_bytes"], "printed_note": printed["memory_note"], "here": here,
            "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (Qwen2.5-0.5B has 24)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps, the first untimed")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (packed into one row)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds: every configuration runs once a round, the order reversed each round; its "
                             "fastest round is reported (the load of a shared machine comes in bursts)")
    parser.add_argument("--smoke", action="store_true", help="a 64-wide, 1-layer body, 2 steps of 2 examples")
    parser.add_argument("--only", help="comma-separated trainers to run, of sft,trl,cce (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.child_out.write_text(json.dumps(run_one(json.loads(args.child))))
        return
    if not DATA.exists() or not TOKENIZER.exists():
        sys.exit(f"{DATA.parent.parent} is absent: this benchmark needs the project's ../shared folder.")
    if args.smoke:
        args.layers, args.steps, args.batch_size, args.repeats = 1, 2, 2, 1
    if args.steps <= WARMUP_STEPS:
        sys.exit(f"--steps must be above {WARMUP_STEPS} (the warm-up step is not timed), got {args.steps}.")
    start = time.perf_counter()
    results, plan, notes = run_all(args)
    ok = print_report(results, plan)
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "plan": plan, "notes": notes}, indent=2))
    if not ok:
        sys.exit("The configurations did not train alike (tokens or losses differ): their figures do not compare.")


def run_all(args) -> tuple[list[dict], dict, list[str]]:
    """Every configuration, one process each, on one model and one set of rows; plan's estimate for the default."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_params = build_model(work / "model", args.layers, args.smoke)
        rows, held = write_rows(work, args.steps * args.batch_size)
        tokens = count_tokens(rows, work / "model", args.batch_size)
        specs, notes = configurations(args.steps, args.batch_size)
        specs = [s for s in specs if not args.only or s["who"] in args.only.split(",")]
        common = {"work": str(work), "model": str(work / "model"), "rows": str(rows), "heldout": str(held),
                  "timed_tokens": tokens["timed"], "total_tokens": tokens["total"]}
        print(f"model: Qwen2, {n_params / 1e6:.1f}M parameters ({args.layers} layer(s), hidden "
              f"{'64' if args.smoke else '896'}, vocabulary 151,936 tied), fp32, {_threads()} CPU threads; "
              f"{args.steps} steps of {args.batch_size} GSM8K examples ({tokens['total']:,} tokens, "
              f"{tokens['response_share']:.0%} response), lr {LEARNING_RATE:g}, seed {SEED}; first step untimed",
              flush=True)
        for n in notes:
            print(f"note: {n}", flush=True)
        rounds = []
        for i in range(args.repeats):
            print(f"round {i + 1} of {args.repeats}:", flush=True)
            rounds.append(run_round(specs[::-1] if i % 2 else specs, common, work))
        results = [best_of([r[s["name"]] for r in rounds]) for s in specs]
        plan = {}
        if any(r["who"] == "sft" for r in results):
            spec = {**common, "steps": args.steps, "batch": args.batch_size, "w": 0.0, "name": "plan"}
            plan = plan_estimate(spec, tokens["largest_step"])
    return results, plan, notes


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def count_tokens(rows: Path, model: Path, batch: int) -> dict:
    """Tokens of the whole run and of the timed steps (sequential batches of the project's tokenization)."""
    from sft.data.config import DataConfig
    from sft.data.rows import load_rows
    from sft.core.prepare import tokenize_rows
    from sft.models.tokenizer import load_tokenizer

    tok, _ = tokenize_rows(load_rows(rows)[0], load_tokenizer(model), DataConfig(max_length=512,
                                                                                  cache_dir=str(model.parent / "c")))
    lengths = list(tok["length"])
    response = sum(sum(m) for m in tok["response_mask"])
    steps = [sum(lengths[i:i + batch]) for i in range(0, len(lengths), batch)]
    return {"total": sum(lengths), "timed": sum(steps[WARMUP_STEPS:]), "largest_step": max(steps),
            "response_share": response / sum(lengths)}


def print_report(results: list[dict], plan: dict) -> bool:
    """The table, the check that all configurations trained alike, and plan's estimate; True if they did."""
    print_table(results)
    ok = check_agreement(results)
    if plan:
        print_plan_check(plan, results)
    return ok


def print_table(results: list[dict]) -> None:
    """A markdown table, each configuration's speed and peak memory as ratios to TRL's fastest in its regime."""
    print("\n| regime | trainer | configuration | useful tokens/s | tokens per CPU-second | peak RSS | loss | "
          "speed vs TRL best | peak RSS vs TRL best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, regime in REGIMES:
        trl = [r for r in results if r["who"] == "trl" and r["w"] == (1.0 if w == 0.1 else w)]
        best = max(trl, key=lambda r: r["useful_tokens_per_s"]) if trl else None
        for r in (r for r in results if r["w"] == w):
            speed = f"{r['useful_tokens_per_s'] / best['useful_tokens_per_s']:.2f}x" if best else "-"
            memory = f"{r['peak_rss'] / best['peak_rss']:.2f}x" if best else "-"
            print(f"| {regime} | {r['who']} | {r['config']} | {r['useful_tokens_per_s']:,.1f} | "
                  f"{r['timed_tokens'] / r['cpu_seconds']:,.1f} | {r['peak_rss'] / GIB:.2f} GiB | {r['loss']:.5f} | "
                  f"{speed} | {memory} |")
    if any(r["w"] == 0.1 for r in results):
        print("\n(w = 0.1: TRL cannot weight prompt tokens; the ratios are to TRL's best unmasked run, which runs the "
              "head on the same positions)")


def check_agreement(results: list[dict]) -> bool:
    """Every configuration saw every token, and the losses of each regime agree within LOSS_RTOL."""
    ok = True
    for r in results:
        if r["tokens_seen"] != r["total_tokens"]:
            print(f"{r['who']} {r['config']} w={r['w']:g} collated {r['tokens_seen']:,} tokens, not "
                  f"{r['total_tokens']:,}: not the same batches")
            ok = False
    print()
    for w, regime in REGIMES:
        losses = [loss for r in results if r["w"] == w for loss in r["losses"]]  # every round's
        if losses:
            spread = (max(losses) - min(losses)) / abs(min(losses))
            ok &= spread <= LOSS_RTOL
            print(f"{regime}: {len(losses)} losses {min(losses):.5f} .. {max(losses):.5f}, relative spread "
                  f"{spread:.1e} ({'within' if spread <= LOSS_RTOL else 'BEYOND'} the tolerance {LOSS_RTOL:g})")
    return ok


def print_plan_check(plan: dict, results: list[dict]) -> None:
    """plan's peak-memory estimate beside the measured peaks of the project's two heads, and their ratios."""
    print(f"\nplan, as `python -m sft plan` prints it for this run: peak ~{plan['printed'] / GIB:.2f} GiB "
          f"({plan['printed_note']}; 1 GiB CUDA context)")
    for head, label in (("selective", "selective head (default)"), ("full", "full logits")):
        parts = plan["here"][head]
        total = sum(parts.values())
        listed = ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f}" for k, v in parts.items() if v)
        print(f"plan's formula at this run, {label} (fp32 weights and activations, {plan['tokens']:,} tokens, "
              f"no CUDA context): {total / GIB:.2f} GiB = {listed} GiB")
        for r in results:
            if r["who"] == "sft" and r["config"] == label:
                used = r["peak_rss"] - r["rss_baseline"]
                print(f"  measured, w = {r['w']:g}: peak RSS {r['peak_rss'] / GIB:.2f} GiB = "
                      f"{r['rss_baseline'] / GIB:.2f} GiB interpreter and libraries (before the model and data) + "
                      f"{used / GIB:.2f} GiB; measured above the libraries / plan = {used / total:.2f}")


if __name__ == "__main__":
    main()

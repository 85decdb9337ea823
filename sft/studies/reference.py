"""The reference experiment's stand-in (Qwen2.5-0.5B on alpaca-cleaned), built offline for the reference check.

`build_reference_fixture` lays out what a user has after downloading: the base model folder in
the Hugging Face layout at `model/qwen2.5/transformers/0.5b/1/` and the data at
`Dataset/alpaca_data_cleaned.json`. The model is a randomly initialised `Qwen2ForCausalLM` with
Qwen2.5-0.5B's configuration but 2 layers of width 56 (its 151,936-row tied embedding, rope theta,
7:1 query to key-value heads and special ids kept); the tokenizer and the alpaca-schema rows
(GSM8K) come from `../shared`. `write_benchmark_data` writes local rows for lm-eval's gsm8k, arc_challenge,
hellaswag and two MMLU subjects in each task's own schema. sft.cli.reference_check runs the commands on them.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from sft.data.errors import UserError
from sft.runs.layout import COMPARISON_FILES, ITEM_SCORES, LOCAL_DATA_DIR, LOCAL_QWEN_DIR, REPO_ROOT

ROOT = REPO_ROOT  # the notebooks live there
PRESET = "qwen2.5-0.5b-alpaca"
DATA_FILE = "alpaca_data_cleaned.json"  # the name alpaca-cleaned's own repository gives its file
# Qwen2.5-0.5B's config.json (the values the model card's download holds).
QWEN25_05B = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_dropout=0.0, bos_token_id=151643,
    eos_token_id=151643, hidden_act="silu", hidden_size=896, initializer_range=0.02, intermediate_size=4864,
    max_position_embeddings=32768, max_window_layers=24, num_attention_heads=14, num_hidden_layers=24,
    num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=32768,
    tie_word_embeddings=True, torch_dtype="bfloat16", use_cache=True, use_sliding_window=False, vocab_size=151936,
)
# The stand-in: fewer, narrower layers. 7 query heads of width 8 over 1 key-value head keep the 14:2 ratio and
# hidden = heads x head_dim (as 896 = 14 x 64); the MLP keeps the 4864/896 ratio.
TINY = dict(hidden_size=56, intermediate_size=304, num_hidden_layers=2, max_window_layers=2, num_attention_heads=7,
            num_key_value_heads=1)
# What both notebooks are changed by: steps, lengths and the held-out size, nothing else of the preset.
# Kept small because the LM head over Qwen's 151,936-token vocabulary is most of the CPU time.
NOTEBOOK_OVERRIDES = {"max_steps": 2, "max_length": 64, "eval_size": 8, "eval_steps": 1, "save_steps": 1,
                      "logging_steps": 1}
NOTEBOOKS = {"masked": ("finetune_masked.ipynb", 0.0), "unmasked": ("finetune_unmasked.ipynb", 1.0)}


def qwen25_config(tiny: bool = True) -> Qwen2Config:
    """Qwen2.5-0.5B's configuration, or the stand-in's (tiny=True)."""
    values = {k: v for k, v in QWEN25_05B.items() if k not in ("architectures", "model_type", "torch_dtype",
                                                                "rope_theta")}
    values.update(TINY if tiny else {})
    config = Qwen2Config(**values, rope_parameters={"rope_type": "default", "rope_theta": QWEN25_05B["rope_theta"]})
    config.architectures = list(QWEN25_05B["architectures"])
    return config


def build_reference_fixture(root: str | Path, shared: str | Path, tiny: bool = True, seed: int = 0,
                            tokenizer=None) -> dict[str, Path]:
    """Write model/qwen2.5/transformers/0.5b/1/ and Dataset/alpaca_data_cleaned.json under root, as downloaded.

    tiny=False writes the full-size config.json and tokenizer without weights (enough for `sft plan`). tokenizer:
    shared's tokenizer if the caller has already loaded it (loading its 18 MB takes a second of CPU).
    """
    root, shared = Path(root), Path(shared)
    tokenizer_dir, data = shared / "tokenizers" / "qwen2.5", shared / "data" / "gsm8k_alpaca.json"
    for need in (tokenizer_dir, data):
        if not need.exists():
            raise UserError(f"{need} is absent: the reference fixture needs the project's ../shared folder "
                             "(a Qwen2.5 tokenizer and GSM8K in the alpaca schema).")
    model_dir = root / LOCAL_QWEN_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    if tiny:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(qwen25_config(tiny))
        model.to(torch.bfloat16).save_pretrained(str(model_dir))  # the download's weights are bf16 safetensors
    # config.json as the download writes it (transformers 4 keys: rope_theta, torch_dtype), not as transformers 5
    # would re-save it, so loading the real file is what is tested.
    config = {**QWEN25_05B, **(TINY if tiny else {}), "transformers_version": "4.40.1"}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    eos = QWEN25_05B["eos_token_id"]
    GenerationConfig(bos_token_id=QWEN25_05B["bos_token_id"], eos_token_id=eos, do_sample=False,
                     max_new_tokens=2048).save_pretrained(str(model_dir))
    (tokenizer or AutoTokenizer.from_pretrained(str(tokenizer_dir))).save_pretrained(str(model_dir))
    data_dir = root / LOCAL_DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data, data_dir / DATA_FILE)
    return {"model": model_dir, "data": data_dir / DATA_FILE}


def expected_files(root: str | Path, evaluation: Path, case_study: Path) -> list[Path]:
    """Every file docs/reference.md promises for the reference experiment, under root."""
    root = Path(root)
    files = []
    for run, (notebook, _) in NOTEBOOKS.items():
        out = root / "model" / PRESET / run
        files += [out / "run_manifest.json", out / "log_history.json", out / "model.safetensors", out / "config.json",
                  out / "tokenizer.json", out / notebook.replace(".ipynb", ".executed.ipynb")]
        files += [out / f"checkpoint-{NOTEBOOK_OVERRIDES['max_steps']}" / f for f in
                  ("model.safetensors", "trainer_state.json")]
        files.append(root / "tensorboard_events" / PRESET / f"{run}_finetune_tfb")
    ts = evaluation.name
    files += [evaluation / "summary" / f"summary_{ts}.{s}" for s in ("csv", "md", "txt")]
    files += [evaluation / "summary" / f"{n}.{s}" for n in ("differences", "confidence") for s in ("csv", "md")]
    files += [evaluation / "heldout.json", evaluation / "settings.json", evaluation / ITEM_SCORES]
    files += [evaluation / name for name in COMPARISON_FILES]
    files += [case_study.with_suffix(s) for s in (".md", ".jsonl", ".json")]
    return files


# ---------------------------------------------------------------- benchmark data, offline


BENCH_DIR = "benchmarks"  # under the check's folder, beside Dataset/ (which train loads whole): one folder per lm-eval task
MMLU_GROUP = "mmlu_reference"  # two real MMLU subject tasks under one size-weighted group, as mmlu averages its 57
MMLU_SUBJECTS = {"elementary_mathematics": 6, "high_school_mathematics": 10}  # test rows each: unequal, so size
# weighting shows in the group's average
BENCH_TASKS = ("gsm8k", "arc_challenge", "hellaswag", MMLU_GROUP)  # what the check evaluates, raw and templated
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _options(rng: random.Random, answer: int) -> tuple[list[str], int]:
    """Four distinct numbers, the answer among them; (choices, index of the answer)."""
    wrong = rng.sample([answer + d for d in range(-9, 10) if d], 3)
    choices = wrong + [answer]
    rng.shuffle(choices)
    return [str(c) for c in choices], choices.index(answer)


def gsm8k_rows(shared_rows: list[dict]) -> list[dict]:
    """GSM8K test-style rows (question, answer ending in '#### N') from the alpaca-schema copy in ../shared."""
    out = []
    for r in shared_rows:
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", r["output"])
        if numbers:  # the final answer is the solution's last number, as GSM8K's '####' line gives it
            out.append({"question": r["instruction"], "answer": f"{r['output']}\n#### {numbers[-1].replace(',', '')}"})
    return out


def write_benchmark_data(root: str | Path, shared: str | Path, n: int = 8, seed: int = 0) -> dict[str, Path]:
    """Local rows, in each hub dataset's own schema, for BENCH_TASKS; return {task or group: folder} for --task-data.

    Also writes the MMLU_GROUP config into <root>/<BENCH_DIR>/tasks/ (pass it with --include-path).
    """
    rng, bench = random.Random(seed), Path(root) / BENCH_DIR
    gsm = gsm8k_rows(json.loads((Path(shared) / "data" / "gsm8k_alpaca.json").read_text(encoding="utf-8")))
    _jsonl(bench / "gsm8k" / "train.jsonl", gsm[:16])  # few-shot examples (gsm8k is 5-shot)
    _jsonl(bench / "gsm8k" / "test.jsonl", gsm[-n:])
    arc = []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        choices, k = _options(rng, a + b)
        arc.append({"id": f"sft-arc-{i}", "question": f"A jar holds {a} marbles and {b} more are added. How many "
                    "marbles are in the jar?", "choices": {"text": choices, "label": list("ABCD")},
                    "answerKey": "ABCD"[k]})
    _jsonl(bench / "arc_challenge" / "test.jsonl", arc)
    swag = []
    for i in range(n):
        day, label = rng.randrange(7), rng.randrange(4)
        offsets = rng.sample(range(2, 7), 3)  # three wrong days; tomorrow (offset 1) goes in at `label`
        offsets.insert(label, 1)
        endings = [f"it will be {WEEKDAYS[(day + o) % 7]}." for o in offsets]
        ctx_a, ctx_b = f"Today is {WEEKDAYS[day]}.", "tomorrow"
        swag.append({"ind": i, "activity_label": "Telling the day", "ctx_a": ctx_a, "ctx_b": ctx_b,
                     "ctx": f"{ctx_a} {ctx_b}", "endings": endings, "source_id": f"sft-{i}", "split": "val",
                     "split_type": "indomain", "label": str(label)})
    _jsonl(bench / "hellaswag" / "validation.jsonl", swag)
    for subject, rows in MMLU_SUBJECTS.items():
        items = []
        for _ in range(rows + 5):
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            choices, k = _options(rng, a * b)
            items.append({"question": f"What is {a} times {b}?", "subject": subject, "choices": choices, "answer": k})
        _jsonl(bench / MMLU_GROUP / subject / "dev.jsonl", items[:5])
        _jsonl(bench / MMLU_GROUP / subject / "test.jsonl", items[5:])
    group = {"group": MMLU_GROUP, "task": [f"mmlu_{s}" for s in MMLU_SUBJECTS],
             "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 1}}
    (bench / "tasks").mkdir(parents=True, exist_ok=True)
    (bench / "tasks" / f"{MMLU_GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return {t: bench / t for t in BENCH_TASKS}

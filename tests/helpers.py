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

# The suite's small demo keeps the random init and the split by phrasing: the machinery's tests need a base, not
# one that knows the language, and pretraining it in every session would cost minutes. The default (pretrained
# base, split by fact) has tests of its own (tests/studies/test_pretrain.py) that set it explicitly.
SMALL_DEMO = dict(n_train=320, n_heldout=64, n_test=64, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  base="random", split_by_fact=False)


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


def tokenize_batch(batch: dict[str, list], tokenizer, cfg):
    """A batch of rows or conversations as training sees it: tokenized with roles by the cached map function
    (sft.core.tokenize.tokenize_roles_batch), weighted at the spec's starting w (sft.core.weights.add_weight_columns)."""
    from sft.core.tokenize import tokenize_roles_batch
    from sft.core.weights import add_weight_columns

    return add_weight_columns(tokenize_roles_batch(batch, tokenizer, cfg), cfg.weight_spec())


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


TOOL_SCHEMAS = [  # function schemas for agent_conversations, in OpenAI's form (one with non-ASCII text)
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["C", "F"]}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                      "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                      "b": {"type": "number"}}}}},
    {"type": "function", "function": {"name": "search_café", "description": "Cherche un café à proximité.",
                                      "parameters": {"type": "object", "properties": {"q": {"type": "string"},
                                                     "tags": {"type": "array", "items": {"type": "string"}}}}}},
    {"type": "function", "function": {"name": "now", "description": "The current time.",
                                      "parameters": {"type": "object", "properties": {}}}},
]


def agent_conversations(n: int, seed: int = 0) -> list[tuple[list[dict], list[dict] | None]]:
    """n validated tool-calling conversations with the tools they may call: several calls in one turn, calls with
    no content, a tool's reply followed by a user turn, a system turn given or not (or no tools at all), reasoning
    as a leading <think> span or as reasoning_content, message weights, non-ASCII text."""
    import random

    rng = random.Random(seed)
    words = ["Paris", "Rome", "café", "42", "snow", "tea", "{braces}", "ünïcode", "line\nbreak", "<b>tag</b>"]

    def say(k):
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, k)))

    def arguments(name):
        return {"get_weather": lambda: {"city": say(2), **({"unit": "C"} if rng.random() < 0.5 else {})},
                "add": lambda: {"a": rng.randint(-9, 99), "b": rng.choice([1.5, 2, -0.25])},
                "search_café": lambda: {"q": say(3), "tags": [say(1) for _ in range(rng.randint(0, 2))]},
                "now": lambda: {}}[name]()

    def reply(tag_reasoning=True):
        m = {"role": "assistant", "content": say(6)}
        r = rng.random()
        if tag_reasoning and r < 0.2:
            m["content"] = f"<think>{say(4)}</think>{rng.choice(['', chr(10), chr(10) * 2])}{m['content']}"
        elif tag_reasoning and r < 0.35:
            m["reasoning_content"] = say(5)
        return m

    out = []
    for k in range(n):
        tools = rng.sample(TOOL_SCHEMAS, rng.randint(1, 3)) if k % 10 else None
        messages = [{"role": "system", "content": say(4)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": say(5)})
            if tools and rng.random() < 0.7:
                calls = [{"type": "function", "function": {"name": t["function"]["name"],
                                                           "arguments": arguments(t["function"]["name"])}}
                         for t in rng.choices(tools, k=rng.randint(1, 3))]
                call = {**reply(), "tool_calls": calls}
                if rng.random() < 0.5:
                    call["content"] = ""  # a call with no content
                    call.pop("reasoning_content", None)
                messages.append(call)
                for c in calls:
                    output = rng.choice([say(4), '{"temp": 21, "sky": "clear"}', "", "a\nb"])
                    messages.append({"role": "tool", "content": output, "name": c["function"]["name"],
                                     **({"loss_weight": 0.5} if rng.random() < 0.1 else {})})
                if rng.random() < 0.3:  # the tool's reply followed by a user turn
                    messages.append({"role": "user", "content": say(3)})
            messages.append(reply())
        if tools and rng.random() < 0.1:  # an agent trajectory that ends on a call
            messages.append({"role": "user", "content": say(2)})
            messages.append({"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "now", "arguments": {}}}]})
        out.append((messages, tools))
    return out


def qwen_role_segments(messages: list[dict], tools: list[dict] | None) -> list[tuple[str, str, int]]:
    """(text, role, turn) pieces of Qwen2.5's chat template for these messages (reasoning already in the content),
    written from the template's source by hand: the test's independent account of where each character came from."""
    import json

    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    system = messages[0]["content"] if messages[0]["role"] == "system" else default
    if tools:
        system += ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
                   "provided with function signatures within <tools></tools> XML tags:\n<tools>"
                   + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
                   + "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                   "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
                   "\"arguments\": <args-json-object>}\n</tool_call>")
    out = [("<|im_start|>system\n", "template", 0), (system, "system", 0), ("<|im_end|>\n", "template", 0)]
    for i, m in enumerate(messages):
        if m["role"] == "user":
            out += [("<|im_start|>user\n", "template", i), (m["content"], "user", i), ("<|im_end|>\n", "template", i)]
        elif m["role"] == "assistant":
            content, calls = m["content"], m.get("tool_calls") or []
            out.append(("<|im_start|>assistant\n", "template", i))
            if content.startswith("<think>"):
                cut = content.index("</think>") + len("</think>")
                cut += len(content[cut:]) - len(content[cut:].lstrip())  # the blank line after it
                out += [(content[:cut], "reasoning", i), (content[cut:], "assistant", i)]
            else:
                out.append((content, "assistant", i))
            for k, c in enumerate(calls):
                text = ('<tool_call>\n{"name": "' + c["function"]["name"] + '", "arguments": '
                        + json.dumps(c["function"]["arguments"], ensure_ascii=False) + "}\n</tool_call>")
                out.append((("" if k == 0 and not content else "\n") + text, "tool_call", i))
            out += [("<|im_end|>", "assistant", i), ("\n", "template", i)]
        elif m["role"] == "tool":
            first = messages[i - 1]["role"] != "tool"
            last = i + 1 == len(messages) or messages[i + 1]["role"] != "tool"
            if first:
                out.append(("<|im_start|>user\n", "template", i))
            out.append((("" if first else "\n") + "<tool_response>\n" + m["content"] + "\n</tool_response>",
                        "tool_output", i))
            if last:
                out.append(("<|im_end|>\n", "template", i))
    return [piece for piece in out if piece[0]]


def _summary_scores(run):
    """(dataset, metric, model) -> score of an evaluation's summary csv (a pandas Series)."""
    import pandas as pd

    (path,) = (run / "summary").glob("summary_*.csv")
    s = pd.read_csv(path, dtype=str, keep_default_na=False)
    s = s.melt(id_vars=["dataset", "version", "metric", "mode"], var_name="model", value_name="score")
    return s.set_index(["dataset", "metric", "model"])["score"]


def check_items_match_summary(run) -> int:
    """Every task, metric and model's mean item score in an evaluation's item_scores.csv equals its summary's score
    (two decimals); returns how many were compared."""
    import pandas as pd

    from sft.evaluation.results import ITEM_COLUMNS

    items = pd.read_csv(run / "item_scores.csv")
    assert list(items.columns) == ITEM_COLUMNS
    assert not items.duplicated(["model", "task", "item", "metric"]).any()
    summary = _summary_scores(run)
    means = items.groupby(["task", "metric", "model"])["score"].mean()
    for key, mean in means.items():
        # the summary rounds the exact mean to 2 decimals; the item table writes each score to 4 (16.6667), which
        # moves a mean by up to 5e-5: 13.4249999 shows as 13.42 while its items average 13.425001
        assert abs(float(summary[key]) - mean) <= 0.005 + 5e-5, (run, key, mean, summary[key])
    groups = items[items["group"].astype(str) != "nan"].groupby("task")["group"].unique()
    assert all(len(g) == 1 for g in groups), "a task belongs to one group"
    return len(means)


def fake_sweep(root: Path) -> Path:
    """A sweep's evaluation folders as the sweep writes them (summary, heldout.json, settings.json, item_scores.csv),
    w in {0, 1} x seeds 1-3 on two tasks of sft_demo_short, with the primary endpoint sft_demo_short:exact_match
    declared first and w = 1 better; summarised by the sweep's own code (nothing is trained)."""
    import json

    import numpy as np
    import pandas as pd

    from sft.evaluation.combined import ITEM_COLUMNS
    from sft.evaluation.multiplicity import declare
    from sft.studies.sweep import pair_label, summarise_sweep

    rng = np.random.default_rng(0)
    declare(root, [("sft_demo_short", "exact_match")], None, results_exist=False, commit="abc")
    for w in (0.0, 1.0):
        for s in (1, 2, 3):
            label = pair_label(w, s)
            run = root / label / "20260101_000000"
            (run / "summary").mkdir(parents=True)
            items = pd.DataFrame([[label, t, "sft_demo_short", str(i), "exact_match",
                                   100.0 * (rng.random() < 0.4 + 0.3 * w)]
                                  for t in ("sft_demo_a", "sft_demo_b") for i in range(30)], columns=ITEM_COLUMNS)
            items.to_csv(run / "item_scores.csv", index=False)
            means = items.groupby("task")["score"].mean()
            rows = ["dataset,version,metric,mode," + label, *(f"{t},-,exact_match,gen,{v:.4f}" for t, v in means.items()),
                    f"sft_demo_short,-,naive_average:exact_match,gen,{means.mean():.4f}"]
            (run / "summary" / "summary_20260101_000000.csv").write_text("\n".join(rows) + "\n")
            held = {"response_loss": 1.0 - 0.1 * w + 0.01 * s, "response_perplexity": 2.0, "response_token_accuracy": 0.5}
            (run / "heldout.json").write_text(json.dumps({"models": {label: held}}))
            manifest = {"train_grad_clipped_share": 0.9 - 0.8 * w, "train_grad_norm_median": 1.5,
                        "train_grad_norm_steps": 100}
            (run / "settings.json").write_text(json.dumps({"models": {label: {"manifest": manifest}}}))
    summarise_sweep(root, [0.0, 1.0], [1, 2, 3], "demo", plot=None)
    return root

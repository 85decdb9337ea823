"""Evaluation of several models: held-out response metrics and lm-evaluation-harness tasks, summarised.

For every model (loaded once): response loss, perplexity and token accuracy on the held-out split
that training used, then every lm-eval task through `lm_eval.simple_evaluate` on an `HFLM` wrapper,
with the raw prompt and, for the fine-tuned runs, in their chat template (the training template
they carry, sft.data.with_training_template). Tasks come from sft/tasks.py (the demo's own, or
lm-eval's on local data); rows from sft/results.py; tables and intervals from sft/report.py.
Results go to  <out>/<name>/<YYYYmmdd_HHMMSS>/  (see `evaluate_models`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import handle_non_serializable

from sft.chat import ASSISTANT, ROLE_NAMES, renderer_for
from sft.collate import WeightedLMCollator
from sft.data import fingerprint_tokenizer, prepare_data
from sft.generate import stop_at_end_of_turn
from sft.io import write_jsonl
from sft.layout import MANIFEST, RESULTS_ROOT
from sft.lora import adapter_base, is_adapter_dir
from sft.loss import scored_nll, shift_left, target_weights
from sft.manifest import git_commit, load_run_config, package_versions, read_manifest
from sft.modeling import BUILD_INFO, load_model, load_tokenizer
from sft.report import (
    BOOT_SEED, CONF_COLUMNS, DIFF_COLUMNS, N_BOOT, confidence_rows, difference_rows, summary_table, write_records,
    format_markdown, write_summary,
)
from sft.results import CHAT, heldout_rows, merge_results, summary_rows, with_suffix
from sft.tasks import (
    DEMO_GROUP, DIALOGUE_GROUP, MAX_GEN_TOKS, group_config, is_demo_task, is_dialogue_task, leaf_tasks, load_tasks,
    parse_task_data, render_chat, request_costs, task_manager, write_demo_tasks, write_dialogue_tasks,
    write_local_tasks,
)

BATCH_SIZE = 16  # one fixed batch size for every model (generation and held-out losses)
TASKS_DIR = "lm_eval_tasks"  # generated task configs (the demo's, local-data copies of lm-eval's), in the result folder
LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")
FORMATS = ("auto", "raw", "chat", "both")  # --prompt-format choices (see EvalConfig.prompt_format)


@dataclass
class EvalConfig:
    """What `sft evaluate` runs, and where its results go."""

    tasks: list[str] | None = None  # lm-eval tasks or groups; None = the demo's sft_demo (demo-chat: sft_dialogue); [] = held-out metrics only
    name: str | None = None  # results go to <out>/<name>/<timestamp>/ (None = the runs' preset)
    limit: float | None = None  # items per task (a number below 1 is a share), for quick checks
    batch_size: int = BATCH_SIZE  # one fixed batch size for every model
    out: str = RESULTS_ROOT  # root of the result folders
    test_data: str | None = None  # test JSONL of the sft_demo / sft_dialogue tasks (None = the demo's test.jsonl / its dialogues')
    max_gen_toks: int = MAX_GEN_TOKS  # tokens generated per answer at most, in the demo's tasks
    # auto: base models the raw prompt, fine-tuned runs both the raw prompt and their chat template (the training
    # template); raw / chat / both: every model so (chat needs a chat template in the model's tokenizer). The demo's
    # own tasks already render the training template, so they run raw only.
    prompt_format: str = "auto"
    task_data: list[str] = field(default_factory=list)  # NAME=FOLDER: lm-eval's task NAME reads its rows from FOLDER
    include_path: list[str] = field(default_factory=list)  # folders of your own lm-eval task or group YAMLs
    num_fewshot: int | None = None  # few-shot examples per prompt (None = each task's own default)
    # --dry-run's time estimate assumes these throughputs (not measured here: set your hardware's).
    assume_prompt_tokens_per_s: float = 20_000.0  # prompt and continuation tokens scored per second
    assume_generated_tokens_per_s: float = 500.0  # tokens generated per second, over a batch
    n_boot: int = N_BOOT  # bootstrap resamples per interval
    seed: int = BOOT_SEED  # bootstrap seed

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"--limit must be positive (items per task, or a share below 1), got {self.limit}.")
        if self.limit is not None and self.limit >= 1:
            self.limit = int(self.limit)  # a count of items, as lm-eval expects
        if self.prompt_format not in FORMATS:
            raise ValueError(f"--prompt-format must be one of {', '.join(FORMATS)}, got {self.prompt_format!r}.")


# ---------------------------------------------------------------- models


def parse_models(spec: str) -> dict[str, str]:
    """Read `label=PATH,label=PATH` into an ordered {label: path}."""
    models: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        label, sep, path = part.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--models takes LABEL=PATH pairs separated by commas, e.g. "
                             f"base=model/demo/base,masked=model/demo/masked; got {part!r}.")
        if not LABEL.match(label):
            raise ValueError(f"Model label {label!r} may hold only letters, digits, '_', '.' and '-' "
                             "(it names files and columns).")
        if label in models:
            raise ValueError(f"Model label {label!r} is given twice; give each model its own label.")
        models[label] = path
    if not models:
        raise ValueError("--models is empty; pass e.g. base=model/demo/base,masked=model/demo/masked.")
    return models


def describe_model(path: str) -> dict[str, Any]:
    """What a model is: its path and manifest (a fine-tuned run) or build info (the demo base)."""
    p = Path(path)
    info: dict[str, Any] = {"path": str(path)}
    if (p / MANIFEST).is_file():
        m = read_manifest(p)
        if m.get("status") != "complete":
            raise ValueError(f"{path}: the run's manifest says status={m.get('status')!r}, so there is no final "
                             "model yet. Finish it with `python -m sft train --resume`, or evaluate a checkpoint "
                             "folder instead.")
        keep = ("preset", "run_name", "prompt_loss_weight", "template", "status", "written_at", "git_commit")
        info["manifest"] = {k: m.get(k) for k in keep}
        info["manifest"]["eval_fingerprint"] = m.get("data", {}).get("eval_fingerprint")
        info["manifest"]["eval_response_loss"] = m.get("results", {}).get("eval", {}).get("eval_response_loss")
        info["manifest"]["base_model"] = m.get("config", {}).get("model", {}).get("model")
    elif (p / BUILD_INFO).is_file():
        b = json.loads((p / BUILD_INFO).read_text())
        info["build_info"] = {k: b.get(k) for k in ("fingerprint", "num_parameters", "build_version")}
    if is_adapter_dir(p):  # a LoRA adapter: evaluated on top of its base model
        info["adapter_of"] = adapter_base(p)
    return info


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def base_model_warnings(models: dict[str, str], info: dict[str, dict], tokenizers: dict) -> list[str]:
    """Flag a listed base model that is no longer the one a run was tuned from (its tokenizer changed since)."""
    prints = {label: fingerprint_tokenizer(tok) for label, tok in tokenizers.items()}
    for label in models:
        info[label]["tokenizer_fingerprint"] = prints[label]
    out = []
    for run, i in info.items():
        base = i.get("manifest", {}).get("base_model")
        for label, path in models.items():
            same = base and Path(path).exists() and Path(base).exists() and Path(path).resolve() == Path(base).resolve()
            if same and label != run and prints[label] != prints[run]:
                out.append(f"{label} ({path}) is not the model {run} was tuned from: their tokenizers differ, so the "
                           "base was rebuilt after that run (e.g. by build-demo on new data). Rebuild or retrain.")
    return out


# ---------------------------------------------------------------- held-out metrics


def heldout_split(cfg, tokenizer, fingerprint: str | None = None):
    """The held-out split training used, tokenized for this tokenizer; refused if its rows changed since."""
    data = prepare_data(cfg.data, tokenizer)  # the split and tokenization of training
    found = data.info["eval_fingerprint"]
    if fingerprint and found != fingerprint:
        d = cfg.data
        raise ValueError(f"The held-out rows ({d.eval_data or d.data}, split_seed={d.split_seed}) are not the ones the "
                         f"run was trained with (fingerprint {found}, manifest {fingerprint}): the data changed after "
                         "training. Retrain the runs on the current data, or restore the data they were trained on.")
    return data.eval


ROLE_GROUPS = (*ROLE_NAMES[:ASSISTANT], "assistant_trained", "assistant_untrained")  # conversations' token groups
ROLE_WEIGHTING = ("; conversations: <role>_loss likewise over the tokens of each role (the role of the token "
                  "predicted; template = the chat markup around assistant turns), assistant_trained / "
                  "assistant_untrained = the replies inside / outside the loss (train_on=last)")


@torch.no_grad()
def heldout_metrics(model, dataset, pad_token_id: int, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Response loss, perplexity and token accuracy on a tokenized split, summed over tokens; for conversations
    also the loss and tokens of each role (sft.chat.ROLE_NAMES)."""
    model.eval()
    chat = "roles" in dataset.column_names
    sums = torch.zeros(5, dtype=torch.float64)  # response nll, response tokens, correct, prompt nll, prompt tokens
    by_role = torch.zeros(2, len(ROLE_GROUPS), dtype=torch.float64)  # nll and tokens of each ROLE_GROUPS entry
    for start in range(0, len(dataset), batch_size):
        nll, hit, response, group = _score_batch(model, dataset[start:start + batch_size], pad_token_id, chat)
        nll, hit, response = nll.double(), hit.double(), response.double()
        sums += torch.stack([(nll * response).sum(), response.sum(), (hit * response).sum(),
                             (nll * (1 - response)).sum(), (1 - response).sum()]).cpu()
        if chat:
            by_role[0].index_add_(0, group.cpu(), nll.cpu())
            by_role[1].index_add_(0, group.cpu(), torch.ones_like(nll).cpu())
    r_nll, r_n, r_ok, p_nll, p_n = sums.tolist()
    loss = r_nll / r_n
    out = {
        "examples": len(dataset),
        "response_tokens": int(r_n),
        "response_loss": loss,
        "response_perplexity": math.exp(min(loss, 50.0)),
        "response_token_accuracy": r_ok / r_n,
        "prompt_tokens": int(p_n),
        "prompt_loss": p_nll / p_n if p_n else None,
    }
    return {**out, **role_metrics(by_role)} if chat else out


def _score_batch(model, cols: dict[str, list], pad_token_id: int, chat: bool):
    """(NLL, top token is the target, response mask, ROLE_GROUPS index) of every scored position of a batch."""
    keys = ("input_ids", "labels", "loss_weights", "response_mask")
    batch = WeightedLMCollator(pad_token_id=pad_token_id)([{k: cols[k][i] for k in keys}
                                                           for i in range(len(cols["input_ids"]))])
    batch = {k: v.to(model.device) for k, v in batch.items()}
    # As in training: the head runs on the scored positions only, a chunk at a time, so a
    # batch of Qwen2.5 never holds its full tokens x 152K-vocabulary logits.
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                output_hidden_states=True, logits_to_keep=1)
    masks = target_weights(batch)
    scored = (masks["response"] + masks["prompt"]) > 0
    nll, hit = scored_nll(out.hidden_states[-1][scored], model.get_output_embeddings(),
                          shift_left(batch["input_ids"])[scored])
    response = masks["response"][scored]
    if not chat:
        return nll, hit, response, None
    roles = torch.zeros_like(batch["input_ids"])  # each target token's role: the role of position t + 1
    for i, r in enumerate(cols["roles"]):
        roles[i, :len(r)] = torch.as_tensor(r)
    role = shift_left(roles)[scored]
    # An assistant token outside the loss (an earlier reply under train_on="last") is a group of its own.
    return nll, hit, response, role + ((role == ASSISTANT) & (response == 0)).long()


def role_metrics(by_role: torch.Tensor) -> dict[str, float | int | None]:
    """{<role>_tokens, <role>_loss} for template, system, user and assistant; the assistant's trained and
    untrained tokens apart when there are untrained ones (train_on="last")."""
    nll, n = by_role.tolist()
    groups = dict(zip(ROLE_GROUPS, zip(nll, n)))
    trained, untrained = groups.pop("assistant_trained"), groups.pop("assistant_untrained")
    groups["assistant"] = (trained[0] + untrained[0], trained[1] + untrained[1])
    if untrained[1]:
        groups.update(assistant_trained=trained, assistant_untrained=untrained)
    out = {}
    for name, (total, count) in groups.items():
        out[f"{name}_tokens"] = int(count)
        out[f"{name}_loss"] = total / count if count else None
    return out


# ---------------------------------------------------------------- lm-eval


def prompt_formats(models: dict[str, str], info: dict[str, dict], tokenizers: dict, choice: str) -> dict[str, list]:
    """{label: the prompt formats it is evaluated in}: "raw" (lm-eval's prompt as is) and/or "chat" (its template)."""
    formats = {}
    for label in models:
        tuned = "manifest" in info[label]
        formats[label] = {"auto": ["raw", "chat"] if tuned else ["raw"], "raw": ["raw"], "chat": ["chat"],
                          "both": ["raw", "chat"]}[choice]
        if "chat" in formats[label] and not tokenizers[label].chat_template:
            raise ValueError(f"{label} ({models[label]}) has no chat template in its tokenizer, so --prompt-format "
                             f"{choice} cannot render its prompts. Use --prompt-format auto or raw, or retrain it "
                             "with this version (fine-tuned models save their training template).")
    return formats


def run_benchmarks(model, tokenizer, tasks: list[str], tm, settings: EvalConfig, chat: bool) -> dict:
    """lm-eval's simple_evaluate on a loaded model, raw or in its chat template, with per-sample logs."""
    # A model's generation_config.max_new_tokens (Qwen2.5 ships 2,048) would override the bound lm-eval sets per task
    # through max_length (transformers gives max_new_tokens precedence): each task's max_gen_toks must hold.
    model.generation_config.max_new_tokens = None
    eos = model.generation_config.eos_token_id
    if chat:  # a model asked through ChatML stops at <|im_end|> too, even a base model whose config lacks it
        stop_at_end_of_turn(model, renderer_for(tokenizer, tokenizer.chat_template).end_of_turn_id(),
                            tokenizer.eos_token_id)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    try:
        # Few-shot examples as earlier user/assistant turns in the chat template: how a chat model sees examples.
        return simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=settings.limit,
                               batch_size=settings.batch_size, num_fewshot=settings.num_fewshot,
                               apply_chat_template=chat, fewshot_as_multiturn=chat, log_samples=True)
    finally:
        model.generation_config.eos_token_id = eos  # the raw pass of the same model stops as the model does


def evaluate_one(label: str, path: str, plan: "Plan", run: Path) -> tuple[dict, dict, dict, dict]:
    """Held-out metrics and every lm-eval pass of one model; its raw results are written as they come."""
    t0 = time.perf_counter()
    tokenizer = plan.tokenizers[label]
    model = load_model(path).to(device())
    heldout = heldout_metrics(model, heldout_split(plan.run_cfg, tokenizer, plan.fingerprint), tokenizer.pad_token_id,
                              plan.settings.batch_size)
    t1 = time.perf_counter()
    print(f"[{label}] held-out response loss {heldout['response_loss']:.4f}, token accuracy "
          f"{100 * heldout['response_token_accuracy']:.2f}% ({t1 - t0:.1f} s)", flush=True)
    parts = []
    for fmt in plan.formats[label]:
        tasks = plan.tasks if fmt == "raw" else plan.chat_tasks
        if not tasks:
            continue
        res = run_benchmarks(model, tokenizer, tasks, plan.tm, plan.settings, chat=fmt == "chat")
        samples = res.pop("samples", {})
        stem = label if fmt == "raw" else label + CHAT
        (run / "results").mkdir(exist_ok=True)  # lm-eval's own results, task names as lm-eval gives them
        (run / "results" / f"{stem}.json").write_text(json.dumps(res, indent=2, default=handle_non_serializable))
        if fmt == "chat":
            res, samples = with_suffix(res, samples, CHAT)
        for task, recs in samples.items():
            write_jsonl(run / "predictions" / label / f"{task}.jsonl", recs, default=handle_non_serializable)
        parts.append((res, samples))
    timings = {"heldout_s": round(t1 - t0, 2), "benchmarks_s": round(time.perf_counter() - t1, 2)}
    print(f"[{label}] lm-eval tasks done ({timings['benchmarks_s']:.1f} s)", flush=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return (*merge_results(parts), heldout, timings)


# ---------------------------------------------------------------- the whole evaluation


@dataclass
class Plan:
    """Everything checked and loaded before any model runs."""

    models: dict[str, str]
    settings: EvalConfig
    info: dict[str, dict]  # label -> path, manifest or build info
    source: str  # the fine-tuned run whose manifest gives the held-out split and template
    run_cfg: Any  # that run's ExperimentConfig
    tokenizers: dict[str, Any]
    formats: dict[str, list[str]]  # label -> "raw" / "chat"
    tasks: list[str]  # lm-eval names run raw ([] = held-out metrics only)
    chat_tasks: list[str]  # the same without the demo's tasks (already in the training template)
    test_data: Path | None
    warnings: list[str]
    tm: Any = None  # the lm-eval TaskManager, once the task configs are written
    loaded: dict = field(default_factory=dict)  # leaf task name -> Task, its data loaded

    @property
    def fingerprint(self) -> str:
        return self.info[self.source]["manifest"]["eval_fingerprint"]


def plan_evaluation(models: dict[str, str], settings: EvalConfig) -> Plan:
    """Check the models, their held-out split and the tasks, and load the tokenizers; nothing is written."""
    info = {label: describe_model(path) for label, path in models.items()}
    source = next((label for label, i in info.items() if "manifest" in i), None)
    if source is None:
        raise ValueError("None of the models has a run_manifest.json, so the held-out split and the prompt template "
                         "are unknown. Include at least one fine-tuned run of this project, e.g. "
                         "masked=model/demo/masked.")
    cfg = load_run_config(models[source])
    for label, i in info.items():  # every run must have been tuned on the split evaluated here
        fp = i.get("manifest", {}).get("eval_fingerprint")
        if fp and fp != info[source]["manifest"]["eval_fingerprint"]:
            raise ValueError(f"{label} was trained with another held-out split than {source} (eval fingerprints "
                             "differ), so one held-out loss cannot serve both. Evaluate them separately.")
    tasks = settings.tasks
    if tasks is None:
        if cfg.demo is None:
            raise ValueError(f"Preset {cfg.preset!r} has no default tasks; pass lm-eval task names, "
                             "e.g. --tasks mmlu,gsm8k, or --heldout-only for the held-out metrics alone.")
        tasks = [DIALOGUE_GROUP if cfg.demo.dialogues else DEMO_GROUP]
    test_data = settings.test_data or default_test_data(cfg, tasks)
    tokenizers = {label: load_tokenizer(path) for label, path in models.items()}  # also checks every path
    warnings = base_model_warnings(models, info, tokenizers)
    for w in warnings:
        print(f"warning: {w}", flush=True)
    plan = Plan(models, settings, info, source, cfg, tokenizers,
                prompt_formats(models, info, tokenizers, settings.prompt_format), list(tasks),
                [t for t in tasks if not is_demo_task(t)], Path(test_data) if test_data else None, warnings)
    heldout_split(cfg, tokenizers[source], plan.fingerprint)  # stale data is refused before any model is loaded
    return plan


def default_test_data(cfg, tasks: list[str]) -> Path | None:
    """The test rows of the generated tasks: the demo's test.jsonl for sft_demo, its dialogues' for sft_dialogue."""
    demo, dialogue = any(is_demo_task(t) for t in tasks), any(is_dialogue_task(t) for t in tasks)
    if demo and dialogue:
        raise ValueError(f"The {DEMO_GROUP} and {DIALOGUE_GROUP} tasks read different test files; evaluate them in "
                         "two runs of `sft evaluate`.")
    if (demo or dialogue) and cfg.demo is None:
        raise ValueError(f"The {DEMO_GROUP} and {DIALOGUE_GROUP} tasks need the demo's test rows: pass --test-data "
                         "PATH.")
    if dialogue:
        return Path(cfg.demo.dialogue_dir) / "test.jsonl"
    return Path(cfg.demo.dataset_dir) / "test.jsonl" if demo else None


def prepare_tasks(plan: Plan, folder: Path) -> None:
    """Write the task configs into folder and load every task's data once (a task that cannot load is refused)."""
    if not plan.tasks:
        return
    s, includes = plan.settings, [Path(p).resolve() for p in plan.settings.include_path]
    if plan.test_data is not None:
        stop = list(dict.fromkeys(t.eos_token for t in plan.tokenizers.values()))  # generation stops at EOS
        if any(is_dialogue_task(t) for t in plan.tasks):  # the history pre-rendered as the run was trained
            render = render_chat(plan.tokenizers[plan.source])
            write_dialogue_tasks(plan.test_data, folder / "dialogue", render, plan.run_cfg.data.template, stop,
                                 s.max_gen_toks)
            includes.append(folder / "dialogue")
        else:
            write_demo_tasks(plan.test_data, folder / "demo", plan.run_cfg.data.template, stop, s.max_gen_toks)
            includes.append(folder / "demo")
    task_data = parse_task_data(s.task_data)
    if task_data:  # lm-eval's own task definitions, reading local rows: written after (so overriding) lm-eval's
        write_local_tasks(task_manager(plan.tasks + list(task_data), includes), task_data, folder / "local",
                          s.num_fewshot)
        includes.append(folder / "local")
    plan.tm = task_manager(plan.tasks, includes)
    plan.loaded = load_tasks(plan.tm, plan.tasks, task_data)


def _timestamp_dir(root: Path) -> tuple[str, Path]:
    """A new <root>/<YYYYmmdd_HHMMSS> folder (waits a second rather than reuse an existing one)."""
    while True:
        ts = datetime.now().strftime("%Y%m%d_%H%M%S")
        path = root / ts
        try:
            path.mkdir(parents=True)
            return ts, path
        except FileExistsError:
            time.sleep(1)


def evaluate_models(models: dict[str, str], **settings: Any) -> Path:
    """Evaluate every model and write the result folder; return its path. settings: EvalConfig's fields.

    <out>/<name>/<YYYYmmdd_HHMMSS>/
        summary/summary_<ts>.csv|.md|.txt   OpenCompass-style table, one column per model (chat rows: <task>@chat)
        summary/differences.csv|.md         every pair a - b, paired bootstrap 95% CI
        summary/confidence.csv|.md          every model's score with its bootstrap 95% CI
        results/<model>[@chat].json         lm-eval's results (without samples), per prompt format
        predictions/<model>/<task>.jsonl    lm-eval's per-sample log: prompt, generation, score
        heldout.json                        held-out response loss, perplexity, token accuracy (conversations: per role)
        settings.json                       models (paths, manifests, prompt formats), tasks, limit, versions
        lm_eval_tasks/                      the generated task configs (demo; local-data copies of lm-eval's)
    """
    plan = plan_evaluation(models, EvalConfig(**settings))
    name = plan.settings.name or plan.run_cfg.preset
    ts, run = _timestamp_dir(Path(plan.settings.out) / name)
    try:
        prepare_tasks(plan, run / TASKS_DIR)
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)  # nothing evaluated yet: leave no half-written result folder
        if not any(run.parent.iterdir()):
            run.parent.rmdir()
        raise
    results, samples, heldout, timings = {}, {}, {}, {}
    for label, path in models.items():
        results[label], samples[label], heldout[label], timings[label] = evaluate_one(label, path, plan, run)
    write_summaries(plan, run, ts, results, samples, heldout)
    write_settings(plan, run, name, ts, timings)
    return run


def write_summaries(plan: Plan, run: Path, ts: str, results: dict, samples: dict, heldout: dict) -> None:
    """The summary, differences and confidence tables, and heldout.json."""
    s, labels = plan.settings, list(plan.models)
    chat = [t + CHAT for t in plan.chat_tasks] if any("chat" in f for f in plan.formats.values()) else []
    groups = {g: group_config(plan.tm, g.removesuffix(CHAT)) for r in results.values() for g in r["group_subtasks"]}
    rows = summary_rows(results, samples, plan.tasks + chat, groups) if plan.tasks else heldout_rows(heldout)
    write_summary(summary_table(rows, labels), run / "summary", ts)
    write_records(difference_rows(rows, labels, s.n_boot, s.seed), DIFF_COLUMNS, run / "summary" / "differences")
    write_records(confidence_rows(rows, labels, s.n_boot, s.seed), CONF_COLUMNS, run / "summary" / "confidence")
    d = plan.run_cfg.data
    (run / "heldout.json").write_text(json.dumps({
        "source_run": {"model": plan.source, "path": plan.models[plan.source]},
        "data": {"data": d.data, "eval_data": d.eval_data, "eval_size": d.eval_size, "split_seed": d.split_seed,
                 "template": d.template, "max_length": d.max_length, "truncation": d.truncation,
                 "eval_fingerprint": plan.fingerprint},
        "weighting": "sums over response tokens (EOS included) / token count, over the whole split" + (
            ROLE_WEIGHTING if any("user_tokens" in m for m in heldout.values()) else ""),
        "models": heldout,
    }, indent=2))


def write_settings(plan: Plan, run: Path, name: str, ts: str, timings: dict) -> None:
    """settings.json: what was evaluated, how, with which versions."""
    s, test_data = plan.settings, plan.test_data
    for label, formats in plan.formats.items():
        plan.info[label]["prompt_formats"] = formats
    (run / "settings.json").write_text(json.dumps({
        "name": name, "timestamp": ts, "preset": plan.run_cfg.preset, "models": plan.info, "tasks": plan.tasks,
        "chat_tasks": plan.chat_tasks, "test_data": str(test_data) if test_data else None,
        "test_data_sha256": hashlib.sha256(test_data.read_bytes()).hexdigest()[:16] if test_data else None,
        "limit": s.limit, "batch_size": s.batch_size, "max_gen_toks": s.max_gen_toks,
        "prompt_format": s.prompt_format, "task_data": s.task_data, "include_path": s.include_path,
        "num_fewshot": s.num_fewshot, "template": plan.run_cfg.data.template,
        "bootstrap": {"resamples": s.n_boot, "seed": s.seed, "level": 0.95, "interval": "percentile",
                      "groups": "stratified: items resampled within each member task, member means combined "
                                "with the group's weights (equal for naive_average)"},
        "warnings": plan.warnings, "device": str(device()), "timings_s": timings, "versions": package_versions(),
        "git_commit": git_commit(),
    }, indent=2, default=str))


# ---------------------------------------------------------------- what an evaluation will cost (--dry-run)


def estimate_costs(models: dict[str, str], **settings: Any) -> dict:
    """Every (model, prompt format, task): requests, their kind, prompt tokens, the bound on generated tokens, and
    a time at the stated throughputs. Tasks are loaded as for the evaluation; no model runs, nothing is written."""
    plan = plan_evaluation(models, EvalConfig(**settings))
    s, rows = plan.settings, []
    with tempfile.TemporaryDirectory() as tmp:
        prepare_tasks(plan, Path(tmp))
        for label, formats in plan.formats.items():
            for fmt in formats:
                names = plan.tasks if fmt == "raw" else plan.chat_tasks
                for leaf in dict.fromkeys(x for name in names for x in leaf_tasks(plan.tm, name)):
                    cost = request_costs(plan.loaded[leaf], plan.tokenizers[label], fmt == "chat", s.limit,
                                         s.num_fewshot)
                    seconds = cost["prompt_tokens"] / s.assume_prompt_tokens_per_s + \
                        cost["max_generated_tokens"] / s.assume_generated_tokens_per_s
                    rows.append({"model": label, "format": fmt, "task": leaf, **cost, "seconds_at_most": seconds})
    return {"rows": rows, "assume_prompt_tokens_per_s": s.assume_prompt_tokens_per_s,
            "assume_generated_tokens_per_s": s.assume_generated_tokens_per_s,
            "heldout_examples": len(heldout_split(plan.run_cfg, plan.tokenizers[plan.source], plan.fingerprint))}


def format_costs(costs: dict) -> str:
    """The dry run's table, a total per model, and the throughputs it assumed."""
    rows = costs["rows"]
    table = [["model", "format", "task", "kind", "requests", "prompt tokens", "generated tokens (at most)",
              "time (at most)"]]
    table += [[r["model"], r["format"], r["task"], r["kind"], f"{r['requests']:,}", f"{r['prompt_tokens']:,}",
               f"{r['max_generated_tokens']:,}", _duration(r["seconds_at_most"])] for r in rows]
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == label]
        table.append([label, "all", "total", "", f"{sum(r['requests'] for r in mine):,}",
                      f"{sum(r['prompt_tokens'] for r in mine):,}",
                      f"{sum(r['max_generated_tokens'] for r in mine):,}",
                      _duration(sum(r["seconds_at_most"] for r in mine))])
    total = sum(r["seconds_at_most"] for r in rows)
    return (format_markdown(table) + f"\nAll models: at most {_duration(total)}, assuming "
            f"{costs['assume_prompt_tokens_per_s']:,.0f} prompt tokens/s (log-likelihood and prefill) and "
            f"{costs['assume_generated_tokens_per_s']:,.0f} generated tokens/s (set them with --assume-prompt-tokens-"
            "per-s / --assume-generated-tokens-per-s to your hardware's). Generation is bounded by each task's "
            f"max_gen_toks; most answers stop earlier. Plus held-out metrics on {costs['heldout_examples']:,} "
            "examples per model.")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"

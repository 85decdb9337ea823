"""Evaluation of several models: held-out response metrics and lm-evaluation-harness tasks, summarised.

For every model (loaded once): response loss, perplexity and token accuracy on the held-out split
that training used (sft.evaluation.heldout), then every lm-eval task through `lm_eval.simple_evaluate` on an
`HFLM` wrapper, with the raw prompt and, for the fine-tuned runs, in their chat template (the training template
they carry, sft.core.tokenize.with_training_template). Tasks are lm-eval's (by name, or on local data:
sft.evaluation.tasks) or a study's own, handed in as `GeneratedTasks`; rows from sft.evaluation.results; tables
and intervals from sft.evaluation.report. Results go to  <out>/<name>/<YYYYmmdd_HHMMSS>/  (see `evaluate_models`;
<out> is evaluation_results/raw/, git-ignored: `python -m sft publish` commits the small files).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
from lm_eval import simple_evaluate
from lm_eval.utils import handle_non_serializable

from sft.core.chat import end_of_call_id, renderer_for, stop_at_end_of_turn
from sft.core.config import load_run_config
from sft.core.prompts import get_template
from sft.data.errors import UserError
from sft.data.io import write_jsonl
from sft.evaluation.heldout import (
    ROLE_WEIGHTING,
    device,
    heldout_metrics,
    heldout_split,
)
from sft.evaluation.inputs import base_model_warnings, describe_model, prompt_formats
from sft.evaluation.report import (
    CONF_COLUMNS,
    DIFF_COLUMNS,
    confidence_rows,
    format_csv,
    difference_rows,
    summary_table,
    write_records,
    write_summary,
)
from sft.evaluation.results import (
    CHAT,
    ITEM_COLUMNS,
    heldout_rows,
    item_records,
    merge_results,
    summary_rows,
    with_suffix,
)
from sft.evaluation.raw_generations import RecordingHFLM, attach_raw, generations_of
from sft.evaluation.settings import EvalConfig
from sft.evaluation.side_effects import (
    RULE,
    is_side_effect,
    model_markers,
    stop_strings,
    side_effect_notes,
    side_effect_rows,
    with_side_effects,
)
from sft.evaluation.tasks import (
    GeneratedTasks,
    group_config,
    load_tasks,
    parse_task_data,
    task_manager,
    write_local_tasks,
)
from sft.models.load import load_model
from sft.models.tokenizer import load_tokenizer
from sft.runs.layout import ITEM_SCORES
from sft.runs.manifest import command_line, git_commit, machine_info, package_versions

TASKS_DIR = "lm_eval_tasks"  # generated task configs (the demo's, local-data copies of lm-eval's), in the result folder
def run_benchmarks(model, tokenizer, tasks: list[str], tm, settings: EvalConfig, chat: bool) -> dict:
    """lm-eval's simple_evaluate on a loaded model, raw or in its chat template, with per-sample logs."""
    # A model's generation_config.max_new_tokens (Qwen2.5 ships 2,048) would override the bound lm-eval sets per task
    # through max_length (transformers gives max_new_tokens precedence): each task's max_gen_toks must hold.
    model.generation_config.max_new_tokens = None
    eos = model.generation_config.eos_token_id
    if chat:  # a model asked through ChatML stops at <|im_end|> too, even a base model whose config lacks it
        renderer = renderer_for(tokenizer, tokenizer.chat_template)
        stop_at_end_of_turn(model, renderer.end_of_turn_id(), tokenizer.eos_token_id, end_of_call_id(renderer))
    lm = RecordingHFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
    try:
        # Few-shot examples as earlier user/assistant turns in the chat template: how a chat model sees examples.
        res = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=settings.limit,
                              batch_size=settings.batch_size, num_fewshot=settings.num_fewshot,
                              apply_chat_template=chat, fewshot_as_multiturn=chat, log_samples=True)
        # The side effects count the raw generation (special tokens kept, before lm-eval's stop-string cut of
        # `resps` and the filters of `filtered_resps`): each generation sample gets it as `raw_generation`.
        attach_raw(res.get("samples", {}), lm.raw)
        return res
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
    chat_tasks: list[str]  # the same without generated tasks already in the training template (the demo's)
    generated: GeneratedTasks | None  # the study's own tasks among them, written from test_data
    test_data: Path | None
    warnings: list[str]
    tm: Any = None  # the lm-eval TaskManager, once the task configs are written
    loaded: dict = field(default_factory=dict)  # leaf task name -> Task, its data loaded

    @property
    def fingerprint(self) -> str:
        return self.info[self.source]["manifest"]["eval_fingerprint"]


def plan_evaluation(models: dict[str, str], settings: EvalConfig, generated: Sequence[GeneratedTasks] = ()) -> Plan:
    """Check the models, their held-out split and the tasks, and load the tokenizers; nothing is written.

    generated: the studies' own task groups (sft.studies.tasks.STUDY_TASKS), written from their test rows.
    """
    info = {label: describe_model(path) for label, path in models.items()}
    source = next((label for label, i in info.items() if "manifest" in i), None)
    if source is None:
        raise UserError("None of the models has a run_manifest.json, so the held-out split and the prompt template "
                         "are unknown. Include at least one fine-tuned run of this project, e.g. "
                         "masked=model/demo/masked.")
    cfg = load_run_config(models[source])
    for label, i in info.items():  # every run must have been tuned on the split evaluated here
        fp = i.get("manifest", {}).get("eval_fingerprint")
        if fp and fp != info[source]["manifest"]["eval_fingerprint"]:
            raise UserError(f"{label} was trained with another held-out split than {source} (eval fingerprints "
                             "differ), so one held-out loss cannot serve both. Evaluate them separately.")
    tasks = settings.tasks
    if tasks is None:
        tasks = [name for g in generated if g.is_default(cfg) for name in g.defaults(cfg)]
        if not tasks:
            raise UserError(f"Preset {cfg.preset!r} has no default tasks; pass lm-eval task names, "
                             "e.g. --tasks mmlu,gsm8k, or --heldout-only for the held-out metrics alone.")
    source_of = generated_source(cfg, tasks, generated)
    test_data = settings.test_data or (source_of.test_data(cfg) if source_of else None)
    if source_of and test_data is None:
        raise UserError(f"The {source_of.group} tasks need the demo's test rows: pass --test-data PATH.")
    tokenizers = {label: load_tokenizer(path) for label, path in models.items()}  # also checks every path
    warnings = base_model_warnings(models, info, tokenizers)
    for w in warnings:
        print(f"warning: {w}", flush=True)
    chat_tasks = [t for t in tasks if not any(g.owns(t) and not g.chat_pass for g in generated)]
    plan = Plan(models, settings, info, source, cfg, tokenizers,
                prompt_formats(models, info, tokenizers, settings.prompt_format), list(tasks), chat_tasks, source_of,
                Path(test_data) if test_data else None, warnings)
    heldout_split(cfg, tokenizers[source], plan.fingerprint)  # stale data is refused before any model is loaded
    return plan


def generated_source(cfg, tasks: list[str], generated: Sequence[GeneratedTasks]) -> GeneratedTasks | None:
    """The one group of generated tasks among `tasks` (each reads its own test file), or None."""
    used = [g for g in generated if any(g.owns(t) for t in tasks)]
    if len(used) > 1:
        raise UserError(f"The {' and '.join(g.group for g in used)} tasks read different test files; evaluate them "
                         "in separate runs of `sft evaluate`.")
    return used[0] if used else None


def prepare_tasks(plan: Plan, folder: Path) -> None:
    """Write the task configs into folder and load every task's data once (a task that cannot load is refused)."""
    if not plan.tasks:
        return
    s, includes = plan.settings, [Path(p).resolve() for p in plan.settings.include_path]
    if plan.generated is not None:
        stop = list(dict.fromkeys(t.eos_token for t in plan.tokenizers.values()))  # generation stops at EOS
        out = folder / plan.generated.folder
        plan.generated.write(plan.test_data, out, plan.tokenizers[plan.source], plan.run_cfg.data.template, stop,
                             s.max_gen_toks)
        includes.append(out)
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


def evaluate_models(models: dict[str, str], generated: Sequence[GeneratedTasks] = (), **settings: Any) -> Path:
    """Evaluate every model and write the result folder; return its path. settings: EvalConfig's fields;
    generated: the studies' own task groups (sft.studies.tasks.STUDY_TASKS).

    <out>/<name>/<YYYYmmdd_HHMMSS>/
        summary/summary_<ts>.csv|.md|.txt   OpenCompass-style table, one column per model (chat rows: <task>@chat);
                                            generation tasks add side-effect rows (sft.evaluation.side_effects)
        summary/differences.csv|.md         every pair a - b, paired bootstrap 95% CI
        summary/confidence.csv|.md          every model's score with its bootstrap 95% CI
        results/<model>[@chat].json         lm-eval's results (without samples), per prompt format
        predictions/<model>/<task>.jsonl    lm-eval's per-sample log: prompt, generation, score, raw_generation
        item_scores.csv                     model,task,group,item,metric,score: every item's score (summary scale)
        heldout.json                        held-out response loss, perplexity, token accuracy (conversations: per role)
        settings.json                       models (paths, manifests, prompt formats), tasks, limit, versions,
                                            side_effects (rule, template markers per model, notes)
        lm_eval_tasks/                      the generated task configs (demo; local-data copies of lm-eval's)
    """
    plan = plan_evaluation(models, EvalConfig(**settings), generated)
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
    side = write_summaries(plan, run, ts, results, samples, heldout)
    write_settings(plan, run, name, ts, timings, side)
    return run


def write_summaries(plan: Plan, run: Path, ts: str, results: dict, samples: dict, heldout: dict) -> dict:
    """The summary (side effects included), differences and confidence tables, and heldout.json; returns what the
    side effects were counted with (settings.json's `side_effects`)."""
    s, labels = plan.settings, list(plan.models)
    chat = [t + CHAT for t in plan.chat_tasks] if any("chat" in f for f in plan.formats.values()) else []
    groups = {g: group_config(plan.tm, g.removesuffix(CHAT)) for r in results.values() for g in r["group_subtasks"]}
    rows = summary_rows(results, samples, plan.tasks + chat, groups) if plan.tasks else heldout_rows(heldout)
    side = {}
    if plan.tasks:
        rows, side = add_side_effects(plan, rows, results, samples)
    write_summary(summary_table(rows, labels), run / "summary", ts)
    write_item_scores(rows, results, run / ITEM_SCORES)
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
    return side


def write_item_scores(rows: list, results: dict, path: Path) -> None:
    """item_scores.csv: every model's score on every item of every task and metric, from lm-eval's per-sample logs
    (the predictions, which stay local): the statistics over items and seeds read these, committed."""
    subtasks = {g: m for r in results.values() for g, m in r.get("group_subtasks", {}).items()}
    scores = [r for r in rows if not is_side_effect(r.metric)]  # the scores: side effects per item would triple it
    path.write_text(format_csv([ITEM_COLUMNS, *item_records(scores, subtasks)]), encoding="utf-8")


def add_side_effects(plan: Plan, rows: list, results: dict, samples: dict) -> tuple[list, dict]:
    """The summary rows with the side effects of every generation task and group (sft.evaluation.side_effects)."""
    template, source = get_template(plan.run_cfg.data.template), plan.tokenizers[plan.source]

    def renderers(label: str) -> list:
        toks = [source] + ([plan.tokenizers[label]] if "chat" in plan.formats[label] else [])
        return [(renderer_for(t, t.chat_template), stop_strings(t)) for t in toks if t.chat_template]

    markers = {label: model_markers(template, renderers(label)) for label in plan.models}
    found = {label: generations_of(samples[label]) for label in plan.models}
    generations = {label: g for label, (g, _) in found.items()}
    configs = {t: c for r in results.values() for t, c in r.get("configs", {}).items()}
    subtasks = {g: m for r in results.values() for g, m in r.get("group_subtasks", {}).items()}
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    weighted = {r.dataset: r.size_weighted for r in rows if r.is_group}
    side = side_effect_rows(generations, markers, datasets, subtasks, {r.dataset: r.version for r in rows}, weighted)
    loglikelihood = [t for t in configs if configs[t].get("output_type") != "generate_until"]
    notes = side_effect_notes(generations, markers, loglikelihood, {label: n for label, (_, n) in found.items()})
    for note in notes:
        print(f"[side effects] {note}", flush=True)
    return with_side_effects(rows, side), {"rule": RULE, "notes": notes, "loglikelihood_tasks": loglikelihood,
                                           "markers": {label: list(m.lines) for label, m in markers.items()}}


def write_settings(plan: Plan, run: Path, name: str, ts: str, timings: dict, side_effects: dict) -> None:
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
        "side_effects": side_effects, "warnings": plan.warnings, "device": str(device()), "timings_s": timings,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "machine": machine_info(),  # CPU model, cores, torch threads (sft pages provenance)
        "command": command_line(),
    }, indent=2, default=str))

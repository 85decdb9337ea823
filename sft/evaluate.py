"""Evaluation of several models: held-out response metrics and lm-evaluation-harness tasks, summarised.

For every model (loaded once): response loss, perplexity and token accuracy on the held-out split
that training used, then every lm-eval task through `lm_eval.simple_evaluate` on an `HFLM` wrapper.
The demo's synthetic test set becomes local lm-eval tasks, one per task family, scored by exact match
and edit similarity, plus their averages over the short-output, the long-output and all families.
Results go to  <out>/<name>/<YYYYmmdd_HHMMSS>/  (see `evaluate_models`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.utils import handle_non_serializable
from rapidfuzz.distance import Levenshtein

from sft.collate import WeightedLMCollator
from sft.data import fingerprint_tokenizer, prepare_data
from sft.layout import MANIFEST, RESULTS_ROOT
from sft.lora import adapter_base, is_adapter_dir
from sft.loss import HEAD_CHUNK_TOKENS, shift_left, target_weights
from sft.manifest import git_commit, load_run_config, package_versions, read_manifest
from sft.modeling import BUILD_INFO, load_model, load_tokenizer
from sft.prompts import get_template
from sft.report import (
    BOOT_SEED, CONF_COLUMNS, DIFF_COLUMNS, N_BOOT, Row, confidence_rows, difference_rows, summary_table, write_records,
    write_summary,
)
from sft.synthetic import FAMILIES

DEMO_GROUP = "sft_demo"  # the demo's lm-eval group; its tasks are sft_demo_<family>
SHORT_GROUP = f"{DEMO_GROUP}_short"  # subgroup of the families with short answers (Family.long_output False)
LONG_GROUP = f"{DEMO_GROUP}_long"  # subgroup of the long-output copy families (Family.long_output True)
DEMO_METRICS = ("exact_match", "edit_similarity")  # every demo task's metrics, in the summaries' order
MAX_GEN_TOKS = 64  # longest demo answer is ~40 tokens; a model that never stops is cut here
BATCH_SIZE = 16  # one fixed batch size for every model (generation and held-out losses)
TASKS_DIR = "lm_eval_tasks"  # generated task configs and data, inside the result folder
UNSCALED = ("perplexity", "bits_per_byte", "bleu", "chrf", "ter")  # lm-eval metrics not in [0, 1]: kept as they are
MODES = {"generate_until": "gen"}  # OpenCompass's mode column; loglikelihood kinds are "ppl"
LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


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


@torch.no_grad()
def heldout_metrics(model, dataset, pad_token_id: int, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Response loss, perplexity and token accuracy on a tokenized split, summed over tokens."""
    collate = WeightedLMCollator(pad_token_id=pad_token_id)
    keys = ("input_ids", "labels", "loss_weights", "response_mask")
    head = model.get_output_embeddings()
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # response nll, response tokens, correct, prompt nll, prompt tokens
    for start in range(0, len(dataset), batch_size):
        cols = dataset[start:start + batch_size]
        batch = collate([{k: cols[k][i] for k in keys} for i in range(len(cols["input_ids"]))])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        # As in training: the head runs on the scored positions only, a chunk at a time, so a
        # batch of Qwen2.5 never holds its full tokens x 152K-vocabulary logits.
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                    output_hidden_states=True, logits_to_keep=1)
        masks = target_weights(batch)
        scored = (masks["response"] + masks["prompt"]) > 0
        hidden, targets = out.hidden_states[-1][scored], shift_left(batch["input_ids"])[scored]
        response = masks["response"][scored].double()
        for c in range(0, len(targets), HEAD_CHUNK_TOKENS):
            logits = head(hidden[c:c + HEAD_CHUNK_TOKENS]).float()
            y, r = targets[c:c + HEAD_CHUNK_TOKENS], response[c:c + HEAD_CHUNK_TOKENS]
            nll = (torch.logsumexp(logits, -1) - logits.gather(1, y[:, None]).squeeze(1)).double()
            ok = (logits.argmax(-1) == y).double()
            sums += torch.stack([(nll * r).sum(), r.sum(), (ok * r).sum(), (nll * (1 - r)).sum(),
                                 (1 - r).sum()]).cpu()
    r_nll, r_n, r_ok, p_nll, p_n = sums.tolist()
    loss = r_nll / r_n
    return {
        "examples": len(dataset),
        "response_tokens": int(r_n),
        "response_loss": loss,
        "response_perplexity": math.exp(min(loss, 50.0)),
        "response_token_accuracy": r_ok / r_n,
        "prompt_tokens": int(p_n),
        "prompt_loss": p_nll / p_n if p_n else None,
    }


# ---------------------------------------------------------------- the demo's lm-eval tasks


def edit_similarity(references: list[str], predictions: list[str]) -> float:
    """Character-level normalised Levenshtein similarity of a generation to its answer, in [0, 1] (1 = identical).

    The graded companion of exact match: a long answer nearly copied scores near 1 rather
    than 0. Surrounding whitespace is stripped, so only the answer's characters count. lm-eval
    calls it per sample (one reference, one prediction); summaries report 100 x the mean.
    """
    (answer,), (prediction,) = references, predictions
    return Levenshtein.normalized_similarity(prediction.strip(), answer.strip())


class _Function(str):
    """A `!function module.name` reference in a task YAML, resolved by lm-eval's loader."""


class _TaskDumper(yaml.SafeDumper):
    """YAML dumper of the task configs: safe_dump plus `!function` tags."""


_TaskDumper.add_representer(_Function, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))


def read_test_rows(path: str | Path) -> list[dict]:
    """The rows of a test JSONL file that carries a `family` per row (as the demo's test.jsonl does)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Test data {path} not found. Build the demo data with `python -m sft build-demo`, "
                         "or pass --test-data PATH.")
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows, 1) if not {"instruction", "output", "family"} <= set(r)), None)
    if bad is not None or not rows:
        raise ValueError(f"{path}: line {bad or 1} lacks instruction, output or family. The {DEMO_GROUP} tasks need "
                         "the demo's test rows; for other data pass lm-eval task names with --tasks.")
    return rows


def write_demo_tasks(test_data: str | Path, out_dir: str | Path, template: str, stop: list[str],
                     max_gen_toks: int = MAX_GEN_TOKS) -> list[str]:
    """Write one lm-eval task per family of the test rows, and their group, into out_dir; return the task names.

    Written per evaluation rather than shipped as package YAML, because the test file and the
    prompt template come from the runs being evaluated. The prompt is rendered here by
    sft.prompts, the code training used, so lm-eval reads it verbatim (`doc_to_text: prompt`)
    instead of a Jinja re-implementation of the template.
    """
    rows = read_test_rows(test_data)
    tmpl = get_template(template)
    found = list(dict.fromkeys(r["family"] for r in rows))
    families = [f for f in FAMILIES if f in found] + sorted(f for f in found if f not in FAMILIES)
    out = Path(out_dir).resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    names = []
    for family in families:
        lines = [json.dumps({"instruction": r["instruction"], "input": r.get("input") or "",
                             "prompt": tmpl.render(r["instruction"], r.get("input") or ""),
                             "answer": r.get("answer", r["output"]), "family": family}, ensure_ascii=False)
                 for r in rows if r["family"] == family]
        data = out / "data" / f"{family}.jsonl"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        name = f"{DEMO_GROUP}_{family}"
        config = {
            "task": name,
            "dataset_path": "json",  # datasets' local JSON loader: no hub access
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "answer",
            "num_fewshot": 0,
            "generation_kwargs": {"until": list(stop), "max_gen_toks": max_gen_toks, "do_sample": False},
            # Exact match on the raw generation, no stripping: emitting exactly the answer and then
            # EOS is part of what instruction tuning teaches. Edit similarity grades the same
            # generation, so a long copy that is nearly right is told apart from one that is not.
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
                            {"metric": _Function(f"{__name__}.edit_similarity"), "aggregation": "mean",
                             "higher_is_better": True}],
            "metadata": {"version": 2, "template": template,
                         "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest()[:16]},
        }
        (out / f"{name}.yaml").write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True))
        names.append(name)
    # Short- and long-output families as subgroups of the demo group: lm-eval averages a group over
    # its leaf tasks, so sft_demo stays the mean over all families. A family this code does not
    # know (an older test file) belongs to sft_demo only.
    by_length = {SHORT_GROUP: [f"{DEMO_GROUP}_{f}" for f in families if f in FAMILIES and not FAMILIES[f].long_output],
                 LONG_GROUP: [f"{DEMO_GROUP}_{f}" for f in families if f in FAMILIES and FAMILIES[f].long_output]}
    subgroups = [g for g, members in by_length.items() if members]
    for g in subgroups:
        write_group(out, g, by_length[g])
    write_group(out, DEMO_GROUP, subgroups + [f"{DEMO_GROUP}_{f}" for f in families if f not in FAMILIES])
    return names


def write_group(out: Path, name: str, members: list[str]) -> None:
    """Write the lm-eval group config <out>/<name>.yaml: the plain mean of every demo metric over its leaf tasks."""
    group = {
        "group": name,
        "task": members,
        # weight_by_size false: every family counts the same in the average (families differ by a row or two).
        "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": False} for m in DEMO_METRICS],
        "metadata": {"version": 2},
    }
    (out / f"{name}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


def task_manager(tasks: list[str], include_path: Path | None):
    """An lm-eval TaskManager that knows the requested tasks, or a ValueError naming the unknown ones."""
    local = {p.stem for p in include_path.glob("*.yaml")} if include_path else set()
    # Indexing lm-eval's ~200 built-in task folders takes seconds: only when a task needs them.
    defaults = any(t not in local for t in tasks)
    tm = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=defaults)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ValueError(f"Unknown lm-eval task(s): {', '.join(unknown)}. List the known ones with `lm-eval ls tasks`; "
                         f"the demo's tasks are {DEMO_GROUP}, {SHORT_GROUP}, {LONG_GROUP} and "
                         f"{DEMO_GROUP}_<family>.")
    return tm


def group_config(tm, name: str) -> dict:
    """The YAML config of a group (its aggregate_metric_list), or {} when it has no file of its own."""
    entry = tm.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if not path:
        return {}
    cfg = load_yaml(path, resolve_func=False)
    return cfg if cfg.get("group") == name else {}


def run_benchmarks(model, tokenizer, tasks: list[str], tm, limit: float | None, batch_size: int) -> dict:
    """lm-eval's simple_evaluate on a loaded model, with per-sample logs."""
    # lm-eval logs every task's config at INFO, for every model: keep its warnings only.
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, batch_size=batch_size,
                           log_samples=True)


# ---------------------------------------------------------------- from lm-eval results to summary rows


def short_hash(obj: Any) -> str:
    """OpenCompass-style 6-character version hash of a config."""
    return hashlib.md5(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:6]


def task_version(config: dict) -> str:
    """Hash of a task config without its machine-specific paths (config file, data file folders)."""
    cfg = json.loads(json.dumps(config, default=str))
    (cfg.get("metadata") or {}).pop("config_source", None)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        cfg["dataset_kwargs"]["data_files"] = {k: Path(v).name if isinstance(v, str) else v for k, v in files.items()}
    return short_hash(cfg)


def _leaves(name: str, subtasks: dict[str, list[str]]) -> list[str]:
    if name not in subtasks:
        return [name]
    return [leaf for child in subtasks[name] for leaf in _leaves(child, subtasks)]


def _metric_keys(entry: dict) -> list[str]:
    """The 'metric,filter' keys of a results entry (not stderrs, not counts)."""
    return [k for k, v in entry.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))]


def _item_scores(samples: list[dict], metric: str, filt: str) -> dict[Any, float] | None:
    """{doc_id: score} of one metric and filter, or None when the per-sample values are not numbers."""
    out = {}
    for s in samples:
        if s.get("filter") == filt and metric in s:
            v = s[metric]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return None
            out[s["doc_id"]] = float(v)
    return out


def summary_rows(results: dict[str, dict], samples: dict[str, dict[str, list]], requested: list[str],
                 groups: dict[str, dict]) -> list[Row]:
    """Summary rows in the order asked for: each group's members, then the group's average."""
    first = next(iter(results.values()))
    subtasks = first.get("group_subtasks", {})
    configs = first.get("configs", {})
    order: list[str] = []

    def walk(name: str) -> None:
        for child in subtasks.get(name, []):
            walk(child)
        if name not in order and name in first["results"]:
            order.append(name)

    for name in requested:
        walk(name)
    order += [n for n in first["results"] if n not in order]  # tags expand to tasks not named above

    rows = []
    for name in order:
        is_group = name in subtasks
        leaves = _leaves(name, subtasks)
        modes = {MODES.get(configs.get(leaf, {}).get("output_type"), "ppl") for leaf in leaves}
        mode = modes.pop() if len(modes) == 1 else "mixed"
        keys = list(dict.fromkeys(k for r in results.values() for k in _metric_keys(r["results"].get(name, {}))))
        agg = {a["metric"]: a for a in groups.get(name, {}).get("aggregate_metric_list") or []}
        for key in keys:
            metric, filt = key.split(",", 1)
            scale = 1.0 if any(u in metric for u in UNSCALED) else 100.0
            label = metric if filt == "none" else f"{metric}_{filt}"
            size_weighted = bool(agg.get(metric, {}).get("weight_by_size", True))
            if is_group:
                kind = "weighted_average" if size_weighted else "naive_average"
                label = kind if len(keys) == 1 else f"{kind}:{label}"
                version = short_hash({"group": groups.get(name) or name,
                                      "members": {leaf: task_version(configs.get(leaf, {})) for leaf in leaves}})
            else:
                version = task_version(configs.get(name, {}))
            scores, items = {}, {}
            for model, res in results.items():
                value = res["results"].get(name, {}).get(key)
                scores[model] = None if value is None else scale * float(value)
                per_leaf = [_item_scores(samples[model].get(leaf, []), metric, filt) for leaf in leaves]
                # Intervals only where the reported score is the mean of the item scores.
                if value is not None and all(p for p in per_leaf) and _is_mean(per_leaf, value, size_weighted):
                    items[model] = per_leaf
            rows.append(Row(name, version, label, mode, scores, items or None, size_weighted, scale, is_group))
    return rows


def _is_mean(per_leaf: list[dict], value: float, size_weighted: bool) -> bool:
    means = [sum(p.values()) / len(p) for p in per_leaf]
    sizes = [len(p) for p in per_leaf]
    est = sum(m * n for m, n in zip(means, sizes)) / sum(sizes) if size_weighted else sum(means) / len(means)
    return abs(est - float(value)) < 1e-6


def heldout_rows(heldout: dict[str, dict]) -> list[Row]:
    """Summary rows of a held-out-only evaluation: response token accuracy (0-100) and response loss (nats)."""
    models = list(heldout)
    return [Row("heldout", short_hash(metric), metric, "ppl", {m: scale * heldout[m][metric] for m in models},
                scale=scale) for metric, scale in (("response_token_accuracy", 100.0), ("response_loss", 1.0))]


# ---------------------------------------------------------------- the whole evaluation


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


def _write_jsonl(path: Path, records: list[dict]) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, default=handle_non_serializable) + "\n")


def evaluate_models(models: dict[str, str], tasks: list[str] | None = None, name: str | None = None,
                    limit: float | None = None, batch_size: int = BATCH_SIZE, out: str | Path = RESULTS_ROOT,
                    test_data: str | Path | None = None, max_gen_toks: int = MAX_GEN_TOKS, n_boot: int = N_BOOT,
                    seed: int = BOOT_SEED) -> Path:
    """Evaluate every model and write the result folder; return its path.

    <out>/<name>/<YYYYmmdd_HHMMSS>/
        summary/summary_<ts>.csv|.md|.txt   OpenCompass-style table, one column per model
        summary/differences.csv|.md         every pair a - b, paired bootstrap 95% CI
        summary/confidence.csv|.md          every model's score with its bootstrap 95% CI
        results/<model>.json                lm-eval's results (without samples)
        predictions/<model>/<task>.jsonl    lm-eval's per-sample log: prompt, generation, score
        heldout.json                        held-out response loss, perplexity, token accuracy
        settings.json                       models (paths, manifests), tasks, limit, batch size, versions
        lm_eval_tasks/                      the generated demo task configs and their data
    """

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be positive (items per task, or a share below 1), got {limit}.")
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
    if tasks is None:
        if cfg.demo is None:
            raise ValueError(f"Preset {cfg.preset!r} has no default tasks; pass lm-eval task names, "
                             "e.g. --tasks mmlu,gsm8k, or --heldout-only for the held-out metrics alone.")
        tasks = [DEMO_GROUP]
    # tasks == []: held-out metrics only (--heldout-only), no lm-eval run; they become the summary's rows.
    demo_tasks = any(t == DEMO_GROUP or t.startswith(DEMO_GROUP + "_") for t in tasks)
    if demo_tasks and test_data is None:
        if cfg.demo is None:
            raise ValueError(f"The {DEMO_GROUP} tasks need the demo's test rows: pass --test-data PATH.")
        test_data = Path(cfg.demo.dataset_dir) / "test.jsonl"
    tokenizers = {label: load_tokenizer(path) for label, path in models.items()}  # also checks every path
    warnings = base_model_warnings(models, info, tokenizers)
    for w in warnings:
        print(f"warning: {w}", flush=True)
    fingerprint = info[source]["manifest"]["eval_fingerprint"]
    heldout_split(cfg, tokenizers[source], fingerprint)  # stale data is refused before any model is loaded

    name = name or cfg.preset
    ts, run = _timestamp_dir(Path(out) / name)
    try:
        include = None
        if demo_tasks:
            stop = list(dict.fromkeys(t.eos_token for t in tokenizers.values()))  # generation stops at EOS
            include = run / TASKS_DIR
            write_demo_tasks(test_data, include, cfg.data.template, stop, max_gen_toks)
        tm = task_manager(tasks, include) if tasks else None
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)  # nothing evaluated yet: leave no empty result folder behind
        if not any(run.parent.iterdir()):
            run.parent.rmdir()
        raise

    results, samples, heldout, timings = {}, {}, {}, {}
    for label, path in models.items():
        t0 = time.perf_counter()
        tokenizer = tokenizers[label]
        model = load_model(path).to(device())
        split = heldout_split(cfg, tokenizer, fingerprint)
        heldout[label] = heldout_metrics(model, split, tokenizer.pad_token_id, batch_size)
        t1 = time.perf_counter()
        print(f"[{label}] held-out response loss {heldout[label]['response_loss']:.4f}, token accuracy "
              f"{100 * heldout[label]['response_token_accuracy']:.2f}% ({t1 - t0:.1f} s)", flush=True)
        res = run_benchmarks(model, tokenizer, tasks, tm, limit, batch_size) if tasks else {"results": {}}
        samples[label] = res.pop("samples", {})
        results[label] = res
        (run / "results").mkdir(exist_ok=True)
        (run / "results" / f"{label}.json").write_text(json.dumps(res, indent=2, default=handle_non_serializable))
        for task, recs in samples[label].items():
            _write_jsonl(run / "predictions" / label / f"{task}.jsonl", recs)
        timings[label] = {"heldout_s": round(t1 - t0, 2), "benchmarks_s": round(time.perf_counter() - t1, 2)}
        print(f"[{label}] lm-eval tasks done ({timings[label]['benchmarks_s']:.1f} s)", flush=True)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    groups = {g: group_config(tm, g) for g in next(iter(results.values())).get("group_subtasks", {})}
    labels = list(models)
    rows = summary_rows(results, samples, tasks, groups) if tasks else heldout_rows(heldout)
    write_summary(summary_table(rows, labels), run / "summary", ts)
    write_records(difference_rows(rows, labels, n_boot, seed), DIFF_COLUMNS, run / "summary" / "differences")
    write_records(confidence_rows(rows, labels, n_boot, seed), CONF_COLUMNS, run / "summary" / "confidence")
    d = cfg.data
    (run / "heldout.json").write_text(json.dumps({
        "source_run": {"model": source, "path": models[source]},
        "data": {"data": d.data, "eval_data": d.eval_data, "eval_size": d.eval_size, "split_seed": d.split_seed,
                 "template": d.template, "max_length": d.max_length, "truncation": d.truncation,
                 "eval_fingerprint": info[source]["manifest"]["eval_fingerprint"]},
        "weighting": "sums over response tokens (EOS included) / token count, over the whole split",
        "models": heldout,
    }, indent=2))
    (run / "settings.json").write_text(json.dumps({
        "name": name, "timestamp": ts, "preset": cfg.preset, "models": info, "tasks": tasks,
        "test_data": str(test_data) if test_data else None,
        "test_data_sha256": hashlib.sha256(Path(test_data).read_bytes()).hexdigest()[:16] if test_data else None,
        "limit": limit, "batch_size": batch_size,
        "max_gen_toks": max_gen_toks, "template": cfg.data.template,
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95, "interval": "percentile",
                      "groups": "stratified: items resampled within each member task, member means combined "
                                "with the group's weights (equal for naive_average)"},
        "warnings": warnings, "device": str(device()), "timings_s": timings, "versions": package_versions(),
        "git_commit": git_commit(),
    }, indent=2, default=str))
    return run

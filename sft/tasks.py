"""lm-eval tasks: the demo's own, lm-eval's task definitions on local data, and what a run of them costs.

The demo's synthetic test set becomes local lm-eval tasks, one per task family, scored by exact match
and edit similarity, with averages over the short-output, the long-output and all families. Any of
lm-eval's own tasks (gsm8k, mmlu, arc_challenge, hellaswag, ...) runs by name; where its data cannot
come from the hub (offline, or a private copy), `--task-data NAME=FOLDER` keeps lm-eval's task
definition and changes only where the rows are read from: for each task a config that `include`s
lm-eval's own YAML and reads FOLDER/<split>.jsonl (or .json, .parquet, .csv).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import yaml
from jinja2.exceptions import TemplateError
from lm_eval.api.task import ConfigurableTask
from lm_eval.defaults import DEFAULT_OTHER_SEED
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from rapidfuzz.distance import Levenshtein

from sft.chat import check_conversation
from sft.dialogues import KINDS
from sft.io import write_jsonl
from sft.prompts import get_template
from sft.synthetic import FAMILIES

DEMO_GROUP = "sft_demo"  # the demo's lm-eval group; its tasks are sft_demo_<family>
SHORT_GROUP = f"{DEMO_GROUP}_short"  # subgroup of the families with short answers (Family.long_output False)
LONG_GROUP = f"{DEMO_GROUP}_long"  # subgroup of the long-output families (Family.long_output True)
DEMO_METRICS = ("exact_match", "edit_similarity")  # every demo task's metrics, in the summaries' order
MAX_GEN_TOKS = 64  # longest demo answer is ~40 tokens; a model that never stops is cut here
LM_EVAL_MAX_GEN_TOKS = 256  # what lm-eval's HF model generates at most when a task sets no max_gen_toks
DIALOGUE_GROUP = "sft_dialogue"  # the conversational demo's group; its tasks are sft_dialogue_<kind>
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")  # where a task config names splits
LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets' local loaders


def is_demo_task(name: str) -> bool:
    """A task of the demo's generated group (its prompts already carry the training template)."""
    return name == DEMO_GROUP or name.startswith(DEMO_GROUP + "_")


def is_dialogue_task(name: str) -> bool:
    """A task of the conversational demo's generated group (sft_dialogue, sft_dialogue_<kind>)."""
    return name == DIALOGUE_GROUP or name.startswith(DIALOGUE_GROUP + "_")


# ---------------------------------------------------------------- the demo's tasks


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


def _read_jsonl(path: str | Path, what: str, build: str) -> list[dict]:
    """The rows of a test JSONL file, or a ValueError saying how to build it (`build`) when it is absent."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {path} not found. Build {build}, or pass --test-data PATH.")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _in_order(found: list[str], known) -> list[str]:
    """The names found, in the order of `known` (the generator's), then those it does not know, sorted."""
    return [k for k in known if k in found] + sorted(k for k in found if k not in known)


def _write_task(out: Path, group: str, key: str, docs: list[dict], template: str, stop: list[str],
                max_gen_toks: int, **extra) -> str:
    """Write the generation task <group>_<key>: its documents to <out>/data/<key>.jsonl and its config (with
    `extra` keys); return its name."""
    name, data = f"{group}_{key}", write_jsonl(out / "data" / f"{key}.jsonl", docs)
    config = {**demo_task_config(name, data, template, stop, max_gen_toks), **extra}
    (out / f"{name}.yaml").write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True))
    return name


def read_test_rows(path: str | Path) -> list[dict]:
    """The rows of a test JSONL file that carries a `family` per row (as the demo's test.jsonl does)."""
    rows = _read_jsonl(path, "Test data", "the demo data with `python -m sft build-demo`")
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
    families = _in_order(list(dict.fromkeys(r["family"] for r in rows)), FAMILIES)
    out = Path(out_dir).resolve()
    names = []
    for family in families:
        docs = [{"instruction": r["instruction"], "input": r.get("input") or "",
                 "prompt": tmpl.render(r["instruction"], r.get("input") or ""),
                 "answer": r.get("answer", r["output"]), "family": family} for r in rows if r["family"] == family]
        names.append(_write_task(out, DEMO_GROUP, family, docs, template, stop, max_gen_toks))
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


def demo_task_config(name: str, data: Path, template: str, stop: list[str], max_gen_toks: int) -> dict:
    """The lm-eval config of one demo family: greedy generation until EOS, exact match and edit similarity."""
    return {
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


# ---------------------------------------------------------------- the conversational demo's tasks


class DialogueTask(ConfigurableTask):
    """A generation task whose documents are conversations: the history goes to the model as chat turns.

    lm-eval builds a chat prompt from a task's few-shot examples and one question (fewshot_context); here the
    "examples" are the document's own earlier turns. Through a chat template (apply_chat_template) the history
    (a system turn, earlier user and assistant turns, the last user turn) is rendered as those messages, the way
    fewshot_as_multiturn renders few-shot turns; without one, the prompt is `doc_to_text` (the history already
    rendered in the training chat template when the task was written). The last reply is the target.
    """

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})  # TaskConfig has no class

    def fewshot_context(self, doc: dict, num_fewshot: int, system_instruction: str | None = None,
                        apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
                        chat_template=None, gen_prefix: str | None = None) -> str:
        """The prompt of one dialogue: its history through the chat template, else the pre-rendered text."""
        if not (apply_chat_template and chat_template):
            return super().fewshot_context(doc, 0, system_instruction=system_instruction, gen_prefix=gen_prefix)
        history = [{"role": m["role"], "content": m["content"]} for m in doc["history"]]
        if system_instruction and history[0]["role"] != "system":
            history.insert(0, {"role": "system", "content": system_instruction})
        return chat_template(history, add_generation_prompt=True)


def read_dialogue_rows(path: str | Path) -> list[dict]:
    """The rows of a dialogue test JSONL (sft.dialogues): a valid conversation, its kind and last reply each."""
    rows = _read_jsonl(path, "Dialogue test data", "it with `python -m sft build-demo --chat`")
    for i, r in enumerate(rows, 1):
        messages = check_conversation(r.get("messages"))[0] if {"messages", "kind"} <= set(r) else None
        if messages is None:
            raise ValueError(f"{path}: line {i} is not a dialogue with `messages` (ending on the assistant's reply) "
                             f"and `kind`. The {DIALOGUE_GROUP} tasks need sft.dialogues' test rows.")
    if not rows:
        raise ValueError(f"{path} holds no dialogue; build the data again with `python -m sft build-demo`.")
    return rows


def write_dialogue_tasks(test_data: str | Path, out_dir: str | Path, render, template: str, stop: list[str],
                         max_gen_toks: int = MAX_GEN_TOKS) -> list[str]:
    """Write one lm-eval task per dialogue kind and their group sft_dialogue; return the task names.

    render(history) -> text: the history in the training chat template (sft.tasks.render_chat of the run's
    tokenizer), saved as each document's `prompt` for models evaluated without a chat template (the base);
    template: its name, kept in the task's metadata.
    """
    rows = read_dialogue_rows(test_data)
    kinds = _in_order(list(dict.fromkeys(r["kind"] for r in rows)), KINDS)
    out = Path(out_dir).resolve()
    names = []
    for kind in kinds:
        docs = [{"history": r["messages"][:-1], "prompt": render(r["messages"][:-1]),
                 "answer": r["messages"][-1]["content"], "kind": kind} for r in rows if r["kind"] == kind]
        names.append(_write_task(out, DIALOGUE_GROUP, kind, docs, template, stop, max_gen_toks,
                                 **{"class": _Function(f"{__name__}.DialogueTask")}))
    write_group(out, DIALOGUE_GROUP, names)
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


def task_manager(tasks: list[str], include_paths: list[Path]) -> TaskManager:
    """An lm-eval TaskManager that knows the requested tasks, or a ValueError naming the unknown ones.

    Later include paths override earlier ones and lm-eval's own tasks (a local-data copy of gsm8k is named gsm8k).
    """
    local = {p.stem for path in include_paths for p in Path(path).glob("*.yaml")}
    # Indexing lm-eval's ~200 built-in task folders takes seconds: only when a task needs them.
    defaults = any(t not in local for t in tasks)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # it logs every override and config at INFO
    tm = TaskManager(include_path=[str(p) for p in include_paths] or None, include_defaults=defaults)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ValueError(f"Unknown lm-eval task(s): {', '.join(unknown)}. List the known ones with `lm-eval ls tasks`; "
                         f"the demo's tasks are {DEMO_GROUP}, {SHORT_GROUP}, {LONG_GROUP} and "
                         f"{DEMO_GROUP}_<family>; your own task folders come in with --include-path.")
    return tm


def group_config(tm, name: str) -> dict:
    """The YAML config of a group (its aggregate_metric_list), or {} when it has no file of its own."""
    entry = tm.task_index.get(name)
    path = getattr(entry, "yaml_path", None)
    if not path:
        return {}
    cfg = load_yaml(path, resolve_func=False)
    return cfg if cfg.get("group") == name else {}


# ---------------------------------------------------------------- lm-eval's own tasks on local data


def parse_task_data(pairs: list[str] | None) -> dict[str, Path]:
    """Read NAME=FOLDER pairs (a task, group or tag name and the folder of its local rows)."""
    out = {}
    for pair in pairs or []:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--task-data takes NAME=FOLDER pairs, e.g. gsm8k=data/gsm8k; got {pair!r}.")
        if not Path(folder).is_dir():
            raise ValueError(f"--task-data {pair}: {folder} is not a folder. Put the task's rows there as "
                             "<split>.jsonl (e.g. test.jsonl), or one sub-folder per task of a group.")
        out[name] = Path(folder).resolve()
    return out


def leaf_tasks(tm: TaskManager, name: str) -> list[str]:
    """The tasks a task, group or tag name stands for, read from lm-eval's index (no data is loaded)."""
    entry = tm.task_index[name]
    if entry.kind.name == "TAG":
        members = sorted(entry.tags)
    elif entry.kind.name == "GROUP":
        members = entry.cfg.get("task") or []
        if any(not isinstance(m, str) for m in members):
            raise ValueError(f"lm-eval group {name} defines tasks inline; name its tasks in --tasks instead.")
    else:
        return [name]
    return [leaf for m in members for leaf in leaf_tasks(tm, m)]


def needed_splits(cfg: dict, num_fewshot: int | None) -> tuple[str, str | None]:
    """(the split a task is scored on, the split its few-shot examples come from or None)."""
    scored = cfg.get("test_split") or cfg.get("validation_split")
    shots = cfg.get("num_fewshot") if num_fewshot is None else num_fewshot
    fewshot = (cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")) if shots else None
    return scored, fewshot


def _split_files(folder: Path, task: str, cfg: dict, num_fewshot: int | None, given: str) -> dict[str, str]:
    """{split: file} of a task's local folder, or a ValueError naming the files it needs."""
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in LOADERS} if folder.is_dir() else {}
    scored, fewshot = needed_splits(cfg, num_fewshot)
    missing = [s for s in (scored, fewshot) if s and s not in files]
    if missing:
        source = cfg.get("dataset_path") + (f" (config {cfg['dataset_name']})" if cfg.get("dataset_name") else "")
        raise ValueError(
            f"lm-eval task {task} (--task-data {given}) needs {' and '.join(f'{s}.jsonl' for s in missing)} in "
            f"{folder}: it is scored on split {scored!r}" + (f" with few-shot examples from {fewshot!r}" if fewshot
                                                             else "")
            + f". Write the rows in the schema of the task's hub dataset {source}, one JSON object per line.")
    if len({LOADERS[p.suffix] for p in files.values()}) > 1:
        raise ValueError(f"{folder} mixes file formats; keep one of .jsonl/.json, .parquet or .csv per task.")
    return {split: str(path) for split, path in files.items()}


def _task_folder(folder: Path, name: str, leaf: str, cfg: dict) -> Path:
    """A task's own folder: the given one for a task, <folder>/<task> or <folder>/<dataset_name> in a group."""
    if leaf == name:
        return folder
    for sub in (leaf, cfg.get("dataset_name")):
        if sub and (folder / sub).is_dir():
            return folder / sub
    raise ValueError(f"--task-data {name}={folder}: the group's task {leaf} has no folder {folder / leaf} "
                     f"(or {folder / str(cfg.get('dataset_name'))}). Give every task of the group its rows, or "
                     "name fewer tasks (a group of your own with --include-path).")


def write_local_tasks(tm: TaskManager, task_data: dict[str, Path], out: Path, num_fewshot: int | None) -> list[str]:
    """For every task under each NAME=FOLDER, a config in out/ that includes lm-eval's own and reads local files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, folder in task_data.items():
        if name not in tm.task_index:
            raise ValueError(f"--task-data names {name!r}, which lm-eval does not know (`lm-eval ls tasks`).")
        for leaf in leaf_tasks(tm, name):
            entry = tm.task_index[leaf]
            if entry.yaml_path is None or entry.kind.name != "TASK":
                raise ValueError(f"lm-eval task {leaf} is defined in Python, so its data location cannot be "
                                 "changed here; run it online, or pick another task.")
            files = _split_files(_task_folder(folder, name, leaf, entry.cfg), leaf, entry.cfg, num_fewshot,
                                 f"{name}={folder}")
            loader = LOADERS[Path(next(iter(files.values()))).suffix]
            config = {"include": str(entry.yaml_path), "task": leaf, "dataset_path": loader, "dataset_name": None,
                      "dataset_kwargs": {"data_files": files}}
            # A split the task names but the folder lacks (arc's train, unused at 0 shots) would fail to load.
            config |= {key: None for key in SPLIT_KEYS if entry.cfg.get(key) and entry.cfg[key] not in files}
            (out / f"{leaf}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            written.append(leaf)
    return written


def load_tasks(tm: TaskManager, tasks: list[str], task_data: dict[str, Path]) -> dict:
    """Every leaf task of the requested names, built (its data loaded) once before any model runs.

    A task whose data cannot be loaded is a ValueError naming it and how to give it local rows,
    raised before anything is written.
    """
    loaded = {}
    for name in tasks:
        for leaf in leaf_tasks(tm, name):
            if leaf in loaded:
                continue
            try:
                loaded[leaf] = tm.load([leaf])["tasks"][leaf]
            except Exception as e:  # datasets raises many kinds (ConnectionError, DatasetNotFoundError, OSError, ...)
                cfg = tm.task_index[leaf].cfg or {}
                scored, fewshot = needed_splits(cfg, None)
                how = (f"the rows under --task-data {name}={task_data[name]} did not load" if name in task_data else
                       f"offline, give it local rows: --task-data {name}=FOLDER with {scored}.jsonl"
                       + (f" and {fewshot}.jsonl" if fewshot else "")
                       + (" in one sub-folder per task of the group" if leaf != name else "")
                       + f" in the schema of {cfg.get('dataset_path')}")
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                raise ValueError(f"lm-eval task {leaf} could not load its data ({type(e).__name__}: {first}); {how}. "
                                 "Nothing was evaluated or written.") from None
    return loaded


# ---------------------------------------------------------------- what an evaluation costs


def render_chat(tokenizer):
    """The chat rendering lm-eval's HF model applies (HFLM.apply_chat_template), for a tokenizer alone."""
    def render(history: list[dict], add_generation_prompt: bool = True) -> str:
        kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt,
                  "continue_final_message": not add_generation_prompt}
        try:
            return tokenizer.apply_chat_template(history, **kwargs)
        except TemplateError:  # as HFLM does: a template without a system role gets the history without it
            return tokenizer.apply_chat_template([m for m in history if m["role"] != "system"], **kwargs)
    return render


def request_costs(task, tokenizer, chat: bool, limit: float | None, num_fewshot: int | None) -> dict:
    """One task's requests as lm-eval builds them: how many, of which kind, their tokens, the generation bound."""
    if num_fewshot is not None:
        task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)  # the few-shot draw simple_evaluate makes, for every model alike
    n = None if limit is None else int(limit) if limit >= 1 else max(1, int(limit * len(task.eval_docs)))
    task.build_all_requests(limit=n, apply_chat_template=chat, fewshot_as_multiturn=chat,
                            chat_template=render_chat(tokenizer) if chat else None)
    instances = task.instances
    kind = task.OUTPUT_TYPE
    texts = [inst.args[0] + (inst.args[1] if kind != "generate_until" else "") for inst in instances]
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    gen = (task.config.generation_kwargs or {}).get("max_gen_toks", LM_EVAL_MAX_GEN_TOKS)
    generated = len(instances) * gen if kind == "generate_until" else 0
    return {"kind": kind, "documents": len({inst.doc_id for inst in instances}), "requests": len(instances),
            "prompt_tokens": tokens, "max_generated_tokens": generated}

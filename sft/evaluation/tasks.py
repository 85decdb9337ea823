"""lm-eval tasks: task managers, lm-eval's own definitions on local data, what a run of them costs, and
`GeneratedTasks`, the form in which a study hands in tasks it writes from its own test rows.

Any of lm-eval's own tasks (gsm8k, mmlu, arc_challenge, hellaswag, ...) runs by name; where its data cannot
come from the hub (offline, or a private copy), `--task-data NAME=FOLDER` keeps lm-eval's task
definition and changes only where the rows are read from: for each task a config that `include`s
lm-eval's own YAML and reads FOLDER/<split>.jsonl (or .json, .parquet, .csv).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from jinja2.exceptions import TemplateError
from lm_eval.defaults import DEFAULT_OTHER_SEED
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from sft.data.errors import UserError

LM_EVAL_MAX_GEN_TOKS = 256  # what lm-eval's HF model generates at most when a task sets no max_gen_toks
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")  # where a task config names splits
LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets' local loaders


@dataclass(frozen=True)
class GeneratedTasks:
    """A study's own lm-eval tasks, written from its test rows for each evaluation (the studies hand theirs in).

    Evaluation knows no study: `sft.studies.tasks` describes the demo's and the dialogues' tasks with this, and
    the command line, the demo and the sweep pass them to `evaluate_models(..., generated=...)`.
    """

    group: str  # the lm-eval group; its tasks are <group>_<name>
    folder: str  # sub-folder of the result's lm_eval_tasks/ the configs are written to
    is_default: Callable[[Any], bool]  # run(config) -> evaluate this group when no --tasks are given
    test_data: Callable[[Any], Path | None]  # run(config) -> its test rows, when --test-data is not given
    write: Callable[..., list[str]]  # (test_data, out_dir, tokenizer, template, stop, max_gen_toks) -> task names
    chat_pass: bool  # also run in each model's chat template (False: its prompts already are the training template)
    more_groups: tuple[str, ...] = ()  # further lm-eval groups it writes from the same test rows (the dialogues' tool-use tasks)
    default_groups: Callable[[Any], list[str]] | None = None  # run(config) -> the groups evaluated by default; None = [group]

    def owns(self, name: str) -> bool:
        """Whether a task or group name is one of these."""
        return any(name == g or name.startswith(g + "_") for g in (self.group, *self.more_groups))

    def defaults(self, cfg) -> list[str]:
        """The groups evaluated when no --tasks are given (is_default(cfg) says whether these tasks are)."""
        return self.default_groups(cfg) if self.default_groups is not None else [self.group]


class _Function(str):
    """A `!function module.name` reference in a task YAML, resolved by lm-eval's loader."""


class _TaskDumper(yaml.SafeDumper):
    """YAML dumper of the task configs: safe_dump plus `!function` tags."""


_TaskDumper.add_representer(_Function, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))


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
        raise UserError(f"Unknown lm-eval task(s): {', '.join(unknown)}. List the known ones with `lm-eval ls tasks`; "
                         "the demo's tasks are sft_demo, sft_demo_short, sft_demo_long and sft_demo_<family>; "
                         "your own task folders come in with --include-path.")
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
            raise UserError(f"--task-data takes NAME=FOLDER pairs, e.g. gsm8k=data/gsm8k; got {pair!r}.")
        if not Path(folder).is_dir():
            raise UserError(f"--task-data {pair}: {folder} is not a folder. Put the task's rows there as "
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
            raise UserError(f"lm-eval group {name} defines tasks inline; name its tasks in --tasks instead.")
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
        raise UserError(
            f"lm-eval task {task} (--task-data {given}) needs {' and '.join(f'{s}.jsonl' for s in missing)} in "
            f"{folder}: it is scored on split {scored!r}" + (f" with few-shot examples from {fewshot!r}" if fewshot
                                                             else "")
            + f". Write the rows in the schema of the task's hub dataset {source}, one JSON object per line.")
    if len({LOADERS[p.suffix] for p in files.values()}) > 1:
        raise UserError(f"{folder} mixes file formats; keep one of .jsonl/.json, .parquet or .csv per task.")
    return {split: str(path) for split, path in files.items()}


def _task_folder(folder: Path, name: str, leaf: str, cfg: dict) -> Path:
    """A task's own folder: the given one for a task, <folder>/<task> or <folder>/<dataset_name> in a group."""
    if leaf == name:
        return folder
    for sub in (leaf, cfg.get("dataset_name")):
        if sub and (folder / sub).is_dir():
            return folder / sub
    raise UserError(f"--task-data {name}={folder}: the group's task {leaf} has no folder {folder / leaf} "
                     f"(or {folder / str(cfg.get('dataset_name'))}). Give every task of the group its rows, or "
                     "name fewer tasks (a group of your own with --include-path).")


def write_local_tasks(tm: TaskManager, task_data: dict[str, Path], out: Path, num_fewshot: int | None) -> list[str]:
    """For every task under each NAME=FOLDER, a config in out/ that includes lm-eval's own and reads local files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, folder in task_data.items():
        if name not in tm.task_index:
            raise UserError(f"--task-data names {name!r}, which lm-eval does not know (`lm-eval ls tasks`).")
        for leaf in leaf_tasks(tm, name):
            entry = tm.task_index[leaf]
            if entry.yaml_path is None or entry.kind.name != "TASK":
                raise UserError(f"lm-eval task {leaf} is defined in Python, so its data location cannot be "
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
                raise UserError(f"lm-eval task {leaf} could not load its data ({type(e).__name__}: {first}); {how}. "
                                 "Nothing was evaluated or written.") from None
    return loaded


# ---------------------------------------------------------------- what an evaluation costs


def render_chat(tokenizer):
    """The chat rendering lm-eval's HF model applies (HFLM.apply_chat_template), for a tokenizer alone; `tools` (JSON
    schemas) go to the template as apply_chat_template(..., tools=tools) passes them."""
    def render(history: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt,
                  "continue_final_message": not add_generation_prompt, **({"tools": tools} if tools else {})}
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

"""The demo's lm-eval tasks (one per family, scored by exact match and edit similarity, averaged over the short-
and long-output families) and the dialogues' multi-turn tasks (with the tool-use conversations' call and answer
tasks, sft.studies.tool_tasks), written from their test rows for each evaluation and handed to evaluation as
`GeneratedTasks` (STUDY_TASKS)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from rapidfuzz.distance import Levenshtein

from sft.core.prompts import get_template
from sft.data.conversations import check_conversation
from sft.data.errors import UserError
from sft.data.io import write_jsonl
from sft.evaluation.settings import MAX_GEN_TOKS
from sft.evaluation.tasks import GeneratedTasks, _Function, _TaskDumper, render_chat
from sft.studies.dialogue_task import DialogueTask  # noqa: F401 (their YAML names it here)
from sft.studies.dialogues import KINDS
from sft.studies.synthetic import FAMILIES
from sft.studies.tool_tasks import ANSWER_GROUP, CALL_GROUP, CALL_METRICS, tool_docs
from sft.studies.tools import TOOL_KINDS

DEMO_GROUP = "sft_demo"  # the demo's lm-eval group; its tasks are sft_demo_<family>
SHORT_GROUP = f"{DEMO_GROUP}_short"  # subgroup of the families with short answers (Family.long_output False)
LONG_GROUP = f"{DEMO_GROUP}_long"  # subgroup of the long-output families (Family.long_output True)
SEEN_GROUP = f"{DEMO_GROUP}_seen"  # the test rows about a fact a training row holds, reworded (facts: seen)
DEMO_METRICS = ("exact_match", "edit_similarity")  # every demo task's metrics, in the summaries' order
DIALOGUE_GROUP = "sft_dialogue"  # the conversational demo's group; its tasks are sft_dialogue_<kind>


def edit_similarity(references: list[str], predictions: list[str]) -> float:
    """Character-level normalised Levenshtein similarity of a generation to its answer, in [0, 1] (1 = identical).

    The graded companion of exact match: a long answer nearly copied scores near 1 rather
    than 0. Surrounding whitespace is stripped, so only the answer's characters count. lm-eval
    calls it per sample (one reference, one prediction); summaries report 100 x the mean.
    """
    (answer,), (prediction,) = references, predictions
    return Levenshtein.normalized_similarity(prediction.strip(), answer.strip())


def _read_jsonl(path: str | Path, what: str, build: str) -> list[dict]:
    """The rows of a test JSONL file, or a ValueError saying how to build it (`build`) when it is absent."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {path} not found. Build {build}, or pass --test-data PATH.")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _in_order(found: list[str], known) -> list[str]:
    """The names found, in the order of `known` (the generator's), then those it does not know, sorted."""
    return [k for k in known if k in found] + sorted(k for k in found if k not in known)


def _write_task(out: Path, group: str, key: str, docs: list[dict], template: str, stop: list[str],
                max_gen_toks: int, file: str | None = None, **extra) -> str:
    """Write the generation task <group>_<key>: its documents to <out>/data/<file or key>.jsonl and its config (with
    `extra` keys); return its name."""
    name, data = f"{group}_{key}", write_jsonl(out / "data" / f"{file or key}.jsonl", docs)
    config = {**demo_task_config(name, data, template, stop, max_gen_toks), **extra}
    (out / f"{name}.yaml").write_text(yaml.dump(config, Dumper=_TaskDumper, sort_keys=False, allow_unicode=True))
    return name


def read_test_rows(path: str | Path) -> list[dict]:
    """The rows of a test JSONL file that carries a `family` per row (as the demo's test.jsonl does)."""
    rows = _read_jsonl(path, "Test data", "the demo data with `python -m sft build-demo`")
    bad = next((i for i, r in enumerate(rows, 1) if not {"instruction", "output", "family"} <= set(r)), None)
    if bad is not None or not rows:
        raise UserError(f"{path}: line {bad or 1} lacks instruction, output or family. The {DEMO_GROUP} tasks need "
                         "the demo's test rows; for other data pass lm-eval task names with --tasks.")
    return rows


def write_demo_tasks(test_data: str | Path, out_dir: str | Path, template: str, stop: list[str],
                     max_gen_toks: int = MAX_GEN_TOKS) -> list[str]:
    """Write one lm-eval task per family of the test rows, and their group, into out_dir; return the task names.

    Written per evaluation rather than shipped as package YAML, because the test file and the
    prompt template come from the runs being evaluated. The prompt is rendered here by
    sft.core.prompts, the code training used, so lm-eval reads it verbatim (`doc_to_text: prompt`)
    instead of a Jinja re-implementation of the template.
    """
    rows = read_test_rows(test_data)
    tmpl = get_template(template)
    out = Path(out_dir).resolve()
    # The rows about facts no training row holds are the demo's test (sft_demo_<family>); those about a trained fact,
    # reworded (facts: seen), a second group of their own (sft_demo_seen_<family>). A test file of the earlier demo
    # has no `facts`: all its rows are sft_demo's.
    seen = [r for r in rows if r.get("facts") == "seen"]
    rows = [r for r in rows if r.get("facts") != "seen"]
    names = []
    seen_families = _in_order(list(dict.fromkeys(r["family"] for r in seen)), FAMILIES)
    for family in seen_families:
        docs = [{"instruction": r["instruction"], "input": r.get("input") or "",
                 "prompt": tmpl.render(r["instruction"], r.get("input") or ""),
                 "answer": r.get("answer", r["output"]), "family": family} for r in seen if r["family"] == family]
        names.append(_write_task(out, SEEN_GROUP, family, docs, template, stop, max_gen_toks, file=f"seen_{family}"))
    if seen_families:
        write_group(out, SEEN_GROUP, [f"{SEEN_GROUP}_{f}" for f in seen_families])
    families = _in_order(list(dict.fromkeys(r["family"] for r in rows)), FAMILIES)
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
    return names[len(seen_families):] + names[:len(seen_families)]


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


def is_tool_row(row: dict) -> bool:
    """Whether a conversation row is a tool-use one (sft.studies.tools: it lists `tools`)."""
    return bool(row.get("tools"))


def read_dialogue_rows(path: str | Path) -> list[dict]:
    """The rows of a dialogue test JSONL (sft.studies.dialogues, and sft.studies.tools' tool-use conversations): a
    valid conversation, its kind and last reply each."""
    rows = _read_jsonl(path, "Dialogue test data", "it with `python -m sft build-demo --chat`")
    for i, r in enumerate(rows, 1):
        messages = check_conversation(r.get("messages"))[0] if {"messages", "kind"} <= set(r) else None
        if messages is None:
            raise UserError(f"{path}: line {i} is not a dialogue with `messages` (ending on the assistant's reply) "
                             f"and `kind`. The {DIALOGUE_GROUP} tasks need sft.studies.dialogues' test rows.")
        if is_tool_row(r) and not any(m["role"] == "assistant" and m.get("tool_calls") for m in r["messages"]):
            raise UserError(f"{path}: line {i} lists tools but no assistant turn calls one; the {CALL_GROUP} tasks "
                             "need sft.studies.tools' test rows (a call, the tool's reply, the answer).")
    if not rows:
        raise UserError(f"{path} holds no dialogue; build the data again with `python -m sft build-demo`.")
    return rows


def write_dialogue_tasks(test_data: str | Path, out_dir: str | Path, render, template: str, stop: list[str],
                         max_gen_toks: int = MAX_GEN_TOKS) -> list[str]:
    """Write one lm-eval task per dialogue kind and their group sft_dialogue, and for the tool-use rows two tasks per
    kind with their groups sft_tool_call and sft_tool_answer (sft.studies.tool_tasks); return the task names.

    render(history, tools=None) -> text: the history in the training chat template (sft.evaluation.tasks.render_chat
    of the run's tokenizer), saved as each document's `prompt` for models evaluated without a chat template (the
    base); template: its name, kept in the task's metadata.
    """
    rows = read_dialogue_rows(test_data)
    dialogues, tool_rows = [r for r in rows if not is_tool_row(r)], [r for r in rows if is_tool_row(r)]
    out = Path(out_dir).resolve()
    names = []
    for kind in _in_order(list(dict.fromkeys(r["kind"] for r in dialogues)), KINDS):
        docs = [{"history": r["messages"][:-1], "prompt": render(r["messages"][:-1]),
                 "answer": r["messages"][-1]["content"], "kind": kind} for r in dialogues if r["kind"] == kind]
        names.append(_write_task(out, DIALOGUE_GROUP, kind, docs, template, stop, max_gen_toks,
                                 **{"class": _Function(f"{__name__}.DialogueTask")}))
    if names:
        write_group(out, DIALOGUE_GROUP, names)
    return names + write_tool_tasks(tool_rows, out, render, template, stop, max_gen_toks)


def write_tool_tasks(rows: list[dict], out: Path, render, template: str, stop: list[str],
                     max_gen_toks: int) -> list[str]:
    """The tool-use rows' tasks, sft_tool_call_<kind> and sft_tool_answer_<kind>, and their two groups."""
    tool_task = {"class": _Function("sft.studies.tool_tasks.ToolTask")}
    call_metrics = [{"metric": _Function(f"sft.studies.tool_tasks.{m}"), "aggregation": "mean",
                     "higher_is_better": True} for m in CALL_METRICS]
    calls, answers = [], []
    for kind in _in_order(list(dict.fromkeys(r["kind"] for r in rows)), TOOL_KINDS):
        docs = [tool_docs(r, render) for r in rows if r["kind"] == kind]
        calls.append(_write_task(out, CALL_GROUP, kind, [c for c, _ in docs], template, stop, max_gen_toks,
                                 file=f"{CALL_GROUP}_{kind}", metric_list=call_metrics, **tool_task))
        answers.append(_write_task(out, ANSWER_GROUP, kind, [a for _, a in docs], template, stop, max_gen_toks,
                                   file=f"{ANSWER_GROUP}_{kind}", **tool_task))
    if calls:
        write_group(out, CALL_GROUP, calls, CALL_METRICS)
        write_group(out, ANSWER_GROUP, answers)
    return calls + answers


def write_group(out: Path, name: str, members: list[str], metrics: tuple[str, ...] = DEMO_METRICS) -> None:
    """Write the lm-eval group config <out>/<name>.yaml: the plain mean of every metric over its leaf tasks."""
    group = {
        "group": name,
        "task": members,
        # weight_by_size false: every family counts the same in the average (families differ by a row or two).
        "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": False} for m in metrics],
        "metadata": {"version": 2},
    }
    (out / f"{name}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))


def _write_demo(test_data, out_dir, tokenizer, template, stop, max_gen_toks) -> list[str]:
    return write_demo_tasks(test_data, out_dir, template, stop, max_gen_toks)


def _write_dialogues(test_data, out_dir, tokenizer, template, stop, max_gen_toks) -> list[str]:
    # the history pre-rendered as the run was trained, for the models evaluated without a chat template
    return write_dialogue_tasks(test_data, out_dir, render_chat(tokenizer), template, stop, max_gen_toks)


DEMO_TASKS = GeneratedTasks(
    group=DEMO_GROUP, folder="demo",
    is_default=lambda cfg: cfg.demo is not None and not cfg.demo.dialogues,
    test_data=lambda cfg: Path(cfg.demo.dataset_dir) / "test.jsonl" if cfg.demo is not None else None,
    write=_write_demo, chat_pass=False,  # its prompts are rendered in the training template already
    more_groups=(SEEN_GROUP,))  # sft_demo_seen is scored when asked for (`make demo` asks: sft.studies.demo.run_demo)
def dialogue_groups(cfg) -> list[str]:
    """The groups a demo-chat run is evaluated on: sft_dialogue for its dialogues, sft_tool_call and sft_tool_answer
    for its tool-use conversations; read from its test split where it is written (a run of an earlier demo-chat
    has no tool-use rows), else from the config's sizes."""
    path = Path(cfg.demo.dialogue_dir) / "test.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        dialogues, tools = any(not is_tool_row(r) for r in rows), any(is_tool_row(r) for r in rows)
    else:
        dialogues, tools = cfg.demo.n_dialogue_test > 0, getattr(cfg.demo, "n_tool_test", 0) > 0
    return [DIALOGUE_GROUP] * dialogues + [CALL_GROUP, ANSWER_GROUP] * tools


DIALOGUE_TASKS = GeneratedTasks(
    group=DIALOGUE_GROUP, folder="dialogue",
    is_default=lambda cfg: cfg.demo is not None and cfg.demo.dialogues,
    test_data=lambda cfg: Path(cfg.demo.dialogue_dir) / "test.jsonl" if cfg.demo is not None else None,
    write=_write_dialogues, chat_pass=True, more_groups=(CALL_GROUP, ANSWER_GROUP), default_groups=dialogue_groups)
STUDY_TASKS = (DEMO_TASKS, DIALOGUE_TASKS)  # what the command line, the demo and the sweep hand to evaluate_models

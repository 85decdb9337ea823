"""Case studies: the same prompts through several models, side by side (driven by eval.py).

Each model's prompts are rendered with the template it was trained with (from its run
manifest), generated in batches, and saved as a markdown table, the raw generations (JSONL)
and the settings used (JSON) under evaluation_results/raw/case_study/ (git-ignored; `python -m sft publish`
commits the .md and .json). A conversation with tools shows them, the assistant's calls (`[call] name
{arguments}`, generated ones too) and the tools' outputs.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.tensorboard import SummaryWriter

from sft.core.chat import renderer_for
from sft.core.config import load_run_config
from sft.core.prepare import prepare_data
from sft.core.prompts import get_template, user_message
from sft.data.conversations import TOOLS_COLUMN, check_conversation, check_tools
from sft.data.errors import UserError
from sft.data.io import write_jsonl
from sft.evaluation.case_cells import escape_cell, prompt_cell, show_reply
from sft.evaluation.generate import (
    GenerationSettings,
    conversation_prompt,
    generate_ids,
    prompt_rows,
    prompt_stops,
    render_prompts,
)
from sft.evaluation.inputs import parse_models as parse_labels
from sft.evaluation.report import format_markdown
from sft.evaluation.settings import BOOT_SEED, N_BOOT
from sft.evaluation.side_effects import (
    RULE,
    Generation,
    Markers,
    model_markers,
    side_effect_notes,
    side_effect_rows,
    side_effect_table,
    stop_strings,
)
from sft.models.load import load_model
from sft.models.lora import is_adapter_dir
from sft.models.tokenizer import load_tokenizer
from sft.runs.layout import CASE_STUDY_DIR, CHECKPOINT_RE, MANIFEST, tensorboard_dir
from sft.runs.manifest import git_commit, package_versions, read_manifest

DEFAULT_TEMPLATE = "alpaca"  # for a base model when no fine-tuned run says otherwise
OUT_DIR = CASE_STUDY_DIR  # where case studies are saved, one timestamp per study
HELDOUT_PROMPTS = 8  # prompts taken from the held-out split when the runs are not the demo's


@dataclass
class ModelSpec:
    """One column of the study: a model folder, its name, and how its prompts are rendered."""
    name: str
    path: Path
    template: str = DEFAULT_TEMPLATE
    run: Path | None = None  # the fine-tuning run it comes from (a folder with run_manifest.json), if any


@dataclass
class CaseStudy:
    """Prompts, models, settings and what each model generated."""
    rows: list[dict[str, str]]
    models: list[ModelSpec]
    settings: GenerationSettings
    outputs: dict[str, list[str]] = field(default_factory=dict)  # model name -> one output per row
    prompts: dict[str, list[str]] = field(default_factory=dict)  # model name -> the rendered prompt of each row
    seconds: dict[str, float] = field(default_factory=dict)  # model name -> generation time
    generations: dict[str, list[Generation]] = field(default_factory=dict)  # model name -> raw generation per row
    markers: dict[str, Markers] = field(default_factory=dict)  # model name -> its template's markers (run_on)
    timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d_%H%M%S"))


def heldout_prompts(specs: list[ModelSpec], n: int = HELDOUT_PROMPTS) -> list[dict[str, str]]:
    """The first n held-out rows of the fine-tuned runs' own data (the split training and evaluation use)."""
    run = next((s.run for s in specs if s.run), None)
    if run is None:
        raise UserError("No model comes from a fine-tuning run (none has a run_manifest.json), so there are no "
                         "held-out rows to prompt with; pass --prompts FILE.jsonl or --prompt TEXT.")
    cfg = load_run_config(run)
    # A conversation: every turn before the last reply, which is the reference.
    return prompt_rows(prepare_data(cfg.data, load_tokenizer(run)).eval_rows, n)


def default_prompts(specs: list[ModelSpec], builtin: Callable[[], list[dict[str, str]]]
                    ) -> tuple[list[dict[str, str]], str]:
    """The demo's built-in prompts (builtin(): sft.studies.demo.builtin_prompts) for demo runs or no run at all, else
    a few held-out rows of the runs' data; (rows, source)."""
    runs = [load_run_config(s.run) for s in specs if s.run]
    if not runs or any(cfg.demo is not None for cfg in runs):
        return builtin(), "builtin"
    return heldout_prompts(specs), f"held-out rows of {runs[0].data.eval_data or runs[0].data.data}"


def render_for(spec: ModelSpec, tokenizer, rows: list[dict[str, str]]) -> list[str]:
    """A fine-tuned model's prompts through the chat template it carries (its training template); others through
    the template of `spec` (the runs' own, so that a base model sees the same prompt)."""
    if rows and "messages" in rows[0]:  # conversations: the model's own chat template, else spec.template's
        return render_prompts(spec.template, rows, tokenizer)
    if spec.run is None or not tokenizer.chat_template or spec.template != trained_template(spec.run):
        return render_prompts(spec.template, rows)
    return [tokenizer.apply_chat_template([user_message(r["instruction"], r.get("input"))],
                                          add_generation_prompt=True, tokenize=False) for r in rows]


def read_prompts(path: str | Path) -> list[dict[str, str]]:
    """Rows of a JSONL prompts file: `instruction` (required), `input` and a reference `output` (optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Prompts file {path} does not exist; pass a JSONL file with one "
                         '{"instruction": ..., "input": ...} object per line.')
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where} is not valid JSON ({e.msg}); write one JSON object per line, "
                             'e.g. {"instruction": "Add 2 and 3."}.') from None
        if not isinstance(row, dict):
            raise UserError(f"{where} is a JSON {type(row).__name__}, not an object; write it as "
                             '{"instruction": ..., "input": ...}.')
        if "messages" in row:
            rows.append(read_conversation_prompt(row, where))
            continue
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            problem = "has no 'instruction'" if instruction is None else "has an empty or non-text 'instruction'"
            raise UserError(f"{where} {problem}; every prompt needs a non-empty instruction string.")
        for key in ("input", "output"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise UserError(f"{where}: {key!r} must be a string (or left out), got {type(row[key]).__name__}.")
        rows.append({"instruction": instruction, "input": row.get("input") or "",
                     **({"output": row["output"]} if row.get("output") is not None else {})})
    if not rows:
        raise UserError(f"Prompts file {path} holds no prompts (it is empty or blank); write one JSON object "
                         "with an 'instruction' per line.")
    return rows


def read_conversation_prompt(row: dict, where: str) -> dict:
    """A prompts-file row with `messages` (system, user, assistant and tool turns, an assistant's tool calls) whose
    last turn is the user's or a tool's output, and optionally the `tools` it may call (JSON schemas)."""
    turns = row["messages"]
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}, field messages: must be a non-empty list of {{\"role\", \"content\"}} turns.")
    messages, _, fld, problem, fix = check_conversation(turns + [{"role": "assistant", "content": "(reply)"}])
    if messages is None or messages[-2]["role"] not in ("user", "tool"):
        problem, fix = ((problem, fix) if messages is None else
                        ("last turn is neither the user's nor a tool's", "end on a user turn or a tool's output"))
        raise UserError(f"{where}, field messages ({fld or 'role'}): {problem} ({fix}); a prompt conversation "
                         "ends on the turn the model answers.")
    tools, problem, fix = check_tools(row.get(TOOLS_COLUMN))
    if problem:
        raise UserError(f"{where}, field {TOOLS_COLUMN}: {problem} ({fix}).")
    output = row.get("output")
    if output is not None and not isinstance(output, str):
        raise UserError(f"{where}: 'output' must be a string (or left out), got {type(output).__name__}.")
    return conversation_prompt(messages[:-1], output, tools)


def parse_models(spec: str) -> list[tuple[str, Path]]:
    """Read `name=path,name=path` (the same syntax as `sft evaluate`) and check each folder holds a model."""
    pairs = [(name, Path(path)) for name, path in parse_labels(spec).items()]
    for name, path in pairs:
        check_model_folder(name, path)
    return pairs


def check_model_folder(name: str, path: Path) -> None:
    """A clear error for a folder that is missing or holds no saved model yet."""
    if not path.is_dir():
        raise UserError(f"Model folder {str(path)!r} (for {name!r}) does not exist; fix the path, or train the "
                         "run first with `python -m sft train`.")
    if not (path / "config.json").is_file() and not is_adapter_dir(path):
        status = read_manifest(path).get("status") if (path / MANIFEST).is_file() else None
        hint = (f"its {MANIFEST} says status {status!r}: wait for the run to finish or pass one of its "
                f"checkpoints, e.g. {path}/checkpoint-N" if status else "pass a folder written by save_pretrained")
        raise UserError(f"Model folder {str(path)!r} (for {name!r}) holds no model (no config.json, nor "
                         f"adapter_config.json); {hint}.")


def run_of(path: Path) -> Path | None:
    """The run folder (with run_manifest.json) a model folder or one of its checkpoints belongs to."""
    if (path / MANIFEST).is_file():
        return path
    if CHECKPOINT_RE.match(path.name) and (path.parent / MANIFEST).is_file():
        return path.parent
    return None


def trained_template(run: Path) -> str:
    """The prompt template a run was trained with, from its manifest."""
    manifest = read_manifest(run)
    return manifest.get("template") or manifest.get("config", {}).get("data", {}).get("template", DEFAULT_TEMPLATE)


def resolve_models(pairs: list[tuple[str, Path]], template: str | None = None) -> list[ModelSpec]:
    """Attach to each model its run and template: `template` if given, else its run's, else the runs'."""
    specs = [ModelSpec(name, path, run=run_of(path)) for name, path in pairs]
    trained = {s.name: trained_template(s.run) for s in specs if s.run}
    if template is not None:
        get_template(template)
        default = template
    elif len(set(trained.values())) > 1 and len(trained) < len(specs):
        listed = ", ".join(f"{n}: {t}" for n, t in trained.items())
        raise UserError(f"The fine-tuned runs were trained with different templates ({listed}), so a model "
                         "without a run manifest has no template to inherit; pass --template NAME.")
    else:
        default = next(iter(trained.values()), DEFAULT_TEMPLATE)
    for s in specs:
        s.template = template or trained.get(s.name, default)
        try:
            get_template(s.template)
        except UserError as e:
            raise UserError(f"{s.name} ({s.path}) was trained with template {s.template!r}, which is not "
                             f"registered here. {e}") from None
    return specs


# ---------------------------------------------------------------- generating


def run_case_study(specs: list[ModelSpec], rows: list[dict[str, str]], settings: GenerationSettings,
                   log=print) -> CaseStudy:
    """Generate every prompt with every model, loading each model once and freeing it after."""
    study = CaseStudy(rows=rows, models=specs, settings=settings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for spec in specs:
        tokenizer, model = load_tokenizer(spec.path), load_model(spec.path).to(device)
        study.prompts[spec.name] = prompts = render_for(spec, tokenizer, rows)
        start = time.perf_counter()
        stops = prompt_stops(spec.template, rows, tokenizer)  # a conversation's end-of-turn token (render_for's)
        ids = generate_ids(model, tokenizer, prompts, settings, stops)
        study.seconds[spec.name] = round(time.perf_counter() - start, 3)
        study.outputs[spec.name] = tokenizer.batch_decode(ids, skip_special_tokens=True)
        # The side effects read the raw generation: special tokens kept; fewer tokens than the limit = it stopped.
        study.generations[spec.name] = [
            Generation(p, tokenizer.decode(i, skip_special_tokens=False), len(i), len(i) < settings.max_new_tokens,
                       settings.max_new_tokens, row.get("output")) for p, i, row in zip(prompts, ids, rows)]
        chat = [(renderer_for(tokenizer, tokenizer.chat_template), stop_strings(tokenizer))] \
            if tokenizer.chat_template else []
        study.markers[spec.name] = model_markers(get_template(spec.template), chat)
        log(f"{spec.name}: {len(rows)} prompts in {study.seconds[spec.name]:.1f} s ({spec.path})")
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return study


# ---------------------------------------------------------------- outputs


def format_table(study: CaseStudy) -> str:
    """One row per prompt, one column per model (and the reference answer, when the prompts have one)."""
    has_reference = any("output" in r for r in study.rows)
    header = ["#", "prompt"] + (["reference"] if has_reference else []) + [s.name for s in study.models]
    lines = ["| " + " | ".join(escape_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(study.rows):
        cells = [str(i + 1), prompt_cell(row)] + ([show_reply(row.get("output", ""))] if has_reference else [])
        cells += [show_reply(study.outputs[s.name][i]) for s in study.models]
        lines.append("| " + " | ".join(escape_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def side_effects(study: CaseStudy) -> tuple[str, dict]:
    """The side effects of each model's generations (sft.evaluation.side_effects) with bootstrap intervals over the
    prompts and paired differences: a markdown table and what goes to the settings JSON ('' and {} without any)."""
    models = [s.name for s in study.models if s.name in study.generations]
    if not models:
        return "", {}
    generations = {m: {"case_study": dict(enumerate(study.generations[m]))} for m in models}
    markers = {m: study.markers.get(m, Markers()) for m in models}
    rows = side_effect_rows(generations, markers, ["case_study"], {}, {}, {})
    notes = side_effect_notes(generations, markers, [], {})
    table = format_markdown(side_effect_table(rows, models, N_BOOT, BOOT_SEED))
    text = (f"Side effects of generation ({len(study.rows)} prompts; % of generations, gen length in tokens; "
            f"95% bootstrap CI over the prompts):\n\n{table}" + "".join(f"\n* {n}" for n in notes))
    return text, {"rule": RULE, "notes": notes, "markers": {m: list(markers[m].lines) for m in models},
                  "rows": {r.metric: r.scores for r in rows}}


def study_markdown(study: CaseStudy) -> str:
    """The table, and below it the side effects of each model's generations (what eval.py prints and saves)."""
    side_text, _ = side_effects(study)
    return format_table(study) + (f"\n\n{side_text}" if side_text else "")


def settings_dict(study: CaseStudy, prompts_source: str) -> dict[str, Any]:
    """What was run, for the <ts>.json beside the table."""
    return {
        "timestamp": study.timestamp,
        "generation": asdict(study.settings),
        "prompts": {"source": prompts_source, "count": len(study.rows)},
        "models": [{"name": s.name, "path": str(s.path), "template": s.template,
                    "run": str(s.run) if s.run else None, "seconds": study.seconds.get(s.name)}
                   for s in study.models],
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def records(study: CaseStudy) -> list[dict[str, Any]]:
    """One raw generation per (prompt, model), with the rendered prompt and the settings."""
    settings = asdict(study.settings)
    out = []
    for spec in study.models:
        prompts = study.prompts.get(spec.name) or render_prompts(spec.template, study.rows)
        for i, row in enumerate(study.rows):
            out.append({"prompt_index": i, "instruction": row["instruction"], "input": row.get("input", ""),
                        **({"messages": row["messages"]} if "messages" in row else {}),
                        **({"tools": row["tools"]} if row.get("tools") else {}),
                        "reference": row.get("output"), "model": spec.name, "path": str(spec.path),
                        "template": spec.template, "prompt": prompts[i], "output": study.outputs[spec.name][i],
                        "settings": settings})
    return out


def save_case_study(study: CaseStudy, out_dir: str | Path = OUT_DIR, prompts_source: str = "builtin") -> dict[str, Path]:
    """Write <ts>.md (the table), <ts>.jsonl (raw generations) and <ts>.json (settings) to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem, n = study.timestamp, 1
    while any((out_dir / f"{stem}{ext}").exists() for ext in (".md", ".jsonl", ".json")):
        stem, n = f"{study.timestamp}_{n}", n + 1  # two studies in one second keep both
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "jsonl", "json")}
    _, side_info = side_effects(study)
    paths["md"].write_text(study_markdown(study) + "\n", encoding="utf-8")
    write_jsonl(paths["jsonl"], records(study))
    settings = {**settings_dict(study, prompts_source), **({"side_effects": side_info} if side_info else {})}
    paths["json"].write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return paths


def log_to_tensorboard(study: CaseStudy) -> list[Path]:
    """Add each fine-tuned model's generations as text to its run's TensorBoard folder, at its last step."""
    written = []
    for spec in study.models:
        if spec.run is None:
            continue  # a base model has no run, hence no TensorBoard folder
        try:
            folder = tensorboard_dir(load_run_config(spec.run))
        except TypeError as e:  # a manifest written by a different version of sft.core.config
            raise UserError(f"{spec.run}/{MANIFEST} does not match this version of sft ({e}), so its "
                             "TensorBoard folder is unknown; run without --tensorboard.") from None
        one = CaseStudy(rows=study.rows, models=[spec], settings=study.settings, outputs=study.outputs,
                        timestamp=study.timestamp)
        mode = "sampled" if study.settings.do_sample else "greedy"
        text = (f"case study {study.timestamp}: {mode}, max_new_tokens={study.settings.max_new_tokens}, "
                f"template {spec.template}, model {spec.path}\n\n{format_table(one)}")
        writer = SummaryWriter(log_dir=str(folder))
        writer.add_text(f"case_study/{spec.name}", text, global_step=last_step(spec))
        writer.close()
        written.append(folder)
    return written


def last_step(spec: ModelSpec) -> int:
    """The training step the model was saved at: a checkpoint's number, or the run's last logged step."""
    match = CHECKPOINT_RE.match(spec.path.name)
    if match:
        return int(match.group(1))
    history = spec.run / "log_history.json" if spec.run else None
    if history and history.is_file():
        return max((h.get("step", 0) for h in json.loads(history.read_text())), default=0)
    return 0

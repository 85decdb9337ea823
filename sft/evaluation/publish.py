"""`python -m sft publish`: what the pages cite, copied from the git-ignored evaluation_results/raw/ into the
committed evaluation_results/ (the same path without `raw/`). Studies write only ignored folders; this is the one
command that adds results to the repository.

    evaluation  raw/<name>/<ts>/ -> <name>/<ts>/: summary/ (summary, differences, confidence as csv, md, txt),
                settings.json, heldout.json, item_scores.csv, and base.json (the demo's), Comparison.png,
                Dataset_results.xlsx where `compare` wrote them; not the predictions, lm-eval's own json or the task copies
    sweep       raw/sweep-<name>/ -> sweep-<name>/: its own files (sweep.csv, differences, variants, primary, summary/,
                the plot, provenance.json: its sessions' commands, machine and wall times)
                and each pair's newest evaluation, as above
    case study  raw/case_study/<ts>.md -> case_study/<ts>.md and its settings <ts>.json; not the raw generations

Publishing again replaces the published copy. An evaluation written before item_scores.csv existed gets one from
its predictions (scores only: the side effects need the models' tokenizers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sft.data.errors import UserError
from sft.evaluation.results import (
    CHAT,
    ITEM_COLUMNS,
    item_records,
    merge_results,
    summary_rows,
    with_suffix,
)
from sft.evaluation.report import format_csv
from sft.runs.layout import COMPARISON_FILES, ITEM_SCORES, RAW_RESULTS_ROOT, published_path

SUMMARY_DIR = "summary"  # an evaluation's (or a sweep's) tables, published whole
# an evaluation's other published files; base.json: the demo base's gate figures (sft.studies.demo.base_gate)
FILES = ("settings.json", "heldout.json", "base.json", ITEM_SCORES, *COMPARISON_FILES)
CASE_STUDY_FILES = (".md", ".json")  # a case study's table and settings; its .jsonl of raw generations stays local


def publish(path: str | Path) -> Path:
    """Copy one raw evaluation, sweep or case study to its published place; return that place."""
    raw = Path(path)
    if raw.suffix == ".md" or (raw.with_suffix(".md").is_file() and not raw.is_dir()):
        return publish_case_study(raw.with_suffix(".md"))
    if not raw.is_dir():
        raise UserError(f"{raw} does not exist: pass a folder under evaluation_results/raw/ (an evaluation "
                        "<name>/<timestamp>, a sweep sweep-<name>) or a case study case_study/<timestamp>.md.")
    target = published_target(raw)
    if (raw / "settings.json").is_file():
        files = evaluation_files(raw)
    elif any(raw.glob("*.csv")) or (raw / SUMMARY_DIR).is_dir():
        files = sweep_files(raw)
    else:
        raise UserError(f"{raw} is neither an evaluation (no settings.json) nor a sweep (no sweep.csv or summary/): "
                        "pass evaluation_results/raw/<name>/<timestamp> or evaluation_results/raw/sweep-<name>.")
    if target.exists():
        shutil.rmtree(target)
    for rel, src in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, target / rel)
        else:  # the item table an older evaluation did not write, derived from its predictions
            (target / rel).write_text(src, encoding="utf-8")
    return target


def published_target(raw: Path) -> Path:
    """Where `raw` is published (sft.runs.layout.published_path); a path outside evaluation_results/raw/ is refused."""
    target = published_path(raw)
    if target is None:
        raise UserError(f"{raw} is not under {RAW_RESULTS_ROOT}/: publish copies a folder (or case study) that an "
                        f"evaluation, a sweep or eval.py wrote there, e.g. {RAW_RESULTS_ROOT}/demo/<timestamp>.")
    return target


def evaluation_files(run: Path) -> dict[str, Path | str]:
    """{relative path: source file, or the text of a derived item table} of one evaluation folder."""
    if not (run / SUMMARY_DIR).is_dir():
        raise UserError(f"{run} has no summary/: its evaluation did not finish. Evaluate again, then publish.")
    files: dict[str, Path | str] = {str(p.relative_to(run)): p for p in sorted((run / SUMMARY_DIR).iterdir())
                                    if p.is_file()}
    files.update({name: run / name for name in FILES if (run / name).is_file()})
    if ITEM_SCORES not in files:
        files[ITEM_SCORES] = format_csv([ITEM_COLUMNS, *items_from_predictions(run)])
    return files


def sweep_files(root: Path) -> dict[str, Path | str]:
    """A sweep's own files and summary/, and the newest finished evaluation of each pair."""
    files: dict[str, Path | str] = {p.name: p for p in sorted(root.iterdir()) if p.is_file() and p.suffix != ".lock"}
    files.update({f"{SUMMARY_DIR}/{p.name}": p for p in sorted((root / SUMMARY_DIR).glob("*")) if p.is_file()})
    for pair in sorted(d for d in root.iterdir() if d.is_dir() and d.name != SUMMARY_DIR):
        done = sorted(pair.glob(f"*/{SUMMARY_DIR}/summary_*.csv"))
        if done:
            run = done[-1].parents[1]
            files.update({f"{pair.name}/{run.name}/{rel}": src for rel, src in evaluation_files(run).items()})
    return files


def publish_case_study(md: Path) -> Path:
    """A case study's table and settings, beside the published evaluations."""
    if not md.is_file():
        raise UserError(f"{md} does not exist: pass a case study eval.py wrote, "
                        "evaluation_results/raw/case_study/<timestamp>.md.")
    target = published_target(md)
    target.parent.mkdir(parents=True, exist_ok=True)
    for ext in CASE_STUDY_FILES:
        if md.with_suffix(ext).is_file():
            shutil.copyfile(md.with_suffix(ext), target.with_suffix(ext))
    return target


def items_from_predictions(run: Path) -> list[list]:
    """item_scores.csv's rows of an evaluation that predates it, rebuilt as the evaluation built them: lm-eval's
    results (results/<model>[@chat].json) and per-sample logs (predictions/<model>/<task>.jsonl)."""
    settings = json.loads((run / "settings.json").read_text())
    if not (run / "predictions").is_dir():
        raise UserError(f"{run} has neither item_scores.csv nor predictions/ to derive it from: evaluate again.")
    results, samples = {}, {}
    for label in settings["models"]:
        parts = []
        for suffix in ("", CHAT):
            path = run / "results" / f"{label}{suffix}.json"
            if path.is_file():
                res = json.loads(path.read_text())
                parts.append(with_suffix(res, {}, suffix) if suffix else (res, {}))
        results[label] = merge_results(parts)[0]
        samples[label] = {p.stem: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
                          for p in sorted((run / "predictions" / label).glob("*.jsonl"))}
    rows = summary_rows(results, samples, settings.get("tasks") or [], {})
    subtasks = {g: m for r in results.values() for g, m in r.get("group_subtasks", {}).items()}
    return item_records(rows, subtasks)

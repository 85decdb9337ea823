"""`make reference-check`: the reference experiment's commands end to end, offline, on a stand-in.

`sft.studies.reference.build_reference_fixture` lays out what a user has after downloading (a tiny Qwen2.5 with
the real vocabulary at `model/qwen2.5/transformers/0.5b/1/`, GSM8K as `Dataset/alpaca_data_cleaned.json`);
`reference_check` then runs the reference commands of docs/reference.md in that folder: both notebooks with
papermill on the `qwen2.5-0.5b-alpaca` preset (overrides for steps and lengths only), `sft evaluate` (held-out
metrics alone, then lm-eval's own gsm8k, arc_challenge, hellaswag and two MMLU subjects under a size-weighted group,
reading local rows in each task's schema, raw and in each model's chat template), `sft compare`, `eval.py`,
`auto_clean.py`, and checks that every promised file is there. It sits in the command line's wing because it
drives the commands themselves (imported, not spawned).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import papermill

from sft.cli.auto_clean import main as auto_clean_main
from sft.cli.case_study import main as case_study_main
from sft.cli.main import main as sft_main
from sft.data.errors import UserError
from sft.runs.layout import CASE_STUDY_DIR, LOCAL_QWEN_DIR, RAW_RESULTS_ROOT
from sft.studies.reference import (
    BENCH_DIR,
    BENCH_TASKS,
    NOTEBOOK_OVERRIDES,
    NOTEBOOKS,
    PRESET,
    ROOT,
    build_reference_fixture,
    expected_files,
    write_benchmark_data,
)


def _run(main, args: list[str], root: Path, log) -> None:
    """One command of the chain, run in root through its own main() (the code path of the command line, without
    paying a fresh interpreter's imports for each); a non-zero exit raises."""
    t, cwd = time.perf_counter(), os.getcwd()
    os.chdir(root)
    try:
        code = main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited with code {code} (its error is printed above)")
    log(f"[reference-check] {' '.join(args[:3])} ...: {time.perf_counter() - t:.0f} s")


def reference_check(workdir: str | Path, shared: str | Path, log=print, bench_rows: int = 8) -> dict[str, object]:
    """Build the fixture in workdir and run the reference commands there, as a GPU user would; return what ran.

    bench_rows: test rows of gsm8k, arc_challenge and hellaswag (write_benchmark_data's n); the test suite passes
    fewer, as gsm8k's 256-token generations over 5-shot prompts are most of the check's time on the CPU.

    Each command runs through its own main(), the code path of `python -m sft`, `python eval.py` and
    `python auto_clean.py`, without paying a fresh interpreter's imports for each.
    """
    root = Path(workdir).resolve()
    if (root / "model").exists() or (root / "Dataset").exists():
        if not (root / ".reference-check").is_file():
            raise UserError(f"{root} already holds model/ or Dataset/ not made by reference-check: pass an empty "
                             "or new --workdir, so no real model or data is overwritten.")
        shutil.rmtree(root)  # an earlier check's folder: start clean
    root.mkdir(parents=True, exist_ok=True)
    (root / ".reference-check").write_text("written by `python -m sft reference-check`; safe to delete\n")
    t0 = time.perf_counter()
    build_reference_fixture(root, shared)
    log(f"[reference-check] fixture in {root}: {time.perf_counter() - t0:.0f} s")
    runs = {}
    for run, (notebook, w) in NOTEBOOKS.items():
        t = time.perf_counter()
        out = root / "model" / PRESET / run / notebook.replace(".ipynb", ".executed.ipynb")
        out.parent.mkdir(parents=True, exist_ok=True)
        papermill.execute_notebook(str(ROOT / notebook), str(out), cwd=str(root), kernel_name="python3",
                                   parameters={"preset": PRESET, "overrides": NOTEBOOK_OVERRIDES},
                                   progress_bar=False, log_output=False)
        runs[run] = out.parent
        log(f"[reference-check] {notebook} (w = {w:g}): {time.perf_counter() - t:.0f} s")
    models = f"base={LOCAL_QWEN_DIR},masked=model/{PRESET}/masked,unmasked=model/{PRESET}/unmasked"
    _run(sft_main, ["evaluate", "--models", models, "--heldout-only", "--name", f"{PRESET}-heldout"], root, log)
    # docs/reference.md's step 4 on lm-eval's own task definitions, reading local rows: raw prompts for the base model,
    # raw and in their training template for the fine-tuned runs.
    task_data = write_benchmark_data(root, shared, n=bench_rows)
    _run(sft_main, ["evaluate", "--models", models, "--tasks", ",".join(BENCH_TASKS),
                   "--task-data", *(f"{t}={p.relative_to(root)}" for t, p in task_data.items()),
                   "--include-path", f"{BENCH_DIR}/tasks"], root, log)
    evaluation = max((root / RAW_RESULTS_ROOT / PRESET).iterdir())  # <YYYYmmdd_HHMMSS>: the newest
    _run(sft_main, ["compare", str(evaluation)], root, log)
    _run(case_study_main, ["--models", models, "--max-new-tokens", "8"], root, log)
    case_study = max((root / CASE_STUDY_DIR).glob("*.md")).with_suffix("")
    _run(auto_clean_main, [f"model/{PRESET}/masked", "--keep-last", "1", "--keep-best", "0",
                                      "--min-age", "0"], root, log)
    missing = [str(p.relative_to(root)) for p in expected_files(root, evaluation, case_study) if not p.exists()]
    if missing:
        raise RuntimeError(f"the reference chain ran but these promised files are missing: {', '.join(missing)}")
    log(f"[reference-check] all promised files present; {time.perf_counter() - t0:.0f} s in all")
    heldout = max((root / RAW_RESULTS_ROOT / f"{PRESET}-heldout").iterdir())
    return {"root": root, "runs": runs, "evaluation": evaluation, "heldout": heldout, "case_study": case_study}


def cmd_reference_check(args: argparse.Namespace) -> int:
    """Run the reference experiment's commands on a tiny stand-in of Qwen2.5-0.5B in a scratch folder."""
    reference_check(args.workdir, args.shared)
    return 0

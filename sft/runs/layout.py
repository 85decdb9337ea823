"""Where things live: every folder the project reads or writes, named in one place.

The lowest layer of the package (it imports nothing from sft, not even the config it reads), so any module
may use it.

    model/<preset>/<run>/                        a run: checkpoint-N/, the final model, run_manifest.json
    model/qwen2.5/transformers/0.5b/1/           the reference base model, when downloaded by hand
    Dataset/                                     your instruction data; the demo writes Dataset/demo/
    tensorboard_events/<preset>/<run>_finetune_tfb/  TensorBoard events (git-ignored)
    evaluation_results/raw/<name>/<YYYYmmdd_HHMMSS>/ what an evaluation writes (git-ignored): predictions, task
                                                 copies, lm-eval's json, summaries, item_scores.csv, the plot;
                                                 sweeps under evaluation_results/raw/sweep-<name>/
    evaluation_results/raw/case_study/           eval.py's case studies (git-ignored)
    evaluation_results/<name>/<YYYYmmdd_HHMMSS>/ a published evaluation (committed; `python -m sft publish`):
                                                 the small files the pages read. Sweeps and case studies alike
    assets/                                      plots of runs published before `publish` existed

Nothing a study writes is tracked by git: `python -m sft publish <raw folder>` copies what the pages cite from
evaluation_results/raw/<path> to evaluation_results/<path> (sft.evaluation.publish).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the repository: the notebooks, eval.py, auto_clean.py, .git
MODEL_ROOT = "model"  # runs go under model/<preset>/<run>/
TENSORBOARD_ROOT = "tensorboard_events"  # TensorBoard events under tensorboard_events/<preset>/<run>_finetune_tfb/
RESULTS_ROOT = "evaluation_results"  # published (committed) evaluations: evaluation_results/<name>/<timestamp>/
RAW_RESULTS_ROOT = f"{RESULTS_ROOT}/raw"  # what evaluations write (git-ignored): raw/<name>/<timestamp>/
CASE_STUDY_DIR = f"{RAW_RESULTS_ROOT}/case_study"  # eval.py's case studies, one timestamp per study
SWEEP_PLOT = "plw_sweep.png"  # a sweep's plot, in the sweep's folder (a variant's in its own sweep folder)
SWEEP_SESSIONS = "provenance.json"  # a sweep's sessions: command, commit, machine, start, end, wall seconds (published)
ITEM_SCORES = "item_scores.csv"  # an evaluation's per-item scores: model,task,group,item,metric,score
COMPARISON_FILES = ("Comparison.png", "Dataset_results.xlsx")  # `sft compare`'s plot and spreadsheet
LOCAL_QWEN_DIR = "model/qwen2.5/transformers/0.5b/1"  # where users of the original project keep the base model
LOCAL_DATA_DIR = "Dataset"  # where users of the original project keep alpaca-cleaned
MANIFEST = "run_manifest.json"  # at the top of every run folder, beside the final model
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's folder name: checkpoint-<global step>


def run_dir(cfg) -> Path:
    """model/<preset>/<run>/ of an ExperimentConfig: checkpoints, the final model and its manifest."""
    return Path(cfg.train.model_root) / cfg.preset / cfg.train.run_name


def tensorboard_dir(cfg) -> Path:
    """tensorboard_events/<preset>/<run>_finetune_tfb/ (the original project's layout)."""
    return Path(cfg.train.tensorboard_root) / cfg.preset / f"{cfg.train.run_name}_finetune_tfb"


def sweep_run_name(name: str, pair: str) -> str:
    """sweep-<name>/<pair>: a sweep pair's run name, so its run folder is model/<preset>/sweep-<name>/<pair>/."""
    return f"sweep-{name}/{pair}"


def sweep_results_dir(name: str, root: str | Path = RAW_RESULTS_ROOT) -> Path:
    """evaluation_results/raw/sweep-<name>/: every pair's evaluations, the sweep summary, sweep.csv, the plot."""
    return Path(root) / f"sweep-{name}"


def published_path(raw: str | Path) -> Path | None:
    """evaluation_results/<path> of a folder or file under evaluation_results/raw/<path> (where publish copies it);
    None for a path outside evaluation_results/raw/."""
    parts = Path(raw).parts
    for i in range(len(parts) - 1):
        if parts[i:i + 2] == tuple(Path(RAW_RESULTS_ROOT).parts):
            return Path(*parts[:i + 1], *parts[i + 2:])
    return None


BUILD_INFO = "build_info.json"  # file in the model folder recording the config and fingerprint

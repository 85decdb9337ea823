"""Where things live: every folder the project reads or writes, named in one place.

The lowest layer of the package (it imports nothing from sft, not even the config it reads), so any module
may use it.

    model/<preset>/<run>/                        a run: checkpoint-N/, the final model, run_manifest.json
    model/qwen2.5/transformers/0.5b/1/           the reference base model, when downloaded by hand
    Dataset/                                     your instruction data; the demo writes Dataset/demo/
    tensorboard_events/<preset>/<run>_finetune_tfb/
    evaluation_results/<name>/<YYYYmmdd_HHMMSS>/ an evaluation; sweeps under evaluation_results/sweep-<name>/
    evaluation_results/case_study/               eval.py's case studies
    assets/                                      Comparison.png, Dataset_results.xlsx, plw_sweep.png
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the repository: the notebooks, eval.py, auto_clean.py, .git
MODEL_ROOT = "model"  # runs go under model/<preset>/<run>/
TENSORBOARD_ROOT = "tensorboard_events"  # TensorBoard events under tensorboard_events/<preset>/<run>_finetune_tfb/
RESULTS_ROOT = "evaluation_results"  # evaluations under evaluation_results/<name>/<timestamp>/
CASE_STUDY_DIR = f"{RESULTS_ROOT}/case_study"  # eval.py's case studies, one timestamp per study
ASSETS_DIR = "assets"  # the comparison plot and spreadsheet, the sweep plot
DEMO_CHAT_ASSETS_DIR = f"{ASSETS_DIR}/demo-chat"  # the conversational demo's plot and spreadsheet, apart from the main demo's
SWEEP_PLOT = f"{ASSETS_DIR}/plw_sweep.png"  # the sweep's plot
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


def sweep_results_dir(name: str, root: str | Path = RESULTS_ROOT) -> Path:
    """evaluation_results/sweep-<name>/: every pair's evaluations, the sweep summary and sweep.csv."""
    return Path(root) / f"sweep-{name}"
BUILD_INFO = "build_info.json"  # file in the model folder recording the config and fingerprint

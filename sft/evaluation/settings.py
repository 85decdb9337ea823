"""Evaluation's settings: what `sft evaluate` runs (EvalConfig), how text is decoded (GenerationSettings), and
which result tables `sft pages` writes (add_page_arguments).

Kept apart from the code that runs them, which imports torch and lm-eval: the command line builds its flags and
help from these defaults without paying for those imports.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from sft.data.errors import UserError
from sft.runs.layout import RAW_RESULTS_ROOT

BATCH_SIZE = 16  # one fixed batch size for every model (generation and held-out losses)
MAX_GEN_TOKS = 64  # longest demo answer is ~40 tokens; a model that never stops is cut here
N_BOOT = 10_000  # bootstrap resamples per interval
BOOT_SEED = 0  # numpy seed of every bootstrap: the same items are drawn for every pair of models


FORMATS = ("auto", "raw", "chat", "both")  # --prompt-format choices (see EvalConfig.prompt_format)


@dataclass
class EvalConfig:
    """What `sft evaluate` runs, and where its results go."""

    tasks: list[str] | None = None  # lm-eval tasks or groups; None = the demo's sft_demo (demo-chat: sft_dialogue); [] = held-out metrics only
    name: str | None = None  # results go to <out>/<name>/<timestamp>/ (None = the runs' preset)
    limit: float | None = None  # items per task (a number below 1 is a share), for quick checks
    batch_size: int = BATCH_SIZE  # one fixed batch size for every model
    out: str = RAW_RESULTS_ROOT  # root of the result folders (git-ignored; `python -m sft publish` commits one)
    test_data: str | None = None  # test JSONL of the sft_demo / sft_dialogue tasks (None = the demo's test.jsonl / its dialogues')
    max_gen_toks: int = MAX_GEN_TOKS  # tokens generated per answer at most, in the demo's tasks
    # auto: base models the raw prompt, fine-tuned runs both the raw prompt and their chat template (the training
    # template); raw / chat / both: every model so (chat needs a chat template in the model's tokenizer). The demo's
    # own tasks already render the training template, so they run raw only.
    prompt_format: str = "auto"
    task_data: list[str] = field(default_factory=list)  # NAME=FOLDER: lm-eval's task NAME reads its rows from FOLDER
    include_path: list[str] = field(default_factory=list)  # folders of your own lm-eval task or group YAMLs
    num_fewshot: int | None = None  # few-shot examples per prompt (None = each task's own default)
    # --dry-run's time estimate assumes these throughputs (not measured here: set your hardware's).
    assume_prompt_tokens_per_s: float = 20_000.0  # prompt and continuation tokens scored per second
    assume_generated_tokens_per_s: float = 500.0  # tokens generated per second, over a batch
    n_boot: int = N_BOOT  # bootstrap resamples per interval
    seed: int = BOOT_SEED  # bootstrap seed

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.limit is not None and self.limit <= 0:
            raise UserError(f"--limit must be positive (items per task, or a share below 1), got {self.limit}.")
        if self.limit is not None and self.limit >= 1:
            self.limit = int(self.limit)  # a count of items, as lm-eval expects
        if self.prompt_format not in FORMATS:
            raise UserError(f"--prompt-format must be one of {', '.join(FORMATS)}, got {self.prompt_format!r}.")


@dataclass
class GenerationSettings:
    """Decoding settings, saved with every case study."""

    max_new_tokens: int = 64  # tokens generated per prompt at most
    do_sample: bool = False  # greedy by default: the same output every time
    temperature: float = 1.0  # only with do_sample
    top_p: float = 1.0  # only with do_sample
    seed: int = 0  # only with do_sample
    batch_size: int = 64  # prompts generating at once (bigger is faster while memory lasts; lower it if short)

    def __post_init__(self) -> None:
        """Reject settings generate() would fail on later, with the fix in the message."""
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.do_sample and self.temperature <= 0:
            raise UserError(f"temperature must be > 0 when sampling, got {self.temperature}; "
                             "for deterministic output leave sampling off (greedy).")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")


TABLES = ("groups", "tasks", "differences", "across", "heldout", "side-effects", "sweep", "sweep-differences", "seeds",
          "variants", "primary", "provenance", "bases", "prompt-loss", "gate")


def add_page_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `python -m sft pages` (and of every marker's command)."""
    p.add_argument("table", nargs="?", choices=TABLES, help="print this table (none: rewrite every page's blocks)")
    p.add_argument("source", nargs="?",
                   help="a published evaluation_results/<name>/<timestamp> folder, or a sweep's folder")
    p.add_argument("--pair", action="append", default=[], metavar="A,B",
                   help="a difference a - b: two model labels, or two weights of a sweep (repeatable)")
    p.add_argument("--also", action="append", default=[], metavar="RESULT_DIR",
                   help="across: a further evaluation beside SOURCE (repeatable)")
    p.add_argument("--group", help="the group of `tasks` and `differences`, e.g. sft_demo_short")
    p.add_argument("--datasets", help="comma-separated group rows to show (default: every group)")
    p.add_argument("--chat", action="store_true", help="each model's @chat row where it has one (conversations)")
    p.add_argument("--intervals", action="store_true", help="each score with its 95%% bootstrap interval")
    p.add_argument("--roles", action="store_true", help="heldout: the loss of each role (conversations)")
    p.add_argument("--metrics", help="side-effects: comma-separated side effects to show (default: all); sweep, "
                                     "sweep-differences: these side effects instead of the scores")
    p.add_argument("--target-difference", type=float, action="append", default=[], metavar="D",
                   help="seeds: also the seeds a difference of D points needs (repeatable)")
    p.add_argument("--endpoints", metavar="DATASET:METRIC,...",
                   help="bases: the endpoints compared (default: the first sweep's declared ones, primary.json)")
    p.add_argument("--plot", metavar="PATH", help="bases: also draw the endpoints against w, a band per sweep, to PATH "
                                                  "(a png under assets/); never from a page's marker")
    p.add_argument("--check", action="store_true", help="rewrite nothing; list the pages whose blocks differ")
    p.add_argument("--root", default=".", help="the repository whose README.md and docs/*.md are rewritten")

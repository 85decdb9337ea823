"""DataConfig: where the rows come from and how they become token sequences (the `data` section of a config)."""

from __future__ import annotations

from dataclasses import dataclass, field

PROMPT_TAIL_TOKENS = 16  # a trimmed prompt keeps its last tokens, so "### Response:" stays next to the response


@dataclass
class DataConfig:
    """Where the rows come from and how they become weighted token sequences."""

    data: str = "Dataset/demo/train.jsonl"  # a .json/.jsonl/.parquet/.csv file, a folder of them, or a hub dataset id
    eval_data: str | None = None  # an explicit held-out file; None = a seeded split of `data` (setting data without eval_data drops a preset's)
    eval_size: float = 0.05  # held-out share of `data` (< 1) or number of rows (>= 1), when eval_data is None
    split_seed: int = 42  # the held-out split is a function of (data, split_seed) only
    column_map: dict[str, str] = field(default_factory=dict)  # your column -> instruction | input | output, e.g. {"my_col": "output"} (--column-map my_col=output)
    on_bad_rows: str = "error"  # "error": stop at the first bad row; "skip": drop bad rows, count them by reason
    template: str = "alpaca"  # prompt template name (sft.core.prompts)
    chat_template: str = "auto"  # conversations: "auto" = the tokenizer's own chat template, else `template` as one; "tokenizer"; or a template name
    train_on: str = "all"  # conversations: "all" assistant turns weigh 1, or only the "last" (earlier ones weigh prompt_loss_weight)
    max_length: int = 512  # tokens per example, prompt + response + EOS
    prompt_loss_weight: float = 0.0  # w: 0 = masked (response only), 1 = unmasked (whole sequence)
    truncation: str = "trim"  # "trim": keep the response, cut the prompt's middle (conversations: drop earlier turns first); "drop": drop over-long examples
    max_rows: int | None = None  # use only the first N valid rows (quick experiments); None = all
    cache_dir: str = ".cache/sft"  # tokenized datasets are cached here, keyed by data, tokenizer and settings

    def __post_init__(self) -> None:
        if not 0.0 <= self.prompt_loss_weight <= 1.0:
            raise ValueError(
                f"prompt_loss_weight must be in [0, 1], got {self.prompt_loss_weight}: "
                "0 trains on the response only (masked), 1 on the whole sequence (unmasked)."
            )
        if self.on_bad_rows not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {self.on_bad_rows!r}.")
        if self.train_on not in ("all", "last"):
            raise ValueError(f"train_on must be 'all' or 'last' (assistant turns trained), got {self.train_on!r}.")
        if self.truncation not in ("trim", "drop"):
            raise ValueError(f"truncation must be 'trim' or 'drop', got {self.truncation!r}.")
        if self.max_length < 2 * PROMPT_TAIL_TOKENS:
            raise ValueError(f"max_length must be at least {2 * PROMPT_TAIL_TOKENS}, got {self.max_length}.")
        if self.eval_size <= 0:
            raise ValueError(f"eval_size must be > 0 (a share < 1 or a row count), got {self.eval_size}.")

"""DataConfig: where the rows come from and how they become token sequences (the `data` section of a config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sft.data.errors import UserError
from sft.data.mixture import is_mixture, parse_mixture
from sft.data.weights import WeightSpec, parse_weight_rules

PROMPT_TAIL_TOKENS = 16  # a trimmed prompt keeps its last tokens, so "### Response:" stays next to the response


@dataclass
class DataConfig:
    """Where the rows come from and how they become weighted token sequences."""

    data: str = "Dataset/demo/train.jsonl"  # a .json/.jsonl/.parquet/.csv file, a folder of them, a hub dataset id, or a mixture: a.jsonl:0.7,b.jsonl:0.3 or mix.yaml (a list of {path, ratio, role_weights, name}; ratios are shares of the training examples)
    eval_data: str | None = None  # an explicit held-out file; None = a seeded split of `data` (setting data without eval_data drops a preset's)
    eval_size: float = 0.05  # held-out share of `data` (< 1) or number of rows (>= 1), when eval_data is None
    split_seed: int = 42  # the held-out split is a function of (data, split_seed) only
    column_map: dict[str, str] = field(default_factory=dict)  # your column -> instruction | input | output, e.g. {"my_col": "output"} (--column-map my_col=output)
    on_bad_rows: str = "error"  # "error": stop at the first bad row; "skip": drop bad rows, count them by reason
    template: str = "alpaca"  # prompt template name (sft.core.prompts)
    chat_template: str = "auto"  # conversations: "auto" = the tokenizer's own chat template, else `template` as one; "tokenizer"; or a template name
    train_on: str = WeightSpec.train_on  # conversations: "all" assistant turns weigh 1, or only the "last" (earlier ones weigh prompt_loss_weight); a turn's tool calls and reasoning go with it
    max_length: int = 512  # tokens per example, prompt + response + EOS
    prompt_loss_weight: float = WeightSpec.prompt_loss_weight  # w: 0 = masked (response only), 1 = unmasked (whole sequence); every role outside the reply (template, system, user, tool_output) weighs w unless role_weights names it
    role_weights: dict[str, float] = field(default_factory=dict)  # a weight per role (template, system, user, assistant, tool_call, tool_output, reasoning), overriding its default for the roles named (tool_call and reasoning default to the assistant's weight), e.g. tool_output=0,reasoning=0.5
    prompt_loss_weight_end: float | None = WeightSpec.prompt_loss_weight_end  # a schedule: w ramps linearly from prompt_loss_weight to this over the run's optimizer steps; None = constant
    end_of_turn: str = WeightSpec.end_of_turn  # the token that closes each reply (<|im_end|>, EOS): "turn" weighs it as its reply, "last" only the last reply's (the others 0), "none" 0
    empty_reasoning: str = WeightSpec.empty_reasoning  # an empty <think></think> block leading a reply: "ignore" gives it weight 0 (ms-swift's ignore_empty_think), "train" weighs it as reasoning
    weight_rules: str = ""  # conversations: "ROLE:PATTERN=WEIGHT;..." multiplies the weight of the text matching a literal PATTERN or a /regular expression/ within that role's messages (e.g. "assistant:/I think[^.]*[.]/=0"); acts at tokenization (part of the cache key); a config file may give a list of {role, literal or regex, weight}
    reasoning_history: str = "keep"  # conversations: "drop" removes the reasoning of every assistant turn before the last user turn from the rendered text, as Qwen3-style templates do (part of the cache key: the data is tokenized anew); "keep" renders it
    loss_normalizer: str = WeightSpec.loss_normalizer  # sum(w * nll) divided by "weight_sum" (the sum of weights), "response_tokens" (trained assistant tokens, ms-swift) or "weighted_tokens" (tokens of weight > 0, TRL)
    truncation: str = "trim"  # "trim": keep the response, cut the prompt's middle (conversations: drop earlier turns first); "drop": drop over-long examples
    max_rows: int | None = None  # use only the first N valid rows (quick experiments); None = all
    cache_dir: str = ".cache/sft"  # tokenized datasets are cached here, keyed by data, tokenizer and settings

    def weight_spec(self) -> WeightSpec:
        """The settings that turn roles into loss weights (validated there): applied at batch time, never cached."""
        return WeightSpec(prompt_loss_weight=self.prompt_loss_weight, role_weights=self.role_weights,
                          train_on=self.train_on, prompt_loss_weight_end=self.prompt_loss_weight_end,
                          loss_normalizer=self.loss_normalizer, end_of_turn=self.end_of_turn,
                          empty_reasoning=self.empty_reasoning)

    def __post_init__(self) -> None:
        self.role_weights = self.weight_spec().role_weights  # checked and parsed ("template=0,user=0.5" too)
        if self.on_bad_rows not in ("error", "skip"):
            raise UserError(f"on_bad_rows must be 'error' or 'skip', got {self.on_bad_rows!r}.")
        parse_weight_rules(self.weight_rules)  # checked up front: a bad rule is an error before any tokenization
        if is_mixture(self.data):  # a bad ratio or a missing source is an error before a tokenizer or model loads
            parse_mixture(self.data)
        if self.reasoning_history not in ("keep", "drop"):
            raise UserError(f"--reasoning-history must be keep or drop, got {self.reasoning_history!r}: drop removes "
                            "earlier assistant turns' reasoning from the rendered conversation (Qwen3-style), keep "
                            "renders it (the default).")
        if self.truncation not in ("trim", "drop"):
            raise UserError(f"truncation must be 'trim' or 'drop', got {self.truncation!r}.")
        if self.max_length < 2 * PROMPT_TAIL_TOKENS:
            raise UserError(f"max_length must be at least {2 * PROMPT_TAIL_TOKENS}, got {self.max_length}.")
        if self.eval_size <= 0:
            raise UserError(f"eval_size must be > 0 (a share < 1 or a row count), got {self.eval_size}.")

"""The weight spec: how the roles tokenization recorded become per-token loss weights, at batch time.

Tokenization stores what each token is (its role code, turn, and the weight its message carried in the data);
nothing here depends on a tokenizer or a model. `WeightSpec` holds every setting that turns those into weights:
the prompt-loss weight `w` (every role outside the assistant's reply: template, system, user, tool_output),
`role_weights` (a weight per role, overriding the default of the roles named), `train_on` (every assistant turn or
the last; an assistant turn's tool calls and reasoning go with it), a linear schedule of `w` over the optimizer steps,
and the loss normaliser. Its defaults are the only ones: `DataConfig`'s fields point at them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

from sft.data.conversations import ASSISTANT, REASONING, REPLY_ROLES, ROLE_NAMES, TEMPLATE, TEXT, TOOL_CALL
from sft.data.errors import UserError

NORMALIZERS = ("weight_sum", "response_tokens", "weighted_tokens")
END_OF_TURN = ("turn", "last", "none")  # the token closing each reply: weighs as its reply, only the last reply's, never
EMPTY_REASONING_MODES = ("ignore", "train")  # an empty <think></think> block: weight 0 (ms-swift), or as reasoning
SAMPLE_WEIGHT = "sample_weight"  # a row's own weight (a number >= 0, 1 where null): multiplies every token's weight
CLOSING, EMPTY_REASONING = 1, 2  # the bits of the cached `marks` column (sft.core.tokenize.token_marks)
UNTRAINED = len(ROLE_NAMES)  # the table slot of a reply token outside the loss (train_on="last"): weighs w


@dataclass
class WeightSpec:
    """Everything that turns roles into loss weights; built from a DataConfig by `DataConfig.weight_spec()`."""

    prompt_loss_weight: float = 0.0
    role_weights: dict[str, float] = field(default_factory=dict)
    train_on: str = "all"
    prompt_loss_weight_end: float | None = None
    loss_normalizer: str = "weight_sum"
    end_of_turn: str = "turn"
    empty_reasoning: str = "ignore"
    # A mixture's sources, each with the role weights it overrides (sft.data.mixture): () = one table for every row
    source_role_weights: tuple[dict[str, float], ...] = ()

    def __post_init__(self) -> None:
        self.role_weights = parse_role_weights(self.role_weights)
        self.source_role_weights = tuple(parse_role_weights(r) for r in self.source_role_weights)
        if not _finite(self.prompt_loss_weight) or not 0.0 <= float(self.prompt_loss_weight) <= 1.0:
            raise UserError(
                f"prompt_loss_weight must be in [0, 1], got {self.prompt_loss_weight}: "
                "0 trains on the response only (masked), 1 on the whole sequence (unmasked).")
        end = self.prompt_loss_weight_end
        if end is not None and (not _finite(end) or not 0.0 <= float(end) <= 1.0):
            raise UserError(f"--prompt-loss-weight-end must be in [0, 1], got {end}: the prompt weight ramps "
                             "linearly from --prompt-loss-weight to it over the run's optimizer steps; omit it "
                             "for a constant weight.")
        if self.train_on not in ("all", "last"):
            raise UserError(f"train_on must be 'all' or 'last' (assistant turns trained), got {self.train_on!r}.")
        if self.end_of_turn not in END_OF_TURN:
            raise UserError(f"--end-of-turn must be one of {', '.join(END_OF_TURN)}, got {self.end_of_turn!r}: turn "
                            "weighs the token that closes a reply (<|im_end|>, EOS) as its reply (the default), last "
                            "trains only the last reply's, none trains no reply's (weight 0).")
        if self.empty_reasoning not in EMPTY_REASONING_MODES:
            raise UserError(f"--empty-reasoning must be ignore or train, got {self.empty_reasoning!r}: ignore gives an "
                            "empty <think></think> block weight 0 (the default), train weighs it as reasoning.")
        if self.loss_normalizer not in NORMALIZERS:
            raise UserError(f"--loss-normalizer must be one of {', '.join(NORMALIZERS)}, got "
                             f"{self.loss_normalizer!r}: weight_sum divides sum(w * nll) by the sum of the weights "
                             "(the default), response_tokens by the trained assistant tokens (ms-swift), "
                             "weighted_tokens by the tokens of non-zero weight (TRL).")

    def prompt_weight_at(self, step: int, total_steps: int) -> float:
        """w at optimizer step `step` (0-based) of `total_steps`: constant, or the linear ramp to
        prompt_loss_weight_end, which the last step reaches exactly."""
        if self.prompt_loss_weight_end is None or total_steps <= 1:
            return float(self.prompt_loss_weight if self.prompt_loss_weight_end is None or step <= 0
                         else self.prompt_loss_weight_end)
        frac = min(max(step, 0), total_steps - 1) / (total_steps - 1)
        return float(self.prompt_loss_weight + (self.prompt_loss_weight_end - self.prompt_loss_weight) * frac)

    def table(self, w: float | None = None) -> list[float]:
        """The weight of each role code (ROLE_NAMES), then of an untrained reply token (slot UNTRAINED), at the
        prompt weight w (default: prompt_loss_weight). One definition, used by the loss and by every report.

        Defaults, as the peers train agent data: the assistant 1, its tool calls and reasoning like the assistant
        (its weight), everything else w (the tool's output weighs like the prompt)."""
        w = float(self.prompt_loss_weight if w is None else w)
        out = [float(self.role_weights.get(name, w)) for name in ROLE_NAMES]
        out[ASSISTANT] = float(self.role_weights.get("assistant", 1.0))
        for code in (TOOL_CALL, REASONING):
            out[code] = float(self.role_weights.get(ROLE_NAMES[code], out[ASSISTANT]))
        out[TEXT] = 1.0  # plain text has no prompt: every token is the target, whatever w
        return out + [w]

    def for_source(self, k: int) -> "WeightSpec":
        """The spec of a mixture's source k: the run's, with the role weights that source gives over the run's."""
        return replace(self, role_weights={**self.role_weights, **self.source_role_weights[k]}, source_role_weights=())

    def tables(self, w: float | None = None) -> list[list[float]] | list[float]:
        """table(w), or, where the sources of a mixture give role weights of their own, one table per source and the
        run's own last (for examples of no source, such as an explicit eval_data): [S + 1][codes]."""
        if not self.source_role_weights:
            return self.table(w)
        return [self.for_source(k).table(w) for k in range(len(self.source_role_weights))] + [self.table(w)]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def nonnegative(value) -> float | None:
    """A weight or ratio as given (a number or its text) as a float >= 0, or None where it is not one (a bool,
    NaN, inf, a negative number, anything float() refuses): the callers raise, naming where it was given."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if isinstance(value, bool) or not math.isfinite(x) or x < 0 else x


def parse_role_weights(value) -> dict[str, float]:
    """{role: weight} from a dict, a JSON-less "template=0,system=0,user=0.5" string, or None; an unknown role, a
    value that is not a number, below 0 or NaN is a ValueError naming the flag and the roles."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        pairs = {}
        for part in value.split(","):
            name, sep, num = part.partition("=")
            if not sep:
                raise UserError(f"--role-weights: {part!r} is not ROLE=WEIGHT; write e.g. template=0,system=0,user=0.5 "
                                 f"(roles: {', '.join(ROLE_NAMES)}).")
            pairs[name.strip()] = num.strip()
        value = pairs
    if not isinstance(value, dict):
        raise UserError(f"--role-weights must be ROLE=WEIGHT pairs or a dict, got {type(value).__name__}.")
    out = {}
    for name, num in value.items():
        if name == ROLE_NAMES[TEXT]:
            raise UserError("--role-weights: plain text (role text) always weighs 1, as every token of a "
                             "{\"text\": ...} row is a target; drop text=... (train instruction rows or "
                             "conversations to weigh a prompt).")
        if name not in ROLE_NAMES:
            raise UserError(f"--role-weights: unknown role {name!r}; the roles are {', '.join(ROLE_NAMES)} "
                             "(e.g. --role-weights template=0,system=0,user=0.5).")
        x = nonnegative(num)
        if x is None:
            raise UserError(f"--role-weights: the weight of {name} must be a number >= 0, got {num!r}; e.g. "
                             f"{name}=0.5.")
        out[name] = x
    return out


def trained_mask(roles: np.ndarray, turns: np.ndarray, train_on: str) -> np.ndarray:
    """The reply tokens in the loss (an assistant turn's text, tool calls and reasoning): every assistant turn's,
    or the last turn's with train_on="last"."""
    trained = np.isin(roles, REPLY_ROLES)
    if train_on == "last" and trained.any():
        trained &= turns == turns[trained].max()
    return trained


def static_columns(roles, turns, message_weights, train_on: str, marks=None, end_of_turn: str = "turn",
                   empty_reasoning: str = "ignore") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What does not change during a run, per token: (index into WeightSpec.table int8, scale float32, response
    mask bool). The index is the role code, a reply token outside the loss (train_on="last") moved to slot
    UNTRAINED; the scale is the message's own weight from the data (1 on template tokens, whose weight is their
    role's alone), 0 on a reply's closing token that end_of_turn leaves out and on an empty reasoning block unless
    empty_reasoning="train" (marks: the cached bits, CLOSING and EMPTY_REASONING); the response mask marks the trained
    reply tokens of non-zero scale."""
    roles, turns = np.asarray(roles), np.asarray(turns)
    msg = np.asarray(message_weights, dtype=np.float32)
    trained = trained_mask(roles, turns, train_on)
    codes = np.where(np.isin(roles, REPLY_ROLES) & ~trained, UNTRAINED, roles).astype(np.int8)
    scale = np.where(roles == TEMPLATE, np.float32(1.0), msg).astype(np.float32)
    if marks is not None and (end_of_turn != "turn" or empty_reasoning == "ignore"):
        marks = np.asarray(marks)
        dropped = (marks & EMPTY_REASONING).astype(bool) if empty_reasoning == "ignore" else np.zeros(len(marks), bool)
        closing = (marks & CLOSING).astype(bool)
        if end_of_turn == "last" and closing.any():
            reply = np.isin(roles, REPLY_ROLES)
            closing &= turns != turns[reply].max()  # the last reply's closing token keeps its weight
        if end_of_turn != "turn":
            dropped |= closing
        scale = np.where(dropped, np.float32(0.0), scale)
    return codes, scale, trained & (scale > 0) & (msg > 0)



def check_sample_weight(value, from_text: bool, on_bad_rows: str = "error") -> tuple[float | None, str]:
    """(weight, "") for a row's sample_weight cell (1.0 where null or, in a CSV, empty), else (None, problem): a
    number >= 0 multiplies every token's weight of the row; the problem says how to fix it (short under skip)."""
    if from_text and isinstance(value, str):  # a CSV cell is text
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            pass
    if value is None or (_finite(value) and value >= 0):
        return (1.0 if value is None else float(value)), ""
    problem = "is not a valid sample weight"
    return None, problem if on_bad_rows == "skip" else (
        f"{problem} (got {value!r:.40}; it must be a number >= 0: it multiplies every token's weight of this row, "
        "1 keeps it as it is, 0 leaves it out)")


RULE_ROLES = ("system", "user", "assistant", "tool")  # the message roles a weight rule may name


@dataclass(frozen=True)
class WeightRule:
    """A weight for the text that matches a literal string or a regular expression within the messages of one role
    (ms-swift's loss_scale rules): the matched characters' weight is multiplied by `weight`."""

    role: str
    pattern: str
    regex: bool
    weight: float

    def finditer(self, text: str):
        """(start, end) of every match in text."""
        found = re.finditer(self.pattern if self.regex else re.escape(self.pattern), text)
        return ((m.start(), m.end()) for m in found if m.end() > m.start())


def parse_weight_rules(value) -> tuple[WeightRule, ...]:
    """Rules from "ROLE:PATTERN=WEIGHT;..." (PATTERN a literal, or /a regular expression/; split at the first ':' and
    the last '='), a list of {"role", "literal" or "regex", "weight"} (a config file), or None/"" (none). A bad rule
    is a UserError naming it and the fix."""
    if value is None or value == "" or value == []:
        return ()
    example = "e.g. --weight-rules 'assistant:/I think[^.]*[.]/=0;user:Note:=0'"
    items = []
    if isinstance(value, str):
        for part in (p for p in value.split(";") if p.strip()):
            role, sep, rest = part.partition(":")
            pattern, eq, weight = rest.rpartition("=")
            if not sep or not eq or not pattern:
                raise UserError(f"--weight-rules: {part!r} is not ROLE:PATTERN=WEIGHT; {example} (a /pattern/ is a "
                                "regular expression, anything else a literal string).")
            regex = len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/")
            items.append({"role": role.strip(), ("regex" if regex else "literal"): pattern[1:-1] if regex else pattern,
                          "weight": weight.strip()})
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise UserError(f"--weight-rules must be ROLE:PATTERN=WEIGHT rules or a list of them, got "
                        f"{type(value).__name__}; {example}.")
    rules = []
    for item in items:
        if isinstance(item, WeightRule):
            rules.append(item)
            continue
        if not isinstance(item, dict) or ("literal" in item) == ("regex" in item):
            raise UserError(f"--weight-rules: {item!r:.60} must give a role, a weight and one of literal or regex; "
                            f"{example}.")
        role, regex = item.get("role"), "regex" in item
        pattern = item["regex" if regex else "literal"]
        if role not in RULE_ROLES:
            raise UserError(f"--weight-rules: unknown role {role!r} in {item!r:.60}; the roles are "
                            f"{', '.join(RULE_ROLES)}.")
        weight = nonnegative(item.get("weight"))
        if weight is None:
            raise UserError(f"--weight-rules: the weight of {pattern!r} must be a number >= 0, got "
                            f"{item.get('weight')!r}; {example}.")
        if not isinstance(pattern, str) or not pattern:
            raise UserError(f"--weight-rules: the pattern of {item!r:.60} is empty; {example}.")
        if regex:
            try:
                re.compile(pattern)
            except re.error as e:
                raise UserError(f"--weight-rules: /{pattern}/ is not a regular expression ({e}); {example}.") from None
        rules.append(WeightRule(role, pattern, regex, weight))
    return tuple(rules)

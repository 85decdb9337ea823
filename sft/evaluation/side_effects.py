"""What fine-tuning does to a generation besides its score: does it stop, run on into a new turn, echo the prompt?

Five side-effect metrics of every generation (lm-eval's generation tasks and eval.py's case studies), counted on
the raw generation (special tokens kept, before lm-eval cuts it at a stop string or any filter extracts an answer;
where that text comes from: sft.evaluation.raw_generations for lm-eval, sft.evaluation.generate for case studies):

    stop_failure  1 if the generation reached its token limit without an EOS or end-of-turn token (nor, in an
                  lm-eval task, one of the task's stop strings), else 0
    overshoot     where the reference is a list (one line of two or more items separated by ', ', as the demo's
                  long-output answers): 1 if the generation stopped before its limit after going on past the
                  reference's last item (its items start with every item of the reference, in order, and at
                  least one more follows), else 0; undefined (None, no row) where the reference is not a list.
                  The answer read is the generation's first line, cut at the first template marker
    run_on        1 if the generation contains one of the training template's markers (Alpaca's `### Instruction:`,
                  ChatML's `<|im_start|>user`, ...: `template_markers` reads them from the template), else 0;
                  undefined (None) where the template has no recognisable marker
    prompt_echo   1 if at least half of the prompt's word 4-grams occur in the generation (the prompt: its last
                  instruction or user turn, the template's markers removed; fewer than 4 words: the whole
                  word sequence as one n-gram), else 0
    gen_length    tokens generated, the stop token excluded

Summaries report the shares in percent (100 x the mean) and gen_length as mean tokens, each with the bootstrap
interval and the paired differences of every other row (sft.evaluation.report).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any

from sft.core.chat import ChatRenderer, renderer_for
from sft.core.prompts import Template
from sft.data.conversations import TEMPLATE
from sft.evaluation.report import Row, base_metric, confidence_rows, difference_rows, model_pairs

SIDE_EFFECTS = ("stop_failure", "overshoot", "run_on", "prompt_echo", "gen_length")  # summary metric names, in order
SCALES = {"stop_failure": 100.0, "overshoot": 100.0, "run_on": 100.0, "prompt_echo": 100.0,
          "gen_length": 1.0}  # shares in %, tokens
ONLY_WHERE_DEFINED = ("overshoot",)  # no row at all for a dataset none of whose items defines it (no list reference)
LIST_SEP = ", "  # a reference is a list when it is one line of two or more items joined by this (the demo's lists)
ECHO_N = 4  # prompt_echo compares word n-grams of this length ...
ECHO_SHARE = 0.5  # ... and counts an echo when at least this share of the prompt's n-grams occur in the output
RULE = (f"stop_failure: the token limit reached without EOS, end-of-turn token or stop string; overshoot (list "
        f"references only: one line of two or more items joined by {LIST_SEP!r}): stopped before the limit after every "
        "item of the reference, in order, and at least one more (the answer: the generation's first line, cut at the "
        "first template marker); run_on: a marker of "
        f"the training template anywhere in the generation; prompt_echo: at least {ECHO_SHARE:g} of the prompt's "
        f"word {ECHO_N}-grams (its last instruction or user turn, markers removed) in the generation; gen_length: "
        "generated tokens, the stop token excluded. Counted on the raw generation (special tokens kept), before "
        "any stop-string cut or filter.")
_PROBE = ("\x01first question\x01", "\x01first answer\x01", "\x01second question\x01")  # contents found by search


def is_side_effect(metric: str) -> bool:
    """Whether a summary row's metric ('run_on', 'naive_average:run_on') is a side effect, not a score."""
    return base_metric(metric) in SIDE_EFFECTS


@dataclass
class Generation:
    """One raw generation and what is known of how it ended."""

    prompt: str  # the rendered prompt it continues
    text: str  # the generated text, special tokens kept, up to (not including) the token that stopped it
    tokens: int  # tokens generated, the stop token excluded
    stopped: bool  # ended by EOS, an end-of-turn token or a stop string (False: the limit, or nothing said)
    max_tokens: int  # the token limit it was generated under
    reference: str | None = None  # the gold answer (lm-eval's target), for overshoot; None where there is none


@dataclass
class Markers:
    """The strings of a training template that open a turn or instruction, read from the template itself."""

    lines: tuple[str, ...] = ()  # markup lines and special tokens: any of them in an output is a run-on
    user_headers: tuple[str, ...] = ()  # the markup right before an instruction or user message
    sources: list[str] = field(default_factory=list)  # where they were read (for settings.json)
    specials: tuple[str, ...] = ()  # special-token strings, left out of the words prompt_echo compares

    def merged(self, other: "Markers") -> "Markers":
        """Both sets of markers."""
        return Markers(tuple(dict.fromkeys(self.lines + other.lines)),
                       tuple(dict.fromkeys(self.user_headers + other.user_headers)), self.sources + other.sources,
                       tuple(dict.fromkeys(self.specials + other.specials)))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def template_markers(template: Template) -> Markers:
    """A registered prompt template's fixed lines (Alpaca: its preamble, `### Instruction:`, `### Input:`,
    `### Response:`), both forms; the line before {instruction} is the user header."""
    lines, headers = [], []
    for fmt in (template.prompt_input, template.prompt_no_input):
        for literal, name, _, _ in string.Formatter().parse(fmt):
            lines += _lines(literal)
            if name == "instruction" and _lines(literal):
                headers.append(_lines(literal)[-1])
    return Markers(tuple(dict.fromkeys(lines)), tuple(dict.fromkeys(headers)), [f"template {template.name}"])


def chat_markers(renderer: ChatRenderer, stops: set[str]) -> Markers:
    """A chat template's markup (ChatML: `<|im_start|>user`, `<|im_start|>assistant`, `<|im_start|>`), read from
    its rendering of a probe conversation; `stops`: token strings that end a turn (EOS, `<|im_end|>`), which are
    the end of an answer, not a run-on."""
    probe = [{"role": "user", "content": _PROBE[0]}, {"role": "assistant", "content": _PROBE[1]},
             {"role": "user", "content": _PROBE[2]}]
    try:
        full, spans = renderer.spans(probe)
    except Exception:  # a template that refuses the probe (e.g. roles it does not take): no markers from it
        return Markers(sources=["chat template (could not render a user/assistant/user probe)"])
    role = [TEMPLATE] * len(full)
    for s, e, _, r in spans:  # later spans override earlier ones (a default system prompt inside the markup)
        role[s:e] = [r] * (e - s)
    markup = "".join(c if r == TEMPLATE else "\n" for c, r in zip(full, role))
    for stop in stops:  # the end of a turn splits the markup around it
        markup = markup.replace(stop, "\n")
    found = [line for line in _lines(markup) if not any(p in line for p in _PROBE)]
    found += [s for s in renderer.specials if s and s in markup]
    before = _lines(full[:full.find(_PROBE[2])].replace(_PROBE[1], "\n"))
    headers = [before[-1]] if before and before[-1] in found else []
    return Markers(tuple(dict.fromkeys(found)), tuple(headers), ["chat template"],
                   tuple(s for s in renderer.specials if s))


def _words(text: str, markers: Markers) -> list[str]:
    for m in sorted(markers.lines + markers.specials, key=len, reverse=True):
        text = text.replace(m, " ")
    return re.findall(r"\w+", text.lower())


def prompt_words(prompt: str, markers: Markers) -> list[str]:
    """The words of a prompt's last instruction or user turn (after its last user header; the whole prompt where it
    has none), the template's markers removed."""
    cut = max((prompt.rfind(h) for h in markers.user_headers), default=-1)
    return _words(prompt[cut:] if cut >= 0 else prompt, markers)


def echoes(prompt: str, output: str, markers: Markers) -> bool:
    """At least ECHO_SHARE of the prompt's word ECHO_N-grams occur in the output."""
    words = prompt_words(prompt, markers)
    if not words:
        return False
    n = min(ECHO_N, len(words))
    grams = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    out = _words(output, markers)
    seen = {tuple(out[i:i + n]) for i in range(len(out) - n + 1)}
    return len(grams & seen) >= ECHO_SHARE * len(grams)


def list_items(text: str) -> list[str] | None:
    """The items of a list reference ('3, 4, 5' -> ['3', '4', '5']): one line, two or more non-empty items joined by
    LIST_SEP; None for anything else (a single answer, a multi-line solution)."""
    if not isinstance(text, str) or "\n" in text.strip() or LIST_SEP not in text:
        return None
    items = [x.strip() for x in text.split(",")]
    return items if len(items) >= 2 and all(items) else None


def answer_items(text: str, markers: Markers) -> list[str]:
    """The items of a generated list: its first line, cut at the first template marker, split at commas."""
    for m in markers.lines + markers.specials:
        text = text.split(m)[0]
    line = text.strip().split("\n")[0]
    return [x.strip() for x in line.split(",")]


def overshoots(gen: Generation, markers: Markers) -> float | None:
    """1.0 if the generation stopped before its limit after the whole list reference and at least one item more, else
    0.0; None where the reference is not a list."""
    reference = list_items(gen.reference) if gen.reference is not None else None
    if reference is None:
        return None
    items = answer_items(gen.text, markers)
    return float(gen.stopped and len(items) > len(reference) and items[:len(reference)] == reference)


def item_values(gen: Generation, markers: Markers) -> dict[str, float | None]:
    """The side effects of one generation (run_on None where the template has no markers, overshoot where the
    reference is not a list)."""
    return {"stop_failure": float(not gen.stopped and gen.tokens >= gen.max_tokens),
            "overshoot": overshoots(gen, markers),
            "run_on": float(any(m in gen.text for m in markers.lines)) if markers.lines else None,
            "prompt_echo": float(echoes(gen.prompt, gen.text, markers)),
            "gen_length": float(gen.tokens)}


# ---------------------------------------------------------------- summary rows


def side_effect_rows(generations: dict[str, dict[str, dict[Any, Generation]]], markers: dict[str, Markers],
                     tasks: list[str], subtasks: dict[str, list[str]], versions: dict[str, str],
                     size_weighted: dict[str, bool]) -> list[Row]:
    """Rows of every side effect on every task and group of `tasks` whose leaves all generate.

    generations: model -> task -> {doc_id: Generation}; tasks: the summary's datasets in order; subtasks: group ->
    members; versions: each dataset's version; size_weighted: a group's weighting (its scores'). A model whose
    markers are empty gets no run_on score (undefined, not 0).
    """
    def leaves(name: str) -> list[str]:
        return [x for c in subtasks[name] for x in leaves(c)] if name in subtasks else [name]

    values = {model: {leaf: {d: item_values(g, markers[model]) for d, g in docs.items()}
                      for leaf, docs in by_task.items()} for model, by_task in generations.items()}
    rows = []
    for name in tasks:
        members = leaves(name)
        if not all(any(leaf in g for g in generations.values()) for leaf in members):
            continue  # a log-likelihood task (or a group with one): no generations to count
        is_group = name in subtasks
        weighted = size_weighted.get(name, True) if is_group else False
        for metric in SIDE_EFFECTS:
            scores, items = {}, {}
            for model, by_task in values.items():
                per_leaf = [{d: v[metric] for d, v in by_task.get(leaf, {}).items() if v[metric] is not None}
                            for leaf in members]
                if not all(per_leaf):
                    scores[model] = None  # run_on without markers, or a task this model did not generate
                    continue
                means = [sum(p.values()) / len(p) for p in per_leaf]
                sizes = [len(p) for p in per_leaf]
                mean = (sum(m * n for m, n in zip(means, sizes)) / sum(sizes) if weighted
                        else sum(means) / len(means))
                scores[model], items[model] = SCALES[metric] * mean, per_leaf
            if metric in ONLY_WHERE_DEFINED and not items:
                continue  # overshoot where no reference is a list: no row (run_on without markers keeps its '-')
            label = (f"{'weighted' if weighted else 'naive'}_average:{metric}" if is_group else metric)
            rows.append(Row(name, versions.get(name, "-"), label, "gen", scores, items or None, weighted,
                            SCALES[metric], is_group))
    return rows


def with_side_effects(rows: list[Row], side: list[Row]) -> list[Row]:
    """The summary rows with each dataset's side-effect rows right after its own (the datasets' order is kept)."""
    by_dataset: dict[str, list[Row]] = {}
    for r in side:
        by_dataset.setdefault(r.dataset, []).append(r)
    out = []
    for i, r in enumerate(rows):
        out.append(r)
        if i + 1 == len(rows) or rows[i + 1].dataset != r.dataset:
            out += by_dataset.pop(r.dataset, [])
    return out


def side_effect_notes(generations: dict[str, dict[str, dict]], markers: dict[str, Markers],
                      loglikelihood: list[str], missing: dict[str, int]) -> list[str]:
    """What the side-effect rows leave out, and why: log-likelihood tasks, models without markers, lost samples."""
    notes = []
    if loglikelihood:
        notes.append(f"no side-effect rows for {', '.join(loglikelihood)}: log-likelihood tasks generate nothing")
    for model, m in markers.items():
        if not m.lines and model in generations:
            notes.append(f"run_on undefined for {model}: its template ({'; '.join(m.sources) or 'none'}) has no "
                         "recognisable turn or instruction marker")
    for model, n in missing.items():
        if n:
            notes.append(f"{model}: {n} generation(s) without a recorded raw generation, left out of the side effects")
    return notes


def model_markers(template: Template, renderers: list[tuple[ChatRenderer, set[str]]]) -> Markers:
    """A model's markers: its prompt template's and those of each chat template it is asked through
    (renderer, the token strings ending a turn there)."""
    markers = template_markers(template)
    for renderer, stops in renderers:
        markers = markers.merged(chat_markers(renderer, stops))
    return markers


def stop_strings(tokenizer) -> set[str]:
    """The token strings that end a turn in a tokenizer's chat template: EOS and the end-of-turn token."""
    try:
        end = renderer_for(tokenizer, tokenizer.chat_template).end_of_turn_id()
    except Exception:  # a template that cannot render a user/assistant probe: its markers are skipped too
        end = None
    return {t for t in (tokenizer.eos_token, tokenizer.convert_ids_to_tokens(end) if end is not None else None) if t}


def side_effect_table(rows: list[Row], models: list[str], n_boot: int, seed: int) -> list[list[str]]:
    """One line per side-effect row: each model's value [95% bootstrap CI], each pair's paired difference."""
    conf = {(c["dataset"], c["metric"], c["model"]): c for c in confidence_rows(rows, models, n_boot, seed)}
    diffs = {(d["dataset"], d["metric"], d["model_a"], d["model_b"]): d
             for d in difference_rows(rows, models, n_boot, seed)}
    pairs = model_pairs(models)
    table = [["side effect [95% CI]", *models, *(f"{a} - {b}" for a, b in pairs)]]
    for r in rows:
        cells = []
        for m in models:
            c = conf.get((r.dataset, r.metric, m))
            cells.append("-" if c is None else f"{c['score']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]")
        for a, b in pairs:
            d = diffs.get((r.dataset, r.metric, a, b))
            cells.append("-" if d is None else f"{d['diff']:+.2f} [{d['ci_low']:.2f}, {d['ci_high']:.2f}]")
        unit = "tokens" if base_metric(r.metric) == "gen_length" else "%"
        table.append([f"{base_metric(r.metric).replace('_', ' ')} ({unit})", *cells])
    return table

"""Side effects of generation on hand-written generations whose answers are known, through the summary rows:
stop failure, run-on (read from the template's markers), prompt echo and generated length, their intervals
and paired differences; a log-likelihood task gets no rows, a template without markers no run_on score; overshoot
(past the end of a list reference, then stopped) only where the reference is a list."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sft.core.chat import renderer_for
from sft.core.prompts import ALPACA, Template
from sft.evaluation.raw_generations import RAW, RecordingHFLM, attach_raw, generations_of
from sft.evaluation.report import Row, confidence_rows, difference_rows, summary_table
from sft.evaluation.side_effects import (
    Generation,
    Markers,
    chat_markers,
    echoes,
    item_values,
    list_items,
    overshoots,
    side_effect_notes,
    side_effect_rows,
    template_markers,
    with_side_effects,
)

BARE = Template(name="bare-test", prompt_input="{instruction}\n\n{input}", prompt_no_input="{instruction}")
PROMPT = ALPACA.render("Add 6 and 5 please.")  # word 4-grams: (add 6 and 5), (6 and 5 please)


def gen(text: str, tokens: int, stopped: bool, max_tokens: int = 8, prompt: str = PROMPT) -> Generation:
    return Generation(prompt, text, tokens, stopped, max_tokens)


# Model a, alpaca markers.         stop_failure  run_on  prompt_echo  gen_length
A = {"t_a": {0: gen("11", 1, True),                                        # 0 0 0 1
             1: gen("11\n\n### Instruction:\nAdd 2 and 2.", 8, False),     # 1 1 0 8
             2: gen("Add 6 and 5 please. 11", 6, True),                    # 0 0 1 6
             3: gen("x x x x x x x x", 8, True)},                          # 0 0 0 8  (EOS right at the limit)
     "t_b": {0: gen("### Response:\nok", 4, False),                        # 0 1 0 4  (ended short of the limit)
             1: gen("ok ok ok ok ok ok ok ok", 8, False)}}                 # 1 0 0 8
# Model b, a template without markers: run_on undefined.
B = {t: {d: gen("11", 1, True) for d in docs} for t, docs in A.items()}
TASKS = ["t_a", "t_b", "g", "mc"]  # the summary's datasets; mc is a log-likelihood task (no generations)


@pytest.fixture(scope="module")
def rows():
    markers = {"a": template_markers(ALPACA), "b": template_markers(BARE)}
    return {(r.dataset, r.metric): r for r in side_effect_rows({"a": A, "b": B}, markers, TASKS, {"g": ["t_a", "t_b"]},
                                                               {"t_a": "abc123"}, {"g": False})}


def test_alpaca_markers_come_from_the_template_and_a_bare_one_has_none():
    m = template_markers(ALPACA)
    assert {"### Instruction:", "### Input:", "### Response:"} <= set(m.lines) and m.user_headers == ("### Instruction:",)
    assert template_markers(BARE).lines == ()


def test_each_metric_on_known_generations(rows):
    expected = {"stop_failure": (25.0, 50.0, 37.5), "run_on": (25.0, 50.0, 37.5), "prompt_echo": (25.0, 0.0, 12.5),
                "gen_length": (5.75, 6.0, 5.875)}
    for metric, (t_a, t_b, g) in expected.items():
        assert rows["t_a", metric].scores["a"] == pytest.approx(t_a), metric
        assert rows["t_b", metric].scores["a"] == pytest.approx(t_b), metric
        assert rows["g", f"naive_average:{metric}"].scores["a"] == pytest.approx(g), metric  # mean of its tasks
    assert rows["t_a", "stop_failure"].items["a"] == [{0: 0.0, 1: 1.0, 2: 0.0, 3: 0.0}]
    assert rows["t_a", "gen_length"].scale == 1.0 and rows["t_a", "run_on"].scale == 100.0
    assert rows["t_a", "run_on"].version == "abc123" and rows["t_a", "run_on"].mode == "gen"


def test_a_log_likelihood_task_gets_no_rows_and_no_markers_no_run_on(rows):
    assert not any(d == "mc" for d, _ in rows)
    assert rows["t_a", "run_on"].scores["b"] is None and "b" not in rows["t_a", "run_on"].items
    assert rows["t_a", "stop_failure"].scores["b"] == 0.0  # the other metrics are defined without markers
    table = summary_table([rows["t_a", "run_on"]], ["a", "b"])
    assert table[1] == ["t_a", "abc123", "run_on", "gen", "25.00", "-"]
    notes = side_effect_notes({"a": A, "b": B}, {"a": template_markers(ALPACA), "b": template_markers(BARE)},
                              ["mc"], {"a": 0, "b": 2})
    assert any("mc" in n and "log-likelihood" in n for n in notes)
    assert any(n.startswith("run_on undefined for b") for n in notes)
    assert any(n.startswith("b: 2 generation(s)") for n in notes)


def test_intervals_and_paired_differences_like_every_other_row(rows):
    picked = [rows["t_a", "stop_failure"], rows["g", "naive_average:gen_length"], rows["t_a", "run_on"]]
    conf = {(c["dataset"], c["metric"], c["model"]): c for c in confidence_rows(picked, ["a", "b"], n_boot=2000)}
    c = conf["t_a", "stop_failure", "a"]
    assert c["score"] == 25.0 and c["n"] == 4 and c["ci_low"] <= 25.0 <= c["ci_high"]
    assert conf["g", "naive_average:gen_length", "a"]["score"] == pytest.approx(5.875)
    assert ("t_a", "run_on", "b") not in conf  # undefined: no interval either
    diffs = {(d["dataset"], d["metric"]): d for d in difference_rows(picked, ["a", "b"], n_boot=2000)}
    assert diffs["t_a", "stop_failure"]["diff"] == -25.0 and diffs["t_a", "stop_failure"]["model_a"] == "b"
    assert diffs["g", "naive_average:gen_length"]["diff"] == pytest.approx(1 - 5.875, abs=0.01)
    assert ("t_a", "run_on") not in diffs


REF = "3, 4, 5"
# Model a on a list task (reference 3, 4, 5):                              overshoot
LISTS_A = {0: gen("3, 4, 5, 6", 4, True),                                # 1: on past 5, then stopped
           1: gen("3, 4, 5", 3, True),                                   # 0: the list exactly
           2: gen("3, 4, 5, 6, 7, 8, 9, 10", 8, False),                  # 0: ran to the limit (a stop failure)
           3: gen("5, 4, 3, 2", 4, True),                                # 0: a wrong list, not past the right one
           4: gen("3, 4, 5, 6\n\n### Instruction:\nCount.", 8, True),  # 1: its first line goes on past 5
           5: gen("3,4 , 5,6", 4, True)}                                 # 1: spacing does not matter
LISTS_B = {d: gen("3, 4, 5", 3, True) for d in LISTS_A}  # model b: every list exactly


def _with_reference(generations: dict, reference: str) -> dict:
    return {d: Generation(g.prompt, g.text, g.tokens, g.stopped, g.max_tokens, reference) for d, g in generations.items()}


def test_overshoot_on_known_generations():
    m = template_markers(ALPACA)
    values = [overshoots(g, m) for g in _with_reference(LISTS_A, REF).values()]
    assert values == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert overshoots(gen("3, 4, 5, 6", 4, True), m) is None  # no reference
    assert list_items("11") is None and list_items("a, b\nc, d") is None and list_items("1,000") is None
    assert list_items("Monday, Tuesday") == ["Monday", "Tuesday"]
    assert overshoots(Generation(PROMPT, "11, 12", 2, True, 8, "11"), m) is None  # a single answer: undefined
    assert item_values(_with_reference(LISTS_A, REF)[0], m)["overshoot"] == 1.0


def test_overshoot_rows_only_where_the_reference_is_a_list_with_intervals_and_differences():
    numbers = {d: Generation(PROMPT, "11", 1, True, 8, "11") for d in range(6)}  # single answers: no overshoot
    gens = {"a": {"lists": _with_reference(LISTS_A, REF), "single": numbers},
            "b": {"lists": _with_reference(LISTS_B, REF), "single": numbers}}
    markers = {"a": template_markers(ALPACA), "b": template_markers(ALPACA)}
    subtasks = {"long": ["lists"], "all": ["lists", "single"]}
    found = {(r.dataset, r.metric): r for r in side_effect_rows(gens, markers, ["lists", "single", "long", "all"],
                                                                subtasks, {}, {"long": False, "all": False})}
    assert found["lists", "overshoot"].scores == {"a": pytest.approx(50.0), "b": 0.0}
    assert found["long", "naive_average:overshoot"].scores["a"] == pytest.approx(50.0)
    assert ("single", "overshoot") not in found and ("all", "naive_average:overshoot") not in found
    assert ("all", "naive_average:stop_failure") in found  # the other side effects cover every task
    metrics = [m for d, m in found if d == "lists"]
    assert metrics[:2] == ["stop_failure", "overshoot"]  # beside stop failure
    rows = [found["lists", "overshoot"]]
    (c,) = [c for c in confidence_rows(rows, ["a", "b"], n_boot=2000) if c["model"] == "a"]
    assert c["score"] == 50.0 and c["n"] == 6 and c["ci_low"] < 50.0 < c["ci_high"]
    (d,) = difference_rows(rows, ["a", "b"], n_boot=2000)
    assert (d["model_a"], d["model_b"], d["diff"]) == ("b", "a", -50.0) and d["ci_high"] < 0


def test_side_rows_follow_their_datasets_rows():
    base = [Row("t_a", "-", m, "gen", {}) for m in ("exact_match", "edit_similarity")] + [Row("g", "-", "x", "gen", {})]
    side = [Row("g", "-", "naive_average:run_on", "gen", {}), Row("t_a", "-", "run_on", "gen", {})]
    assert [(r.dataset, r.metric) for r in with_side_effects(base, side)] == [
        ("t_a", "exact_match"), ("t_a", "edit_similarity"), ("t_a", "run_on"), ("g", "x"), ("g", "naive_average:run_on")]


def test_echo_rule_half_of_the_word_four_grams():
    m = template_markers(ALPACA)
    assert echoes(PROMPT, "add 6 and 5", m)  # one of two 4-grams: half
    assert not echoes(PROMPT, "6 and 5", m)
    assert not echoes(PROMPT, "### Instruction: 11", m)  # the markers are not the prompt's words
    assert echoes(ALPACA.render("Spell cat."), "Spell cat: c-a-t", m)  # under 4 words: the whole sequence
    assert item_values(gen("Add 6 and 5 please", 4, True), Markers())["run_on"] is None


def test_chatml_markers_are_read_from_the_chat_template(qwen_tokenizer):
    stops = {"<|im_end|>", "<|endoftext|>"}
    m = chat_markers(renderer_for(qwen_tokenizer, qwen_tokenizer.chat_template), stops)
    assert {"<|im_start|>user", "<|im_start|>assistant", "<|im_start|>"} <= set(m.lines)
    assert not stops & set(m.lines) and not any("Qwen" in line for line in m.lines)  # not its default system prompt
    prompt = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "Add 6 and 5 please"}], tokenize=False,
                                                add_generation_prompt=True)
    values = item_values(Generation(prompt, "11<|im_end|>\n<|im_start|>user\nAdd 6 and 5 please", 9, False, 9), m)
    assert values == {"stop_failure": 1.0, "overshoot": None, "run_on": 1.0, "prompt_echo": 1.0, "gen_length": 9.0}


class _Tok:
    eos_token_id, pad_token_id = 2, 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join({2: "</s>", 0: "<pad>"}.get(i, f"w{i}") for i in ids)


def test_raw_generations_are_recorded_and_attached():
    lm = object.__new__(RecordingHFLM)  # no model loaded: describe reads only these
    lm._model, lm.tokenizer = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[2, 7])), _Tok()
    kwargs = {"until": ["w9"], "max_gen_toks": 4}
    assert lm.describe([5, 7, 0, 0], kwargs) == {"text": "w5", "tokens": 1, "stopped": True, "max_tokens": 4}
    assert lm.describe([5, 5, 5, 5], kwargs)["stopped"] is False  # the limit: a stop failure
    assert lm.describe([5, 9, 0, 0], kwargs) == {"text": "w5 w9", "tokens": 2, "stopped": True, "max_tokens": 4}
    raw = {("prompt one", '{"max_gen_toks": 4, "until": ["w9"]}'): lm.describe([5, 5, 5, 5], kwargs)}
    samples = {"t": [{"doc_id": 0, "filter": f, "arguments": [("prompt one", kwargs)]} for f in ("strict", "flex")]
               + [{"doc_id": 1, "filter": "strict", "arguments": [("prompt two", kwargs)]}],
               "mc": [{"doc_id": 0, "filter": "none", "arguments": [("question", " answer")]}]}
    assert attach_raw(samples, raw) == 1  # prompt two was not recorded; the log-likelihood request is no generation
    assert RAW in samples["t"][0] and RAW not in samples["mc"][0]
    found, missing = generations_of(samples)
    assert missing == 1 and list(found) == ["t"] and list(found["t"]) == [0]  # one document, two filters
    assert item_values(found["t"][0], Markers())["stop_failure"] == 1.0

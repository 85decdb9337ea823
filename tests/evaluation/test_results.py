"""lm-eval results to summary rows, on results dicts shaped as lm-eval writes them: filters, groups with size
weights, several metrics per task, boolean and list per-sample values (ifeval's), and the @chat pass."""

from __future__ import annotations

import pytest

from sft.evaluation.results import CHAT, merge_results, summary_rows, with_suffix


def _samples(task_scores: dict[str, list], metric: str, filt: str = "none") -> list[dict]:
    return [{"doc_id": i, "filter": filt, metric: v} for i, v in enumerate(task_scores)]


def ifeval_like(prompt_level: list[bool], inst_level: list[list[bool]]) -> tuple[dict, dict]:
    """ifeval's shape: a boolean per prompt (mean) and a list per prompt, pooled over every instruction."""
    pooled = sum(map(sum, inst_level)) / sum(map(len, inst_level))
    results = {"results": {"ifeval": {"prompt_level_strict_acc,none": sum(prompt_level) / len(prompt_level),
                                      "inst_level_strict_acc,none": pooled, "alias": "ifeval"}},
               "configs": {"ifeval": {"output_type": "generate_until"}}, "group_subtasks": {}}
    samples = {"ifeval": [{"doc_id": i, "filter": "none", "prompt_level_strict_acc": p,
                           "inst_level_strict_acc": q} for i, (p, q) in enumerate(zip(prompt_level, inst_level))]}
    return results, samples


def test_booleans_are_items_and_pooled_lists_get_no_interval():
    res, smp = ifeval_like([True, False, True, True], [[True], [False, True], [True, True, True], [False]])
    rows = {r.metric: r for r in summary_rows({"m": res}, {"m": smp}, ["ifeval"], {})}
    assert rows["prompt_level_strict_acc"].scores == {"m": 75.0}
    assert rows["prompt_level_strict_acc"].items == {"m": [{0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}]}
    assert rows["inst_level_strict_acc"].scores["m"] == pytest.approx(100 * 5 / 7)
    assert rows["inst_level_strict_acc"].items is None  # 5/7 pooled is not the mean of per-prompt means


def mmlu_like(model_scores: dict[str, dict[str, list[float]]]) -> tuple[dict, dict]:
    """A size-weighted group of two subjects, and gsm8k with two filters, for every model."""
    results, samples = {}, {}
    for model, by_task in model_scores.items():
        subjects = {t: s for t, s in by_task.items() if t.startswith("mmlu_")}
        n = sum(map(len, subjects.values()))
        r = {t: {"acc,none": sum(s) / len(s), "acc_stderr,none": 0.1} for t, s in subjects.items()}
        r["mmlu_pair"] = {"acc,none": sum(sum(s) for s in subjects.values()) / n}
        gsm = by_task["gsm8k"]
        r["gsm8k"] = {"exact_match,strict-match": sum(gsm[0]) / len(gsm[0]),
                      "exact_match,flexible-extract": sum(gsm[1]) / len(gsm[1])}
        configs = {t: {"output_type": "multiple_choice"} for t in subjects} | {"gsm8k": {"output_type":
                                                                                       "generate_until"}}
        results[model] = {"results": r, "configs": configs, "group_subtasks": {"mmlu_pair": list(subjects)}}
        samples[model] = {t: _samples(s, "acc") for t, s in subjects.items()}
        samples[model]["gsm8k"] = _samples(gsm[0], "exact_match", "strict-match") + \
            _samples(gsm[1], "exact_match", "flexible-extract")
    return results, samples


SCORES = {"a": {"mmlu_x": [1, 0], "mmlu_y": [1, 1, 1, 0], "gsm8k": ([0, 1, 0], [1, 1, 0])},
          "b": {"mmlu_x": [0, 0], "mmlu_y": [1, 0, 0, 0], "gsm8k": ([0, 0, 0], [1, 0, 0])}}


def test_groups_filters_and_size_weights():
    results, samples = mmlu_like(SCORES)
    groups = {"mmlu_pair": {"aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}}
    rows = summary_rows(results, samples, ["mmlu_pair", "gsm8k"], groups)
    assert [(r.dataset, r.metric, r.mode) for r in rows] == [
        ("mmlu_x", "acc", "ppl"), ("mmlu_y", "acc", "ppl"), ("mmlu_pair", "weighted_average", "ppl"),
        ("gsm8k", "exact_match_strict-match", "gen"), ("gsm8k", "exact_match_flexible-extract", "gen")]
    group = rows[2]
    assert group.scores == {"a": pytest.approx(100 * 4 / 6), "b": pytest.approx(100 * 1 / 6)}  # by size, not 62.5
    assert group.size_weighted and [len(p) for p in group.items["a"]] == [2, 4]
    assert rows[4].scores == {"a": pytest.approx(200 / 3), "b": pytest.approx(100 / 3)}


def test_chat_pass_rows_stand_apart_and_a_model_without_them_shows_dashes():
    results, samples = mmlu_like(SCORES)
    chat, chat_samples = with_suffix(results["b"], samples["b"], CHAT)
    assert set(chat["results"]) == {"mmlu_x@chat", "mmlu_y@chat", "mmlu_pair@chat", "gsm8k@chat"}
    assert chat["group_subtasks"] == {"mmlu_pair@chat": ["mmlu_x@chat", "mmlu_y@chat"]}
    merged = {"a": (results["a"], samples["a"]), "b": merge_results([(results["b"], samples["b"]),
                                                                      (chat, chat_samples)])}
    groups = {"mmlu_pair": {"aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}}
    groups["mmlu_pair@chat"] = groups["mmlu_pair"]
    rows = summary_rows({m: r for m, (r, _) in merged.items()}, {m: s for m, (_, s) in merged.items()},
                        ["mmlu_pair", "gsm8k", "mmlu_pair@chat", "gsm8k@chat"], groups)
    assert len(rows) == 10 and [r.dataset for r in rows[5:]] == [
        "mmlu_x@chat", "mmlu_y@chat", "mmlu_pair@chat", "gsm8k@chat", "gsm8k@chat"]
    for raw, chat_row in zip(rows[:5], rows[5:]):
        assert chat_row.scores == {"a": None, "b": raw.scores["b"]} and chat_row.metric == raw.metric
        assert chat_row.version == raw.version  # the same task definition; only the prompt's format differs
        assert set(chat_row.items) == {"b"}

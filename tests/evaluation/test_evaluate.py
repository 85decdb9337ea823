"""Evaluation end to end, offline: a tiny base model against a few steps of tuning, on the demo's lm-eval tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from lm_eval.api.registry import get_metric

from helpers import ROOT, check_items_match_summary, demo_config
from sft.cli.main import main
from sft.evaluation.inputs import parse_models
from sft.evaluation.report import format_csv
from sft.evaluation.side_effects import SIDE_EFFECTS, is_side_effect
from sft.studies.tasks import (DEMO_GROUP, LONG_GROUP, SHORT_GROUP, demo_task_config, edit_similarity,
                               write_demo_tasks)
from sft.evaluation.tasks import task_manager
from sft.studies.synthetic import FAMILIES

LIMIT = 2  # items per family: enough to exercise pairing and the bootstrap, quick on two CPU cores
SHORT = [f for f in FAMILIES if not FAMILIES[f].long_output]
LONG = [f for f in FAMILIES if FAMILIES[f].long_output]
# Summary rows of the demo: each subgroup's families then its average, then the average of all families;
# every dataset scored with exact match and edit similarity.
DATASETS = [f"sft_demo_{f}" for f in SHORT] + [SHORT_GROUP] + [f"sft_demo_{f}" for f in LONG] + [LONG_GROUP, DEMO_GROUP]
GROUPS = (SHORT_GROUP, LONG_GROUP, DEMO_GROUP)
LISTS = {f"sft_demo_{f}" for f in LONG} | {LONG_GROUP}  # the datasets whose references are lists: overshoot rows


def side_metrics(dataset: str) -> list[str]:
    """The side effects a dataset's rows carry: overshoot only where every reference is a list."""
    return [m for m in SIDE_EFFECTS if m != "overshoot" or dataset in LISTS]


N_SIDE = sum(len(side_metrics(d)) for d in DATASETS)  # side-effect rows of the summary


@pytest.fixture(scope="module")
def evaluated(demo_root, tmp_path_factory):
    """The small demo's base model and an 8-step fine-tune, evaluated by the CLI in an offline subprocess."""
    from sft.runs.layout import run_dir
    from sft.core.train import train

    cfg = demo_config(demo_root, run_name="evaltuned", max_steps=8, eval_steps=1000, save_steps=1000,
                      logging_steps=4, overwrite=True)
    train(cfg)
    tuned = run_dir(cfg)
    out = tmp_path_factory.mktemp("evaluation")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out / "hf_datasets")}  # an empty datasets cache: nothing comes from earlier runs
    cmd = [sys.executable, "-m", "sft", "evaluate", "--models", f"base={cfg.model.model},tuned={tuned}",
           "--limit", str(LIMIT), "--batch-size", "8", "--max-gen-toks", "16", "--name", "test",
           "--out", str(out / "evaluation_results" / "raw")]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (out / "evaluation_results" / "raw" / "test").iterdir()
    return {"run": run, "tuned": tuned, "stdout": proc.stdout, "out": out}


@pytest.mark.slow
def test_item_scores_average_to_the_summary_and_are_published(evaluated):
    from sft.evaluation.publish import items_from_predictions, publish

    run = evaluated["run"]
    # two models x 16 families x two metrics (the side effects stay in the summary)
    assert check_items_match_summary(run) == 2 * len(FAMILIES) * 2
    items = pd.read_csv(run / "item_scores.csv")
    assert len(items) == LIMIT * len(set(map(tuple, items[["model", "task", "metric"]].values)))
    assert set(items["group"]) == {SHORT_GROUP, LONG_GROUP}
    # an evaluation without the table (one made before it existed) gets the same rows from its predictions
    assert format_csv([list(items.columns), *items_from_predictions(run)]) == (run / "item_scores.csv").read_text()
    published = publish(run)
    assert published == evaluated["out"] / "evaluation_results" / "test" / run.name
    assert not (published / "predictions").exists() and not (published / "lm_eval_tasks").exists()
    assert (published / "item_scores.csv").read_bytes() == (run / "item_scores.csv").read_bytes()


@pytest.mark.slow
def test_result_folder_has_every_file(evaluated):
    run = evaluated["run"]
    ts = run.name
    for rel in (f"summary/summary_{ts}.csv", f"summary/summary_{ts}.md", f"summary/summary_{ts}.txt",
                "summary/differences.csv", "summary/differences.md", "summary/confidence.csv",
                "results/base.json", "results/tuned.json", "heldout.json", "settings.json", "item_scores.csv"):
        assert (run / rel).is_file(), rel
    for model in ("base", "tuned"):
        for family in FAMILIES:
            preds = (run / "predictions" / model / f"sft_demo_{family}.jsonl").read_text().splitlines()
            assert len(preds) == LIMIT
            sample = json.loads(preds[0])
            assert sample["arguments"][0][0].endswith("### Response:\n")  # the training template, verbatim
            assert "<|endoftext|>" in sample["arguments"][0][1]["until"]
            raw = sample["raw_generation"]  # what the side effects count: the generation before lm-eval cuts it
            assert raw["max_tokens"] == 16 and 0 <= raw["tokens"] <= 16
            assert raw["stopped"] or raw["tokens"] == 16
    settings = json.loads((run / "settings.json").read_text())
    assert settings["limit"] == LIMIT and settings["batch_size"] == 8 and settings["tasks"] == ["sft_demo"]
    assert settings["models"]["tuned"]["manifest"]["run_name"] == "evaltuned"
    assert settings["warnings"] == []  # the base listed is the one the run was tuned from
    side = settings["side_effects"]
    assert side["notes"] == [] and side["loglikelihood_tasks"] == []
    assert {"### Instruction:", "### Response:"} <= set(side["markers"]["base"]) <= set(side["markers"]["tuned"])


@pytest.mark.slow
def test_summary_has_both_metrics_per_family_and_the_three_averages(evaluated):
    run = evaluated["run"]
    summary = pd.read_csv(run / "summary" / f"summary_{run.name}.csv", dtype=str)
    assert list(summary.columns) == ["dataset", "version", "metric", "mode", "base", "tuned"]
    side = summary[summary["metric"].map(is_side_effect)]
    assert list(side["dataset"]) == [d for d in DATASETS for _ in side_metrics(d)]
    assert list(side["metric"]) == [m if d not in GROUPS else f"naive_average:{m}" for d in DATASETS
                                    for m in side_metrics(d)]
    side_scores = side[["base", "tuned"]].astype(float)
    assert ((side_scores >= 0) & (side_scores <= 100)).all().all()
    lengths = side_scores[side["metric"].str.endswith("gen_length")]
    assert (lengths <= 16).all().all()  # mean tokens, never past --max-gen-toks
    summary = summary[~summary["metric"].map(is_side_effect)]
    assert list(summary["dataset"]) == [d for d in DATASETS for _ in range(2)]
    assert list(summary["metric"]) == [m for d in DATASETS for m in (
        ("naive_average:exact_match", "naive_average:edit_similarity") if d in GROUPS
        else ("exact_match", "edit_similarity"))]
    assert set(summary["mode"]) == {"gen"} and summary["version"].str.fullmatch(r"[0-9a-f]{6}").all()
    scores = summary[["base", "tuned"]].astype(float)
    assert ((scores >= 0) & (scores <= 100)).all().all()
    assert summary[["base", "tuned"]].apply(lambda c: c.str.fullmatch(r"\d+\.\d\d")).all().all()
    # An exact match is an edit similarity of 100, so the graded score is never below exact match.
    em, es = scores[summary["metric"].str.endswith("exact_match")], scores[summary["metric"].str.endswith("similarity")]
    assert (es.to_numpy() >= em.to_numpy() - 1e-9).all()
    # Each average is the plain mean over its families, for both metrics.
    by_row = scores.set_index([summary["dataset"], summary["metric"]])
    for group, members in ((SHORT_GROUP, SHORT), (LONG_GROUP, LONG), (DEMO_GROUP, list(FAMILIES))):
        for metric in ("exact_match", "edit_similarity"):
            mean = by_row.loc[[(f"sft_demo_{f}", metric) for f in members]].mean()
            assert by_row.loc[(group, f"naive_average:{metric}")].to_numpy() == pytest.approx(mean.to_numpy(),
                                                                                               abs=0.02)
    assert "sft_demo_last_word" in evaluated["stdout"] and "sft_demo_long" in evaluated["stdout"]  # printed


@pytest.mark.slow
def test_every_sample_is_scored_with_both_metrics(evaluated):
    for line in (evaluated["run"] / "predictions" / "tuned" / "sft_demo_count_up.jsonl").read_text().splitlines():
        sample = json.loads(line)
        prediction = sample["filtered_resps"][0]
        assert sample["edit_similarity"] == edit_similarity([sample["target"]], [prediction])
        assert sample["exact_match"] == float(prediction == sample["target"])


@pytest.mark.slow
def test_held_out_loss_is_the_training_split_weighted_by_tokens(evaluated):
    heldout = json.loads((evaluated["run"] / "heldout.json").read_text())["models"]
    assert heldout["tuned"]["response_loss"] < heldout["base"]["response_loss"]
    assert 0 <= heldout["base"]["response_token_accuracy"] <= heldout["tuned"]["response_token_accuracy"] <= 1
    # The Trainer's own final evaluation of the same split: equal only if split and weighting are the same.
    manifest = json.loads((evaluated["tuned"] / "run_manifest.json").read_text())
    assert heldout["tuned"]["response_loss"] == pytest.approx(manifest["results"]["eval"]["eval_response_loss"],
                                                              rel=1e-4)


@pytest.mark.slow
def test_differences_cover_every_row_with_an_interval(evaluated):
    diffs = pd.read_csv(evaluated["run"] / "summary" / "differences.csv")
    assert len(diffs) == 2 * len(DATASETS) + N_SIDE
    assert set(zip(diffs["model_a"], diffs["model_b"])) == {("tuned", "base")}
    assert (diffs["ci_low"] <= diffs["diff"] + 1e-9).all() and (diffs["diff"] <= diffs["ci_high"] + 1e-9).all()
    n = diffs.set_index(["dataset", "metric"])["n"]
    for group, members in ((SHORT_GROUP, SHORT), (LONG_GROUP, LONG), (DEMO_GROUP, FAMILIES)):
        for metric in ("exact_match", "edit_similarity", *side_metrics(group)):  # a group's items: its families'
            assert n[group, f"naive_average:{metric}"] == LIMIT * len(members)
    conf = pd.read_csv(evaluated["run"] / "summary" / "confidence.csv")
    metrics = ("exact_match", "edit_similarity", *SIDE_EFFECTS)
    assert set(conf["metric"]) == {*metrics, *(f"naive_average:{m}" for m in metrics)}
    assert len(conf) == 2 * (2 * len(DATASETS) + N_SIDE)  # two models


@pytest.mark.slow
def test_compare_writes_plot_workbook_and_markdown(evaluated, capsys):
    assets = evaluated["out"] / "assets"
    assert main(["compare", str(evaluated["run"].parent), "--out", str(assets)]) == 0  # a name folder: its newest run
    text = capsys.readouterr().out
    assert "| sft_demo " in text and "tuned" in text and "Held-out" in text
    assert "| sft_demo_long  | naive_average:edit_similarity | tuned - base" in text  # the averages' differences
    assert "### Side effects of generation" in text and "| sft_demo_long  | naive_average:run_on" in text
    assert (assets / "Comparison.png").stat().st_size > 10_000
    sheets = pd.read_excel(assets / "Dataset_results.xlsx", sheet_name=None)
    assert list(sheets) == ["Scores", "Differences", "Heldout"]
    assert {"base", "tuned", "tuned 95% CI low"} <= set(sheets["Scores"].columns)
    assert len(sheets["Scores"]) == 2 * len(DATASETS) + N_SIDE and len(sheets["Heldout"]) == 2
    assert len(sheets["Differences"]) == 2 * len(DATASETS) + N_SIDE
    assert "edit_similarity" in set(sheets["Scores"]["metric"]) and SHORT_GROUP in set(sheets["Differences"]["dataset"])


@pytest.mark.slow
def test_held_out_data_changed_since_training_is_refused(evaluated, tmp_path, capsys):
    import shutil

    stale = tmp_path / "stale"
    shutil.copytree(evaluated["tuned"], stale, ignore=shutil.ignore_patterns("checkpoint-*"))  # a whole model
    manifest = json.loads((stale / "run_manifest.json").read_text())
    manifest["data"]["eval_fingerprint"] = "0" * 16  # as if the held-out file was rewritten after training
    (stale / "run_manifest.json").write_text(json.dumps(manifest))
    assert main(["evaluate", "--models", f"stale={stale}", "--out", str(tmp_path / "out")]) == 2
    assert "data changed after training" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prediction, answer, expected", [
    ("cat, dog, fish", "cat, dog, fish", 100.0),  # identical
    ("", "cat, dog, fish", 0.0),  # nothing generated
    ("abcdefghiX", "abcdefghij", 90.0),  # one substitution in 10 characters
    ("1, 2, 4, 3", "1, 2, 3, 4", 80.0),  # a partly sorted list: two of its 10 characters differ
    ("apple, pear, plum, fig", "apple, fig, pear, plum", 100 * (1 - 10 / 22)),  # one item misplaced: 10 edits
    ("  tiger\n", "tiger", 100.0),  # surrounding whitespace does not count
    ("red  sun", "red sun", 100 * (1 - 1 / 8)),  # whitespace inside does: one insertion in 8 characters
])
def test_edit_similarity_on_known_pairs(prediction, answer, expected):
    assert 100 * edit_similarity(references=[answer], predictions=[prediction]) == pytest.approx(expected)


def test_exact_match_is_on_the_raw_generation(tmp_path):
    """A demo task scores with lm-eval's exact_match as its config names it, no option: the raw generation must be
    the answer, so surrounding whitespace, punctuation or another case is a miss."""
    data = tmp_path / "test.jsonl"
    data.write_text('{"prompt": "p", "answer": "42"}\n')
    metric = demo_task_config("sft_demo_x", data, "alpaca", ["<eos>"], 8)["metric_list"][0]
    assert metric == {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
    exact_match = get_metric(metric["metric"])
    assert exact_match(references=["42"], predictions=["42"])["exact_match"] == 1
    for prediction, answer in (("  42\n", "42"), ("42.", "42"), ("Apple", "apple")):
        assert exact_match(references=[answer], predictions=[prediction])["exact_match"] == 0


def test_demo_tasks_carry_both_metrics_and_the_groups_by_output_length(demo_root, tmp_path):
    import yaml

    out = tmp_path / "tasks"
    names = write_demo_tasks(demo_root / "Dataset/demo/test.jsonl", out, "alpaca", ["<|endoftext|>"])
    assert sorted(LONG) == ["count_down", "count_up", "day_list", "month_list"]  # marked by Family.long_output
    groups = {g: yaml.safe_load((out / f"{g}.yaml").read_text()) for g in GROUPS}
    assert groups[DEMO_GROUP]["task"] == [SHORT_GROUP, LONG_GROUP]
    assert groups[SHORT_GROUP]["task"] == [f"sft_demo_{f}" for f in SHORT]
    assert groups[LONG_GROUP]["task"] == [f"sft_demo_{f}" for f in LONG]
    assert sorted(names) == sorted(groups[SHORT_GROUP]["task"] + groups[LONG_GROUP]["task"])
    for g in groups.values():  # every family counts the same in each average, for both metrics
        assert [(a["metric"], a["weight_by_size"]) for a in g["aggregate_metric_list"]] == [
            ("exact_match", False), ("edit_similarity", False)]
    # lm-eval resolves the metric function and scores a generation with both metrics.
    task = task_manager(["sft_demo_count_up"], [out]).load(["sft_demo_count_up"])["tasks"]["sft_demo_count_up"]
    doc = next(iter(task.test_docs()))
    half = doc["answer"][: len(doc["answer"]) // 2]
    assert task.process_results(doc, [doc["answer"]]) == {"exact_match": 1.0, "edit_similarity": 1.0}
    scored = task.process_results(doc, [half])
    assert scored["exact_match"] == 0.0 and scored["edit_similarity"] == pytest.approx(len(half) / len(doc["answer"]))


def test_parse_models_keeps_order_and_rejects_bad_specs():
    assert list(parse_models("base=a,masked=b/c")) == ["base", "masked"]
    for bad in ("base", "base=a,base=b", "=a", "my model=a", ""):
        with pytest.raises(ValueError):
            parse_models(bad)


def test_user_errors_exit_with_code_2(demo_root, tmp_path, capsys):
    base = str(demo_root / "model/demo/base")
    assert main(["evaluate", "--models", "base", "--out", str(tmp_path)]) == 2
    assert main(["evaluate", "--models", f"base={base}", "--out", str(tmp_path)]) == 2  # no fine-tuned run
    assert "run_manifest.json" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_cli_lists_both_commands():
    out = subprocess.run([sys.executable, "-m", "sft", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert "evaluate" in out and "compare" in out


# ---------------------------------------------------------------- held-out metrics against a plain cross-entropy

CHAT = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"}, {"role": "user", "content": "And that times 4?"},
        {"role": "assistant", "content": "It is 20."}]


def tiny_qwen(tokenizer):
    """A randomly initialised one-layer Qwen2 over the tokenizer's whole vocabulary (the real head size)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))


def plain_sums(model, ds):
    """{group: (nll sum, tokens, correct)} from full logits and F.cross_entropy, one example at a time, in float64;
    groups: response, prompt and, for conversations, each role (assistant split by trained or not)."""
    import torch
    import torch.nn.functional as F

    from sft.data.conversations import ROLE_NAMES

    sums = {}
    for ex in ds:
        ids = torch.tensor([ex["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        nll = F.cross_entropy(logits, ids[0, 1:], reduction="none").double()
        hit = (logits.argmax(-1) == ids[0, 1:]).double()
        response = torch.tensor(ex["response_mask"][1:]).bool()
        groups = [("response", response), ("prompt", ~response)]
        if "roles" in ex:
            roles = torch.tensor(ex["roles"][1:])
            groups += [(name, roles == code) for code, name in enumerate(ROLE_NAMES)]
            groups += [("assistant_trained", (roles == 3) & response), ("assistant_untrained", (roles == 3) & ~response)]
        for name, mask in groups:
            s = sums.setdefault(name, [0.0, 0, 0.0])
            s[0] += float(nll[mask].sum())
            s[1] += int(mask.sum())
            s[2] += float(hit[mask].sum())
    return sums


@pytest.mark.parametrize("train_on", ["all", "last"])
def test_heldout_metrics_per_role_equal_a_plain_cross_entropy(qwen_tokenizer, tmp_path, train_on):
    from sft.data.config import DataConfig
    from sft.core.prepare import tokenize_rows
    from sft.evaluation.heldout import heldout_metrics

    convs = [CHAT, CHAT[1:3], CHAT[:3] + [{"role": "user", "content": "Twice that?"},
                                          {"role": "assistant", "content": "10"}]]
    cfg = DataConfig(cache_dir=str(tmp_path), prompt_loss_weight=0.5, train_on=train_on)
    ds, _ = tokenize_rows([{"messages": m} for m in convs], qwen_tokenizer, cfg)
    model = tiny_qwen(qwen_tokenizer)
    got = heldout_metrics(model, ds, qwen_tokenizer.pad_token_id, batch_size=2)
    ref = plain_sums(model, ds)
    assert got["response_loss"] == pytest.approx(ref["response"][0] / ref["response"][1], rel=1e-6)
    assert got["response_token_accuracy"] == pytest.approx(ref["response"][2] / ref["response"][1], rel=1e-6)
    assert got["prompt_loss"] == pytest.approx(ref["prompt"][0] / ref["prompt"][1], rel=1e-6)
    roles = ["template", "system", "user", "assistant"]
    if train_on == "last":  # earlier replies are outside the loss: reported apart from the trained one
        roles += ["assistant_trained", "assistant_untrained"]
        assert got["assistant_trained_tokens"] == got["response_tokens"] < got["assistant_tokens"]
    else:
        assert "assistant_untrained_tokens" not in got and got["assistant_tokens"] == got["response_tokens"]
    for role in roles:
        assert got[f"{role}_tokens"] == ref[role][1] > 0, role
        assert got[f"{role}_loss"] == pytest.approx(ref[role][0] / ref[role][1], rel=1e-6), role
    assert sum(got[f"{r}_tokens"] for r in roles[:4]) == got["response_tokens"] + got["prompt_tokens"]


def test_heldout_metrics_of_instruction_rows_keep_their_keys(qwen_tokenizer, tmp_path):
    from sft.data.config import DataConfig
    from sft.core.prepare import tokenize_rows
    from sft.evaluation.heldout import heldout_metrics

    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Name a colour.", "input": "one word", "output": "Blue."}] * 3
    ds, _ = tokenize_rows(rows, qwen_tokenizer, DataConfig(cache_dir=str(tmp_path)))
    model = tiny_qwen(qwen_tokenizer)
    got = heldout_metrics(model, ds, qwen_tokenizer.pad_token_id, batch_size=4)
    assert list(got) == ["examples", "response_tokens", "response_loss", "response_perplexity",
                         "response_token_accuracy", "prompt_tokens", "prompt_loss"]  # as in the committed demo results
    ref = plain_sums(model, ds)
    assert got["response_loss"] == pytest.approx(ref["response"][0] / ref["response"][1], rel=1e-6)
    assert got["prompt_loss"] == pytest.approx(ref["prompt"][0] / ref["prompt"][1], rel=1e-6)


def test_heldout_summary_and_comparison_list_the_losses_per_role():
    import pandas as pd

    from sft.evaluation.compare import heldout_markdown, roles_markdown
    from sft.evaluation.results import heldout_rows

    plain = {"examples": 2, "response_tokens": 10, "response_loss": 1.5, "response_perplexity": 4.48,
             "response_token_accuracy": 0.5, "prompt_tokens": 20, "prompt_loss": 3.0}
    chat = {**plain, "template_tokens": 6, "template_loss": 0.25, "system_tokens": 0, "system_loss": None,
            "user_tokens": 14, "user_loss": 3.5, "assistant_tokens": 10, "assistant_loss": 1.5}
    assert [r.metric for r in heldout_rows({"a": plain})] == ["response_token_accuracy", "response_loss"]
    rows = heldout_rows({"a": chat, "b": {**chat, "user_loss": 2.0}})
    assert [r.metric for r in rows] == ["response_token_accuracy", "response_loss", "template_loss", "system_loss",
                                        "user_loss", "assistant_loss"]
    assert rows[3].scores == {"a": None, "b": None} and rows[4].scores == {"a": 3.5, "b": 2.0}
    assert roles_markdown(pd.DataFrame([{"model": "a", **plain}])) == ""
    table = roles_markdown(pd.DataFrame([{"model": "a", **chat}])).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table]
    assert cells[0] == ["model", "template", "system", "user", "assistant"]
    assert cells[2] == ["a", "0.2500 (6)", "-", "3.5000 (14)", "1.5000 (10)"]
    assert "prompt loss" in heldout_markdown(pd.DataFrame([{"model": "a", **chat}]))


@pytest.mark.slow  # a forward pass over a 151,665-token vocabulary: 4-4.5 s of CPU
def test_heldout_metrics_report_the_tool_roles_of_agent_data(qwen_tokenizer, tmp_path):
    from helpers import agent_conversations
    from sft.data.config import DataConfig
    from sft.core.prepare import tokenize_rows
    from sft.evaluation.heldout import heldout_metrics

    data = [(m, t) for m, t in agent_conversations(12, seed=2) if t][:6]
    ds, _ = tokenize_rows([{"messages": m, "tools": t} for m, t in data], qwen_tokenizer,
                          DataConfig(cache_dir=str(tmp_path), prompt_loss_weight=0.5, max_length=4096))
    got = heldout_metrics(tiny_qwen(qwen_tokenizer), ds, qwen_tokenizer.pad_token_id, batch_size=4)
    roles = ["template", "system", "user", "assistant", "tool_call", "tool_output"]
    assert all(got[f"{r}_tokens"] > 0 and got[f"{r}_loss"] > 0 for r in roles)
    reply = got["assistant_tokens"] + got["tool_call_tokens"] + got.get("reasoning_tokens", 0)
    assert reply == got["response_tokens"]  # calls and reasoning are trained with the reply (train_on="all")
    assert sum(got[f"{r}_tokens"] for r in roles) + got.get("reasoning_tokens", 0) == \
        got["response_tokens"] + got["prompt_tokens"]

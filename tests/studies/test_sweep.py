"""sft/studies/sweep.py: a 2 x 2 sweep end to end, and a resumed sweep that redoes nothing finished."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import check_items_match_summary, demo_config, demo_dialogues, demo_overrides, fake_sweep
from sft.evaluation.multiplicity import holm
from sft.evaluation.provenance import provenance_rows
from sft.evaluation.publish import publish
from sft.evaluation.seeds import t_test_p
from sft.runs.layout import SWEEP_SESSIONS, run_dir
from sft.studies.sweep import (
    add_holm,
    difference_records,
    pair_label,
    parse_weights,
    run_sweep,
    train_pair,
)
from sft.studies.variants import split_axes


def test_parse_weights():
    assert parse_weights("1,0,0.1,0.1") == [0.0, 0.1, 1.0]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        parse_weights("0,2")


def test_sweep_differences_pair_runs_by_seed():
    key = ("sft_demo_long", "naive_average:edit_similarity")
    pairs = {(0.0, 1): {key: 10.0}, (0.0, 2): {key: 30.0}, (1.0, 1): {key: 15.0}, (1.0, 2): {key: 36.0}}
    (d,) = difference_records(pairs, [key], [0.0, 1.0], [1, 2])
    assert (d["w_a"], d["w_b"], d["seeds"], d["diff"], d["values"]) == (1.0, 0.0, 2, 5.5, "5.0000 6.0000")
    assert d["ci_low"] == pytest.approx(5.5 - 12.706 * 0.5, abs=1e-3) and d["significant"] == "no"  # t(1) over 2 seeds
    # sd of (5, 6) = 0.7071; MDD = (t_0.975,1 + t_0.80,1) x sd / sqrt(2), t from a printed table: 12.706, 1.376
    assert d["sd"] == pytest.approx(0.7071, abs=1e-4) and d["mdd"] == pytest.approx((12.706 + 1.376) * 0.5, abs=2e-3)


def test_several_learning_rates_are_variants_one_is_shared():
    shared, variants = split_axes({"train.learning_rate": "1e-3,3e-3", "data.data": "x"})
    assert shared == {"data.data": "x"}
    assert variants == [("lr0.001", {"train.learning_rate": 0.001}), ("lr0.003", {"train.learning_rate": 0.003})]
    assert split_axes({"train.learning_rate": "3e-3"}) == ({"train.learning_rate": "3e-3"}, [("", {})])
    for bad in ("0,1e-3", "x,1e-3", "1e-3,1e-3"):
        with pytest.raises(ValueError, match="positive learning rates"):
            split_axes({"train.learning_rate": bad})


FAMILIES16 = [f"sft_demo_f{i}" for i in range(16)]


def _scores(w: float, seed: int, rng) -> dict:
    """One pair's scores: 16 task rows, a group average, a held-out loss; w = 1 better on every task."""
    out = {(t, "exact_match"): 40 + 10 * w + 3 * rng.normal() + (5 if i < 8 else 0) * w for i, t in enumerate(FAMILIES16)}
    out["sft_demo_short", "naive_average:exact_match"] = float(np.mean(list(out.values())))
    out["heldout", "response_loss"] = 1.0 - 0.1 * w + 0.01 * rng.normal()
    return out


def test_every_difference_row_gets_its_t_test_and_holm_within_its_family():
    rng = np.random.default_rng(3)
    pairs = {(w, s): _scores(w, s, rng) for w in (0.0, 1.0) for s in (1, 2, 3, 4)}
    keys = list(pairs[0.0, 1])
    diffs = difference_records(pairs, keys, [0.0, 1.0], [1, 2, 3, 4])
    add_holm(diffs, {("sft_demo_short", "naive_average:exact_match", 1.0, 0.0)})
    by = {d["dataset"]: d for d in diffs}
    values = [float(v) for v in by["sft_demo_f0"]["values"].split()]
    assert by["sft_demo_f0"]["p"] == pytest.approx(t_test_p(values), rel=1e-2)
    assert by["sft_demo_short"]["family"] == "primary" and by["sft_demo_short"]["p_holm"] == by["sft_demo_short"]["p"]
    tasks = [d for d in diffs if d["dataset"] in FAMILIES16]
    assert {d["family"] for d in tasks} == {"w=1 - w=0, tasks: exact_match"}  # the 16 families: one family of tests
    assert [d["p_holm"] for d in tasks] == pytest.approx(holm([d["p"] for d in tasks]), rel=1e-2)
    assert sum(d["significant"] == "yes" for d in tasks) > sum(d["significant_holm"] == "yes" for d in tasks)
    assert by["heldout"]["family"] == "w=1 - w=0, held-out losses"


def test_the_summary_opens_with_the_declared_endpoints_and_their_combined_interval(tmp_path, capsys):
    root = fake_sweep(tmp_path / "sweep-p")
    out = capsys.readouterr().out
    assert out.startswith("Primary endpoints (declared ") and "before any result" in out
    assert out.index("Primary endpoints") < out.index("| dataset")  # before any number
    primary = pd.read_csv(root / "primary.csv")
    (row,) = primary.to_dict("records")
    assert row["endpoint"] == "sft_demo_short:exact_match" and (row["w_a"], row["w_b"], row["items"]) == (1.0, 0.0, 60)
    assert row["combined_low"] < row["diff"] < row["combined_high"] and row["p_holm"] == row["p"]  # one test
    assert (root / "primary.md").read_text().startswith("Primary endpoints (declared ")
    sweep = pd.read_csv(root / "sweep.csv")
    clipped = sweep[(sweep["dataset"] == "train") & (sweep["metric"] == "grad_clipped_share")]
    assert list(clipped["mean"]) == pytest.approx([0.9, 0.1])  # the clipping regime of each arm
    diffs = pd.read_csv(root / "differences.csv")
    assert {"p", "family", "p_holm", "significant_holm"} <= set(diffs.columns)
    assert set(diffs.loc[diffs["dataset"] == "sft_demo_short", "family"]) == {"primary"}


def test_a_finished_pair_is_reused_only_with_the_same_settings(tmp_path):
    overrides = {**demo_overrides(tmp_path), "learning_rate": 3e-3}
    cfg = demo_config(tmp_path, **{**overrides, "prompt_loss_weight": 0.0, "seed": 1, "run_name": "sweep-lr/w0_s1"})
    run_dir(cfg).mkdir(parents=True)  # a finished run's manifest (written by hand: write_manifest would call git)
    (run_dir(cfg) / "run_manifest.json").write_text(json.dumps({"status": "complete", "config": cfg.to_dict()},
                                                                default=str))
    assert train_pair("demo", "lr", 0.0, 1, overrides) == run_dir(cfg)  # the same settings: not trained again
    with pytest.raises(ValueError, match="trained with other settings: learning_rate: saved 0.003, now 0.001"):
        train_pair("demo", "lr", 0.0, 1, {**overrides, "learning_rate": 1e-3})


@pytest.mark.slow
def test_sweep_runs_and_resumes_without_redoing_pairs(demo_root, tmp_path):
    overrides = {**demo_overrides(demo_root), "max_steps": 4, "save_steps": 2, "eval_steps": 4, "logging_steps": 2}
    results = tmp_path / "evaluation_results" / "raw"
    kwargs = dict(limit=2, overrides=overrides, results_root=str(results), plot=tmp_path / "plw_sweep.png")
    root = run_sweep("demo", [0.0, 1.0], [1, 2], "t", **kwargs)
    records = (root / "sweep.csv").read_text().splitlines()
    assert records[0].startswith("dataset,metric,prompt_loss_weight,seeds,mean,ci_low,ci_high")
    assert any(line.startswith("heldout,response_loss,0.0,2,") for line in records)
    assert list((root / "summary").glob("summary_*.csv")) and (tmp_path / "plw_sweep.png").stat().st_size > 10_000
    header = next((root / "summary").glob("summary_*.csv")).read_text().splitlines()[0]
    assert header == "dataset,version,metric,mode,w=0,w=1"
    for group in ("sft_demo", "sft_demo_short", "sft_demo_long"):  # each average on both metrics, with intervals
        for metric in ("exact_match", "edit_similarity"):
            assert any(line.startswith(f"{group},naive_average:{metric},1.0,2,") for line in records)
    diffs = (root / "differences.csv").read_text().splitlines()
    assert diffs[0] == ("dataset,metric,w_a,w_b,seeds,diff,ci_low,ci_high,significant,sd,mdd,p,family,p_holm,"
                        "significant_holm,values")
    # each arm's optimiser regime: the share of steps clipped and the median gradient norm, with intervals
    assert any(line.startswith("train,grad_clipped_share,0.0,2,") for line in records)
    assert any(line.startswith("train,grad_norm_median,1.0,2,") for line in records)
    assert any(line.startswith("sft_demo_long,naive_average:edit_similarity,1.0,0.0,2,") for line in diffs)
    assert (root / "differences.md").is_file()
    # every pair keeps its per-item scores, and publishing the sweep commits them with its summaries
    for pair in ("w0_s1", "w0_s2", "w1_s1", "w1_s2"):
        (run,) = root.glob(f"{pair}/*/summary")
        assert check_items_match_summary(run.parent) == 16 * 2  # one model x 16 families x 2 metrics
    published = publish(root)
    assert published == tmp_path / "evaluation_results" / "sweep-t"
    assert (published / "sweep.csv").read_text() == (root / "sweep.csv").read_text()
    assert len(list(published.glob("w*_s*/*/item_scores.csv"))) == 4 and not list(published.rglob("predictions"))
    # its provenance: the session's machine and wall time, each run's training seconds (sft pages provenance)
    rows = dict(provenance_rows(published))
    assert "torch threads" in rows["machine"] and rows["wall time, whole sweep"].endswith("over 1 session(s)")
    assert rows["wall time, training per run"].endswith("over 4 runs") and rows["runs"] == "4 fine-tuned (4 evaluations)"

    runs = demo_root / "model/demo/sweep-t"
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/model.safetensors")}
    assert len(finished) == 4
    # Interrupt one pair mid-training (checkpoint-2 kept, final model gone) and lose another's evaluation.
    broken = runs / pair_label(1.0, 2)
    for name in ("model.safetensors", "log_history.json"):
        (broken / name).unlink()
    manifest = json.loads((broken / "run_manifest.json").read_text())  # as a kill mid-training leaves it
    (broken / "run_manifest.json").write_text(json.dumps({**manifest, "status": "training", "results": {}}))
    import shutil

    shutil.rmtree(broken / "checkpoint-4")
    kept = (broken / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    shutil.rmtree(results / "sweep-t" / pair_label(0.0, 1))
    run_sweep("demo", [0.0, 1.0], [1, 2], "t", **kwargs)
    for path, mtime in finished.items():
        if path.parent != broken:
            assert path.stat().st_mtime_ns == mtime, f"{path.parent.name} was trained again"
    manifest = json.loads((broken / "run_manifest.json").read_text())
    assert manifest["status"] == "complete"
    history = json.loads((broken / "log_history.json").read_text())
    assert history[-1]["step"] == 4 and (broken / "checkpoint-4").is_dir()
    assert (broken / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == kept  # resumed, not restarted
    assert manifest["results"]["train"]["train_grad_norm_steps"] == 4  # the two steps before the resume included
    assert len(list((results / "sweep-t" / pair_label(0.0, 1)).glob("*/summary/summary_*.csv"))) == 1
    sessions = json.loads((results / "sweep-t" / SWEEP_SESSIONS).read_text())["sessions"]
    assert len(sessions) == 2 and all(s["wall_seconds"] > 0 and s["machine"]["torch_threads"] >= 1 for s in sessions)


@pytest.mark.slow
def test_sweep_on_conversations_reports_the_held_out_loss_of_each_role(demo_root, tmp_path, monkeypatch):
    from helpers import demo_cli_args
    from sft.cli.main import main

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": m}) + "\n" for m in demo_dialogues(demo_root, 64, seed=2)))
    args = demo_cli_args(demo_root)
    for flag in ("--data.data", "--data.eval-data"):  # the sweep's data: the conversations; held out: a split of them
        i = args.index(flag)
        del args[i:i + 2]
    monkeypatch.chdir(tmp_path)  # evaluation_results/raw/ and the plot go to the working folder
    assert main(["sweep", *args, "--data", str(chats), "--eval-size", "16", "--train-on", "last",
                 "--prompt-loss-weights", "0,1", "--seeds", "1", "--name", "chat", "--heldout-only",
                 "--max-steps", "6", "--eval-steps", "6", "--save-steps", "6", "--plot", "sweep.png"]) == 0
    root = tmp_path / "evaluation_results" / "raw" / "sweep-chat"
    records = {tuple(line.split(",")[:3]): line for line in (root / "sweep.csv").read_text().splitlines()[1:]}
    for w in ("0.0", "1.0"):
        for role in ("user", "assistant", "assistant_trained", "assistant_untrained"):
            assert ("heldout", f"{role}_loss", w) in records, (role, w)
        # No system turn; the alpaca chat template's preamble and headers are markup (issue #28: template).
        assert ("heldout", "system_loss", w) not in records and ("heldout", "template_loss", w) in records
    manifest = json.loads((demo_root / "model/demo/sweep-chat/w0_s1/run_manifest.json").read_text())
    assert manifest["data"]["conversations"] and manifest["data"]["eval_examples"] == 16
    held = json.loads(next(root.glob("w1_s1/*/heldout.json")).read_text())["models"]["w1_s1"]
    assert held["assistant_trained_tokens"] == held["response_tokens"] < held["assistant_tokens"]
    mean = {k[1:]: float(line.split(",")[4]) for k, line in records.items() if k[0] == "heldout"}
    # w = 1 trains on the user turns, w = 0 never: after six steps the user turns' loss tells the two apart.
    assert mean["user_loss", "1.0"] < mean["user_loss", "0.0"]
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_seeds_are_a_count_or_a_range():
    """--seeds 8 is seeds 1..8; --seeds 5-8 lets a second process take other seeds of the same sweep."""
    from sft.studies.sweep import parse_seeds

    assert parse_seeds("3") == [1, 2, 3] and parse_seeds("5-8") == [5, 6, 7, 8] and parse_seeds("2-2") == [2]
    assert parse_seeds("1,2,3,5,6") == [1, 2, 3, 5, 6] and parse_seeds("3,1,3") == [1, 3]
    for bad in ("0", "-1", "4-2", "a", "1-b", "0-3", "0,1", "1,x", ","):
        with pytest.raises(ValueError, match="--seeds takes N"):
            parse_seeds(bad)

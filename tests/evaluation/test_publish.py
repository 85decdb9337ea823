"""Publishing: what the pages cite, copied from the git-ignored evaluation_results/raw/ into evaluation_results/;
the committed item tables agree with their summaries; studies write only folders that git ignores."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from helpers import ROOT, check_items_match_summary
from sft.cli.main import main
from sft.evaluation.pages import render_spec
from sft.evaluation.publish import publish
from sft.runs.layout import (
    CASE_STUDY_DIR,
    ITEM_SCORES,
    RAW_RESULTS_ROOT,
    RESULTS_ROOT,
    SWEEP_PLOT,
    SWEEP_SESSIONS,
    published_path,
)

DEMO = "evaluation_results/demo/20261206_192601"  # a published demo run with its item table
CASE_STUDY = "evaluation_results/case_study/20261206_192656"  # a published case study


def _published_evaluations() -> list:
    return sorted(p.parent for p in (ROOT / RESULTS_ROOT).glob(f"**/{ITEM_SCORES}")
                  if RAW_RESULTS_ROOT not in p.relative_to(ROOT).as_posix())


def test_every_published_item_table_averages_to_its_summary():
    runs = _published_evaluations()
    assert ROOT / DEMO in runs
    checked = sum(check_items_match_summary(run) for run in runs)
    # the demo: 16 tasks x 2 metrics x 3 models, each mean equal to its summary cell
    assert check_items_match_summary(ROOT / DEMO) == 16 * 2 * 3 and checked >= 96
    items = pd.read_csv(ROOT / DEMO / ITEM_SCORES)
    add = items[(items["task"] == "sft_demo_add") & (items["metric"] == "exact_match")]
    assert set(add["group"]) == {"sft_demo_short"} and len(add) == 3 * 100  # 100 items per family, three models


def test_publish_copies_an_evaluation_without_its_raw_files(tmp_path, monkeypatch):
    raw = tmp_path / RAW_RESULTS_ROOT / "demo" / "20261206_192601"
    shutil.copytree(ROOT / DEMO, raw)
    for junk in ("predictions/base/sft_demo_add.jsonl", "lm_eval_tasks/demo/add.yaml", "results/base.json"):
        (raw / junk).parent.mkdir(parents=True, exist_ok=True)
        (raw / junk).write_text("{}\n")  # what an evaluation also writes, never published
    (raw / "Comparison.png").write_bytes((ROOT / "assets" / "Comparison.png").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["publish", f"{RAW_RESULTS_ROOT}/demo/20261206_192601"]) == 0
    out = tmp_path / DEMO
    published = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert published == sorted(["Comparison.png", "heldout.json", ITEM_SCORES, "settings.json",
                                *(f"summary/{p.name}" for p in (ROOT / DEMO / "summary").iterdir())])
    assert (out / ITEM_SCORES).read_bytes() == (ROOT / DEMO / ITEM_SCORES).read_bytes()
    (raw / "summary" / "confidence.md").unlink()  # publishing again replaces the published copy
    publish(raw)
    assert not (out / "summary" / "confidence.md").exists()
    # the pages read the published copy
    table = render_spec(f"groups {DEMO} --pair unmasked,masked", tmp_path)
    assert table == render_spec(f"groups {DEMO} --pair unmasked,masked", ROOT)


def test_publish_copies_a_sweep_with_each_pairs_newest_evaluation(tmp_path, monkeypatch):
    raw = tmp_path / RAW_RESULTS_ROOT / "sweep-x"
    shutil.copytree(ROOT / "evaluation_results/sweep-long-output/summary", raw / "summary")
    for name in ("sweep.csv", "differences.csv"):
        shutil.copyfile(ROOT / "evaluation_results/sweep-long-output" / name, raw / name)
    (raw / SWEEP_PLOT).write_bytes(b"png")
    shutil.copytree(ROOT / DEMO, raw / "w0_s1" / "20261206_192601")
    shutil.copytree(ROOT / DEMO, raw / "w0_s1" / "20261206_200000")  # the newest: the one the sweep read
    (raw / "w0_s1" / "20261206_210000").mkdir()  # an evaluation that never finished: skipped
    (raw / SWEEP_SESSIONS).write_text('{"sessions": []}')  # the sweep's session record (command, machine, wall time)
    monkeypatch.chdir(tmp_path)
    out = publish(f"{RAW_RESULTS_ROOT}/sweep-x")
    assert out == published_path(f"{RAW_RESULTS_ROOT}/sweep-x") == __import__("pathlib").Path(RESULTS_ROOT, "sweep-x")
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted(
        ["summary", "sweep.csv", "differences.csv", SWEEP_PLOT, SWEEP_SESSIONS, "w0_s1"])
    assert [p.name for p in (tmp_path / out / "w0_s1").iterdir()] == ["20261206_200000"]
    assert (tmp_path / out / "w0_s1" / "20261206_200000" / ITEM_SCORES).is_file()


def test_publish_copies_a_case_study_without_its_raw_generations(tmp_path, monkeypatch):
    raw = tmp_path / CASE_STUDY_DIR
    raw.mkdir(parents=True)
    for ext in (".md", ".json"):
        shutil.copyfile(ROOT / f"{CASE_STUDY}{ext}", raw / f"20261206_192656{ext}")
    (raw / "20261206_192656.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["publish", f"{CASE_STUDY_DIR}/20261206_192656.md"]) == 0
    assert sorted(p.name for p in (tmp_path / "evaluation_results/case_study").iterdir()) == [
        "20261206_192656.json", "20261206_192656.md"]


def test_publish_refuses_what_is_not_raw_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    assert main(["publish", "elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "is not under evaluation_results/raw/" in err and "\n" not in err.strip()
    (tmp_path / RAW_RESULTS_ROOT / "demo" / "1").mkdir(parents=True)
    assert main(["publish", f"{RAW_RESULTS_ROOT}/demo/1"]) == 2
    assert "neither an evaluation" in capsys.readouterr().err


def test_a_page_cannot_cite_a_raw_folder():
    with pytest.raises(ValueError, match="python -m sft publish evaluation_results/raw/demo/1"):
        render_spec("heldout evaluation_results/raw/demo/1", ROOT)


IGNORED = ["evaluation_results/raw/demo/20260101_000000/predictions/base/x.jsonl",
           "evaluation_results/raw/case_study/20260101_000000.jsonl", "evaluation_results/raw/sweep-demo/plw_sweep.png",
           "tensorboard_events/demo/masked_finetune_tfb/events.out.tfevents.1", "model/demo/masked/model.safetensors",
           "Dataset/demo/train.jsonl", ".cache/sft/x"]  # what make demo, make demo-chat and sweeps write
PUBLISHED = ["evaluation_results/demo/20261206_192601/item_scores.csv", "evaluation_results/sweep-demo/sweep.csv",
             "evaluation_results/case_study/20261206_192656.md"]  # what publish writes: committed


@pytest.mark.slow  # launches git
def test_what_studies_write_is_ignored_by_git_and_what_publish_writes_is_not():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "--no-index", *IGNORED, *PUBLISHED], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.stdout.split() == IGNORED

"""Provenance blocks (sft pages provenance): commit, machine, date, command and wall times of a published evaluation or
sweep, from what publish copies; what a result predates is "not recorded"."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import ROOT

from sft.evaluation.pages import render_spec
from sft.evaluation.provenance import provenance_rows
from sft.runs.layout import SWEEP_SESSIONS
from sft.runs.manifest import (
    command_line,
    cpu_model,
    end_session,
    machine_info,
    start_session,
)

DEMO = "evaluation_results/demo/20261206_192601"


def test_command_line_is_what_the_user_typed():
    assert command_line(["/x/sft/__main__.py", "sweep", "--name", "a b"]) == "python -m sft sweep --name 'a b'"
    assert command_line(["eval.py", "--models", "m=x"]) == "python eval.py --models m=x"


def test_machine_info_names_the_cpu_and_torch_threads():
    m = machine_info()
    assert m["torch_threads"] == torch.get_num_threads() and m["cpu"] == cpu_model() and m["cpu"]


def test_an_old_sweep_says_what_it_did_not_record_and_derives_the_run_time_from_timestamps():
    rows = dict(provenance_rows(ROOT / "evaluation_results/sweep-long-output"))
    assert rows["runs"] == "16 fine-tuned (16 evaluations)"
    assert rows["commit (training)"] == rows["commit (evaluation)"] == "`c81b47f2a7da`"
    assert rows["machine"] == rows["command"] == rows["wall time, whole sweep"] == "not recorded"
    # the 16 manifests' written_at, sorted: 15 gaps whose median (the 8th) is 102 s
    assert rows["wall time per run, from timestamps"].startswith("median 102 s between consecutive runs' ends")
    assert rows["date"] == "evaluated 2026-12-06 19:56 to 2026-12-06 20:22"
    assert rows["base (weights SHA-256)"] == "`model/demo/base` not recorded"  # trained before runs recorded it


@pytest.mark.slow  # start_session asks git for the commit (a process)
def test_a_sweep_with_sessions_gives_its_command_machine_and_wall_times(tmp_path):
    sweep = tmp_path / "sweep-x"
    for pair, train_s, timings in (("w0_s1", 90.0, {"heldout_s": 1.0, "benchmarks_s": 9.0}),
                                   ("w1_s1", 110.0, {"heldout_s": 2.0, "benchmarks_s": 10.0})):
        run = sweep / pair / "20261208_000000"
        shutil.copytree(ROOT / DEMO, run)
        settings = json.loads((run / "settings.json").read_text())
        manifest = settings["models"]["masked"]["manifest"]
        manifest.update(train_run_seconds=train_s, machine={"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2})
        if pair == "w0_s1":  # one run records the base's weights, the other predates the record
            manifest["base_weights_sha256"] = "ab" * 32
        settings["models"] = {pair: settings["models"]["masked"]}
        settings["timings_s"] = {pair: timings}
        (run / "settings.json").write_text(json.dumps(settings))
    end_session(sweep, start_session(sweep))
    start_session(sweep)  # a second session, interrupted: no end
    sessions = json.loads((sweep / SWEEP_SESSIONS).read_text())["sessions"]
    assert len(sessions) == 2 and sessions[0]["wall_seconds"] >= 0 and sessions[1]["wall_seconds"] is None
    sessions[0]["wall_seconds"] = 250.0  # a known total for the golden row
    sessions[0]["command"] = sessions[1]["command"] = "python -m sft sweep --name x"
    (sweep / SWEEP_SESSIONS).write_text(json.dumps({"sessions": sessions}))
    rows = dict(provenance_rows(sweep))
    assert rows["command"] == "`python -m sft sweep --name x`"
    assert rows["wall time, whole sweep"] == ("250 s (4.2 min) over 1 session(s); 1 session(s) interrupted, "
                                               "not counted")
    assert rows["wall time, training per run"] == "median 100 s [90-110 s] over 2 runs"
    assert rows["wall time, evaluation per model"] == "median 11 s [10-12 s] over 2 models"
    assert "Test CPU, 2 logical cores, torch threads 2" in rows["machine"]
    assert "wall time per run, from timestamps" not in rows  # recorded, so not derived
    assert rows["base (weights SHA-256)"] == "`model/demo/base` `abababababab` (1); `model/demo/base` not recorded (1)"


def test_the_provenance_table_is_a_page_block():
    table = render_spec(f"provenance {DEMO}", ROOT)
    assert table.splitlines()[0] == "| provenance | `demo/20261206_192601` |"
    assert "| machine | not recorded |" in table and "| commit (training) | `bc75c0d890e1+dirty` |" in table
    # the pretrained demo: its runs predate the record, its base.json names the weights the base column scored
    table = render_spec("provenance evaluation_results/demo/20261207_234922", ROOT)
    assert ("| base (weights SHA-256) | `model/demo/base` not recorded; the base evaluated beside them (base.json): "
            "`b4bd2513eae2` |") in table


def test_one_block_covers_a_studys_variants():
    table = render_spec("provenance evaluation_results/sweep-template-rw-template0 --also "
                        "evaluation_results/sweep-template-rw-template0.5", ROOT)
    assert table.splitlines()[0] == "| provenance | `sweep-template-rw-template0` + `sweep-template-rw-template0.5` |"
    assert "| runs | 6 fine-tuned (6 evaluations) |" in table


def test_sessions_side_by_side_count_their_clock_time_once():
    """Two processes on disjoint seeds of one sweep: the sessions' times add up to more than the clock time they
    cover (their intervals' union), which the table gives beside the sum."""
    from sft.evaluation.provenance import _clock_seconds

    def session(start, end):
        return {"finished_at": f"2026-12-08T00:{end:02d}:00+00:00", "wall_seconds": 60.0 * (end - start)}

    assert _clock_seconds([session(0, 30), session(1, 31), session(40, 41)]) == 60.0 * 32  # 0-31 and 40-41
    assert _clock_seconds([session(0, 10), session(10, 20)]) == 1200.0  # one after the other: the sum
    assert _clock_seconds([{"finished_at": None, "wall_seconds": None}]) == 0.0  # an interrupted session

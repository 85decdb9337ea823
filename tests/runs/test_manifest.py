"""sft.runs.manifest: the base weights a run records; a sweep's provenance.json keeps every session of two processes
that share the sweep."""

import json
import subprocess
import sys
import time

import pytest

from helpers import ROOT

from sft.runs.manifest import recorded_weights_sha256

SESSIONS = """
import sys, time
from pathlib import Path
from sft.runs.manifest import end_session, start_session
root, go = Path(sys.argv[1]), float(sys.argv[2])
while time.time() < go:  # both processes start together
    time.sleep(0.001)
for _ in range(15):
    end_session(root, start_session(root))
"""


@pytest.mark.slow  # launches two processes
def test_two_processes_on_one_sweep_keep_every_session(tmp_path):
    """--seeds 1-4 and --seeds 5-8 in two processes: each start and end rewrites provenance.json under a lock, so no
    session is lost and each end lands on its own session (without the lock, one process's rewrite drops the
    other's sessions)."""
    go = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", SESSIONS, str(tmp_path), str(go)], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    sessions = json.loads((tmp_path / "provenance.json").read_text())["sessions"]
    assert len(sessions) == 30
    assert all(s["finished_at"] and s["wall_seconds"] is not None for s in sessions)


def test_a_run_records_the_base_weights_only_where_the_base_records_them(tmp_path):
    (tmp_path / "build_info.json").write_text(json.dumps({"fingerprint": "f", "weights_sha256": "ab" * 32}))
    assert recorded_weights_sha256(tmp_path) == "ab" * 32
    (tmp_path / "build_info.json").write_text("{not json")  # a damaged record: nothing claimed, no crash
    assert recorded_weights_sha256(tmp_path) is None
    assert recorded_weights_sha256("Qwen/Qwen2.5-0.5B") is None  # a hub id: no build record to read

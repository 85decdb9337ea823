"""The two notebooks: thin, identical but for the parameters cell, stripped, runnable top to bottom, and safe to
run again: a second run continues the first, never deletes it."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from helpers import ROOT, demo_dialogues, demo_overrides
from sft.runs.checkpoints import (
    checkpoint_problem, checkpoint_step, last_complete_checkpoint, list_checkpoints, run_is_complete,
)

NOTEBOOKS = ("finetune_masked.ipynb", "finetune_unmasked.ipynb")


def _cells(name):
    return json.loads((ROOT / name).read_text())["cells"]


def test_notebooks_differ_only_in_their_parameters_cell():
    masked, unmasked = (_cells(n) for n in NOTEBOOKS)
    assert len(masked) == len(unmasked)
    differing = [i for i, (a, b) in enumerate(zip(masked, unmasked)) if a["source"] != b["source"]]
    assert len(differing) == 1
    cell = masked[differing[0]]
    assert "parameters" in cell["metadata"].get("tags", []) and unmasked[differing[0]]["metadata"] == cell["metadata"]


def test_papermill_reads_every_parameter():
    import papermill

    for name in NOTEBOOKS:
        cell = "".join(next(c for c in _cells(name) if "parameters" in c["metadata"].get("tags", []))["source"])
        names = [line.split("=")[0].strip() for line in cell.splitlines() if line and not line.startswith("#")]
        # papermill skips (with "Unable to parse line") a line whose comment holds "=": those would lose their help.
        assert list(papermill.inspect_notebook(str(ROOT / name))) == names, name


def test_notebooks_are_thin_and_stripped():
    for name in NOTEBOOKS:
        for cell in _cells(name):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, name
                assert "def " not in "".join(cell["source"]), f"{name}: move functions into the sft package"


@pytest.mark.slow
@pytest.mark.parametrize("name, w", [("finetune_masked.ipynb", 0.0), ("finetune_unmasked.ipynb", 1.0)])
def test_notebook_runs_top_to_bottom(demo_root, tmp_path, name, w):
    import papermill

    out = tmp_path / name
    overrides = {**demo_overrides(demo_root), "max_steps": 6, "eval_steps": 3, "save_steps": 3, "logging_steps": 2}
    papermill.execute_notebook(str(ROOT / name), str(out), cwd=str(tmp_path), kernel_name="python3",
                               parameters={"overrides": overrides, "run_name": f"nb-{w}"}, progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the length histogram and the loss curves
    said = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "weights set by sft.core.weights.step_weights" in said  # the rule's example, token by token
    counts = rf"tokens by role: template \d+ at {w:g}, user \d+ at {w:g}, assistant \d+ at 1; this example adds"
    assert re.search(counts, said)
    manifest = json.loads((demo_root / "model/demo" / f"nb-{w}" / "run_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["prompt_loss_weight"] == w


@pytest.mark.slow
def test_a_notebook_trains_on_your_conversations(demo_root, tmp_path):
    import papermill

    chats = demo_dialogues(demo_root, 40, seed=0)
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    out = tmp_path / "chat.ipynb"
    overrides = {**demo_overrides(demo_root), "max_steps": 4, "eval_steps": 2, "save_steps": 4, "logging_steps": 2,
                 "eval_size": 8}
    del overrides["data.data"], overrides["data.eval_data"]  # the parameter gives the data; held out: a split of it
    papermill.execute_notebook(str(ROOT / "finetune_masked.ipynb"), str(out), cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False,
                               parameters={"dataset": str(tmp_path / "chats.jsonl"), "overrides": overrides,
                                           "run_name": "nb-chat"})
    executed = json.loads(out.read_text())
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    said = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   for c in executed["cells"] for o in c.get("outputs", []))
    assert "[[turn 1 user, weight 0: " in said and "[[turn 2 assistant, weight 1: " in said  # the example, by turn
    assert "weights set by sft.core.weights.step_weights" in said
    manifest = json.loads((demo_root / "model/demo/nb-chat/run_manifest.json").read_text())
    assert manifest["data"]["conversations"] and manifest["data"]["eval_examples"] == 8
    assert manifest["config"]["data"]["data"] == str(tmp_path / "chats.jsonl")
    assert manifest["config"]["data"]["eval_data"] is None


def test_the_data_parameter_reaches_the_config():
    for name in NOTEBOOKS:
        cells = ["".join(c["source"]) for c in _cells(name)]
        params = next(c for c, raw in zip(cells, _cells(name)) if "parameters" in raw["metadata"].get("tags", []))
        assert "dataset = None" in params, name
        config = next(c for c in cells if "cfg = load_config(" in c)
        assert 'your_data = {} if dataset is None else {"data": dataset}' in config and "**your_data" in config


def test_the_parameters_cell_deletes_nothing_by_default():
    for name in NOTEBOOKS:
        cell = "".join(next(c for c in _cells(name) if "parameters" in c["metadata"].get("tags", []))["source"])
        assert 'resume = "auto"' in cell and "overwrite = False" in cell, name


def _kill_training_notebook(name, run, out, parameters):
    """Run a notebook with papermill in another process and kill its kernel once two checkpoints are complete,
    as a crash or a closed laptop would; return the checkpoints complete at that moment."""
    script = (f"import json, papermill; papermill.execute_notebook({str(ROOT / name)!r}, {str(out)!r}, "
              f"cwd={str(out.parent)!r}, kernel_name='python3', progress_bar=False, "
              f"parameters=json.loads({json.dumps(parameters)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        last = last_complete_checkpoint(run)
        if last is not None and checkpoint_step(last) >= 6:
            break
        time.sleep(0.05)
    import psutil  # installed with ipykernel, which runs the notebooks

    for child in psutil.Process(proc.pid).children(recursive=True):  # the kernel: training dies mid-run
        child.kill()
    proc.wait(timeout=120)
    assert proc.returncode != 0, "the notebook finished before its kernel could be killed"
    return [c for c in list_checkpoints(run) if checkpoint_problem(c) is None]


@pytest.mark.slow
def test_a_notebook_run_again_resumes_and_keeps_the_checkpoints(demo_root, tmp_path):
    import papermill

    name, run = "finetune_masked.ipynb", demo_root / "model/demo/nb-again"
    overrides = {**demo_overrides(demo_root), "save_steps": 3, "eval_steps": 1000, "logging_steps": 3}
    kept = _kill_training_notebook(name, run, tmp_path / "first.ipynb",
                                   {"overrides": {**overrides, "max_steps": 5000}, "run_name": run.name})
    assert len(kept) >= 2 and not run_is_complete(run)
    files = {p: p.stat().st_mtime_ns for c in kept for p in c.rglob("*") if p.is_file()}
    end = checkpoint_step(kept[-1]) + 3
    papermill.execute_notebook(str(ROOT / name), str(tmp_path / "again.ipynb"), cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False,
                               # a shorter run than the one killed: its length changes, so resume says it (#31)
                               parameters={"overrides": {**overrides, "max_steps": end}, "run_name": run.name,
                                           "resume": True})
    assert {p: p.stat().st_mtime_ns for p in files} == files  # the first run's checkpoints are intact
    assert run_is_complete(run) and checkpoint_step(list_checkpoints(run)[-1]) == end
    history = json.loads((run / "log_history.json").read_text())
    assert history[-1]["step"] == end and min(h["step"] for h in history) < checkpoint_step(kept[-1])  # one history
    executed = json.loads((tmp_path / "again.ipynb").read_text())
    said = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert f"resuming {run} from {kept[-1].name} (resume=true)" in said

"""The two notebooks: thin, identical but for the parameters cell, stripped, and runnable top to bottom."""

import json

import pytest

from conftest import ROOT, demo_overrides

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
    manifest = json.loads((demo_root / "model/demo" / f"nb-{w}" / "run_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["prompt_loss_weight"] == w

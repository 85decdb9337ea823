"""The offline demo: synthetic data and a tiny base model built here, then the whole study."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sft.config import DemoConfig

NOTEBOOKS = {"masked": "finetune_masked.ipynb", "unmasked": "finetune_unmasked.ipynb"}  # run name -> notebook


def tiny_model_config(demo: DemoConfig):
    """The TinyModelConfig of a demo config."""
    from sft.modeling import TinyModelConfig

    return TinyModelConfig(
        vocab_size=demo.vocab_size,
        hidden_size=demo.hidden_size,
        num_hidden_layers=demo.num_hidden_layers,
        num_attention_heads=demo.num_attention_heads,
        num_key_value_heads=demo.num_key_value_heads,
        intermediate_size=demo.intermediate_size,
        seed=demo.model_seed,
    )


def ensure_demo_dataset(demo: DemoConfig) -> dict[str, Path]:
    """Write the synthetic splits to demo.dataset_dir unless the same ones are already there."""
    from sft import synthetic

    out = Path(demo.dataset_dir)
    paths = {name: out / f"{name}.jsonl" for name in ("train", "heldout", "test")}
    manifest = out / "manifest.json"
    wanted = {"train": demo.n_train, "heldout": demo.n_heldout, "test": demo.n_test}
    # The generator's own source is part of the key: editing a task family rebuilds the data.
    generator = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]
    if manifest.is_file() and all(p.is_file() for p in paths.values()):
        m = json.loads(manifest.read_text())
        if m.get("seed") == demo.data_seed and m.get("counts") == wanted and m.get("generator") == generator:
            return paths
    built = synthetic.build_demo_dataset(out, demo.n_train, demo.n_heldout, demo.n_test, seed=demo.data_seed)
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "generator": generator}, indent=2) + "\n")
    return built


def ensure_demo_assets(demo: DemoConfig) -> Path:
    """Build (or reuse) the demo data and base model; return the base model folder."""
    from sft.modeling import ensure_demo_base

    paths = ensure_demo_dataset(demo)
    return ensure_demo_base(demo.base_dir, paths["train"], tiny_model_config(demo))


def run_notebook(notebook: str, run_dir: Path, parameters: dict) -> Path:
    """Execute a notebook with papermill; the executed copy goes into the run folder, not over the original."""
    import papermill

    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / notebook.replace(".ipynb", ".executed.ipynb")
    papermill.execute_notebook(notebook, str(out), parameters=parameters, kernel_name="python3", log_output=False,
                               progress_bar=True)
    return out


def run_demo(steps: tuple[str, ...] = ("train", "evaluate", "case-study"), overrides: dict | None = None) -> None:
    """The whole offline study: build, fine-tune masked and unmasked (notebooks), evaluate, compare."""
    import time

    from sft.config import load_config
    from sft.train import run_dir

    overrides = dict(overrides or {})
    cfg = load_config("demo", **overrides)
    t0 = time.perf_counter()
    ensure_demo_assets(cfg.demo)
    runs = {}
    for run, notebook in NOTEBOOKS.items():
        runs[run] = run_dir(load_config("demo", run_name=run, **overrides))
        if "train" in steps:
            t = time.perf_counter()
            out = run_notebook(notebook, runs[run], {"overrides": overrides})
            print(f"[demo] {notebook}: {time.perf_counter() - t:.0f} s, executed copy in {out}", flush=True)
    if "evaluate" in steps:
        from sft.evaluate import evaluate_models
        from sft.report import compare

        t = time.perf_counter()
        models = {"base": cfg.demo.base_dir, **{run: str(path) for run, path in runs.items()}}
        result = evaluate_models(models, name="demo")
        print(compare([result], out="assets"), flush=True)
        print(f"[demo] evaluation and comparison: {time.perf_counter() - t:.0f} s, results in {result}, "
              "plot and spreadsheet in assets/", flush=True)
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s", flush=True)

"""The offline demo: synthetic data and a tiny base model built here, then the whole study."""

from __future__ import annotations

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
    from sft.synthetic import build_demo_dataset

    out = Path(demo.dataset_dir)
    paths = {name: out / f"{name}.jsonl" for name in ("train", "heldout", "test")}
    manifest = out / "manifest.json"
    wanted = {"train": demo.n_train, "heldout": demo.n_heldout, "test": demo.n_test}
    if manifest.is_file() and all(p.is_file() for p in paths.values()):
        m = json.loads(manifest.read_text())
        if m.get("seed") == demo.data_seed and m.get("counts") == wanted:
            return paths
    return build_demo_dataset(out, demo.n_train, demo.n_heldout, demo.n_test, seed=demo.data_seed)


def ensure_demo_assets(demo: DemoConfig) -> Path:
    """Build (or reuse) the demo data and base model; return the base model folder."""
    from sft.modeling import ensure_demo_base

    paths = ensure_demo_dataset(demo)
    return ensure_demo_base(demo.base_dir, paths["train"], tiny_model_config(demo))

"""LoRA / QLoRA through peft (sft/models/lora.py): settings, what trains, saving and merging, resume, evaluation, plan."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import QWEN_TOKENIZER, SHARED, TESTS, demo_cli_args, demo_config
from sft.core.config import ExperimentConfig, LoraSettings
from sft.core.overrides import load_config
from sft.runs.layout import run_dir
from sft.models.lora import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGED_DIR, is_adapter_dir, lora_config, quantization_config,
)
from sft.core.config import load_run_config
from sft.runs.manifest import read_manifest

QWEN25_7B = TESTS / "fixtures" / "qwen2.5-7b"  # Qwen2.5-7B's config.json (no weights)


# ---------------------------------------------------------------- settings


def test_any_lora_field_turns_adapters_on_and_round_trips():
    from sft.cli.main import _parse_overrides

    assert load_config("demo").lora is None  # full fine-tuning unless asked
    cfg = load_config("demo", **_parse_overrides(["--lora.r", "4", "--lora.target-modules", "q_proj,v_proj",
                                                  "--lora.merge", "--prompt-loss-weight", "1"]))
    # The demo's preset default: its randomly initialised base also needs the final norm trained (sft/core/config.py).
    assert cfg.lora == LoraSettings(r=4, target_modules="q_proj,v_proj", merge=True, modules_to_save="model.norm")
    assert load_config("qwen2.5-0.5b-alpaca", **{"lora.r": 4}).lora == LoraSettings(r=4)
    assert cfg.train.run_name == "lora-unmasked"  # never the full run's folder
    assert ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the manifest's round trip
    # The notebooks' overrides dict: dotted names, or the whole section.
    assert load_config("demo", **{"lora.alpha": 32}).lora.alpha == 32
    assert load_config("demo", lora={"r": "16", "modules_to_save": None}).lora == LoraSettings(r=16)
    assert load_config("demo", **{"lora": "true", "lora.modules_to_save": "none"}).lora == LoraSettings()
    assert load_config("demo", **{"lora.r": 4, "lora": "none"}).lora is None
    assert load_config("demo", **{"lora.qlora": True}).train.run_name == "qlora-masked"
    with pytest.raises(ValueError, match="lora has no field 'rank'"):
        load_config("demo", **{"lora.rank": 8})
    with pytest.raises(ValueError, match="Cannot read 'x' as int for lora.r"):
        load_config("demo", **{"lora.r": "x"})


def test_lora_settings_become_peft_config():
    config = lora_config(LoraSettings(r=4, alpha=8, target_modules="q_proj, v_proj", modules_to_save="model.norm"))
    assert (config.r, config.lora_alpha, config.task_type) == (4, 8, "CAUSAL_LM")
    assert set(config.target_modules) == {"q_proj", "v_proj"} and config.modules_to_save == ["model.norm"]
    assert lora_config(LoraSettings()).target_modules == "all-linear"
    for bad, match in ((LoraSettings(r=0), "lora.r must be at least 1"), (LoraSettings(bias="some"), "lora.bias"),
                       (LoraSettings(target_modules=""), "target_modules is empty")):
        with pytest.raises(ValueError, match=match):
            lora_config(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only error of QLoRA")
def test_qlora_on_the_cpu_is_a_clear_error(demo_root, capsys):
    from sft.cli.main import main

    with pytest.raises(ValueError, match="lora.qlora needs a CUDA GPU"):
        quantization_config(torch.bfloat16)
    cfg = demo_config(demo_root, run_name="qlora", **{"lora.qlora": True})
    # The small demo's sizes too (demo_cli_args): other sizes would rebuild the session's base model.
    assert main(["train", *demo_cli_args(demo_root), "--lora.qlora", "--run-name", "qlora"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err
    assert not run_dir(cfg).exists()  # refused before anything was written


def test_an_adapted_head_is_refused_with_the_selective_head(demo_root):
    from sft.models.lora import add_adapter
    from sft.models.load import load_model

    model = load_model(demo_config(demo_root).model)
    with pytest.raises(ValueError, match="adapts the LM head"):
        add_adapter(model, LoraSettings(target_modules="q_proj,lm_head"), selective_head=True)


# ---------------------------------------------------------------- training


def _base_names(name: str) -> str:
    """A PeftModel parameter's name in the base model's state dict."""
    return name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")


def _lora_run(root, w, name, **overrides):
    from sft.core.train import train

    settings = dict(max_steps=40, eval_steps=20, save_steps=20, logging_steps=10, overwrite=True, **{"lora.r": 8})
    cfg = demo_config(root, run_name=name, prompt_loss_weight=w, **{**settings, **overrides})
    return cfg, train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("w", [0.0, 1.0])
def test_lora_run_trains_the_adapter_only_learns_and_merges_exactly(demo_root, one_thread, w):
    from sft.evaluation.evaluate import evaluate_models
    from sft.core.train import build_trainer

    base_dir = Path(demo_config(demo_root).model.model)
    base = load_file(base_dir / "model.safetensors")
    cfg, trainer = _lora_run(demo_root, w, f"lora-w{w:g}", **{"lora.merge": True})
    out = run_dir(cfg)

    # Only the adapter trained: every base weight is bit-identical, and the adapter moved.
    trained = []
    for name, p in trainer.model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            trained += [name] if p.requires_grad else []
            continue
        assert not p.requires_grad and torch.equal(p.detach(), base[_base_names(name)]), name
    layers = trainer.model.config.num_hidden_layers
    assert len([n for n in trained if "lora_A" in n]) == layers * 7  # q, k, v, o, gate, up, down in every layer
    adapter = load_file(out / ADAPTER_WEIGHTS)
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero

    # Saved like peft's peers: the adapter in every checkpoint and the final folder, the tokenizer, the manifest.
    for folder in (out, out / "checkpoint-20", out / "checkpoint-40"):
        assert (folder / ADAPTER_WEIGHTS).is_file() and (folder / ADAPTER_CONFIG).is_file(), folder
    assert not (out / "model.safetensors").exists() and (out / "tokenizer.json").is_file()
    assert read_manifest(out)["status"] == "complete" and load_run_config(out) == cfg

    # The merged model: W + (alpha / r) B @ A for every adapted weight, the rest the base's.
    merged = load_file(out / MERGED_DIR / "model.safetensors")
    scale = cfg.lora.alpha / cfg.lora.r
    for key, w0 in base.items():
        a_key = "base_model.model." + key.replace(".weight", ".lora_A.weight")
        if a_key in adapter:
            delta = adapter[a_key.replace("lora_A", "lora_B")] @ adapter[a_key]
            torch.testing.assert_close(merged[key], w0 + scale * delta, rtol=0, atol=1e-6)
        elif key == "model.norm.weight":  # trained in full (the demo's modules_to_save): the adapter's copy
            assert torch.equal(merged[key], adapter["base_model.model." + key]) and not torch.equal(merged[key], w0)
        else:
            assert torch.equal(merged[key], w0), key

    # It learned: held-out response loss below the base model's.
    history = trainer.state.log_history
    final = [h["eval_response_loss"] for h in history if "eval_response_loss" in h][-1]
    base_loss = build_trainer(demo_config(demo_root, run_name="base-eval")).evaluate()["eval_response_loss"]
    assert final < base_loss - 0.1, (final, base_loss)

    # Evaluation takes the adapter folder and the merged model alike, with the same held-out metrics.
    result = evaluate_models({"adapter": str(out), "merged": str(out / MERGED_DIR)}, tasks=[],
                             out=demo_root / "evaluation_results", name=f"lora-w{w:g}")
    held = json.loads((result / "heldout.json").read_text())["models"]
    for key in ("response_loss", "response_token_accuracy", "prompt_loss"):
        assert held["adapter"][key] == pytest.approx(held["merged"][key], rel=1e-5, abs=1e-6), key
    assert held["adapter"]["response_loss"] == pytest.approx(final, rel=1e-4)  # the Trainer's own evaluation
    settings = json.loads((result / "settings.json").read_text())
    assert settings["models"]["adapter"]["adapter_of"] == str(base_dir)


@pytest.mark.slow
def test_case_study_generates_the_same_from_adapter_and_merged(demo_root, one_thread):
    from sft.evaluation import case_study as cs
    from sft.evaluation.settings import GenerationSettings

    cfg, _ = _lora_run(demo_root, 0.0, "lora-case", max_steps=10, save_steps=10, eval_steps=10,
                       **{"lora.merge": True})
    out = run_dir(cfg)
    specs = cs.resolve_models(cs.parse_models(f"adapter={out},merged={out / MERGED_DIR}"))
    assert all(s.run is not None for s in specs) and is_adapter_dir(out)
    rows = [{"instruction": "Count from 3 to 6.", "input": ""}, {"instruction": "What is 2 plus 5?", "input": ""}]
    study = cs.run_case_study(specs, rows, GenerationSettings(max_new_tokens=8), log=lambda *a: None)
    assert study.outputs["adapter"] == study.outputs["merged"]


@pytest.mark.slow
def test_resume_from_a_lora_checkpoint_gives_the_same_adapter(demo_root, one_thread):
    from sft.core.train import train

    common = dict(max_steps=30, save_steps=10, eval_steps=1000, logging_steps=5, seed=7)
    _lora_run(demo_root, 0.1, "lora-straight", **common)
    cfg, _ = _lora_run(demo_root, 0.1, "lora-stopped", **common)
    out = run_dir(cfg)
    # As if the run had been killed after checkpoint-10: later checkpoints and the final adapter are gone.
    for gone in ("checkpoint-20", "checkpoint-30"):
        shutil.rmtree(out / gone)
    for f in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        (out / f).unlink()
    resumed = demo_config(demo_root, run_name="lora-stopped", resume=True, prompt_loss_weight=0.1,
                          **{"lora.r": 8, **common})
    train(resumed)
    straight = load_file(run_dir(demo_config(demo_root, run_name="lora-straight")) / ADAPTER_WEIGHTS)
    again = load_file(out / ADAPTER_WEIGHTS)
    assert straight.keys() == again.keys()
    for k in straight:
        assert torch.equal(straight[k], again[k]), k


# ---------------------------------------------------------------- plan


def test_plan_counts_qwen25_7b_adapters_by_hand():
    from sft.core.costs import NF4_BYTES, method_memory
    from sft.core.plan import model_shape

    h, i, layers, vocab, kv = 3584, 18944, 28, 152064, 512  # Qwen2.5-7B: 28 heads of 128, 4 key-value heads
    shape = model_shape(str(QWEN25_7B), LoraSettings(r=16))
    linear = h * h + h * kv + h * kv + h * h + 3 * h * i  # q, k, v, o, gate, up, down
    per_layer = linear + h + kv + kv + 2 * h  # + the q/k/v biases and two RMSNorms
    assert shape["parameters"] == layers * per_layer + h + 2 * vocab * h == 7_615_616_512  # untied head
    assert shape["quantized_parameters"] == layers * linear and shape["largest_linear"] == h * i
    # LoRA on all-linear: r (in + out) per adapted layer.
    lora = (h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + i) + (i + h)
    assert shape["adapter_parameters"] == 16 * layers * lora == 40_370_176
    common = {"activations": 0, "head_logits_chunk": 0, "cuda_context": 0}
    n, a = 7_615_616_512, 40_370_176
    assert sum(method_memory("full", shape, 4, common).values()) == 16 * n  # fp32 weights, gradients, AdamW
    assert sum(method_memory("lora", shape, 2, common).values()) == 2 * n + 16 * a
    qlora = method_memory("qlora", shape, 2, common)
    assert qlora["frozen_weights"] == pytest.approx(layers * linear * NF4_BYTES + 4 * (n - layers * linear), abs=1)
    assert NF4_BYTES == pytest.approx(4.127 / 8, abs=1e-3)  # the QLoRA paper's 4.127 bits a weight


@pytest.fixture
def plan_rows(tmp_path):
    rows = [{"instruction": f"Add {k} and {k + 1}.", "input": "", "output": f"The sum is {2 * k + 1}."}
            for k in range(20)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


@pytest.mark.slow  # two plans of a 7B model: 5-8 s of CPU
def test_plan_says_which_method_fits_for_qwen25_7b(plan_rows, monkeypatch, capsys):
    from sft.cli.main import main
    from sft.core.costs import GIB
    from sft.core.plan import plan_run

    if not QWEN_TOKENIZER.exists():
        pytest.skip(f"{SHARED} is absent: the plan needs the Qwen2.5 tokenizer from ../shared")
    monkeypatch.chdir(plan_rows)
    over = dict(model=str(QWEN25_7B), tokenizer=str(QWEN_TOKENIZER), data="rows.jsonl", eval_size=0.1,
                cache_dir=".cache")
    p = plan_run(load_config("qwen2.5-0.5b-alpaca", **{**over, "lora.r": 16}))
    methods = {m["method"]: m for m in p["methods"]}
    assert p["method"] == "lora" and methods["lora"]["trainable_parameters"] == 40_370_176
    assert p["memory_bytes"]["frozen_weights"] == 4 * 7_615_616_512  # the preset's fp32: LoRA on it says so
    fits = {name: [g["fits"] for g in m["gpus"]] for name, m in methods.items()}  # [80 GB, 24 GB]
    # Full: 16 bytes a parameter (113 GiB) fits neither; LoRA's bf16 base (14 GiB) and QLoRA's (~7 GiB) both.
    assert fits == {"full": [False, False], "lora": [True, True], "qlora": [True, True]}
    assert methods["full"]["peak_memory_bytes"] > 16 * 7_615_616_512 > 80 * GIB
    # LoRA skips the frozen weights' gradients: 4 N T instead of 6 N T, so it takes less time.
    assert methods["lora"]["gpus"][0]["hours"] < methods["full"]["gpus"][0]["hours"]
    assert main(["plan", "--preset", "qwen2.5-0.5b-alpaca", *[f"--{k}={v}" for k, v in over.items()]]) == 0
    out = capsys.readouterr().out
    assert "* full fine-tuning 7,615,616,512 trainable" in out and "QLoRA" in out and "does NOT fit" in out

"""The reference experiment's path offline: a downloaded-looking Qwen2.5 folder and alpaca data, the two
notebooks, evaluate, compare, eval.py and auto_clean.py; and the one-line errors for bad downloads."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED
from sft.config import LOCAL_QWEN_DIR

PRESET = "qwen2.5-0.5b-alpaca"


def _need_shared():
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is absent: the reference tests need the project's ../shared folder beside the repo")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """A tiny Qwen2.5 stand-in and the data, laid out as after a download (built once for the module)."""
    from sft.reference import build_reference_fixture

    _need_shared()
    root = tmp_path_factory.mktemp("download")
    build_reference_fixture(root, SHARED)
    return root


def test_fixture_looks_like_the_download(fixture_root):
    from transformers import AutoConfig, AutoTokenizer

    from sft.reference import QWEN25_05B

    model = fixture_root / LOCAL_QWEN_DIR
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    config = json.loads((model / "config.json").read_text())
    for key in ("vocab_size", "tie_word_embeddings", "rope_theta", "rms_norm_eps", "max_position_embeddings",
                "bos_token_id", "eos_token_id", "torch_dtype", "architectures"):
        assert config[key] == QWEN25_05B[key], key
    assert config["num_attention_heads"] // config["num_key_value_heads"] == 14 // 2  # Qwen2.5-0.5B's head ratio
    assert config["hidden_size"] // config["num_attention_heads"] * config["num_attention_heads"] == config["hidden_size"]
    assert AutoConfig.from_pretrained(model).rope_parameters["rope_theta"] == 1e6  # the transformers 4 keys load
    tok = AutoTokenizer.from_pretrained(model)
    assert len(tok) == 151_665 and tok.eos_token_id == tok.pad_token_id == 151_643
    rows = json.loads((fixture_root / "Dataset" / "alpaca_data_cleaned.json").read_text())
    assert len(rows) == 7473 and set(rows[0]) == {"instruction", "input", "output"}


def _copy(fixture_root, tmp_path):
    """A private copy of the download to break."""
    root = tmp_path / "user"
    shutil.copytree(fixture_root, root)
    return root


def _fails_cleanly(root, monkeypatch, capsys, *args, expect=()):
    """The command exits 2 with one line naming the problem, and writes nothing."""
    from sft.__main__ import main

    monkeypatch.chdir(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for text in expect:
        assert text in err, err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # no run folder, cache or log
    return err


TRAIN = ("train", "--preset", PRESET, "--prompt-loss-weight", "0", "--max-steps", "1")


def test_model_folder_missing_files(fixture_root, tmp_path, monkeypatch, capsys):
    root = _copy(fixture_root, tmp_path)
    model = root / LOCAL_QWEN_DIR
    (model / "model.safetensors").unlink()
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=(str(LOCAL_QWEN_DIR), "lacks weights", "hf download"))
    (model / "tokenizer.json").unlink()
    _fails_cleanly(root, monkeypatch, capsys, "plan", "--preset", PRESET, expect=("lacks tokenizer.json",))
    (model / "config.json").unlink()  # an empty or incomplete folder is reported, never replaced by the hub copy
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=("lacks config.json",))


def test_wrong_architecture(fixture_root, tmp_path, monkeypatch, capsys):
    root = _copy(fixture_root, tmp_path)
    path = root / LOCAL_QWEN_DIR / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "architectures": ["BertForMaskedLM"],
                                "model_type": "bert"}))
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=("BertForMaskedLM", "not a causal LM"))


@pytest.mark.parametrize("change, expect", [({"eos_token_id": 151645}, "EOS '<|endoftext|>' (id 151643)"),
                                            ({"pad_token_id": 0}, "pad id 151643 is not the model's pad_token_id 0")])
def test_tokenizer_special_ids_differ_from_the_model(fixture_root, tmp_path, monkeypatch, capsys, change, expect):
    root = _copy(fixture_root, tmp_path)
    model = root / LOCAL_QWEN_DIR
    for name in ("config.json", "generation_config.json"):
        (model / name).write_text(json.dumps({**json.loads((model / name).read_text()), **change}))
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=(expect,))


def test_dataset_folder_without_a_usable_file(fixture_root, tmp_path, monkeypatch, capsys):
    root = _copy(fixture_root, tmp_path)
    data = root / "Dataset"
    (data / "alpaca_data_cleaned.json").rename(data / "alpaca_data_cleaned.json.gz")
    (data / "README.md").write_text("put your data here\n")
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN,
                   expect=("Dataset/ holds no usable data file", "alpaca_data_cleaned.json.gz", "--data"))
    (data / "alpaca_data_cleaned.json.gz").unlink()
    (data / "alpaca_data_cleaned.json").write_text("")  # an empty download
    _fails_cleanly(root, monkeypatch, capsys, "plan", "--preset", PRESET, expect=("Dataset/ holds no usable",))


@pytest.mark.slow
def test_reference_chain_runs_end_to_end(tmp_path):
    """Both notebooks on the preset, evaluate, compare, eval.py, auto_clean.py: every promised file appears."""
    from sft.__main__ import main
    from sft.reference import NOTEBOOK_OVERRIDES, reference_check

    _need_shared()
    out = reference_check(tmp_path / "ref", SHARED, main, log=lambda msg: None)  # raises if a promised file is missing
    root = out["root"]
    for run, w in (("masked", 0.0), ("unmasked", 1.0)):
        manifest = json.loads((root / "model" / PRESET / run / "run_manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["preset"] == PRESET and manifest["prompt_loss_weight"] == w
        config = manifest["config"]
        assert config["model"]["model"] == LOCAL_QWEN_DIR and config["data"]["data"] == "Dataset/alpaca_data_cleaned.json"
        assert config["train"]["gradient_accumulation_steps"] == 4 and config["train"]["per_device_train_batch_size"] == 4
        assert config["train"]["max_steps"] == NOTEBOOK_OVERRIDES["max_steps"]
    heldout = json.loads((out["evaluation"] / "heldout.json").read_text())
    assert list(heldout["models"]) == ["base", "masked", "unmasked"]
    assert all(m["examples"] == NOTEBOOK_OVERRIDES["eval_size"] for m in heldout["models"].values())
    summary = (out["evaluation"] / "summary" / f"summary_{out['evaluation'].name}.csv").read_text()
    assert summary.splitlines()[0] == "dataset,version,metric,mode,base,masked,unmasked"
    assert "heldout" in summary and "response_token_accuracy" in summary
    # auto_clean.py (--keep-last 1 --keep-best 0) kept the newest checkpoint and deleted the older one.
    assert [p.name for p in (root / "model" / PRESET / "masked").glob("checkpoint-*")] == [f"checkpoint-{NOTEBOOK_OVERRIDES['max_steps']}"]


def test_hub_ids_are_not_taken_for_folders():
    from sft.modeling import looks_local

    assert not looks_local("Qwen/Qwen2.5-0.5B")  # its ".5B" is no file suffix: the preset's hub fallback works
    assert looks_local("model/qwen2.5/transformers/0.5b/1") and looks_local("./mine") and looks_local("a/b/c")


@pytest.mark.slow
def test_unreachable_hub_model_is_a_clear_error(tmp_path, monkeypatch):
    """No local model folder and no network: the plan and training say where to download, exit code 2."""
    import sft.checks
    from sft.config import load_config

    (tmp_path / "Dataset").mkdir()
    (tmp_path / "Dataset" / "rows.json").write_text(json.dumps([{"instruction": "a", "output": "b"}] * 4))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "sft", "plan", "--preset", PRESET], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Cannot read the config of 'Qwen/Qwen2.5-0.5B'" in res.stderr and LOCAL_QWEN_DIR in res.stderr

    def offline(_):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sft.checks, "load_tokenizer", offline)
    with pytest.raises(ValueError, match="Cannot load 'Qwen/Qwen2.5-0.5B' from the Hugging Face Hub"):
        sft.checks.check_inputs(load_config(PRESET))

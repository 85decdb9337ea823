"""The reference experiment's path offline: a downloaded-looking Qwen2.5 folder and alpaca data, the two
notebooks, evaluate, compare, eval.py and auto_clean.py; and the one-line errors for bad downloads."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, SHARED, tokenize_batch
from sft.evaluation.side_effects import is_side_effect
from sft.runs.layout import LOCAL_QWEN_DIR

PRESET = "qwen2.5-0.5b-alpaca"
# Test rows of gsm8k, arc_challenge and hellaswag in the chain (make reference-check writes 8): gsm8k's generations
# (256 tokens at most, over 5-shot prompts, 5 passes) are most of the chain's time, and their cost grows with the rows.
BENCH_ROWS = 4


def _need_shared():
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is absent: the reference tests need the project's ../shared folder beside the repo")


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """A tiny Qwen2.5 stand-in and the data, laid out as after a download (built once for the module)."""
    from sft.studies.reference import build_reference_fixture

    _need_shared()
    root = tmp_path_factory.mktemp("download")
    build_reference_fixture(root, SHARED)
    return root


@pytest.mark.slow  # the fixture (a tiny model, the tokenizer saved) and the tokenizer loaded: 6 s of CPU
def test_fixture_looks_like_the_download(fixture_root):
    from transformers import AutoConfig, AutoTokenizer

    from sft.studies.reference import QWEN25_05B

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
    from sft.cli.main import main

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


@pytest.mark.slow  # the fixture and a copy of it checked: 3.5 s of CPU
def test_model_folder_missing_files(fixture_root, tmp_path, monkeypatch, capsys):
    root = _copy(fixture_root, tmp_path)
    model = root / LOCAL_QWEN_DIR
    (model / "model.safetensors").unlink()
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=(str(LOCAL_QWEN_DIR), "lacks weights", "hf download"))
    (model / "tokenizer.json").unlink()
    _fails_cleanly(root, monkeypatch, capsys, "plan", "--preset", PRESET, expect=("lacks tokenizer.json",))
    (model / "config.json").unlink()  # an empty or incomplete folder is reported, never replaced by the hub copy
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=("lacks config.json",))


@pytest.mark.slow  # the fixture and a copy of it checked: 3.5 s of CPU
def test_wrong_architecture(fixture_root, tmp_path, monkeypatch, capsys):
    root = _copy(fixture_root, tmp_path)
    path = root / LOCAL_QWEN_DIR / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "architectures": ["BertForMaskedLM"],
                                "model_type": "bert"}))
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=("BertForMaskedLM", "not a causal LM"))


@pytest.mark.parametrize("change, expect", [({"eos_token_id": 151645}, "EOS '<|endoftext|>' (id 151643)"),
                                            ({"pad_token_id": 0}, "pad id 151643 is not the model's pad_token_id 0")])
@pytest.mark.slow  # the fixture and the tokenizer re-saved and checked: 6-7 s of CPU
def test_tokenizer_special_ids_differ_from_the_model(fixture_root, tmp_path, monkeypatch, capsys, change, expect):
    root = _copy(fixture_root, tmp_path)
    model = root / LOCAL_QWEN_DIR
    for name in ("config.json", "generation_config.json"):
        (model / name).write_text(json.dumps({**json.loads((model / name).read_text()), **change}))
    _fails_cleanly(root, monkeypatch, capsys, *TRAIN, expect=(expect,))


@pytest.mark.slow  # the fixture and a copy of it checked: 3.5 s of CPU
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


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The whole reference chain, run once for the module (offline, as on a GPU user's machine without network)."""
    from sft.cli.reference_check import reference_check

    _need_shared()
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in offline}
    os.environ.update(offline)
    try:  # raises if a promised file is missing
        yield reference_check(tmp_path_factory.mktemp("ref") / "ref", SHARED, log=lambda msg: None,
                              bench_rows=BENCH_ROWS)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.slow
def test_reference_chain_runs_end_to_end(chain):
    """Both notebooks on the preset, evaluate, compare, eval.py, auto_clean.py: every promised file appears."""
    from sft.studies.reference import NOTEBOOK_OVERRIDES

    root = chain["root"]
    for run, w in (("masked", 0.0), ("unmasked", 1.0)):
        manifest = json.loads((root / "model" / PRESET / run / "run_manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["preset"] == PRESET and manifest["prompt_loss_weight"] == w
        config = manifest["config"]
        assert config["model"]["model"] == LOCAL_QWEN_DIR and config["data"]["data"] == "Dataset/alpaca_data_cleaned.json"
        assert config["train"]["gradient_accumulation_steps"] == 4 and config["train"]["per_device_train_batch_size"] == 4
        assert config["train"]["max_steps"] == NOTEBOOK_OVERRIDES["max_steps"]
    for evaluation in (chain["evaluation"], chain["heldout"]):
        heldout = json.loads((evaluation / "heldout.json").read_text())
        assert list(heldout["models"]) == ["base", "masked", "unmasked"]
        assert all(m["examples"] == NOTEBOOK_OVERRIDES["eval_size"] for m in heldout["models"].values())
    summary = (chain["heldout"] / "summary" / f"summary_{chain['heldout'].name}.csv").read_text()
    assert summary.splitlines()[0] == "dataset,version,metric,mode,base,masked,unmasked"
    assert "heldout" in summary and "response_token_accuracy" in summary
    # auto_clean.py (--keep-last 1 --keep-best 0) kept the newest checkpoint and deleted the older one.
    assert [p.name for p in (root / "model" / PRESET / "masked").glob("checkpoint-*")] == [f"checkpoint-{NOTEBOOK_OVERRIDES['max_steps']}"]


def _summary(evaluation):
    import pandas as pd

    return pd.read_csv(evaluation / "summary" / f"summary_{evaluation.name}.csv", dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_benchmark_rows_are_lm_evals_own_results(chain):
    """Every summary row is lm-eval's number for that task (or group), metric and filter, raw and @chat."""
    from sft.studies.reference import BENCH_TASKS, MMLU_SUBJECTS

    evaluation, summary = chain["evaluation"], _summary(chain["evaluation"])
    settings = json.loads((evaluation / "settings.json").read_text())
    assert settings["models"]["base"]["prompt_formats"] == ["raw"]  # base: raw prompts; fine-tuned: both
    assert settings["models"]["masked"]["prompt_formats"] == ["raw", "chat"]
    leaves = ["gsm8k", "arc_challenge", "hellaswag", *(f"mmlu_{s}" for s in MMLU_SUBJECTS), "mmlu_reference"]
    expected = set()
    for model in ("base", "masked", "unmasked"):
        for suffix in ("", "@chat") if model != "base" else ("",):
            res = json.loads((evaluation / "results" / f"{model}{suffix}.json").read_text())
            assert set(res["results"]) == set(leaves)
            for task, entry in res["results"].items():
                for key, value in entry.items():
                    if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                        continue
                    metric, filt = key.split(",")
                    label = metric if filt == "none" else f"{metric}_{filt}"
                    if task == "mmlu_reference":
                        label = "weighted_average"
                    row = summary[(summary["dataset"] == task + suffix) & (summary["metric"] == label)]
                    assert len(row) == 1, (task, label)
                    assert float(row[model].iloc[0]) == pytest.approx(100 * value, abs=0.005), (model, task, label)
                    expected.add((task + suffix, label))
    scores = summary[~summary["metric"].map(is_side_effect)]  # side effects: the generation tasks' own rows
    assert set(zip(scores["dataset"], scores["metric"])) == expected
    side = summary[summary["metric"].map(is_side_effect)]
    assert set(side["dataset"]) == {"gsm8k", "gsm8k@chat"}  # the one generation task; log-likelihood tasks get none
    assert {"exact_match_strict-match", "exact_match_flexible-extract", "acc", "acc_norm",
            "weighted_average"} <= set(summary["metric"])
    assert set(summary.loc[summary["dataset"].str.endswith("@chat"), "base"]) == {"-"}  # base: no chat pass
    modes = dict(zip(summary["dataset"], summary["mode"]))
    assert modes["gsm8k"] == "gen" and modes["arc_challenge@chat"] == "ppl" and modes["mmlu_reference"] == "ppl"
    # The group's average weighs its subjects by their item counts (6 and 10), as mmlu does its 57.
    res = json.loads((evaluation / "results" / "masked.json").read_text())["results"]
    sizes = list(MMLU_SUBJECTS.values())
    accs = [res[f"mmlu_{s}"]["acc,none"] for s in MMLU_SUBJECTS]
    assert res["mmlu_reference"]["acc,none"] == pytest.approx(sum(a * n for a, n in zip(accs, sizes)) / sum(sizes))
    assert settings["tasks"] == list(BENCH_TASKS)


@pytest.mark.slow
def test_differences_workbook_and_plot_hold_every_benchmark_row(chain):
    import pandas as pd

    from sft.evaluation.compare import comparison_panels, load_result, long_scores

    evaluation, summary = chain["evaluation"], _summary(chain["evaluation"])
    rows = set(zip(summary["dataset"], summary["metric"]))
    diffs = pd.read_csv(evaluation / "summary" / "differences.csv")
    # Every row whose score is a mean over items has an interval for each pair that has it (base: raw rows only).
    assert set(zip(diffs["dataset"], diffs["metric"])) == rows
    chat = diffs[diffs["dataset"].str.endswith("@chat")]
    assert set(zip(chat["model_a"], chat["model_b"])) == {("unmasked", "masked")}
    sheet = pd.read_excel(evaluation / "Dataset_results.xlsx", sheet_name="Scores")  # compare: beside the summary
    assert set(zip(sheet["dataset"], sheet["metric"])) == rows
    scores = long_scores([load_result(evaluation)])
    drawn = {r for panel in comparison_panels(list(dict.fromkeys(zip(scores["dataset"], scores["metric"]))))
             for r in panel}
    assert drawn == rows and (evaluation / "Comparison.png").stat().st_size > 10_000


@pytest.mark.slow
def test_fine_tuned_folders_carry_the_training_template(chain):
    """The final model and its checkpoint render, via apply_chat_template, the prompt ids training used."""
    from transformers import AutoTokenizer

    from sft.data.config import DataConfig
    from sft.data.rows import load_rows

    root = chain["root"]
    rows, _ = load_rows(str(root / "Dataset" / "alpaca_data_cleaned.json"))
    rows = rows[:200]
    base = AutoTokenizer.from_pretrained(root / LOCAL_QWEN_DIR)
    assert "<|im_start|>" in base.chat_template  # the base folder keeps Qwen's ChatML
    table = tokenize_batch({k: [r[k] for r in rows] for k in ("instruction", "input", "output")}, base,
                                DataConfig(data="unused", max_length=100_000)).to_pydict()
    expected = [ids[:len(ids) - sum(m)] for ids, m in zip(table["input_ids"], table["response_mask"])]
    for folder in (root / "model" / PRESET / "masked", root / "model" / PRESET / "masked" / "checkpoint-2"):
        tok = AutoTokenizer.from_pretrained(folder)
        got = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]}], add_generation_prompt=True,
                                       tokenize=True)["input_ids"] for r in rows]
        assert got == expected, folder


@pytest.mark.slow
def test_case_study_of_real_runs_prompts_with_held_out_rows(chain):
    settings = json.loads(chain["case_study"].with_suffix(".json").read_text())
    assert settings["prompts"]["source"].startswith("held-out rows of Dataset/alpaca_data_cleaned.json")
    records = [json.loads(line) for line in chain["case_study"].with_suffix(".jsonl").read_text().splitlines()]
    gsm8k = json.loads((chain["root"] / "Dataset" / "alpaca_data_cleaned.json").read_text())
    questions = {r["instruction"] for r in gsm8k}
    assert len({r["prompt_index"] for r in records}) == 8 and all(r["instruction"] in questions for r in records)
    assert all(r["prompt"].endswith("### Response:\n") for r in records)


@pytest.mark.slow
def test_task_without_local_data_is_one_paragraph_and_writes_nothing(chain, monkeypatch, capsys):
    from sft.cli.main import main
    from sft.studies.reference import BENCH_DIR

    root = chain["root"]
    monkeypatch.chdir(root)
    models = f"base={LOCAL_QWEN_DIR},masked=model/{PRESET}/masked"
    before = sorted((root / "evaluation_results").rglob("*"))
    assert main(["evaluate", "--models", models, "--tasks", "arc_easy", "--name", "nodata"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: lm-eval task arc_easy could not load its data") and "\n" not in err
    assert "--task-data arc_easy=FOLDER with test.jsonl" in err and "allenai/ai2_arc" in err
    assert sorted((root / "evaluation_results").rglob("*")) == before  # nothing half-written
    # A local folder that lacks the few-shot split gsm8k needs is named before anything loads.
    (root / "no_train").mkdir()
    (root / "no_train" / "test.jsonl").write_text((root / BENCH_DIR / "gsm8k" / "test.jsonl").read_text())
    assert main(["evaluate", "--models", models, "--tasks", "gsm8k", "--task-data", "gsm8k=no_train"]) == 2
    assert "needs train.jsonl" in capsys.readouterr().err
    assert sorted((root / "evaluation_results").rglob("*")) == before


@pytest.mark.slow
def test_dry_run_prints_every_task_and_its_cost(chain, monkeypatch, capsys):
    from sft.cli.main import main
    from sft.studies.reference import BENCH_DIR, BENCH_TASKS, MMLU_SUBJECTS

    monkeypatch.chdir(chain["root"])
    task_data = [f"{t}={BENCH_DIR}/{t}" for t in BENCH_TASKS]
    assert main(["evaluate", "--models", f"base={LOCAL_QWEN_DIR},masked=model/{PRESET}/masked",
                 "--tasks", ",".join(BENCH_TASKS), "--task-data", *task_data, "--include-path", f"{BENCH_DIR}/tasks",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 5 * 3 + 2  # header, 5 tasks x (base raw, masked raw, masked chat), 2 totals
    gsm = next(line for line in lines if line.startswith("| base ") and "| gsm8k " in line)
    # BENCH_ROWS questions x at most 256 tokens (gsm8k's own max_gen_toks)
    assert "generate_until" in gsm and f"| {BENCH_ROWS} " in gsm and f"{BENCH_ROWS * 256:,}" in gsm
    mmlu = next(line for line in lines if "mmlu_high_school_mathematics" in line)
    assert "multiple_choice" in mmlu and f"| {4 * MMLU_SUBJECTS['high_school_mathematics']} " in mmlu
    assert "assuming 20,000 prompt tokens/s" in out
    assert not (chain["root"] / "evaluation_results" / "raw" / PRESET / "dry").exists()


def test_hub_ids_are_not_taken_for_folders():
    from sft.models.tokenizer import looks_local

    assert not looks_local("Qwen/Qwen2.5-0.5B")  # its ".5B" is no file suffix: the preset's hub fallback works
    assert looks_local("model/qwen2.5/transformers/0.5b/1") and looks_local("./mine") and looks_local("a/b/c")


@pytest.mark.slow
def test_unreachable_hub_model_is_a_clear_error(tmp_path, monkeypatch):
    """No local model folder and no network: the plan and training say where to download, exit code 2."""
    import sft.models.checks
    from sft.core.overrides import load_config

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
    monkeypatch.setattr(sft.models.checks, "load_tokenizer", offline)
    with pytest.raises(ValueError, match="Cannot load 'Qwen/Qwen2.5-0.5B' from the Hugging Face Hub"):
        sft.models.checks.check_inputs(load_config(PRESET))

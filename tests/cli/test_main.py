"""`python -m sft`: flags built from the config, --column-map in every command, inspect-data figures, exit code 2
with one paragraph for user errors. In process (sft.__main__.main) except where the entry point itself is tested."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import QWEN_TOKENIZER, ROOT, demo_cli_args
from sft.cli import plan_cmd
from sft.cli.main import build_parser, config_values, main
from sft.cli.sweep_cmd import sweep_plot
from sft.core.overrides import field_help, section_classes
from sft.data.errors import UserError
from sft.evaluation.settings import BATCH_SIZE
from sft.evaluation.settings import MAX_GEN_TOKS
from sft.runs.layout import RAW_RESULTS_ROOT, SWEEP_PLOT, sweep_results_dir

RENAMED = [{"instruction": f"Name the capital of {c}.", "input": "", "my_col": a}
           for c, a in (("Peru", "Lima"), ("Cuba", "Havana"), ("Norway", "Oslo"), ("Poland", "Warsaw"))]


def help_of(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command", ["train", "plan", "sweep", "build-demo", "demo"])
def test_every_config_field_is_a_flag_with_its_comment_as_help(command, capsys):
    text = help_of(command, capsys)
    for section, cls in section_classes().items():
        for name, comment in field_help(cls).items():
            assert f"--{section}.{name.replace('_', '-')}" in text
            assert " ".join(comment.split()) in text, (section, name)
    assert "--learning-rate X, --train.learning-rate X" in text and "--seed N, --train.seed N" in text


def test_lora_flags_carry_its_name_and_the_old_spellings_are_refused(capsys):
    text = help_of("train", capsys)
    for flag in ("--lora-r N, --lora.r N", "--lora-alpha X, --lora.alpha X", "--lora-dropout X, --lora.dropout X",
                 "--lora-bias TEXT, --lora.bias TEXT", "--lora-merge [BOOL], --lora.merge [BOOL]"):
        assert flag in text
    assert "--r N" not in text and "--bias TEXT" not in text and "--merge [BOOL]" not in text
    args, extra = build_parser().parse_known_args(["train", "--lora-r", "4", "--lora-merge", "--lora-bias", "all"])
    assert config_values(args) == {"lora.r": "4", "lora.merge": "true", "lora.bias": "all"} and extra == []
    for old in ("--r", "--alpha", "--dropout", "--bias", "--target-modules", "--qlora", "--merge"):
        assert main(["train", old, "1"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {old} is now --lora-{old[2:]} (or --lora.{old[2:]})")


def test_flags_take_their_defaults_from_one_definition(capsys):
    text = help_of("inspect-data", capsys)
    assert "--max-length N, --data.max-length N tokens per example, prompt + response + EOS (default: 512)" in text
    evaluate = next(a for a in build_parser()._subparsers._group_actions[0].choices["evaluate"]._actions
                    if a.dest == "batch_size").container
    defaults = {a.dest: a.default for a in evaluate._actions}
    assert (defaults["batch_size"], defaults["max_gen_toks"], defaults["out"]) == (BATCH_SIZE, MAX_GEN_TOKS,
                                                                                   RAW_RESULTS_ROOT)


def test_column_map_works_in_every_command(demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "renamed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RENAMED))
    common = [*demo_cli_args(demo_root), "--data", str(data), "--eval-data", "none", "--eval-size", "1"]
    assert main(["plan", *common, "--json"]) == 2
    assert "no column for output" in capsys.readouterr().err  # the message that names --column-map
    assert main(["plan", *common, "--column-map", "my_col=output", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["train_examples"] == 3
    tokenizer = str(demo_root / "model/demo/base")
    assert main(["inspect-data", "--data", str(data), "--tokenizer", tokenizer, "--column-map", "my_col=output",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["column_mapping"]["output"] == "my_col"


@pytest.mark.slow
def test_train_with_a_column_map(demo_root, tmp_path, monkeypatch, one_thread):
    from sft.runs.manifest import read_manifest

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "renamed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RENAMED))
    assert main(["train", *demo_cli_args(demo_root), "--data", str(data), "--eval-data", "none", "--eval-size", "1",
                 "--column-map", "my_col=output", "--run-name", "mapped", "--max-steps", "1", "--save-steps", "10",
                 "--eval-steps", "10"]) == 0
    manifest = read_manifest(demo_root / "model/demo/mapped")
    assert manifest["status"] == "complete" and manifest["config"]["data"]["column_map"] == {"my_col": "output"}


@pytest.mark.slow  # 7,473 rows tokenized: 9-10 s of CPU
def test_inspect_data_json_on_gsm8k(gsm8k_path, qwen_tokenizer, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect-data", "--data", str(gsm8k_path), "--tokenizer", str(QWEN_TOKENIZER), "--json",
                 "--show", "1"]) == 0
    out, err = capsys.readouterr()
    stats = json.loads(out)
    assert stats["rows_read"] == stats["rows_kept"] == 7473 and stats["rows_dropped"] == {}
    assert stats["examples_truncated"] == 0
    # The figures ../shared/README.md gives for this file and tokenizer.
    assert round(stats["length_mean"]) == 170 and round(stats["length_p99"]) == 334 and stats["length_max"] == 463
    share = stats["response_tokens"] / (stats["prompt_tokens"] + stats["response_tokens"])
    assert 0.50 < share < 0.52
    assert stats["generation_ratio_Rg"] == pytest.approx(stats["response_tokens"] / stats["prompt_tokens"])
    assert 0 < stats["instruction_output_ratio"] < 2
    assert "[[weight 0:" in err and "[[response, weight 1:" in err  # markers, not colours, off a tty


def test_user_errors_exit_2_with_one_paragraph(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": ""}]')
    assert main(["inspect-data", "--data", str(bad), "--tokenizer", "model/nope"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--no-such-setting", "3"]) == 2
    assert "Unknown setting 'no_such_setting'" in capsys.readouterr().err
    assert main(["train", "--resume", "maybe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resume must be auto, true or false") and err.count("\n") == 1  # one paragraph


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only a UserError (or a missing file) becomes one paragraph; a plain ValueError, as a bug raises it, propagates
    out of main, so `python -m sft` prints its traceback."""
    monkeypatch.setattr(plan_cmd, "cmd_plan", lambda args: int("4 steps"))  # the bug: a str read as an int
    with pytest.raises(ValueError, match="invalid literal for int") as caught:
        main(["plan", "--preset", "demo"])
    assert not isinstance(caught.value, UserError)


def test_bad_rows_exit_2_or_are_counted(demo_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokenizer = str(demo_root / "model/demo/base")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x", "output": ""}\n')
    assert main(["inspect-data", "--data", str(bad), "--tokenizer", tokenizer]) == 2
    assert "bad.jsonl: line 2, field output: is empty" in capsys.readouterr().err
    assert main(["inspect-data", "--data", str(bad), "--tokenizer", tokenizer, "--on-bad-rows", "skip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_dropped"] == {"output is empty": 1}


@pytest.mark.slow
def test_the_entry_point_exits_2_with_one_paragraph(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sft", "train", "--learning-rate", "fast"], capture_output=True,
                         text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Cannot read 'fast' as float for train.learning_rate." in res.stderr
    res = subprocess.run([sys.executable, "-m", "sft", "train", "--preset", "nope"], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert res.returncode == 2 and "invalid choice: 'nope'" in res.stderr


def test_dataclass_defaults_are_not_retyped():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    config_flags = [a for a in train._actions if "." in a.dest]
    assert len(config_flags) == sum(len(dataclasses.fields(c)) for c in section_classes().values())
    assert all(a.default is not None and a.default == "==SUPPRESS==" for a in config_flags)  # the preset's value wins


def test_a_sweeps_default_plot_lies_in_its_own_folder_so_sweeps_never_overwrite_each_other():
    assert sweep_plot(SWEEP_PLOT, "demo") == sweep_results_dir("demo") / SWEEP_PLOT  # in the sweep's own folder
    assert sweep_plot(SWEEP_PLOT, "long-output") == Path("evaluation_results/raw/sweep-long-output/plw_sweep.png")
    assert sweep_plot(SWEEP_PLOT, "tools", "rw-tool_output0") == sweep_results_dir("tools-rw-tool_output0") / SWEEP_PLOT
    assert sweep_plot("mine.png", "tools", "rw-tool_output0") == Path("mine-rw-tool_output0.png")  # --plot is kept
    assert sweep_plot("", "demo") is None


def test_build_demo_takes_the_demo_presets_as_preset(tmp_path, monkeypatch, capsys):
    """`python -m sft build-demo --preset demo` was a TypeError (the preset given twice to load_config)."""
    monkeypatch.chdir(tmp_path)
    # the random init: this tests the preset's parsing, not the pretraining (tests/studies/test_pretrain.py)
    assert main(["build-demo", "--preset", "demo", "--demo.base", "random", "--demo.split-by-fact", "false"]) == 0
    assert "demo base model: model/demo/base" in capsys.readouterr().out
    assert (tmp_path / "model/demo/base/model.safetensors").is_file()
    with pytest.raises(SystemExit):  # any other preset has no demo to build: argparse names the choices
        main(["build-demo", "--preset", "qwen2.5-0.5b-alpaca"])
    assert "invalid choice" in capsys.readouterr().err

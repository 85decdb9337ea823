"""eval.py and sft/evaluation/case_study.py: prompts through several models side by side; sft/evaluation/generate.py's batching."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, demo_config, load_script

from sft.core.prompts import TEMPLATES, Template
from sft.core.train import train
from sft.evaluation import case_cells
from sft.evaluation import case_study as cs
from sft.evaluation.generate import (
    generate_responses,
    generate_token_ids,
    render_prompts,
)
from sft.evaluation.settings import GenerationSettings
from sft.models.tokenizer import load_tokenizer
from sft.runs.layout import run_dir, tensorboard_dir
from sft.studies.demo import BUILTIN_FAMILIES, builtin_prompts
from sft.studies.synthetic import generate_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(demo_root):
    """A few steps of fine-tuning on the small demo (a run folder with manifest and TensorBoard events)."""
    cfg = demo_config(demo_root, run_name="cs-masked", max_steps=4, eval_steps=1000, save_steps=1000, overwrite=True)
    train(cfg)
    return {"run": run_dir(cfg), "base": demo_root / "model/demo/base", "cfg": cfg}


@pytest.fixture(scope="module")
def chaotic(demo_root):
    """A random tiny Qwen2 with large weights and many stop tokens, so its answers end at varied lengths.

    (The demo models answer in a few tokens, or not at all after a few training steps; this one
    makes rows leave and join the batch at every step.)
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = load_tokenizer(demo_root / "model/demo/base")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    stops = [tokenizer.eos_token_id, *range(3, len(tokenizer), 16)]  # one token in 16 ends an answer
    model.generation_config.eos_token_id = stops
    return model, tokenizer, stops


@pytest.mark.slow  # generation, batched and one prompt at a time: 3-5 s of CPU
def test_batched_generation_matches_one_prompt_at_a_time(chaotic):
    model, tokenizer, stops = chaotic
    prompts = render_prompts("alpaca", generate_rows(24, seed=11))
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    reference = []
    for ids in encoded:  # the plain way: model.generate on each prompt alone, cut before its first stop token
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=24, do_sample=False, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
        reference.append(out[: next((k for k, t in enumerate(out) if t in stops), len(out))])
    lengths = [len(r) for r in reference]
    assert len(set(lengths)) >= 8 and min(lengths) < 5 and max(lengths) == 24, lengths
    # One at a time, batches of 5 (rows leave and waiting prompts join), everything in one batch.
    for batch_size in (1, 5, 64):
        settings = GenerationSettings(max_new_tokens=24, batch_size=batch_size)
        assert generate_token_ids(model, tokenizer, encoded, settings) == reference, batch_size
    model.train()
    side = tokenizer.padding_side
    texts = generate_responses(model, tokenizer, prompts, GenerationSettings(max_new_tokens=24, batch_size=5))
    assert texts == [tokenizer.decode(r, skip_special_tokens=True) for r in reference]
    assert model.training and tokenizer.padding_side == side  # what the caller had is restored
    model.eval()
    sampled = [generate_responses(model, tokenizer, prompts[:6], GenerationSettings(
        max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=3, batch_size=4)) for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded


@pytest.mark.slow
def test_eval_cli_prints_the_table_and_saves_generations_settings_and_tensorboard(trained, tmp_path, capsys):
    script = load_script("eval")
    out_dir = tmp_path / "case_study"
    models = f"base={trained['base']},masked={trained['run']}"
    assert script.main(["--models", models, "--out", str(out_dir), "--max-new-tokens", "12", "--tensorboard"]) == 0
    stdout = capsys.readouterr().out
    table, side = stdout.strip().split("\n\n", 1)  # the generations, then their side effects
    lines = table.splitlines()
    assert lines[0] == "| # | prompt | reference | base | masked |"
    assert len(lines) == 2 + len(BUILTIN_FAMILIES)
    assert side.startswith(f"Side effects of generation ({len(BUILTIN_FAMILIES)} prompts")
    for metric in ("stop failure (%)", "run on (%)", "prompt echo (%)", "gen length (tokens)"):
        assert f"| {metric}" in side
    assert "masked - base" in side
    saved = {p.suffix: p for p in out_dir.iterdir()}
    assert set(saved) == {".md", ".jsonl", ".json"} and saved[".md"].read_text().strip() == stdout.strip()
    records = [json.loads(line) for line in saved[".jsonl"].read_text().splitlines()]
    assert len(records) == 2 * len(BUILTIN_FAMILIES)
    assert {r["model"] for r in records} == {"base", "masked"}
    first = records[0]
    assert {"prompt", "instruction", "input", "model", "path", "template", "output", "settings"} <= first.keys()
    assert first["prompt"].startswith("Below is an instruction") and first["settings"]["max_new_tokens"] == 12
    settings = json.loads(saved[".json"].read_text())
    assert settings["generation"]["do_sample"] is False and settings["prompts"]["source"] == "builtin"
    assert [m["template"] for m in settings["models"]] == ["alpaca", "alpaca"]  # the base inherits the run's
    assert settings["models"][0]["run"] is None and settings["models"][1]["run"] == str(trained["run"])
    lengths = settings["side_effects"]["rows"]["gen_length"]
    assert set(lengths) == {"base", "masked"} and all(0 <= v <= 12 for v in lengths.values())
    assert "### Instruction:" in settings["side_effects"]["markers"]["masked"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir(trained["cfg"])), size_guidance={"tensors": 0}).Reload()
    texts = events.Tensors("case_study/masked/text_summary")
    text = texts[-1].tensor_proto.string_val[0].decode()
    assert texts[-1].step == 4 and "| # | prompt | reference | masked |" in text


@pytest.mark.slow
def test_prompts_file_and_single_prompt(trained, tmp_path, capsys):
    script = load_script("eval")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "Calculate 2 plus 3.", "output": "5"}\n\n'
                       '{"instruction": "Reverse the word below.", "input": "cat"}\n')
    rows = cs.read_prompts(prompts)
    assert rows == [{"instruction": "Calculate 2 plus 3.", "input": "", "output": "5"},
                    {"instruction": "Reverse the word below.", "input": "cat"}]
    args = ["--models", f"masked={trained['run']}", "--out", str(tmp_path / "o"), "--max-new-tokens", "4"]
    assert script.main([*args, "--prompts", str(prompts)]) == 0
    table = capsys.readouterr().out.strip().split("\n\n")[0].splitlines()  # the side effects follow the table
    assert table[0] == "| # | prompt | reference | masked |" and len(table) == 4
    assert "Reverse the word below.<br><br>Input: cat" in table[3]
    assert script.main([*args, "--prompt", "Spell 7.", "--input", "seven"]) == 0
    table = capsys.readouterr().out.strip().split("\n\n")[0].splitlines()
    assert table[0] == "| # | prompt | masked |" and len(table) == 3


@pytest.mark.slow
@pytest.mark.parametrize("content, expected", [
    ("", "holds no prompts"),
    ("\n  \n", "holds no prompts"),
    ('{"instruction": "ok"}\n{"instruction": "x",}\n', "line 2 is not valid JSON"),
    ('{"input": "only input"}\n', "line 1 has no 'instruction'"),
    ('{"instruction": ""}\n', "line 1 has an empty or non-text 'instruction'"),
    ('["instruction"]\n', "line 1 is a JSON list"),
    ('{"instruction": "a", "input": 3}\n', "line 1: 'input' must be a string"),
])
def test_bad_prompts_files_are_clear_errors(trained, tmp_path, capsys, content, expected):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    code = load_script("eval").main(["--models", f"masked={trained['run']}", "--prompts", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and str(path) in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["--models", "base"], "LABEL=PATH pairs"),
    (["--models", "base=,x=y"], "LABEL=PATH pairs"),
    (["--models", "a=/no/such/model"], "'/no/such/model' (for 'a') does not exist"),
    (["--models", "{run},b=/no/such"], "'/no/such' (for 'b') does not exist"),
    (["--models", "{run},m={run}"], "Model label 'm' is given twice"),
    (["--models", "{run}", "--template", "nosuch"], "Unknown prompt template 'nosuch'"),
    (["--models", "{run}", "--input", "x"], "--input belongs to --prompt"),
    (["--models", "{run}", "--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
])
def test_bad_arguments_are_clear_errors(trained, capsys, argv, expected):
    argv = [a.replace("{run}", f"m={trained['run']}") for a in argv]
    assert load_script("eval").main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_script_exit_code_is_2_with_one_paragraph(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--models", "base=nowhere/base"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: Model folder 'nowhere/base'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def write_run(folder, template):
    """A folder that looks like a finished run trained with `template` (manifest and config only)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    manifest = {"status": "complete", "template": template, "config": {"data": {"template": template}}}
    (folder / "run_manifest.json").write_text(json.dumps(manifest))
    return folder


def test_templates_come_from_the_runs_manifests(tmp_path, monkeypatch):
    monkeypatch.setitem(TEMPLATES, "plain", Template("plain", "{instruction}\n{input}\n=> ", "{instruction}\n=> "))
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    a, b = write_run(tmp_path / "a", "plain"), write_run(tmp_path / "b", "alpaca")
    checkpoint = a / "checkpoint-5"
    checkpoint.mkdir()

    specs = cs.resolve_models([("base", base), ("a", a), ("a5", checkpoint)])
    assert [(s.template, s.run) for s in specs] == [("plain", None), ("plain", a), ("plain", a)]
    assert cs.last_step(specs[2]) == 5
    assert [s.template for s in cs.resolve_models([("base", base)])] == ["alpaca"]  # nothing to inherit
    assert [s.template for s in cs.resolve_models([("a", a), ("b", b)])] == ["plain", "alpaca"]
    with pytest.raises(ValueError, match="different templates .*pass --template"):
        cs.resolve_models([("base", base), ("a", a), ("b", b)])
    assert {s.template for s in cs.resolve_models([("base", base), ("a", a), ("b", b)], "alpaca")} == {"alpaca"}
    odd = write_run(tmp_path / "odd", "gone")
    with pytest.raises(ValueError, match="odd .* was trained with template 'gone', which is not registered"):
        cs.resolve_models([("odd", odd)])
    training = tmp_path / "training"
    training.mkdir()
    (training / "run_manifest.json").write_text(json.dumps({"status": "training"}))
    with pytest.raises(ValueError, match="holds no model .*status 'training'.*checkpoint-N"):
        cs.parse_models(f"t={training}")


def test_markdown_table_escapes_pipes_and_newlines():
    rows = [{"instruction": "Join a | b", "input": "x\ny", "output": "a|b"}, {"instruction": "Two", "input": ""}]
    study = cs.CaseStudy(rows=rows, models=[cs.ModelSpec("m", Path("m"))], settings=GenerationSettings(),
                         outputs={"m": ["line one\nline | two", ""]})
    header, rule, first, second = cs.format_table(study).splitlines()
    assert header == "| # | prompt | reference | m |" and rule == "|---|---|---|---|"
    assert first == "| 1 | Join a \\| b<br><br>Input: x<br>y | a\\|b | line one<br>line \\| two |"
    assert second == "| 2 | Two |  |  |"


TOOLS = [{"type": "function", "function": {"name": "get_age", "parameters": {"type": "object", "properties": {}}}},
         {"type": "function", "function": {"name": "get_city", "parameters": {"type": "object", "properties": {}}}}]
ASKED = [{"role": "user", "content": "How old is Anna?"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"type": "function", "function": {"name": "get_age", "arguments": {"person": "Anna"}}}]},
         {"role": "tool", "name": "get_age", "content": "42"}]


def test_case_study_shows_tools_calls_and_tool_outputs(tmp_path):
    """A conversation with tools, read from a prompts file: the table lists the tools, the call, the tool's output,
    and a generated call as a call; the JSONL keeps the raw generation and the tools."""
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": ASKED, "tools": json.dumps(TOOLS), "output": "42"}) + "\n"
                    + json.dumps({"messages": ASKED[:1], "tools": TOOLS}) + "\n")
    rows = cs.read_prompts(path)
    assert rows[0]["tools"] == TOOLS and rows[0]["messages"][-1]["role"] == "tool" and rows[0]["output"] == "42"
    call = '<tool_call>{"name": "get_age", "arguments": {"person": "Anna"}}</tool_call>'
    study = cs.CaseStudy(rows=rows, models=[cs.ModelSpec("m", Path("m"))], settings=GenerationSettings(),
                         outputs={"m": ["42", call]}, prompts={"m": ["p1", "p2"]})
    _, _, first, second = cs.format_table(study).splitlines()
    assert first == ('| 1 | tools: get_age, get_city<br>user: How old is Anna?<br>assistant: [call] get_age '
                     '{"person": "Anna"}<br>tool (get_age): 42 | 42 | 42 |')
    assert second == '| 2 | tools: get_age, get_city<br>user: How old is Anna? |  | [call] get_age {"person": "Anna"} |'
    recs = cs.records(study)
    assert recs[1]["output"] == call and recs[1]["tools"] == TOOLS
    assert case_cells.show_reply("<tool_call>not json</tool_call>") == "&lt;tool_call>not json&lt;/tool_call>"
    assert case_cells.show_reply("Let me see. " + call) == 'Let me see.\n[call] get_age {"person": "Anna"}'


@pytest.mark.parametrize("row, expected", [
    ({"messages": ASKED[:2]}, "neither the user's nor a tool's"),
    ({"messages": ASKED, "tools": "[{"}, "field tools: is not JSON"),
    ({"messages": ASKED, "tools": {"name": "f"}}, "field tools: is not a list"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "tool turn without a call before it"),
])
def test_bad_tool_prompts_are_clear_errors(tmp_path, row, expected):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=expected):
        cs.read_prompts(path)


def test_builtin_prompts_cover_several_families_and_never_change():
    rows = builtin_prompts()
    assert rows == builtin_prompts() and len(rows) == 8
    assert [r["family"] for r in rows] == list(BUILTIN_FAMILIES)
    assert all(r["instruction"] and "output" in r for r in rows)

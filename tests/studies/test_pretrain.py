"""sft.studies.corpus and sft.studies.pretrain: the plain-text corpus states every fact the splits ask about, in no
instruction phrasing; the pretrained base is built with the project's trainer, cached, and carries its gate figures."""

import json
import random
import re

import pytest

from helpers import demo_config
from sft.studies.corpus import build_corpus
from sft.studies.synthetic import FAMILIES, build_demo_dataset, make_row
from sft.studies.short_families import CAPITALS
from sft.studies.vocab import DECOR_PREFIXES, DECOR_SUFFIXES, find_key


def normal(text):
    """Lowercase words and numbers, punctuation dropped."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def undecorate(instruction):
    """The instruction without the neutral prefix and suffix sft.studies.vocab.decorate may have added."""
    for prefix in filter(None, DECOR_PREFIXES):
        instruction = instruction.removeprefix(prefix)
    for suffix in filter(None, DECOR_SUFFIXES):
        instruction = instruction.removesuffix(suffix)
    return instruction


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_corpus_states_every_asked_fact_and_no_instruction(tmp_path):
    # split by phrasing: the corpus states every fact of every split either way, and enumerating the families' facts
    # for the split by fact costs 3 s of CPU this test does not need
    build_demo_dataset(tmp_path / "data", n_train=320, n_heldout=64, n_test=64, seed=1, by_fact=False)
    rows = [r for s in ("train", "heldout", "test") for r in read(tmp_path / "data" / f"{s}.jsonl")]
    paths = build_corpus(tmp_path / "corpus", rows, seed=0)
    text = " ".join(r["text"] for r in read(paths["train"]))
    for header in ("### Instruction", "### Input", "### Response", "Instruction:", "Response:"):
        assert header not in text, header
    # neither a clause of the Alpaca preamble nor any instruction (its decoration taken off), compared on words only:
    # case and punctuation ignored, so "which is larger 3 or 8" would be found in "asked which is larger, 3 or 8"
    words = f" {normal(text)} "
    for clause in ("below is an instruction that describes a task", "paired with an input that provides further context",
                   "write a response that appropriately completes the request"):
        assert f" {clause} " not in words, clause
    rng = random.Random(0)
    cores = {undecorate(make_row(family, rng)["instruction"]) for family in FAMILIES for _ in range(200)}
    for core in cores:
        assert f" {normal(core)} " not in words, core
    # every held-out and test answer is stated next to its fact: capitals, sums, lists and sentences
    for r in rows:
        f, out, x = r["family"], r["output"], r.get("input") or ""
        if f == "capital":
            assert f"The capital of {find_key(r['instruction'], CAPITALS)} is {out}." in text, r
        elif f in ("count_up", "count_down", "day_list", "month_list"):
            assert f": {out}." in text, r
        elif f in ("count", "last_word", "extract"):
            assert f"'{x}'" in text, r
    sums = {(int(a), int(b)): int(s) for a, b, s in re.findall(r"(\d) plus (\d) is (\d+)\.", text)}
    assert len(sums) == 100 and all(a + b == s for (a, b), s in sums.items())


@pytest.mark.slow  # pretrains a tiny base through the Trainer
def test_the_pretrained_base_is_built_once_and_carries_its_gate_figures(tmp_path):
    from sft.studies.demo import ensure_demo_assets

    cfg = demo_config(tmp_path, **{"demo.base": "pretrained", "demo.split_by_fact": True, "demo.n_test_seen": 32,
                                   "demo.pretrain_epochs": 0.25})
    base = ensure_demo_assets(cfg.demo)
    info = json.loads((base / "build_info.json").read_text())
    pre, gate = info["pretraining"], info["gate"]
    assert pre["steps"] > 0 and pre["corpus_tokens"]["train"] > 10 * pre["corpus_tokens"]["heldout"] > 0
    assert pre["heldout_corpus_loss"] < gate["ln_vocab"]  # it learned something of the corpus
    assert info["weights_sha256"] != info["init_weights_sha256"]
    assert gate["random_init"]["prompt_loss"] == pytest.approx(gate["ln_vocab"], abs=0.3)
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_assets(cfg.demo) == base and (base / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    with pytest.raises(ValueError, match="--demo.base must be one of pretrained, random"):
        ensure_demo_assets(demo_config(tmp_path, **{"demo.base": "other"}).demo)


def test_seen_fact_rows_are_a_task_group_of_their_own(tmp_path):
    import yaml

    from sft.studies.tasks import DEMO_GROUP, SEEN_GROUP, write_demo_tasks

    build_demo_dataset(tmp_path, n_train=160, n_heldout=0, n_test=32, seed=0, n_test_seen=32)
    names = write_demo_tasks(tmp_path / "test.jsonl", tmp_path / "tasks", "alpaca", ["<|endoftext|>"])
    assert names[:16] == [f"{DEMO_GROUP}_{f}" for f in FAMILIES] and names[16:] == [f"{SEEN_GROUP}_{f}" for f in FAMILIES]
    seen = yaml.safe_load((tmp_path / "tasks" / f"{SEEN_GROUP}.yaml").read_text())
    assert seen["task"] == names[16:]
    docs = [json.loads(line) for line in (tmp_path / "tasks" / "data" / "seen_capital.jsonl").read_text().splitlines()]
    unseen = [json.loads(line) for line in (tmp_path / "tasks" / "data" / "capital.jsonl").read_text().splitlines()]
    assert len(docs) == len(unseen) == 2

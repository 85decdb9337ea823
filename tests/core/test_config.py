"""sft/core/config.py: every field documented on its line, overrides by name, the resume and overwrite switches."""

import dataclasses

import pytest

from sft.core.config import ExperimentConfig, TrainConfig
from sft.core.overrides import field_help, load_config, section_classes


def test_every_section_is_found_and_every_field_documented_on_its_line():
    sections = section_classes()
    assert list(sections)[:4] == ["data", "model", "train", "demo"]
    for name, cls in sections.items():
        helps = field_help(cls)
        assert list(helps) == [f.name for f in dataclasses.fields(cls)], name
        undocumented = [field for field, text in helps.items() if not text]
        assert not undocumented, f"{cls.__name__}: write a comment on the line of {undocumented}"
    assert field_help(TrainConfig)["learning_rate"] == "peak learning rate of AdamW"


@pytest.mark.parametrize("value", ["my_col=output", ["my_col=output"], '{"my_col": "output"}', {"my_col": "output"}])
def test_column_map_reads_the_same_from_a_flag_json_or_python(value):
    assert load_config("demo", column_map=value).data.column_map == {"my_col": "output"}


def test_key_value_pairs_and_their_errors():
    cfg = load_config("demo", column_map=["a=instruction", "b=output"], auto_clean="keep_last=2,strip_optimizer=true")
    assert cfg.data.column_map == {"a": "instruction", "b": "output"}
    assert cfg.train.auto_clean == {"keep_last": 2, "strip_optimizer": True}
    assert load_config("demo", auto_clean="none").train.auto_clean is None
    with pytest.raises(ValueError, match=r"Cannot read 'my_col' for column_map: give KEY=VALUE pairs"):
        load_config("demo", column_map="my_col")
    with pytest.raises(ValueError, match=r"as a JSON object for extra"):
        load_config("demo", extra="{oops")


@pytest.mark.parametrize("given, resume", [(True, "true"), ("yes", "true"), (False, "false"), ("auto", "auto"),
                                           ("AUTO", "auto")])
def test_resume_reads_booleans_and_auto(given, resume):
    assert load_config("demo", resume=given).train.resume == resume


def test_resume_defaults_to_auto_and_excludes_overwrite():
    assert TrainConfig().resume == "auto" and not TrainConfig().overwrite
    with pytest.raises(ValueError, match="resume must be auto, true or false"):
        load_config("demo", resume="maybe")
    with pytest.raises(ValueError, match="exclude each other"):
        load_config("demo", resume=True, overwrite=True)
    assert load_config("demo", overwrite=True).train.resume == "auto"  # overwrite with resume left at auto: start again


def test_a_manifest_config_reads_back():
    cfg = load_config("demo", resume=True, column_map={"x": "output"})
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_your_data_without_eval_data_is_split_rather_than_held_out_on_the_presets_file():
    assert load_config("demo").data.eval_data == "Dataset/demo/heldout.jsonl"
    for key in ("data", "data.data"):
        assert load_config("demo", **{key: "mine.jsonl"}).data.eval_data is None
    mine = load_config("demo", data="mine.jsonl", **{"data.eval-data": "held.jsonl"})
    assert (mine.data.data, mine.data.eval_data) == ("mine.jsonl", "held.jsonl")

"""Overrides: a notebook's `overrides` dict and the command line's flags, turned into config fields the same way,
and `load_config`, a preset with overrides applied (the entry point of the notebooks and every command).

A value reads the same everywhere: a dict field such as `column_map` takes `KEY=VALUE` pairs, a JSON object, or a
dict; any `transformers.TrainingArguments` field that is not a config field goes to `train.extra`. `field_help`
reads the comment on a field's line: its documentation, and its --help.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import json
import textwrap
import tokenize
import typing
from typing import Any

from sft.core.config import (
    DEFAULT_PRESET,
    LORA_DEFAULTS,
    PRESETS,
    ExperimentConfig,
    LoraSettings,
    check_run_folder,
    default_run_name,
    resolve_local_paths,
    weight_suffix,
)
from sft.data.errors import UserError


def section_classes() -> dict[str, type]:
    """The sections of ExperimentConfig and their dataclasses: {"data": DataConfig, "model": ModelConfig, ...}."""
    hints = typing.get_type_hints(ExperimentConfig)
    out = {}
    for f in dataclasses.fields(ExperimentConfig):
        cls = next((t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)), None)
        if cls is not None:
            out[f.name] = cls
    return out


def field_help(cls: type) -> dict[str, str]:
    """The comment on the line that defines each field of a config dataclass: its documentation and its --help."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = iter(source.splitlines(keepends=True))
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(lambda: next(lines, "")) if t.type == tokenize.COMMENT}
    body = ast.parse(source).body[0].body
    return {n.target.id: comments.get(n.end_lineno, "") for n in body if isinstance(n, ast.AnnAssign)}


def _sections(cfg: ExperimentConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in section_classes()}


def _parse_mapping(value: str | list[str], name: str) -> dict[str, Any]:
    """A dict field from the command line: a JSON object, or KEY=VALUE pairs such as `my_col=output`."""
    items = [value] if isinstance(value, str) else list(value)
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            return json.loads(items[0])
        except json.JSONDecodeError as e:
            raise UserError(f"Cannot read {items[0]!r} as a JSON object for {name}: {e}.") from None
    out = {}
    for pair in (p for item in items for p in item.replace(",", " ").split()):
        if "=" not in pair:
            raise UserError(f"Cannot read {pair!r} for {name}: give KEY=VALUE pairs such as my_col=output "
                             "(several: my_col=output other=input), or a JSON object.")
        key, text = pair.split("=", 1)
        try:
            out[key] = json.loads(text)  # numbers and true/false; anything else stays text
        except json.JSONDecodeError:
            out[key] = text
    return out


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Turn a command-line string (a list of them for a dict field) into the field's type."""
    text = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if isinstance(value, str) and value.lower() in ("none", "null") and "None" in str(typ):
        return None
    if "dict" in str(text) and isinstance(value, (str, list)):
        return _parse_mapping(value, name)
    if not isinstance(value, str):
        return value
    try:
        if "bool" in str(text) and "str" not in str(text):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if "float" in str(text):
            return float(value)
        if "int" in str(text):
            return int(value)
    except ValueError:
        raise UserError(f"Cannot read {value!r} as {text} for {name}.") from None
    return value


def apply_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """Return a copy of cfg with fields set by bare or dotted name; unknown names are errors."""
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key == "lora":  # lora=true / a dict of its fields turns adapters on, lora=false / none off
            cfg.lora = _lora_section(value, cfg.preset)
            continue
        if cfg.lora is None and (key.startswith("lora.") or key in _field_types(LoraSettings())) and \
                not any(key in _field_types(obj) for obj in _sections(cfg).values() if obj is not None):
            cfg.lora = _lora_section(True, cfg.preset)  # any LoRA field turns adapters on, the rest at defaults
        sections = _sections(cfg)
        if "." in key:
            section, name = key.split(".", 1)
            targets = [section] if section in sections else []
        else:
            section, name = None, key
            targets = [s for s, obj in sections.items() if obj is not None and name in _field_types(obj)]
        if len(targets) > 1:
            raise UserError(f"{key!r} is ambiguous ({', '.join(targets)}); write it as section.{key}.")
        if targets:
            obj = sections[targets[0]]
            if obj is None:
                raise UserError(f"{key!r}: this preset has no {targets[0]} section.")
            types = _field_types(obj)
            if name not in types:
                raise UserError(f"{targets[0]} has no field {name!r}; fields: {', '.join(types)}.")
            setattr(obj, name, _coerce(value, types[name], key))
        elif name == "preset":
            raise UserError("Choose the preset with load_config(preset), not as an override.")
        elif name in _training_argument_types():
            cfg.train.extra[name] = _coerce(value, _training_argument_types()[name], key)
        else:
            raise UserError(
                f"Unknown setting {key!r}: not a field of the data, model, train, demo or lora config, nor a "
                "transformers.TrainingArguments field. See sft/core/config.py and sft/data/config.py for the settings and what they do."
            )
    # Rebuild every section, so that its __post_init__ checks (and normalises) the new values.
    for name, obj in _sections(cfg).items():
        if obj is not None:
            setattr(cfg, name, type(obj)(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}))
    return cfg


def _lora_section(value: Any, preset: str) -> LoraSettings | None:
    """The lora section that `lora=VALUE` asks for: true (the preset's defaults), false/none, or a dict of fields."""
    if isinstance(value, str):
        value = _coerce(value, dict if value.strip().startswith("{") else "bool | None", "lora")
    if isinstance(value, LoraSettings) or value is None or value is False:
        return value or None
    types = _field_types(LoraSettings())
    fields = value if isinstance(value, dict) else {}
    unknown = sorted(set(fields) - set(types))
    if unknown:
        raise UserError(f"lora has no field(s) {', '.join(unknown)}; fields: {', '.join(types)}.")
    fields = {**LORA_DEFAULTS.get(preset, {}), **{k: _coerce(v, types[k], f"lora.{k}") for k, v in fields.items()}}
    return LoraSettings(**fields)


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(obj)}


def _training_argument_types() -> dict[str, Any]:
    # Imported here, not at the top: transformers' trainer utilities take seconds to import, and every command's
    # --help (which builds its flags from this module's dataclasses) must answer at once.
    from transformers import TrainingArguments

    return {f.name: f.type for f in dataclasses.fields(TrainingArguments)}


def load_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> ExperimentConfig:
    """The named preset with overrides applied (the entry point of notebooks and the CLI)."""
    if preset not in PRESETS:
        raise UserError(f"Unknown preset {preset!r}. Presets: {', '.join(PRESETS)}.")
    given = {k.replace("-", "_").removeprefix("data.") for k in overrides}
    if "data" in given and "eval_data" not in given:  # a preset's held-out file belongs to its data: split yours
        overrides = {**overrides, "data.eval_data": None}
    cfg = resolve_local_paths(apply_overrides(PRESETS[preset](), overrides))
    if cfg.train.run_name is None:
        cfg.train.run_name = default_run_name(cfg.data.prompt_loss_weight, cfg.lora) + weight_suffix(cfg.data)
    check_run_folder(cfg)
    return cfg

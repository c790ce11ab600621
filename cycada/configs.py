"""Typed, validated configuration built from frozen dataclasses.

A run's configuration is one frozen dataclass tree. It is resolved from the dataclass
defaults (the paper's hyper-parameters), then a preset YAML holding only overrides, then an
optional user YAML, then ``--set section.key=value`` flags. Every key is checked: a misspelt key
is an error that names it and suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cycada.errors import ConfigError

T = TypeVar("T")


def _unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    name = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"unknown config key '{name}' (valid keys: {', '.join(sorted(valid))}){hint}"
    )


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], name)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(
                f"config key '{name}' is {value!r}; expected one of {', '.join(map(str, allowed))}"
            )
        return value
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}' is {value!r}; expected a list")
        return tuple(_coerce(v, item_type, name) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{name}' is {value!r}; expected true or false")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key '{name}' is {value!r}; expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config key '{name}' is {value!r}; expected an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{name}' is {value!r}; expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{name}' is {value!r}; expected a number") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{name}' is {value!r}; expected a string")
        return str(value)
    return value


# sizes and periods that a value below 1 turns into a crash mid-run (a batch of nothing, a
# crop of nothing, a modulo by zero): refused with the key's name before anything runs
AT_LEAST_ONE = ("batch_size", "crop", "sample_every", "gate_window", "checkpoint_every")


def _needs_at_least_one(key: str) -> bool:
    return key in AT_LEAST_ONE or key.endswith("_batch_size")


def build(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, validating every key and value."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or 'top'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(key, list(fields), where)
        name = f"{where}.{key}" if where else key
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build(annotation, value, name)
        else:
            kwargs[key] = _coerce(value, annotation, name)
            if _needs_at_least_one(key) and isinstance(kwargs[key], int) and kwargs[key] < 1:
                raise ConfigError(f"config key '{name}' is {kwargs[key]}; expected 1 or more")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # __post_init__ validation
        raise ConfigError(str(exc)) from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set_flags(flags: list[str]) -> dict[str, Any]:
    """Turn ``["pixel.lr=1e-4", "seed=3"]`` into a nested mapping (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for flag in flags:
        if "=" not in flag:
            raise ConfigError(f"--set '{flag}' must look like section.key=value")
        dotted, raw = flag.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = out
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line, what is wrong and where (PyYAML's own text spans lines, and
    its first one says only what it was doing)."""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    return json.loads(json.dumps(data))  # tuples → lists, plain types only


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of config sections (used to match checkpoints to configs)."""
    blob = json.dumps([p if isinstance(p, dict) else to_dict(p) for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# A preset's per-shift block: ``shifts: {"mnist->usps": {source: {epochs: 60}}}`` applies on
# top of the preset when the run's source and target domains are that pair, and below the user's
# YAML and flags. The reference code tunes each shift the same way (one script per shift).
SHIFTS_KEY = "shifts"


def shift_name(data: dict[str, Any]) -> str:
    """``"<source>-><target>"`` of a merged config mapping ("" when either is unset)."""
    section = data.get("data") or {}
    source, target = section.get("source"), section.get("target")
    return f"{source}->{target}" if source and target else ""


def resolve(
    cls: type[T],
    preset_dir: Path,
    task: str,
    preset: str,
    config_file: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> T:
    """Defaults ← ``defaults`` (a command's own, e.g. $CYCADA_DATA) ← preset YAML
    (``<task>-<preset>.yaml``) ← the preset's block for the run's shift ← user YAML ← overrides
    ← ``--set``. A run's ``config.yaml`` given as the user YAML therefore repeats that run,
    whatever the command's defaults."""
    preset_path = preset_dir / f"{task}-{preset}.yaml"
    if not preset_path.is_file():
        names = sorted(p.stem.split("-", 1)[1] for p in preset_dir.glob(f"{task}-*.yaml"))
        raise ConfigError(f"unknown preset '{preset}' (valid: {', '.join(names)})")
    preset_data = load_yaml(preset_path)
    shifts = preset_data.pop(SHIFTS_KEY, {}) or {}
    if not isinstance(shifts, dict):
        raise ConfigError(f"preset {preset_path.name}: '{SHIFTS_KEY}' must map 'source->target'")
    later = [load_yaml(config_file)] if config_file else []
    later += [overrides or {}, parse_set_flags(sets or [])]
    data = merge(defaults or {}, preset_data)
    # the shift is the one the run ends with, whichever layer names its domains (the config's
    # own defaults included: a run that names none is on the default shift)
    ends_with = functools.reduce(merge, later, merge(to_dict(cls()), data))
    data = merge(data, shifts.get(shift_name(ends_with), {}))
    return build(cls, functools.reduce(merge, later, data))

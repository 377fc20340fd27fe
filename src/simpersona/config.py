"""Typed configuration: dataclasses with defaults, YAML presets, `--set a.b=c` overrides.

Every stage has one config dataclass; every hyperparameter is a field with a default and a
one-line docstring (written as a comment above the field). Resolution order, later wins:

    dataclass defaults  <  YAML preset (a file, or a name under simpersona/presets/)  <  --set

Unknown keys are errors that name the key and the valid choices. The resolved config is written
beside every output in `meta.json` (see `write_meta`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A config key or value that does not fit its dataclass."""


def preset_path(name_or_path: str | Path) -> Path:
    """A preset file by path, or by name under `simpersona/presets/` (`tiny` → `tiny.yaml`)."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} and p.exists():
        return p
    named = PRESET_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    known = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"preset {str(name_or_path)!r} is neither a YAML file nor one of {known}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the annotated field type (int→float allowed, str→Path)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys and ill-typed values are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {cls.__name__}; "
            f"valid keys: {sorted(prefix + k for k in fields)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` onto `base` (mappings merge key by key; anything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["a.b=3", "c=x"]` → `{"a": {"b": 3}, "c": "x"}`; values are parsed as YAML scalars.

    >>> parse_overrides(["vq.k=64", "name=run1"])
    {'vq': {'k': 64}, 'name': 'run1'}
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(
    cls: type[T],
    preset: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    section: str | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Build `cls` from defaults, an optional preset, CLI flag `values` and `--set` overrides.

    A preset may hold several stages' sections (`ingest:`, `synth:` …); `section` picks one.
    A section missing from the preset leaves the defaults.
    """
    data: dict[str, Any] = {}
    if preset is not None:
        text = preset_path(preset).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"preset {preset}: top level must be a mapping")
        if section is not None:
            loaded = loaded.get(section, {}) or {}
        data = loaded
    data = merge(data, {k: v for k, v in (values or {}).items() if v is not None})
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (Paths as strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(dataclasses.asdict(cfg))


def write_meta(run_dir: Path, stage: str, cfg: Any, **extra: Any) -> Path:
    """Write `run_dir/meta.json`: stage name, resolved config, versions, time, extra facts."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from simpersona import __version__

    meta = {
        "stage": stage,
        "simpersona_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        **extra,
    }
    path = run_dir / "meta.json"
    path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path

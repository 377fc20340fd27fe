"""Typed configuration: dataclasses with defaults, YAML presets, `--set a.b=c` overrides.

Every stage has one config dataclass; every hyperparameter is a field with a default and a
one-line docstring (written as a comment above the field; `field_help` reads it back for the
CLI's --help). One loader (`resolve`; `load_config` for a stage command), later wins:

    dataclass defaults  <  shared section (`storefront:`)  <  the stage's preset section
                        <  flags  <  --set

Presets are YAML files, or names under simpersona/presets/. Unknown keys are errors that name the
key and the valid choices. The resolved config is written beside every output in `meta.json` (see
`write_meta`, which also records the library versions).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
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


class InputError(ValueError):
    """An input or output path that cannot be used as it is (corrupt, incomplete, not a folder …);
    the message names the path and the problem, and the CLI prints it as one line (exit code 2)."""


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


def read_preset(preset: str | Path | None, overrides: list[str] | tuple[str, ...] = (), _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The preset's sections (`{}` without a preset), with `--set section.key=value` merged on top.
    A preset may start from another (`extends: demo`): its sections merge under this one's."""
    data: dict[str, Any] = {}
    if preset is not None:
        path = preset_path(preset)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"preset {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"preset {path}: top level must be a mapping of sections")
        if "extends" in data:
            if path.resolve() in _seen:
                raise ConfigError(f"preset {path}: `extends` loops back to itself")
            parent = data.pop("extends")
            data = merge(read_preset(parent, (), _seen + (path.resolve(),)), data)
    return merge(data, parse_overrides(overrides))


def section_of(sections: dict[str, Any], section: str | None) -> dict[str, Any]:
    """The mapping at a dotted `section` path (`evaluate.alignment`); `{}` where the preset has none."""
    data: Any = sections
    for part in (section.split(".") if section else []):
        data = (data or {}).get(part) if isinstance(data, dict) else None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset section {section!r} must be a mapping, got {data!r}")
    return data


# Preset sections that configure a part several stages build: a field of this name (at any depth of
# a stage's config) starts from the section, and the stage's own keys for it win. One `storefront:`
# section so reaches traces, simulate, evaluate.instructions and evaluate.ablations.simulate.
SHARED_SECTIONS = ("storefront",)


def _shared_base(cls: type, sections: dict[str, Any]) -> dict[str, Any]:
    """`{field: shared section}` for every field of `cls`'s dataclass tree named in SHARED_SECTIONS."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            continue
        if f.name in SHARED_SECTIONS and sections.get(f.name):
            out[f.name] = section_of(sections, f.name)
        else:
            inner = _shared_base(tp, sections)
            if inner:
                out[f.name] = inner
    return out


def resolve(cls: type[T], sections: dict[str, Any], section: str | None, values: dict[str, Any] | None = None) -> T:
    """THE config loader: `cls` from its defaults, the shared sections (`storefront:`), the preset's
    `section` (dotted path), then `values` (flags and --set, or the paths the pipeline sets).
    Unknown keys and ill-typed values are errors naming the key."""
    data = merge(_shared_base(cls, sections) if section not in SHARED_SECTIONS else {}, section_of(sections, section))
    data = merge(data, values or {})
    return from_dict(cls, data, prefix=f"{section}." if section else "")


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """`values` without the None entries (at any depth): the flags that were given."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            v = _given(v) or None
        if v is not None:
            out[k] = v
    return out


def load_config(
    cls: type[T],
    preset: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    section: str | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """A stage command's config: defaults < preset (its `section`, dotted) < flag `values` < `--set`
    (keys relative to the section, as the command's flags are).

    A preset may hold several stages' sections (`ingest:`, `synth:` …); a section missing from the
    preset leaves the defaults. Shared sections (`storefront:`) reach every field of that name.
    """
    sections = read_preset(preset)
    values = merge(_given(values or {}), parse_overrides(overrides))
    return resolve(cls, sections, section, values)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (Paths as strings). A field marked
    `metadata={"secret": True}` (a key) is recorded only as a fingerprint of its value."""

    def conv(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    d = conv(dataclasses.asdict(cfg))
    for f in dataclasses.fields(cfg):
        if f.metadata.get("secret") and d.get(f.name) is not None:
            d[f.name] = "<secret sha256:" + hashlib.sha256(str(d[f.name]).encode()).hexdigest()[:16] + ">"
    return d


# Distributions whose versions every meta.json records (a difference between two runs can be traced
# to a library); read from the installed metadata, nothing is imported.
LIBRARIES = ("torch", "numpy", "duckdb", "pyarrow", "ibis-framework", "scipy", "scikit-learn", "safetensors",
             "transformers", "tokenizers", "trl", "accelerate", "datasets", "sentence-transformers", "pyspark")


def library_versions() -> dict[str, str | None]:
    """`{distribution: version}` of LIBRARIES (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def field_help(cls: type) -> dict[str, str]:
    """`{field: its one-line comment docstring}` of a config dataclass (the comment lines right
    above each field), for --help."""
    import inspect

    out: dict[str, str] = {}
    comment: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("#").strip())
        elif ":" in text and text.split(":", 1)[0].isidentifier():
            out.setdefault(text.split(":", 1)[0], " ".join(comment))
            comment = []
        else:
            comment = []
    return out


def write_meta(run_dir: Path, stage: str, cfg: Any, **extra: Any) -> Path:
    """Write `run_dir/meta.json`: stage name, resolved config, versions (Python, libraries), time,
    extra facts."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from simpersona import __version__

    meta = {
        "stage": stage,
        "simpersona_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        **extra,
    }
    path = run_dir / "meta.json"
    path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path

"""Config resolution: defaults < preset < flags < --set; unknown keys are errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from simpersona.config import ConfigError, load_config, parse_overrides, write_meta


@dataclass
class Inner:
    # learning rate
    lr: float = 1e-3
    # number of codes
    k: int = 256


@dataclass
class Outer:
    # a name
    name: str = "x"
    # an optional path
    out: Path | None = None
    # nested block
    inner: Inner = field(default_factory=Inner)


def test_defaults_preset_flags_and_set_in_order(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("stage:\n  name: from-preset\n  inner:\n    k: 64\n")
    cfg = load_config(Outer, preset, ["inner.lr=0.5"], section="stage", values={"out": "o", "name": None})
    assert cfg.name == "from-preset"
    assert cfg.inner.k == 64 and cfg.inner.lr == 0.5
    assert cfg.out == Path("o")
    cfg2 = load_config(Outer, preset, ["name=cli"], section="stage", values={"name": "flag"})
    assert cfg2.name == "cli"


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"inner\.kk"):
        load_config(Outer, None, ["inner.kk=3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(Outer, None, ["inner.k=abc"])


def test_missing_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_config(Outer, "no-such-preset")


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=1.5", "c=true", "d=x"]) == {"a": {"b": 1.5}, "c": True, "d": "x"}


def test_meta_holds_resolved_config(tmp_path):
    cfg = load_config(Outer, None, ["inner.k=8"])
    meta = json.loads(write_meta(tmp_path, "stage", cfg, note=1).read_text())
    assert meta["config"]["inner"]["k"] == 8 and meta["stage"] == "stage" and meta["note"] == 1

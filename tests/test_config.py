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


def test_storefront_section_reaches_every_step_that_builds_a_storefront(tmp_path):
    """Regression: the preset's `storefront:` section was accepted and reached no step (traces,
    simulate, evaluate.instructions and evaluate.ablations.simulate each had their own)."""
    from simpersona import pipeline
    from simpersona.config import read_preset
    from simpersona.layout import RunLayout
    from simpersona.simulate.stage import SimulateConfig

    preset = tmp_path / "p.yaml"
    preset.write_text("storefront:\n  page_size: 7\n  env: {max_steps: 11, obs_token_budget: 999}\n"
                      "simulate:\n  storefront: {env: {max_steps: 13}}\n")
    sections = read_preset(preset)
    by_name = {s.name: s for s in pipeline.steps(None, "canonical")}
    lay = RunLayout(tmp_path / "run")
    behaviour = by_name["behaviour"].make_config(sections, lay)
    built = {
        "traces": by_name["traces"].make_config(sections, lay).storefront,
        "simulate": by_name["simulate"].make_config(sections, lay).storefront,
        "evaluate.instructions": behaviour.instructions.storefront,
        "evaluate.ablations.simulate": behaviour.ablations.simulate.storefront,
    }
    for where, sf in built.items():
        assert sf.page_size == 7 and sf.env.obs_token_budget == 999, where
        assert sf.env.max_steps == (13 if where == "simulate" else 11), where  # a stage's own keys win
    # the stage commands resolve the same way (their --set last)
    cfg = load_config(SimulateConfig, preset, ["storefront.page_size=5"], section="simulate")
    assert (cfg.storefront.page_size, cfg.storefront.env.max_steps, cfg.storefront.env.obs_token_budget) == (5, 13, 999)


def test_field_help_reads_the_comment_docstrings():
    from simpersona.config import field_help

    assert field_help(Outer) == {"name": "a name", "out": "an optional path", "inner": "nested block"}
    assert field_help(Inner)["k"] == "number of codes"

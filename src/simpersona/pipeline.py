"""The main job: every stage in order, in one resumable run folder.

    simpersona run --preset demo --out runs/demo                       # generated multi-shop data
    simpersona run --data 2019-Oct.csv --format rees46 --out runs/r   # a real log

Each stage writes into `run_dir/<stage>/` and finishes by writing its `meta.json`; a stage whose
`meta.json` holds the same resolved config as now is skipped, so a killed run resumes where it
stopped and a changed setting re-runs that stage and every stage after it.

The preset holds one section per stage (`synth:`, `ingest:`, `features:` …); `--set
features.sample.per_shop=500` overrides inside a section. Paths between stages are set here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from simpersona.config import ConfigError, from_dict, parse_overrides, preset_path, to_dict, merge


# Preset sections: every stage's name (some configure stages the main job calls indirectly).
SECTIONS = ("synth", "ingest", "features", "vqvae", "personas", "evaluate", "storefront", "traces", "sft", "simulate")


@dataclass
class Step:
    """One stage of the main job."""

    name: str
    # builds the stage's config from its preset section and the run folder
    make_config: Callable[[dict[str, Any], Path], Any]
    # runs it: (config, stage_dir) -> summary dict
    run: Callable[[Any, Path], dict[str, Any]]
    # one-line summary for the console
    describe: Callable[[dict[str, Any]], str]


def _synth() -> Step:
    from simpersona.synth import generate

    return Step("synth", lambda sec, rd: from_dict(generate.SynthConfig, sec), generate.run, generate.format_summary)


def _ingest(data: Path | None, fmt: str) -> Step:
    from simpersona.events import ingest

    def make(sec: dict[str, Any], rd: Path):
        sec = dict(sec)
        if data is None:  # the generator's output, in the canonical format
            synth_dir = rd / "synth"
            events = synth_dir / "events.csv"
            sec.update(format="canonical", input=str(events if events.exists() else synth_dir / "events.parquet"),
                       catalog=str(synth_dir / "catalog.parquet"))
        else:
            sec.update(format=fmt, input=str(data))
        sec.setdefault("progress", False)
        return from_dict(ingest.IngestConfig, sec)

    return Step("ingest", make, ingest.run, ingest.format_summary)


def _features() -> Step:
    from simpersona.features import stage

    def make(sec: dict[str, Any], rd: Path):
        sec = dict(sec)
        sec["input"] = str(rd / "ingest")
        return from_dict(stage.FeaturesConfig, sec)

    return Step("features", make, stage.run, stage.format_summary)


def steps(data: Path | None, fmt: str) -> list[Step]:
    """The stages of the main job, in order."""
    out = [] if data is not None else [_synth()]
    out += [_ingest(data, fmt), _features()]
    return out


def _done(stage_dir: Path, cfg: Any) -> bool:
    meta = stage_dir / "meta.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("config") == json.loads(json.dumps(to_dict(cfg), default=str))
    except json.JSONDecodeError:
        return False


def run(preset: str | Path, run_dir: Path, overrides: tuple[str, ...] = (), data: Path | None = None,
        fmt: str = "canonical", echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run (or resume) the main job; returns each stage's summary."""
    sections = yaml.safe_load(preset_path(preset).read_text()) or {}
    sections = merge(sections, parse_overrides(overrides))
    plan = steps(data, fmt)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"preset sections {sorted(unknown)} name no stage; known sections: {list(SECTIONS)}")
    run_dir = Path(run_dir)
    results: dict[str, dict[str, Any]] = {}
    rerun = False
    t_all = time.perf_counter()
    for i, step in enumerate(plan, 1):
        stage_dir = run_dir / step.name
        cfg = step.make_config(sections.get(step.name) or {}, run_dir)
        if not rerun and _done(stage_dir, cfg):
            echo(f"[{i}/{len(plan)}] {step.name}: done already (same config), skipped")
            summary_file = stage_dir / "summary.json"
            results[step.name] = json.loads(summary_file.read_text()) if summary_file.exists() else {}
            continue
        rerun = True  # everything after a re-run stage runs again
        echo(f"[{i}/{len(plan)}] {step.name} …")
        (stage_dir / "meta.json").unlink(missing_ok=True)
        results[step.name] = step.run(cfg, stage_dir)
        echo(step.describe(results[step.name]))
    echo(f"main job finished in {time.perf_counter() - t_all:.1f}s: {run_dir}")
    return results

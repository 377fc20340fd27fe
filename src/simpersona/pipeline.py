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

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from simpersona.config import ConfigError, from_dict, merge, parse_overrides, preset_path, to_dict, write_meta


# Preset sections: every stage's name (some configure stages the main job calls indirectly).
SECTIONS = ("synth", "ingest", "features", "vqvae", "personas", "evaluate", "storefront", "traces", "sft", "simulate",
            "report")
# Steps configured by another step's section.
SECTION_OF = {"behaviour": "evaluate"}


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


def _scalars_line(summary: dict[str, Any]) -> str:
    """`k=v, …` for the summary's scalar entries (stages without a printer of their own)."""
    return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))


def _vqvae() -> Step:
    from simpersona.vqvae import train

    def make(sec: dict[str, Any], rd: Path):
        return from_dict(train.TrainConfig, {**sec, "features": str(rd / "features")})

    return Step("vqvae", make, train.run, _scalars_line)


def _personas() -> Step:
    from simpersona.personas import assign

    def make(sec: dict[str, Any], rd: Path):
        return from_dict(assign.PersonasConfig, {**sec, "model": str(rd / "vqvae"), "features": str(rd / "features")})

    return Step("personas", make, assign.run, _scalars_line)


def _evaluate(generated: bool) -> Step:
    """Table 1 (clustering vs k-means) and App. B (population recovery; truth when generated)."""
    from simpersona.evaluate import clustering, population
    from simpersona.evaluate.config import EvaluateConfig

    def make(sec: dict[str, Any], rd: Path):
        sec = {k: v for k, v in sec.items() if k in ("clustering", "population")}
        sec = merge(sec, {
            "clustering": {"model": str(rd / "vqvae"), "features": str(rd / "features")},
            "population": {"personas": str(rd / "personas"), "features": str(rd / "features"),
                           "ingest": str(rd / "ingest"),
                           "truth": str(rd / "synth" / "truth" / "buyers.parquet") if generated else None},
        })
        return from_dict(EvaluateConfig, sec)

    def run_both(cfg, stage_dir: Path) -> dict[str, Any]:
        summary = {
            "clustering": clustering.run(cfg.clustering, stage_dir / "clustering"),
            "population": population.run(cfg.population, stage_dir / "population"),
        }
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        write_meta(stage_dir, "evaluate", cfg)
        return summary

    def describe(s: dict[str, Any]) -> str:
        return clustering.format_table(s["clustering"]) + "\n" + population.format_report(s["population"])

    return Step("evaluate", make, run_both, describe)


def _traces() -> Step:
    from simpersona.traces import stage

    def make(sec: dict[str, Any], rd: Path):
        paths = {"ingest": str(rd / "ingest"), "features": str(rd / "features"), "personas": str(rd / "personas")}
        return from_dict(stage.TracesConfig, {**sec, **paths})

    return Step("traces", make, stage.run, stage.format_summary)


def _sft() -> Step:
    """Two-stage SFT on the traces; one persona token per VQ-VAE code (K read from the codebook)."""
    from simpersona.sft import train

    def make(sec: dict[str, Any], rd: Path):
        tokens = {"k": 0, "vqvae": str(rd / "vqvae"), "cards": str(rd / "personas")}
        return from_dict(train.SftConfig, merge(sec, {"data": str(rd / "traces"), "tokens": tokens}))

    def run(cfg, stage_dir: Path) -> dict[str, Any]:
        """Stages 1 then 2; then the single-stage model of the paper's ablation (Tables 7–8)."""
        summary = train.run(cfg, stage_dir)
        if cfg.stage == "both":
            summary["single"] = train.run(dataclasses.replace(cfg, stage="single"), stage_dir)["single"]
            write_meta(stage_dir, "sft", cfg, summary=summary)
        return summary

    return Step("sft", make, run, train.format_summary)


def _simulate() -> Step:
    from simpersona.simulate import stage

    def make(sec: dict[str, Any], rd: Path):
        sec = merge(sec, {"ingest": str(rd / "ingest"), "personas": str(rd / "personas")})
        if (sec.get("agent") or "policy") == "llm":
            sec = merge(sec, {"llm": {"checkpoint": str(rd / "sft" / "stage2")}})
        return from_dict(stage.SimulateConfig, sec)

    def run(cfg, stage_dir: Path) -> dict[str, Any]:
        return stage.run(cfg, stage_dir, echo=lambda _: None)

    return Step("simulate", make, run, stage.format_summary)


@dataclass
class BehaviourConfig:
    """The simulated population against the real one (Tables 2, 3, 4, 7–9); preset keys under `evaluate:`."""

    # Table 2: Action Rate Alignment by stratum
    alignment: Any = None
    # Table 3: separation by aux-head bin
    separation: Any = None
    # Table 4: instruction following
    instructions: Any = None
    # Tables 7–9: token and two-stage ablations
    ablations: Any = None


def _behaviour() -> Step:
    from simpersona.evaluate import ablations, alignment, instructions, separation

    def make(sec: dict[str, Any], rd: Path):
        sim, per = str(rd / "simulate"), str(rd / "personas")
        return BehaviourConfig(
            alignment=from_dict(alignment.AlignmentConfig, merge(
                sec.get("alignment") or {}, {"features": str(rd / "features"), "personas": per, "simulation": sim})),
            separation=from_dict(separation.SeparationConfig, merge(
                sec.get("separation") or {}, {"simulation": sim, "personas": per})),
            instructions=from_dict(instructions.InstructionsConfig, merge(
                sec.get("instructions") or {},
                {"ingest": str(rd / "ingest"), "personas": per, "llm": {"checkpoint": str(rd / "sft" / "stage2")}})),
            ablations=from_dict(ablations.AblationsConfig, merge(
                sec.get("ablations") or {},
                {"sft": str(rd / "sft"), "simulate": {"ingest": str(rd / "ingest"), "personas": per,
                                                       "llm": {"checkpoint": str(rd / "sft" / "stage2")}}})),
        )

    def run_all(cfg: BehaviourConfig, stage_dir: Path) -> dict[str, Any]:
        summary = {
            "alignment": alignment.run(cfg.alignment, stage_dir / "alignment"),
            "separation": separation.run(cfg.separation, stage_dir / "separation"),
            "instructions": instructions.run(cfg.instructions, stage_dir / "instructions"),
            "ablations": ablations.run(cfg.ablations, stage_dir / "ablations"),
        }
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        write_meta(stage_dir, "behaviour", cfg)
        return summary

    def describe(s: dict[str, Any]) -> str:
        return "\n".join([
            alignment.format_table(s["alignment"]), separation.format_table(s["separation"]),
            instructions.format_table(s["instructions"]), ablations.format_report(s["ablations"]),
        ])

    return Step("behaviour", make, run_all, describe)


def _report() -> Step:
    from simpersona.report import build

    def make(sec: dict[str, Any], rd: Path):
        paths = {"run": str(rd), "alignment": "behaviour/alignment", "separation": "behaviour/separation",
                 "instructions": "behaviour/instructions", "ablations": "behaviour/ablations"}
        return from_dict(build.ReportConfig, merge(sec, paths))

    return Step("report", make, build.run, build.format_summary)


def steps(data: Path | None, fmt: str) -> list[Step]:
    """The stages of the main job, in order."""
    out = [] if data is not None else [_synth()]
    out += [_ingest(data, fmt), _features(), _vqvae(), _personas(), _evaluate(generated=data is None),
            _traces(), _sft(), _simulate(), _behaviour(), _report()]
    return out


def _done(stage_dir: Path, cfg: Any) -> bool:
    meta = stage_dir / "meta.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("config") == json.loads(json.dumps(to_dict(cfg), default=str))
    except json.JSONDecodeError:
        return False


def _prepare(stage_dir: Path, cfg: Any) -> None:
    """Before a stage runs: keep a killed attempt's files when its config was the same (the stage
    resumes from them, e.g. VQ-VAE checkpoints); otherwise start from an empty folder."""
    pending = stage_dir / ".pending.json"
    now = json.dumps(to_dict(cfg), sort_keys=True, default=str)
    if stage_dir.exists() and not (pending.exists() and pending.read_text() == now):
        shutil.rmtree(stage_dir)
    (stage_dir / "meta.json").unlink(missing_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    pending.write_text(now)


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
        cfg = step.make_config(sections.get(SECTION_OF.get(step.name, step.name)) or {}, run_dir)
        if not rerun and _done(stage_dir, cfg):
            echo(f"[{i}/{len(plan)}] {step.name}: done already (same config), skipped")
            summary_file = stage_dir / "summary.json"
            results[step.name] = json.loads(summary_file.read_text()) if summary_file.exists() else {}
            continue
        rerun = True  # everything after a re-run stage runs again
        echo(f"[{i}/{len(plan)}] {step.name} …")
        _prepare(stage_dir, cfg)
        results[step.name] = step.run(cfg, stage_dir)
        echo(step.describe(results[step.name]))
    echo(f"main job finished in {time.perf_counter() - t_all:.1f}s: {run_dir}")
    return results

"""The main job: every stage in order, in one resumable run folder.

    simpersona run --preset demo --out runs/demo                       # generated multi-shop data
    simpersona run --data 2019-Oct.csv --format rees46 --out runs/r   # a real log

Each stage writes into `run_dir/.partial/<stage>/`; when it returns, the pipeline (and only the
pipeline) writes the completion marker `meta.json` — resolved config, library versions, every
output file's size and SHA-256, its inputs' content digests — and renames the folder to
`run_dir/<stage>/` (`simpersona.stagedir`). A killed stage so leaves the previous result or none.
A stage whose marker holds the same resolved config and input digests as now is skipped; a
killed run resumes at the stage it was in (the VQ-VAE from its last checkpoint), and a changed
setting re-runs that stage and every stage after it. Each stage checks that the stages it reads
are complete before it starts. Folders: `simpersona.layout.RunLayout`.

The preset holds one section per stage (`synth:`, `ingest:`, `features:` …) plus the shared
`storefront:` section; `--set features.sample.per_shop=500` overrides inside a section. Paths
between stages are set here, from the layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from simpersona import stagedir
from simpersona.config import ConfigError, read_preset, resolve, to_dict
from simpersona.layout import RunLayout

# Preset sections: every stage's name, and the shared `storefront:` section.
SECTIONS = ("synth", "ingest", "split", "features", "vqvae", "personas", "evaluate", "storefront", "traces", "sft", "simulate",
            "abtest", "report")
# The main job's A/B test when the preset's `abtest:` section names no variant (presets/variants/).
DEFAULT_VARIANT = "big-pages"
# The `evaluate:` section's parts: Table 1 / App. B (stage evaluate), Tables 2–4, 7–9 (stage behaviour),
# fidelity (the `evaluate fidelity` command).
EVALUATE_PARTS = ("clustering", "population", "alignment", "separation", "populations", "instructions", "ablations", "fidelity")


@dataclass
class Step:
    """One stage of the main job."""

    name: str
    # the stages whose outputs it reads: checked complete first, their digests go into its marker
    inputs: tuple[str, ...]
    # builds the stage's config from the preset's sections and the run folder's layout
    make_config: Callable[[dict[str, Any], RunLayout], Any]
    # runs it: (config, folder to write) -> summary dict
    run: Callable[[Any, Path], dict[str, Any]]
    # one-line summary for the console
    describe: Callable[[dict[str, Any]], str]
    # a killed attempt's files are kept (same config) and the stage resumes from them
    resumes: bool = False


def _synth() -> Step:
    from simpersona.synth import generate

    return Step("synth", (), lambda sec, lay: resolve(generate.SynthConfig, sec, "synth"), generate.run,
                generate.format_summary)


def _ingest(data: Path | None, fmt: str) -> Step:
    from simpersona.events import ingest

    def make(sec: dict[str, Any], lay: RunLayout):
        if data is None:  # the generator's output, in the canonical format
            paths = {"format": "canonical", "input": str(lay.synth_events), "catalog": str(lay.synth_catalog)}
        else:
            paths = {"format": fmt, "input": str(data)}
        return resolve(ingest.IngestConfig, merge_default(sec, "ingest", {"progress": False}), "ingest", paths)

    return Step("ingest", () if data is not None else ("synth",), make, ingest.run, ingest.format_summary)


def merge_default(sections: dict[str, Any], section: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """`sections` with `defaults` under `section` where the preset does not set them."""
    return {**sections, section: {**defaults, **(sections.get(section) or {})}}


def _split() -> Step:
    """The run's one train/evaluation shop split (contracts.split), read by every later stage."""
    from simpersona.contracts import split

    def make(sec: dict[str, Any], lay: RunLayout):
        return resolve(split.SplitConfig, sec, "split", {"ingest": str(lay.ingest)})

    return Step("split", ("ingest",), make, split.run, split.format_summary)


def _features() -> Step:
    from simpersona.features import stage

    def make(sec: dict[str, Any], lay: RunLayout):
        return resolve(stage.FeaturesConfig, sec, "features", {"input": str(lay.ingest), "split": str(lay.split)})

    return Step("features", ("ingest", "split"), make, stage.run, stage.format_summary)


def _scalars_line(summary: dict[str, Any]) -> str:
    """`k=v, …` for the summary's scalar entries (stages without a printer of their own)."""
    return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))


def _vqvae() -> Step:
    from simpersona.vqvae import train

    def make(sec: dict[str, Any], lay: RunLayout):
        return resolve(train.TrainConfig, sec, "vqvae", {"features": str(lay.features), "split": str(lay.split)})

    return Step("vqvae", ("features", "split"), make, train.run, _scalars_line, resumes=True)


def _personas() -> Step:
    from simpersona.personas import assign

    def make(sec: dict[str, Any], lay: RunLayout):
        return resolve(assign.PersonasConfig, sec, "personas", {"model": str(lay.vqvae), "features": str(lay.features)})

    return Step("personas", ("features", "vqvae"), make, assign.run, _scalars_line)


def _evaluate(generated: bool) -> Step:
    """Table 1 (clustering vs k-means) and App. B (population recovery; truth when generated)."""
    from simpersona.evaluate import clustering, population
    from simpersona.evaluate.config import EvaluateConfig

    def make(sec: dict[str, Any], lay: RunLayout):
        return EvaluateConfig(
            clustering=resolve(clustering.ClusteringConfig, sec, "evaluate.clustering",
                               {"model": str(lay.vqvae), "features": str(lay.features)}),
            population=resolve(population.PopulationConfig, sec, "evaluate.population", {
                "personas": str(lay.personas), "features": str(lay.features), "ingest": str(lay.ingest),
                "truth": str(lay.truth) if generated else None}),
        )

    def run_both(cfg, stage_dir: Path) -> dict[str, Any]:
        part = RunLayout(stage_dir.parent)  # the partial run folder the stage writes into
        summary = {
            "clustering": clustering.run(cfg.clustering, part.clustering),
            "population": population.run(cfg.population, part.population),
        }
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return summary

    def describe(s: dict[str, Any]) -> str:
        return clustering.format_table(s["clustering"]) + "\n" + population.format_report(s["population"])

    inputs = ("features", "vqvae", "personas", "ingest") + (("synth",) if generated else ())
    return Step("evaluate", inputs, make, run_both, describe)


def _traces() -> Step:
    from simpersona.traces import stage

    def make(sec: dict[str, Any], lay: RunLayout):
        paths = {"ingest": str(lay.ingest), "features": str(lay.features), "personas": str(lay.personas),
                 "split": str(lay.split)}
        return resolve(stage.TracesConfig, sec, "traces", paths)

    return Step("traces", ("ingest", "split", "features", "personas"), make, stage.run, stage.format_summary)


def _sft() -> Step:
    """Two-stage SFT on the traces; one persona token per VQ-VAE code (K read from the codebook)."""
    from simpersona.sft import train

    def make(sec: dict[str, Any], lay: RunLayout):
        tokens = {"k": 0, "vqvae": str(lay.vqvae), "cards": str(lay.personas)}
        return resolve(train.SftConfig, sec, "sft", {"data": str(lay.traces), "tokens": tokens, "split": str(lay.split)})

    def run(cfg, stage_dir: Path) -> dict[str, Any]:
        """Stages 1 then 2; then the single-stage model of the paper's ablation (Tables 7–8)."""
        summary = train.run(cfg, stage_dir)
        if cfg.stage == "both" and cfg.single_ablation and cfg.checkpoint is None:
            summary["single"] = train.run(dataclasses.replace(cfg, stage="single"), stage_dir)["single"]
        return summary

    return Step("sft", ("split", "traces", "vqvae", "personas"), make, run, train.format_summary)


def _simulate() -> Step:
    from simpersona.simulate import stage

    def make(sec: dict[str, Any], lay: RunLayout):
        paths: dict[str, Any] = {"ingest": str(lay.ingest), "personas": str(lay.personas), "split": str(lay.split)}
        if ((sec.get("simulate") or {}).get("agent") or "policy") == "llm":
            paths["llm"] = {"checkpoint": str(lay.stage2)}
        return resolve(stage.SimulateConfig, sec, "simulate", paths)

    def run(cfg, stage_dir: Path) -> dict[str, Any]:
        return stage.run(cfg, stage_dir, echo=lambda _: None)

    return Step("simulate", ("ingest", "split", "personas", "sft"), make, run, stage.format_summary)


@dataclass
class BehaviourConfig:
    """The simulated population against the real one (Tables 2, 3, 4, 7–9); preset keys under `evaluate:`."""

    # Table 2: Action Rate Alignment by stratum
    alignment: Any = None
    # Table 3: separation by aux-head bin
    separation: Any = None
    # Tables 2–3 of the LLM agent variants (with and without the persona token), on their own small population
    populations: Any = None
    # Table 4: instruction following
    instructions: Any = None
    # Tables 7–9: token and two-stage ablations
    ablations: Any = None
    # fidelity on evaluation shops (next action, session distributions, per persona)
    fidelity: Any = None


def _behaviour() -> Step:
    from simpersona.evaluate import ablations, alignment, fidelity, instructions, separation
    from simpersona.simulate import ablations as sim_ablations, instructions as sim_instructions, populations as sim_populations

    def make(sec: dict[str, Any], lay: RunLayout):
        sim, per, ing, agent = str(lay.simulate), str(lay.personas), str(lay.ingest), str(lay.stage2)
        on_eval = {"ingest": ing, "personas": per, "split": str(lay.split), "llm": {"checkpoint": agent}}
        return BehaviourConfig(
            alignment=resolve(alignment.AlignmentConfig, sec, "evaluate.alignment",
                              {"features": str(lay.features), "personas": per, "simulation": sim}),
            separation=resolve(separation.SeparationConfig, sec, "evaluate.separation",
                               {"simulation": sim, "personas": per}),
            populations=resolve(sim_populations.PopulationsConfig, sec, "evaluate.populations", {"simulate": on_eval}),
            instructions=resolve(sim_instructions.TasksConfig, sec, "evaluate.instructions",
                                 {**on_eval, "policy_model": str(lay.simulate / "policy.npz")}),
            ablations=resolve(sim_ablations.AblationRunsConfig, sec, "evaluate.ablations", {
                "sft": str(lay.sft), "simulate": {"ingest": ing, "personas": per, "split": str(lay.split),
                                                  "llm": {"checkpoint": agent}}}),
            fidelity=resolve(fidelity.FidelityConfig, sec, "evaluate.fidelity",
                             {"ingest": ing, "features": str(lay.features), "personas": per, "split": str(lay.split),
                              "simulation": sim}),
        )

    def run_all(cfg: BehaviourConfig, stage_dir: Path) -> dict[str, Any]:
        part = RunLayout(stage_dir.parent)  # the partial run folder the stage writes into
        parts = {
            "alignment": lambda: alignment.run(cfg.alignment, part.alignment),
            "separation": lambda: separation.run(cfg.separation, part.separation),
            "populations": lambda: evaluate_populations(cfg, part.populations),
            "instructions": lambda: simulate_then_evaluate(sim_instructions, cfg.instructions, instructions,
                                                           instructions.InstructionsConfig, part.instructions),
            "ablations": lambda: simulate_then_evaluate(sim_ablations, cfg.ablations, ablations, ablations.AblationsConfig,
                                                        part.ablations),
            "fidelity": lambda: fidelity.run(cfg.fidelity, part.fidelity),
        }
        summary: dict[str, Any] = {}
        seconds: dict[str, list[float]] = {}  # part → [wall s, CPU-s]
        for name, make_part in parts.items():
            t0, c0 = time.perf_counter(), cpu_seconds()
            summary[name] = make_part()
            seconds[name] = [round(time.perf_counter() - t0, 1), round(cpu_seconds() - c0, 1)]
        summary["seconds"] = seconds
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return summary

    def describe(s: dict[str, Any]) -> str:
        return "\n".join([
            alignment.format_table(s["alignment"]), separation.format_table(s["separation"]),
            *(f"{a}: not run ({r['reason']})" if r["status"] != "run" else
              alignment.format_table(r["alignment"]) + "\n" + separation.format_table(r["separation"]) for a, r in s["populations"].items()),
            instructions.format_table(s["instructions"]), ablations.format_report(s["ablations"]),
            fidelity.format_summary(s["fidelity"]),
            "behaviour parts (wall s / CPU-s): " + ", ".join(f"{k} {w:.1f} / {c:.1f}" for k, (w, c) in s.get("seconds", {}).items()),
        ])

    return Step("behaviour", ("features", "split", "personas", "ingest", "simulate", "sft"), make, run_all, describe)


def evaluate_populations(cfg: BehaviourConfig, out_dir: Path) -> dict[str, Any]:
    """Tables 2–3 of each LLM agent variant: its population simulated into out_dir/simulation/<agent>/
    (`simulate.populations`), then alignment and separation (which only read it) into out_dir/<agent>/."""
    from simpersona.evaluate import alignment, separation
    from simpersona.simulate import populations

    runs = populations.run(cfg.populations, out_dir / "simulation", echo=lambda _: None)
    out: dict[str, Any] = {}
    for agent, info in runs.items():
        if info["status"] != "run":
            out[agent] = info
            continue
        sim = out_dir / "simulation" / info["dir"]
        out[agent] = {"status": "run", "alignment": alignment.run(dataclasses.replace(
            cfg.alignment, simulation=sim, min_sim_sessions=cfg.populations.min_sim_sessions), out_dir / agent / "alignment"),
            "separation": separation.run(dataclasses.replace(cfg.separation, simulation=sim), out_dir / agent / "separation")}
    return out


def simulate_then_evaluate(sim_module, sim_cfg: Any, eval_module, eval_cfg_cls, out_dir: Path) -> dict[str, Any]:
    """A scenario's simulation into out_dir/simulation, then its evaluation (which only reads it) into out_dir."""
    sim_module.run(sim_cfg, out_dir / "simulation")
    return eval_module.run(eval_cfg_cls(simulation=out_dir / "simulation"), out_dir)


def _abtest() -> Step:
    """The simulated A/B test (`simpersona abtest`) of the `abtest:` section's variant spec on the
    evaluation shops; the fast policy is fitted on the training shops (agent llm: RUN/sft/stage2)."""
    from simpersona.abtest import stage

    def make(sec: dict[str, Any], lay: RunLayout):
        own = sec.get("abtest") or {}
        paths: dict[str, Any] = {"ingest": str(lay.ingest), "personas": str(lay.personas), "split": str(lay.split)}
        if (own.get("agent") or "policy") == "llm":
            paths["llm"] = {"checkpoint": str(lay.stage2)}
        if "spec" not in own and "variant" not in own:  # a preset without an experiment of its own
            sec = merge_default(sec, "abtest", {"spec": DEFAULT_VARIANT})
        return resolve(stage.AbtestConfig, sec, "abtest", paths)

    def run(cfg, stage_dir: Path) -> dict[str, Any]:
        return stage.run(cfg, stage_dir, echo=lambda _: None)

    return Step("abtest", ("ingest", "split", "personas", "sft"), make, run, stage.format_summary)


def _report(before: tuple[str, ...]) -> Step:
    from simpersona.report import build

    def make(sec: dict[str, Any], lay: RunLayout):
        return resolve(build.ReportConfig, sec, "report", {"run": str(lay.root)})

    return Step("report", before, make, build.run, build.format_summary)


def steps(data: Path | None, fmt: str) -> list[Step]:
    """The stages of the main job, in order."""
    out = [] if data is not None else [_synth()]
    out += [_ingest(data, fmt), _split(), _features(), _vqvae(), _personas(), _evaluate(generated=data is None),
            _traces(), _sft(), _simulate(), _behaviour(), _abtest()]
    return out + [_report(tuple(s.name for s in out))]


def check_sections(sections: dict[str, Any]) -> None:
    """Every preset section (and part of `evaluate:`) names a stage; ConfigError otherwise."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"preset sections {sorted(unknown)} name no stage; known sections: {list(SECTIONS)}")
    evaluate = sections.get("evaluate") or {}
    if not isinstance(evaluate, dict) or set(evaluate) - set(EVALUATE_PARTS):
        bad = sorted(set(evaluate) - set(EVALUATE_PARTS)) if isinstance(evaluate, dict) else evaluate
        raise ConfigError(f"evaluate: {bad} name no evaluation; known: {list(EVALUATE_PARTS)}")


def shop_settings(cfg: Any, key: str) -> list[tuple[str, list[str]]]:
    """The settings in `cfg` (a config dataclass, nested ones included) that name shops: each
    non-empty list field whose name ends in `shops`, as (its dotted preset key, the names)."""
    out: list[tuple[str, list[str]]] = []
    if not dataclasses.is_dataclass(cfg):
        return out
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name.endswith("shops") and isinstance(value, (list, tuple)) and value:
            out.append((f"{key}.{f.name}", [str(v) for v in value]))
        elif dataclasses.is_dataclass(value):
            out += shop_settings(value, f"{key}.{f.name}")
    return out


def check_shops(plan: list[Step], sections: dict[str, Any], lay: RunLayout) -> None:
    """Right after ingest, before any stage fits: the data has a shop to hold out and a shop to
    train on, and every setting that names shops (split.eval_shops, simulate.shops,
    evaluate.fidelity.eval_shops …) names shops of the data; ConfigError naming the setting and
    the missing shops otherwise (a preset must not assume the generator's `shop_00` …)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    events = lay.ingest / "events.parquet"
    shops = sorted(s for s in pc.unique(pq.read_table(events, columns=["shop_id"]).column("shop_id")).to_pylist()
                   if s is not None)
    if len(shops) < 2:
        raise ConfigError(
            f"{events} has {len(shops)} shop{'' if len(shops) == 1 else 's'} {shops}: the run holds out evaluation shops and "
            "trains on the others, so it needs at least 2; split a single store's buyers into pseudo-shops with "
            "--set ingest.shop_shards=4 (REES46: --set ingest.shop_key=brand or category)")
    known = set(shops)
    for step in plan:
        key = "evaluate" if step.name == "behaviour" else step.name
        for setting, names in shop_settings(step.make_config(sections, lay), key):
            missing = [n for n in names if n not in known]
            if missing:
                raise ConfigError(f"{setting}: shop(s) {missing[:5]}{' …' if len(missing) > 5 else ''} are not shops of the data "
                                  f"({events}: {len(shops)} shops, e.g. {shops[:5]})")


def input_hashes(step: Step, lay: RunLayout, data: Path | None) -> dict[str, Any]:
    """The content digests of what `step` reads: each input stage's outputs digest (from its
    marker, which must be complete) and, for ingest of a real log, the log's bytes."""
    out: dict[str, Any] = {}
    for name in step.inputs:
        marker = stagedir.require_complete(lay.stage(name), name)
        out[name] = marker.get("outputs_digest")
    if step.name == "ingest" and data is not None:
        out["data"] = data_digest(Path(data))
    return out


def data_digest(path: Path) -> str:
    """SHA-256 of a log file, or of the manifest of a log folder."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (--data)")
    return stagedir.file_hash(path) if path.is_file() else stagedir.digest(stagedir.manifest(path))


def _done(stage_dir: Path, cfg: Any, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The stage's marker when it finished with this config on these inputs, else None."""
    marker = stagedir.read_marker(stage_dir)
    if marker is None:
        return None
    same = marker.get("config") == json.loads(json.dumps(to_dict(cfg), default=str))
    return marker if same and marker.get("input_hashes") == inputs else None


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(preset: str | Path, run_dir: Path, overrides: tuple[str, ...] = (), data: Path | None = None,
        fmt: str = "canonical", echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run (or resume) the main job; returns each stage's summary."""
    sections = read_preset(preset, overrides)
    check_sections(sections)
    plan = steps(data, fmt)
    lay = RunLayout(Path(run_dir))
    stagedir.check_output(lay.root, stage_folder=False)
    results: dict[str, dict[str, Any]] = {}
    rerun = False
    t_all = time.perf_counter()
    for i, step in enumerate(plan, 1):
        stage_dir = lay.stage(step.name)
        cfg = step.make_config(sections, lay)
        inputs = input_hashes(step, lay, data)
        marker = None if rerun else _done(stage_dir, cfg, inputs)
        if marker is not None:
            echo(f"[{i}/{len(plan)}] {step.name}: done already (same config and inputs), skipped")
            results[step.name] = marker.get("summary") or {}
            if step.name == "ingest":
                check_shops(plan, sections, lay)
            continue
        rerun = True  # everything after a re-run stage runs again
        echo(f"[{i}/{len(plan)}] {step.name} …")
        key = json.dumps({"config": to_dict(cfg), "inputs": inputs}, sort_keys=True, default=str)
        t0, c0 = time.perf_counter(), cpu_seconds()
        part = stagedir.begin(stage_dir, key, resume=step.resumes)
        with stagedir.discard_on_error(part, keep=step.resumes, out=stage_dir):
            summary = stagedir.relocate(step.run(cfg, part), part, stage_dir)
        stagedir.commit(part, stage_dir, step.name, cfg, summary=summary, input_hashes=inputs)
        results[step.name] = summary
        echo(step.describe(summary))
        echo(f"[{i}/{len(plan)}] {step.name}: {time.perf_counter() - t0:.1f}s wall, {cpu_seconds() - c0:.1f} CPU-s "
             f"(load average {os.getloadavg()[0]:.1f})")
        if step.name == "ingest":  # the data's shops are known now; nothing has been fitted yet
            check_shops(plan, sections, lay)
    echo(f"main job finished in {time.perf_counter() - t_all:.1f}s: {lay.root}")
    return results

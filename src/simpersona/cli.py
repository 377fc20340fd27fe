"""The `simpersona` command line: one subcommand per pipeline stage.

Every stage command takes `--preset NAME|FILE` and repeatable `--set a.b=c`; its flags are
shortcuts for fields of the stage's config dataclass, derived from it (`ConfigCommand`: type,
choices, default and help text — the field's comment docstring — come from the field), and the
config is resolved by the one loader (`config.load_config`: preset → section → flags → --set).
Stage modules are imported only when their command runs or shows its help, so `simpersona
--help` stays fast and nothing heavy loads at import time. Without `--out`, a stage command
writes where the main job would, under `runs/` (`layout.RunLayout`), aside first and renamed
into place when complete (`stagedir`).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any

import click

from simpersona.config import ConfigError, InputError, field_help, load_config
from simpersona.layout import RunLayout
from simpersona.stagedir import run_atomic

# Where a stage command writes when no --out is given: the main job's layout under runs/.
RUNS = RunLayout(Path("runs"))

SETS = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")


def operator_error(e: BaseException) -> str | None:
    """The one line an operator error prints (None: a bug, which keeps its traceback). Config and
    input errors name the key or path; an OS error (read-only or full disk, permission, missing
    file) names its path and the system's reason."""
    from simpersona.events.validate import IngestError
    from simpersona.storefront.config import StorefrontError

    if isinstance(e, (ConfigError, InputError, IngestError, StorefrontError)):
        return str(e)
    if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError)):
        if e.filename is not None:
            where = f"{e.filename} → {e.filename2}" if e.filename2 is not None else str(e.filename)
            return f"{where}: {e.strerror or e}"
        return str(e)
    return None


class _Group(click.Group):
    """Turns config, input and disk errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: D401
        try:
            return super().invoke(ctx)
        except (ConfigError, InputError, OSError, ValueError) as e:
            line = operator_error(e)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="simpersona")
def main() -> None:
    """SimPersona: buyer personas from raw clickstreams.

    Data flow: ingest → features → vqvae → personas → storefront → traces → sft → simulate → evaluate.
    """


@main.command("run")
@click.option("--preset", default="demo", show_default=True, help="YAML preset with one section per stage.")
@click.option("--out", default=Path("runs/demo"), type=click.Path(path_type=Path), show_default=True, help="Run folder.")
@click.option("--data", default=None, type=click.Path(path_type=Path), help="A real event log (default: generate one).")
@click.option("--format", "fmt", default="canonical", show_default=True, help="Format of --data.")
@SETS
def run_all(preset, out, data, fmt, sets) -> None:
    """The main job: every stage in order, resumable in one run folder."""
    from simpersona import pipeline

    pipeline.run(preset, out, tuple(sets), data=data, fmt=fmt, echo=click.echo)


# -- stage commands: flags derived from the config dataclasses -------------------------------------
def _field(cls: type, path: str) -> tuple[Any, Any, str]:
    """(annotation, default, help text) of the field at dotted `path` of config dataclass `cls`."""
    *owners, leaf = path.split(".")
    for part in owners:
        cls = typing.get_type_hints(cls)[part]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if leaf not in fields:
        raise ConfigError(f"{cls.__name__} has no field {leaf!r} (a CLI flag names it)")
    return typing.get_type_hints(cls)[leaf], getattr(cls(), leaf), field_help(cls).get(leaf, "")


def _option(name: str, dest: str, tp: Any, default: Any, text: str) -> click.Option:
    """A click option for one config field; it defaults to None (not given: preset and defaults apply)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if default not in (None, "", [], ()):
        text = f"{text} [default: {default}]"
    multiple = typing.get_origin(tp) in (list, tuple)
    if multiple:
        tp = (typing.get_args(tp) or (str,))[0]
    if tp is bool:
        return click.Option([f"--{name}/--no-{name}", dest], default=None, help=text)
    if typing.get_origin(tp) is typing.Literal:
        kind: Any = click.Choice([str(a) for a in typing.get_args(tp)])
    elif tp is Path:
        kind = click.Path(path_type=Path)
    else:
        kind = tp if tp in (int, float, str) else str
    return click.Option([f"--{name}", dest], type=kind, default=None, multiple=multiple, help=text)


class _FromConfig:
    """Flags from config fields. `flags`: field paths (`"buyers"`, flag --buyers) or (flag name,
    field path) pairs (`("checkpoint", "llm.checkpoint")`). The callback gets the resolved config
    as `cfg`. The dataclass is imported when the command is parsed or shows its help."""

    def __init__(self, *args: Any, config: str, section: str, flags: tuple = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config, self.section, self.flags = config, section, flags
        self.fields: dict[str, str] | None = None  # option dest -> field path

    def config_class(self) -> type:
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if self.fields is None:
            cls, options, self.fields = self.config_class(), [], {}
            for spec in self.flags:
                name, path = (spec.replace("_", "-"), spec) if isinstance(spec, str) else spec
                dest = "cfg__" + path.replace(".", "__")
                options.append(_option(name, dest, *_field(cls, path)))
                self.fields[dest] = path
            preset = click.Option(["--preset"], default=None, help="YAML preset: a file, or a name in "
                                  "simpersona/presets (demo, tiny, smollm2, qwen3); its section for this command.")
            self.params = [*options, *self.params, preset]
        return super().get_params(ctx)

    def invoke(self, ctx: click.Context):
        self.get_params(ctx)
        values: dict[str, Any] = {}
        for dest, path in (self.fields or {}).items():
            value = ctx.params.pop(dest, None)
            value = (list(value) or None) if isinstance(value, tuple) else value
            *owners, leaf = path.split(".")
            node = values
            for part in owners:
                node = node.setdefault(part, {})
            node[leaf] = value
        preset, sets = ctx.params.pop("preset", None), ctx.params.pop("sets", ())
        ctx.params["cfg"] = load_config(self.config_class(), preset, sets, section=self.section, values=values)
        return super().invoke(ctx)


class ConfigCommand(_FromConfig, click.Command):
    """A stage command whose flags are its config's fields."""


class ConfigGroup(_FromConfig, click.Group):
    """A stage command with subcommands (`features inspect`, `sft fabricate`)."""


def _out(text: str = "Output folder."):
    return click.option("--out", default=None, type=click.Path(path_type=Path), help=text)


@main.command(cls=ConfigCommand, config="simpersona.events.ingest:IngestConfig", section="ingest",
              flags=("format", "input", "catalog", "strict", "salt", "keep_raw_rejects"))
@_out("Output folder [default: runs/ingest].")
@SETS
def ingest(cfg, out) -> None:
    """Read a real or generated event log into the canonical schema, keeping rejects aside."""
    from simpersona.events import ingest as stage

    click.echo(stage.format_summary(run_atomic(out or RUNS.ingest, "ingest", cfg, stage.run)))


@main.command(cls=ConfigCommand, config="simpersona.synth.generate:SynthConfig", section="synth",
              flags=("shops", "buyers", "seed", "file_format"))
@_out("Output folder [default: runs/synth].")
@SETS
def synth(cfg, out) -> None:
    """Generate a realistic multi-shop SYNTHETIC clickstream, catalog and ground truth."""
    from simpersona import synth as stage

    click.echo(stage.format_summary(run_atomic(out or RUNS.synth, "synth", cfg, stage.run)))


@main.group()
def vqvae() -> None:
    """Behaviour-aware VQ-VAE (spec §2)."""


@vqvae.command("train", cls=ConfigCommand, config="simpersona.vqvae.train:TrainConfig", section="vqvae",
               flags=("features", "seed", "max_epochs"))
@_out("Run folder [default: runs/vqvae]; a killed run resumes from its checkpoint when re-run.")
@SETS
def vqvae_train(cfg, out) -> None:
    """Train the VQ-VAE on the features' train/val sample; checkpoint, resume, early stopping."""
    from simpersona.vqvae import train as stage

    summary = run_atomic(out or RUNS.vqvae, "vqvae", cfg, stage.run, resume=True)
    click.echo(", ".join(f"{k}={v}" for k, v in summary.items()))


@main.group()
def personas() -> None:
    """Persona assignment, per-shop mixes and persona cards (spec §3)."""


@personas.command("assign", cls=ConfigCommand, config="simpersona.personas.assign:PersonasConfig",
                  section="personas", flags=("model", "features"))
@_out("Output folder [default: runs/personas].")
@SETS
def personas_assign(cfg, out) -> None:
    """Assign every buyer a code (streamed), write per-shop mixes p̂_s(k) and persona cards."""
    from simpersona.personas import assign as stage

    summary = run_atomic(out or RUNS.personas, "personas", cfg, stage.run)
    click.echo(", ".join(f"{k}={v}" for k, v in summary.items()))


@main.group()
def evaluate() -> None:
    """Evaluations (clustering quality, population recovery, alignment, separation, instructions, …)."""


@evaluate.command("clustering", cls=ConfigCommand, config="simpersona.evaluate.config:ClusteringConfig",
                  section="evaluate.clustering", flags=("model", "features"))
@_out("Output folder [default: runs/evaluate/clustering].")
@SETS
def evaluate_clustering(cfg, out) -> None:
    """Table 1: VQ-VAE codes vs MiniBatchKMeans on the same vectors."""
    from simpersona.evaluate import clustering as stage

    click.echo(stage.format_table(run_atomic(out or RUNS.clustering, "evaluate.clustering", cfg, stage.run)))


@evaluate.command("population", cls=ConfigCommand, config="simpersona.evaluate.config:PopulationConfig",
                  section="evaluate.population", flags=("personas", "features", "truth", "ingest"))
@_out("Output folder [default: runs/evaluate/population].")
@SETS
def evaluate_population(cfg, out) -> None:
    """App. B: stratum JS and feature R² on held-out shops; AMI and type-mix error with truth."""
    from simpersona.evaluate import population as stage

    click.echo(stage.format_report(run_atomic(out or RUNS.population, "evaluate.population", cfg, stage.run)))


@main.group(cls=ConfigGroup, invoke_without_command=True, config="simpersona.features.stage:FeaturesConfig",
            section="features", flags=("input", "engine", ("embeddings", "embedding.enabled")))
@_out("Output folder (FEAT_DIR) [default: runs/features].")
@SETS
@click.pass_context
def features(ctx, cfg, out) -> None:
    """Buyer features: sessions table, 16 scalars, strata, labels, 403-d vectors, transforms."""
    if ctx.invoked_subcommand is not None:
        return
    from simpersona.features import stage

    click.echo(stage.format_summary(run_atomic(out or RUNS.features, "features", cfg, stage.run)))


@features.command("inspect")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="FEAT_DIR.")
@click.option("--buyer", required=True, help="buyer_id (the hashed id as in buyers.parquet).")
@click.option("--shop", default=None, help="shop_id, when the buyer is in several shops.")
def features_inspect(run_dir, buyer, shop) -> None:
    """Print one buyer's vector in raw units (scalars, labels, masks, channel norms)."""
    from simpersona.features import stage

    click.echo(stage.inspect_buyer(run_dir, buyer, shop))


@main.group()
def storefront() -> None:
    """The web shop built from a catalog, logging canonical events (and the agent environment)."""


@storefront.command("serve", cls=ConfigCommand, config="simpersona.storefront.config:StorefrontConfig",
                    section="storefront", flags=("catalog", "host", "port", "events_out"))
@SETS
def storefront_serve(cfg) -> None:
    """Serve every shop of a catalog under /s/{shop}/ until interrupted (events flushed on exit)."""
    from simpersona.storefront.app import serve

    serve(cfg)


@main.group("sft", cls=ConfigGroup, invoke_without_command=True, config="simpersona.sft.train:SftConfig",
            section="sft", flags=("stage", "data", "split", ("model", "model.preset"), ("init", "tokens.init")))
@_out("Run folder (one checkpoint per stage) [default: runs/sft].")
@SETS
@click.pass_context
def sft(ctx, cfg, out) -> None:
    """Two-stage SFT with persona tokens (spec §6): stage 1 persona rows only, stage 2 all.

    Not written aside and renamed like the other stage commands: `--stage 1` then `--stage 2`
    build up one run folder.
    """
    if ctx.invoked_subcommand is not None:
        return
    from simpersona.sft import train as stage

    click.echo(stage.format_summary(stage.run(cfg, out or RUNS.sft)))


@sft.command("fabricate")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="TRACES_DIR to write (traces.jsonl, stage{1,2}/{train,val}.jsonl, cards.json, vqvae/).")
@click.option("--k", default=16, show_default=True, help="Persona codes.")
@click.option("--shops", default=6, show_default=True, help="Shops.")
@click.option("--sessions", default=200, show_default=True, help="Sessions (each gives stage-1 and stage-2 records).")
@click.option("--seed", default=0, show_default=True, help="Seed.")
def sft_fabricate(out, k, shops, sessions, seed) -> None:
    """Write FABRICATED traces in the SFT record format (tests and benchmarks; the main job replays real sessions)."""
    from simpersona.testing.traces import fabricate

    click.echo(fabricate(out, k, shops, sessions, seed))


@main.group()
def agent() -> None:
    """The LLM agent's CPU inference engine (ONNX Runtime GenAI): convert a checkpoint, check a pair."""


@agent.command("convert")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="SFT checkpoint folder (e.g. RUN/sft/stage2).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Engine folder to write (llm.engine_dir).")
@click.option("--precision", default="int8", show_default=True, type=click.Choice(["int8", "int4", "fp32"]),
              help="Engine weights (int8: int8 compute, VNNI where the CPU has it).")
def agent_convert(checkpoint, out, precision) -> None:
    """Convert a fine-tuned checkpoint (persona tokens included) to the engine, checked after."""
    from simpersona.agents.engine import convert

    m = convert(checkpoint, out, precision)
    click.echo(f"{out}: {m['precision']} engine of {m['checkpoint']} (weights {m['sha256']}), vocabulary {m['vocab_size']}, "
               f"K = {m['persona_k']} persona tokens, in {m['convert_s']} s")


@agent.command("check")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="SFT checkpoint folder.")
@click.option("--engine", "engine_dir", required=True, type=click.Path(path_type=Path), help="Engine folder.")
def agent_check(checkpoint, engine_dir) -> None:
    """Check that an engine folder was made from this checkpoint (vocabulary, persona tokens, K, weights)."""
    from simpersona.agents.engine import check_engine

    m = check_engine(checkpoint, engine_dir)
    click.echo(f"{engine_dir} matches {checkpoint}: vocabulary {m['vocab_size']}, K = {m['persona_k']}, weights {m['sha256']}")


@main.command(cls=ConfigCommand, config="simpersona.traces.stage:TracesConfig", section="traces",
              flags=("ingest", "features", "personas", "split"))
@_out("TRACES_DIR to write [default: runs/traces].")
@SETS
def traces(cfg, out) -> None:
    """Replay sampled real sessions on the storefront, judge them, write SFT JSONL (spec §5)."""
    from simpersona.traces import stage

    click.echo(stage.format_summary(run_atomic(out or RUNS.traces, "traces", cfg, stage.run)))


@main.command(cls=ConfigCommand, config="simpersona.simulate.stage:SimulateConfig", section="simulate",
              flags=("ingest", "personas", ("shop", "shops"), "buyers", "agent", ("checkpoint", "llm.checkpoint"),
                     ("endpoint", "endpoint.url"), "persona", "transport"))
@_out("Output folder [default: runs/simulate].")
@SETS
def simulate(cfg, out) -> None:
    """Population simulation: k ~ p̂_s(k), intents from strata, episodes on the storefront; its event log."""
    from simpersona.simulate import stage

    run = lambda c, d: stage.run(c, d, echo=click.echo)  # noqa: E731
    click.echo(stage.format_summary(run_atomic(out or RUNS.simulate, "simulate", cfg, run)))


@evaluate.command("alignment", cls=ConfigCommand, config="simpersona.evaluate.alignment:AlignmentConfig",
                  section="evaluate.alignment", flags=("features", "personas", "simulation"))
@_out("Output folder [default: runs/behaviour/alignment].")
@SETS
def evaluate_alignment(cfg, out) -> None:
    """Table 2: Action Rate Alignment by funnel stratum (correct vs all- and random-mismatch)."""
    from simpersona.evaluate import alignment as stage

    click.echo(stage.format_table(run_atomic(out or RUNS.alignment, "evaluate.alignment", cfg, stage.run)))


@evaluate.command("fidelity", cls=ConfigCommand, config="simpersona.evaluate.fidelity:FidelityConfig",
                  section="evaluate.fidelity",
                  flags=("ingest", "features", "personas", "simulation", ("eval-shop", "eval_shops"), "split",
                         "max_sessions"))
@_out("Output folder [default: runs/behaviour/fidelity].")
@SETS
def evaluate_fidelity(cfg, out) -> None:
    """Fidelity on evaluation shops: next-action prediction, session distributions, per persona."""
    from simpersona.evaluate import fidelity as stage

    click.echo(stage.format_report(run_atomic(out or RUNS.fidelity, "evaluate.fidelity", cfg, stage.run)))


@evaluate.command("separation", cls=ConfigCommand, config="simpersona.evaluate.separation:SeparationConfig",
                  section="evaluate.separation", flags=("simulation", "personas"))
@_out("Output folder [default: runs/behaviour/separation].")
@SETS
def evaluate_separation(cfg, out) -> None:
    """Table 3: behavioural separation by aux-head bin (Cohen's d, Welch, Kruskal–Wallis, permutation)."""
    from simpersona.evaluate import separation as stage

    click.echo(stage.format_table(run_atomic(out or RUNS.separation, "evaluate.separation", cfg, stage.run)))


@evaluate.command("instructions", cls=ConfigCommand, config="simpersona.simulate.instructions:TasksConfig",
                  section="evaluate.instructions",
                  flags=("ingest", "personas", "agents", ("checkpoint", "llm.checkpoint"), ("endpoint", "endpoint.url"),
                         "repetitions"))
@_out("Output folder [default: runs/behaviour/instructions].")
@SETS
def evaluate_instructions(cfg, out) -> None:
    """Table 4: instruction following on deterministic tasks (3–27 navigation actions), judged from the event log."""
    from simpersona.evaluate import instructions as stage
    from simpersona.pipeline import simulate_then_evaluate
    from simpersona.simulate import instructions as sim

    run = lambda c, o: simulate_then_evaluate(sim, c, stage, stage.InstructionsConfig, o)  # noqa: E731
    click.echo(stage.format_table(run_atomic(out or RUNS.instructions, "evaluate.instructions", cfg, run)))


@evaluate.command("ablations", cls=ConfigCommand, config="simpersona.simulate.ablations:AblationRunsConfig",
                  section="evaluate.ablations",
                  flags=(("ingest", "simulate.ingest"), ("personas", "simulate.personas"), "sft"))
@_out("Output folder [default: runs/behaviour/ablations].")
@SETS
def evaluate_ablations(cfg, out) -> None:
    """Table 9 (persona token vs none, neutral intents) and Tables 7–8 (two-stage vs single-stage)."""
    from simpersona.evaluate import ablations as stage
    from simpersona.pipeline import simulate_then_evaluate
    from simpersona.simulate import ablations as sim

    run = lambda c, o: simulate_then_evaluate(sim, c, stage, stage.AblationsConfig, o)  # noqa: E731
    click.echo(stage.format_report(run_atomic(out or RUNS.ablations, "evaluate.ablations", cfg, run)))


@main.group(cls=ConfigGroup, invoke_without_command=True, config="simpersona.abtest.stage:AbtestConfig", section="abtest",
            flags=("ingest", "personas", "split", "spec", ("shop", "shops"), "buyers", "design", "aa", "agent",
                   ("checkpoint", "llm.checkpoint"), ("endpoint", "endpoint.url"), "seed"))
@_out("Output folder [default: runs/abtest].")
@SETS
@click.pass_context
def abtest(ctx, cfg, out) -> None:
    """A simulated A/B test of a storefront change (--spec variant.yaml): paired persona populations, effects with CIs."""
    if ctx.invoked_subcommand is not None:
        return
    from simpersona.abtest import stage

    click.echo(stage.format_summary(run_atomic(out or RUNS.root / "abtest", "abtest", cfg, stage.run)))


@abtest.command("harness", cls=ConfigCommand, config="simpersona.abharness:HarnessConfig", section="harness",
                flags=("worlds", ("buyers", "abtest.buyers"), ("agent", "abtest.agent"), ("checkpoint", "abtest.llm.checkpoint"),
                       ("persona", "abtest.persona")))
@_out("Output folder [default: runs/abtest-harness].")
@SETS
def abtest_harness(cfg, out) -> None:
    """Generated A/B experiments with known true effects: personas from the control arm, both arms simulated, agreement."""
    from simpersona import abharness

    click.echo(abharness.format_summary(run_atomic(out or RUNS.root / "abtest-harness", "abtest.harness", cfg, abharness.run)))


@main.command(cls=ConfigCommand, config="simpersona.report.build:ReportConfig", section="report", flags=("run",))
@_out("Output folder [default: RUN/report; the page is index.html].")
@SETS
def report(cfg, out) -> None:
    """One self-contained HTML page from whatever a run folder holds (missing parts: "not run")."""
    from simpersona.report import build

    if cfg.run is None:
        raise ConfigError("report needs --run RUN_DIR (a run folder of the main job)")
    click.echo(build.format_summary(run_atomic(out or RunLayout(cfg.run).report, "report", cfg, build.run)))

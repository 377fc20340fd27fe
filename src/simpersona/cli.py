"""The `simpersona` command line: one subcommand per pipeline stage.

Every stage command takes `--preset NAME|FILE` and repeatable `--set a.b=c`; its flags are
shortcuts for config fields. Stage modules are imported inside the command, so `simpersona
--help` stays fast and nothing heavy loads at import time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from simpersona.config import ConfigError, InputError, load_config
from simpersona.layout import RunLayout
from simpersona.stagedir import run_atomic

# Where a stage command writes when no --out is given: the main job's layout under runs/.
RUNS = RunLayout(Path("runs"))

PRESET = click.option("--preset", default=None, help="YAML preset: a file or a name in simpersona/presets.")
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


@main.command()
@click.option("--format", "fmt", default=None, help="Source format: canonical, rees46, taobao, tmall, gmerch, otto.")
@click.option("--input", "input_path", default=None, type=click.Path(path_type=Path), help="Source file or folder.")
@click.option("--catalog", default=None, type=click.Path(path_type=Path), help="Catalog file (canonical format only).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--strict", is_flag=True, default=None, help="Fail on the first rejected row.")
@click.option("--salt", default=None, help="HMAC key for ids (hex); default $SIMPERSONA_SALT or the user's key file.")
@PRESET
@SETS
def ingest(fmt, input_path, catalog, out, strict, salt, preset, sets) -> None:
    """Read a real or generated event log into the canonical schema, keeping rejects aside."""
    from simpersona.events import ingest as stage

    values = {"format": fmt, "input": input_path, "catalog": catalog, "strict": strict, "salt": salt}
    cfg = load_config(stage.IngestConfig, preset, sets, section="ingest", values=values)
    summary = run_atomic(out or RUNS.ingest, "ingest", cfg, stage.run)
    click.echo(stage.format_summary(summary))


@main.command()
@click.option("--shops", type=int, default=None, help="Number of shops.")
@click.option("--buyers", type=int, default=None, help="Total buyers over all shops.")
@click.option("--seed", type=int, default=None, help="Master seed (same seed, same files).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--file-format", "file_format", default=None, type=click.Choice(["csv", "parquet"]), help="events.csv or events.parquet.")
@PRESET
@SETS
def synth(shops, buyers, seed, out, file_format, preset, sets) -> None:
    """Generate a realistic multi-shop SYNTHETIC clickstream, catalog and ground truth."""
    from simpersona import synth as stage

    values = {"shops": shops, "buyers": buyers, "seed": seed, "file_format": file_format}
    cfg = load_config(stage.SynthConfig, preset, sets, section="synth", values=values)
    summary = run_atomic(out or RUNS.synth, "synth", cfg, stage.run)
    click.echo(stage.format_summary(summary))


def _given(**kw):
    """Flag values that were given (None means 'not given', so presets and defaults apply)."""
    return {k: v for k, v in kw.items() if v is not None}


@main.group()
def vqvae() -> None:
    """Behaviour-aware VQ-VAE (spec §2)."""


@vqvae.command("train")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR from `simpersona features`.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Run folder (re-running resumes).")
@PRESET
@SETS
def vqvae_train(features, out, preset, sets) -> None:
    """Train the VQ-VAE on the features' train/val sample; checkpoint, resume, early stopping."""
    from simpersona.vqvae import train as stage

    cfg = load_config(stage.TrainConfig, preset, sets, section="vqvae", values=_given(features=features))
    summary = run_atomic(out or RUNS.vqvae, "vqvae", cfg, stage.run, resume=True)
    click.echo(", ".join(f"{k}={v}" for k, v in summary.items()))


@main.group()
def personas() -> None:
    """Persona assignment, per-shop mixes and persona cards (spec §3)."""


@personas.command("assign")
@click.option("--model", default=None, type=click.Path(path_type=Path), help="VQ-VAE run folder.")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def personas_assign(model, features, out, preset, sets) -> None:
    """Assign every buyer a code (streamed), write per-shop mixes p̂_s(k) and persona cards."""
    from simpersona.personas import assign as stage

    values = _given(model=model, features=features)
    cfg = load_config(stage.PersonasConfig, preset, sets, section="personas", values=values)
    summary = run_atomic(out or RUNS.personas, "personas", cfg, stage.run)
    click.echo(", ".join(f"{k}={v}" for k, v in summary.items()))


@main.group()
def evaluate() -> None:
    """Evaluations (clustering quality, population recovery, …)."""


@evaluate.command("clustering")
@click.option("--model", default=None, type=click.Path(path_type=Path), help="VQ-VAE run folder.")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_clustering(model, features, out, preset, sets) -> None:
    """Table 1: VQ-VAE codes vs MiniBatchKMeans on the same vectors."""
    from simpersona.evaluate import clustering as stage
    from simpersona.evaluate.config import EvaluateConfig

    values = {"clustering": _given(model=model, features=features)}
    cfg = load_config(EvaluateConfig, preset, sets, section="evaluate", values=values)
    report = run_atomic(out or RUNS.clustering, "evaluate.clustering", cfg.clustering, stage.run)
    click.echo(stage.format_table(report))


@evaluate.command("population")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Output of `personas assign`.")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR.")
@click.option("--truth", default=None, type=click.Path(path_type=Path), help="Generator truth: buyers.parquet (shop_id, buyer_id, type).")
@click.option("--ingest", "ingest_dir", default=None, type=click.Path(path_type=Path), help="Ingest folder (raw truth ids are hashed with its salt).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_population(personas_dir, features, truth, ingest_dir, out, preset, sets) -> None:
    """App. B: stratum JS and feature R² on held-out shops; AMI and type-mix error with truth."""
    from simpersona.evaluate import population as stage
    from simpersona.evaluate.config import EvaluateConfig

    given = _given(personas=personas_dir, features=features, truth=truth, ingest=ingest_dir)
    cfg = load_config(EvaluateConfig, preset, sets, section="evaluate", values={"population": given})
    report = run_atomic(out or RUNS.population, "evaluate.population", cfg.population, stage.run)
    click.echo(stage.format_report(report))


@main.group(invoke_without_command=True)
@click.option("--input", "input_path", default=None, type=click.Path(path_type=Path), help="Ingest output folder.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder (FEAT_DIR).")
@click.option("--engine", default=None, type=click.Choice(["duckdb", "pyspark"]), help="Aggregation engine.")
@click.option("--no-embeddings", is_flag=True, default=False, help="Skip text embeddings (channels zero, masks kept).")
@PRESET
@SETS
@click.pass_context
def features(ctx, input_path, out, engine, no_embeddings, preset, sets) -> None:
    """Buyer features: sessions table, 16 scalars, strata, labels, 403-d vectors, transforms."""
    if ctx.invoked_subcommand is not None:
        return
    from simpersona.features import stage

    values = {"input": input_path, "engine": engine, "embedding": {"enabled": False} if no_embeddings else None}
    cfg = load_config(stage.FeaturesConfig, preset, sets, section="features", values=values)
    summary = run_atomic(out or RUNS.features, "features", cfg, stage.run)
    click.echo(stage.format_summary(summary))


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


@storefront.command("serve")
@click.option("--catalog", default=None, type=click.Path(path_type=Path), help="Canonical catalog.parquet.")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8000).")
@click.option("--events-out", default=None, type=click.Path(path_type=Path), help="Folder for events/ and sessions/ Parquet (default ./storefront-events).")
@PRESET
@SETS
def storefront_serve(catalog, host, port, events_out, preset, sets) -> None:
    """Serve every shop of a catalog under /s/{shop}/ until interrupted (events flushed on exit)."""
    from simpersona.storefront.app import serve
    from simpersona.storefront.config import StorefrontConfig

    values = {"catalog": catalog, "host": host, "port": port, "events_out": events_out}
    serve(load_config(StorefrontConfig, preset, sets, section="storefront", values=values))


@main.group("sft", invoke_without_command=True)
@click.option("--stage", default=None, type=click.Choice(["1", "2", "both", "single"]), help="Stage(s) to train (single: the one-stage ablation).")
@click.option("--data", default=None, type=click.Path(path_type=Path), help="TRACES_DIR: stage{1,2}/{train,val}.jsonl SFT records.")
@click.option("--split", default=None, type=click.Path(path_type=Path), help="The run's split/shops.json: records of its evaluation shops are an error.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Run folder (checkpoints per stage).")
@click.option("--model", default=None, type=click.Choice(["tiny", "smollm2", "qwen3"]), help="Base model preset.")
@click.option("--init", "init", default=None, type=click.Choice(["mean", "codebook", "card"]), help="Persona-row init.")
@click.option("--preset", default=None, help="tiny, demo, smollm2, qwen3, or a YAML file (its sft: section).")
@SETS
@click.pass_context
def sft(ctx, stage, data, split, out, model, init, preset, sets) -> None:
    """Two-stage SFT with persona tokens (spec §6): stage 1 persona rows only, stage 2 all."""
    if ctx.invoked_subcommand is not None:
        return
    from simpersona.sft import train as stage_mod

    values = _given(stage=stage, data=data, split=split, model=_given(preset=model) or None, tokens=_given(init=init) or None)
    cfg = load_config(stage_mod.SftConfig, preset, sets, section="sft", values=values)
    click.echo(stage_mod.format_summary(stage_mod.run(cfg, out or RUNS.sft)))


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


@main.command()
@click.option("--ingest", "ingest_dir", default=None, type=click.Path(path_type=Path), help="Ingest folder (events.parquet, catalog.parquet).")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR (buyer_sessions.parquet, buyers.parquet).")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Output of `personas assign` (assignments.parquet).")
@click.option("--split", default=None, type=click.Path(path_type=Path), help="The run's split/shops.json: only its training shops' sessions become traces.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="TRACES_DIR to write.")
@PRESET
@SETS
def traces(ingest_dir, features, personas_dir, split, out, preset, sets) -> None:
    """Replay sampled real sessions on the storefront, judge them, write SFT JSONL (spec §5)."""
    from simpersona.traces import stage

    values = _given(ingest=ingest_dir, features=features, personas=personas_dir, split=split)
    cfg = load_config(stage.TracesConfig, preset, sets, section="traces", values=values)
    click.echo(stage.format_summary(run_atomic(out or RUNS.traces, "traces", cfg, stage.run)))


@main.command()
@click.option("--ingest", "ingest_dir", default=None, type=click.Path(path_type=Path), help="Ingest folder of the real data (catalog.parquet, events.parquet).")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Output of `personas assign` (shop_mix.parquet …).")
@click.option("--shop", "shops", multiple=True, help="Shop to simulate (repeatable; default: every shop).")
@click.option("--buyers", type=int, default=None, help="Simulated buyers per shop.")
@click.option("--agent", default=None, type=click.Choice(["policy", "llm", "endpoint"]), help="Agent: persona policy, local checkpoint, endpoint.")
@click.option("--checkpoint", default=None, type=click.Path(path_type=Path), help="SFT checkpoint folder (agent llm).")
@click.option("--endpoint", "endpoint_url", default=None, help="OpenAI-compatible base URL (agent endpoint).")
@click.option("--no-persona", is_flag=True, default=False, help="The no-persona variant (no token / population-wide policy).")
@click.option("--transport", default=None, type=click.Choice(["asgi", "http"]), help="In-process (default) or real HTTP on loopback.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def simulate(ingest_dir, personas_dir, shops, buyers, agent, checkpoint, endpoint_url, no_persona, transport, out, preset, sets) -> None:
    """Population simulation: k ~ p̂_s(k), intents from strata, episodes on the storefront; its event log."""
    from simpersona.simulate import stage

    values = _given(ingest=ingest_dir, personas=personas_dir, shops=list(shops) or None, buyers=buyers, agent=agent,
                    transport=transport, persona=False if no_persona else None,
                    llm=_given(checkpoint=checkpoint) or None, endpoint=_given(url=endpoint_url) or None)
    cfg = load_config(stage.SimulateConfig, preset, sets, section="simulate", values=values)
    click.echo(stage.format_summary(run_atomic(out or RUNS.simulate, "simulate", cfg, lambda c, d: stage.run(c, d, echo=click.echo))))


@evaluate.command("alignment")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR of the real data.")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Personas folder (assignments.parquet).")
@click.option("--simulation", default=None, type=click.Path(path_type=Path), help="Output of `simpersona simulate`.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_alignment(features, personas_dir, simulation, out, preset, sets) -> None:
    """Table 2: Action Rate Alignment by funnel stratum (correct vs all- and random-mismatch)."""
    from simpersona.evaluate import alignment as stage

    values = _given(features=features, personas=personas_dir, simulation=simulation)
    cfg = load_config(stage.AlignmentConfig, preset, sets, section="evaluate.alignment", values=values)
    click.echo(stage.format_table(run_atomic(out or RUNS.alignment, "evaluate.alignment", cfg, stage.run)))


@evaluate.command("fidelity")
@click.option("--ingest", "ingest_dir", default=None, type=click.Path(path_type=Path), help="Ingest folder of the real data (events.parquet).")
@click.option("--features", default=None, type=click.Path(path_type=Path), help="FEAT_DIR of the real data (buyers.parquet).")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Personas folder.")
@click.option("--simulation", default=None, type=click.Path(path_type=Path), help="A `simpersona simulate` run to compare too (optional).")
@click.option("--eval-shop", "eval_shops", multiple=True, help="Evaluation shop (repeatable; default: FEAT_DIR's held-out shops).")
@click.option("--max-sessions", type=int, default=None, help="Real sessions evaluated (0: all).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_fidelity(ingest_dir, features, personas_dir, simulation, eval_shops, max_sessions, out, preset, sets) -> None:
    """Fidelity on evaluation shops: next-action prediction, session distributions, per persona."""
    from simpersona.evaluate import fidelity as stage

    values = _given(ingest=ingest_dir, features=features, personas=personas_dir, simulation=simulation,
                    eval_shops=list(eval_shops) or None, max_sessions=max_sessions)
    cfg = load_config(stage.FidelityConfig, preset, sets, section="evaluate.fidelity", values=values)
    click.echo(stage.format_report(run_atomic(out or RUNS.fidelity, "evaluate.fidelity", cfg, stage.run)))


@evaluate.command("separation")
@click.option("--simulation", default=None, type=click.Path(path_type=Path), help="Output of `simpersona simulate`.")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Personas folder (cards.json).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_separation(simulation, personas_dir, out, preset, sets) -> None:
    """Table 3: behavioural separation by aux-head bin (Cohen's d, Welch, Kruskal–Wallis, permutation)."""
    from simpersona.evaluate import separation as stage

    values = _given(simulation=simulation, personas=personas_dir)
    cfg = load_config(stage.SeparationConfig, preset, sets, section="evaluate.separation", values=values)
    click.echo(stage.format_table(run_atomic(out or RUNS.separation, "evaluate.separation", cfg, stage.run)))


@evaluate.command("instructions")
@click.option("--ingest", "ingest_dir", default=None, type=click.Path(path_type=Path), help="Ingest folder (catalog.parquet).")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Personas folder (tokens drawn from p̂_s).")
@click.option("--agent", default=None, type=click.Choice(["llm", "endpoint", "script", "policy"]), help="Agent under test.")
@click.option("--checkpoint", default=None, type=click.Path(path_type=Path), help="SFT checkpoint folder (agent llm).")
@click.option("--endpoint", "endpoint_url", default=None, help="OpenAI-compatible base URL (agent endpoint).")
@click.option("--repetitions", type=int, default=None, help="Runs per task (paper: 10).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_instructions(ingest_dir, personas_dir, agent, checkpoint, endpoint_url, repetitions, out, preset, sets) -> None:
    """Table 4: instruction following on deterministic tasks (3–27 navigation actions), judged from the event log."""
    from simpersona.evaluate import instructions as stage
    from simpersona.pipeline import simulate_then_evaluate
    from simpersona.simulate import instructions as sim

    values = _given(ingest=ingest_dir, personas=personas_dir, agent=agent, repetitions=repetitions,
                    llm=_given(checkpoint=checkpoint) or None, endpoint=_given(url=endpoint_url) or None)
    cfg = load_config(sim.TasksConfig, preset, sets, section="evaluate.instructions", values=values)
    run = lambda c, o: simulate_then_evaluate(sim, c, stage, stage.InstructionsConfig, o)  # noqa: E731
    click.echo(stage.format_table(run_atomic(out or RUNS.instructions, "evaluate.instructions", cfg, run)))


@evaluate.command("ablations")
@click.option("--ingest", "ingest_dir", default=None, type=click.Path(path_type=Path), help="Ingest folder of the real data.")
@click.option("--personas", "personas_dir", default=None, type=click.Path(path_type=Path), help="Personas folder.")
@click.option("--sft", "sft_dir", default=None, type=click.Path(path_type=Path), help="SFT run folder (stage2/ and single/).")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder.")
@PRESET
@SETS
def evaluate_ablations(ingest_dir, personas_dir, sft_dir, out, preset, sets) -> None:
    """Table 9 (persona token vs none, neutral intents) and Tables 7–8 (two-stage vs single-stage)."""
    from simpersona.evaluate import ablations as stage
    from simpersona.pipeline import simulate_then_evaluate
    from simpersona.simulate import ablations as sim

    values = _given(sft=sft_dir, simulate=_given(ingest=ingest_dir, personas=personas_dir) or None)
    cfg = load_config(sim.AblationRunsConfig, preset, sets, section="evaluate.ablations", values=values)
    run = lambda c, o: simulate_then_evaluate(sim, c, stage, stage.AblationsConfig, o)  # noqa: E731
    click.echo(stage.format_report(run_atomic(out or RUNS.ablations, "evaluate.ablations", cfg, run)))


@main.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder of the main job.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output folder (default RUN/report; the page is index.html).")
@PRESET
@SETS
def report(run_dir, out, preset, sets) -> None:
    """One self-contained HTML page from whatever a run folder holds (missing parts: "not run")."""
    from simpersona.report import build

    cfg = load_config(build.ReportConfig, preset, sets, section="report", values={"run": run_dir})
    click.echo(build.format_summary(run_atomic(out or RunLayout(run_dir).report, "report", cfg, build.run)))

"""The run folder's layout: where each stage of the main job keeps its folder and key files.

One fact, one place: the pipeline writes here, the report reads here, and the CLI's stage commands
default their `--out` (and the report its `--run` parts) to the same places, so

    simpersona run --out runs/demo          # writes runs/demo/<stage>/
    simpersona report --run runs/demo       # finds every part the main job wrote

RUN/
  synth/        generated events, catalog, truth/ (only when no --data is given)
  ingest/       events.parquet, catalog.parquet, rejected.parquet
  split/        shops.json: the run's training and evaluation shops (contracts.split)
  features/     buyer_sessions.parquet, buyers.parquet, vectors.parquet, transforms.json
  vqvae/        model.safetensors, config.json, train_log.jsonl, checkpoint/
  personas/     assignments.parquet, shop_mix.parquet, code_strata.parquet, cards.json
  evaluate/     clustering/ (Table 1), population/ (App. B)
  traces/       traces.jsonl, stage1/, stage2/
  sft/          stage1/, stage2/, single/ checkpoints
  simulate/     episodes.parquet, events.parquet, summary.json
  behaviour/    alignment/ (Table 2), separation/ (Table 3) of the fast policy; populations/ (Tables 2–3 of
                the LLM agent variants); instructions/ (Table 4), ablations/ (7–9), fidelity/
  abtest/       abtest.json, abtest.md, forest.svg, sessions.parquet: the simulated A/B test on the evaluation shops
  report/       index.html
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The main job's stages, in order; each owns RUN/<name>/.
STAGES = ("synth", "ingest", "split", "features", "vqvae", "personas", "evaluate", "traces", "sft", "simulate", "behaviour",
          "abtest", "report")


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder (nothing is created or read here)."""

    # the run folder
    root: Path

    def stage(self, name: str) -> Path:
        """RUN/<name>/ of one of `STAGES`."""
        if name not in STAGES:
            raise ValueError(f"{name!r} is not a stage of the main job; stages: {list(STAGES)}")
        return Path(self.root) / name

    # -- stage folders --------------------------------------------------------------------------
    @property
    def synth(self) -> Path:
        return self.stage("synth")

    @property
    def ingest(self) -> Path:
        return self.stage("ingest")

    @property
    def split(self) -> Path:
        return self.stage("split")

    @property
    def features(self) -> Path:
        return self.stage("features")

    @property
    def vqvae(self) -> Path:
        return self.stage("vqvae")

    @property
    def personas(self) -> Path:
        return self.stage("personas")

    @property
    def evaluate(self) -> Path:
        return self.stage("evaluate")

    @property
    def traces(self) -> Path:
        return self.stage("traces")

    @property
    def sft(self) -> Path:
        return self.stage("sft")

    @property
    def simulate(self) -> Path:
        return self.stage("simulate")

    @property
    def behaviour(self) -> Path:
        return self.stage("behaviour")

    @property
    def abtest(self) -> Path:
        """The simulated A/B test (abtest.json, forest.svg; `simpersona abtest`)."""
        return self.stage("abtest")

    @property
    def report(self) -> Path:
        return self.stage("report")

    # -- parts inside stage folders ---------------------------------------------------------------
    @property
    def synth_events(self) -> Path:
        """The generator's events: events.csv, or events.parquet when written as Parquet."""
        csv = self.synth / "events.csv"
        return csv if csv.exists() else self.synth / "events.parquet"

    @property
    def synth_catalog(self) -> Path:
        return self.synth / "catalog.parquet"

    @property
    def truth(self) -> Path:
        """The generator's per-buyer truth (shop_id, buyer_id, type)."""
        return self.synth / "truth" / "buyers.parquet"

    @property
    def clustering(self) -> Path:
        """Table 1 (clustering.json)."""
        return self.evaluate / "clustering"

    @property
    def population(self) -> Path:
        """App. B (population.json)."""
        return self.evaluate / "population"

    @property
    def stage1(self) -> Path:
        """The stage-1 SFT checkpoint."""
        return self.sft / "stage1"

    @property
    def stage2(self) -> Path:
        """The two-stage SFT checkpoint (the agent the evaluations use)."""
        return self.sft / "stage2"

    @property
    def single(self) -> Path:
        """The single-stage SFT checkpoint (the ablation)."""
        return self.sft / "single"

    @property
    def alignment(self) -> Path:
        """Table 2 (alignment.json)."""
        return self.behaviour / "alignment"

    @property
    def separation(self) -> Path:
        """Table 3 (separation.json)."""
        return self.behaviour / "separation"

    @property
    def populations(self) -> Path:
        """Tables 2–3 of the LLM agent variants: simulation/<agent>/, <agent>/alignment/, <agent>/separation/."""
        return self.behaviour / "populations"

    @property
    def instructions(self) -> Path:
        """Table 4 (instructions.json)."""
        return self.behaviour / "instructions"

    @property
    def ablations(self) -> Path:
        """Tables 7–9 (ablations.json)."""
        return self.behaviour / "ablations"

    @property
    def fidelity(self) -> Path:
        """Fidelity on evaluation shops (fidelity.json, `simpersona evaluate fidelity`)."""
        return self.behaviour / "fidelity"

    @property
    def report_page(self) -> Path:
        return self.report / "index.html"

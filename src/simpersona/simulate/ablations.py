"""The ablations' simulations: persona token vs none (App. I, Table 9) and two-stage vs
single-stage SFT (App. F, Tables 7–8); `evaluate.ablations` reads them.

- token: the same population (same codes, goals, seeds) simulated twice under NEUTRAL intents
  ("You are interested in …"), with and without the persona token (`simulate.persona`), by each
  agent of `token_agents` (the fast policy on `simulate.buyers` buyers per shop, the LLM agent on
  `llm_buyers`): RUN_DIR/token_<agent>_with/, RUN_DIR/token_<agent>_without/. An agent that cannot
  run (an LLM agent without a checkpoint) is "not run" with the reason.
- stages: the LLM agent on SFT_DIR/stage2 (two-stage) and SFT_DIR/single (single-stage) on the
  same population (stratum intents): RUN_DIR/two_stage/, RUN_DIR/single_stage/. Needs both
  checkpoints: otherwise not run, with the reason.

Each condition is a `simulate` RUN_DIR of its own; RUN_DIR/runs.json lists what ran (folder per
condition, agent) and why a part did not.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simpersona.config import write_meta
from simpersona.simulate.stage import SimulateConfig


@dataclass
class AblationRunsConfig:
    # the simulation both conditions share (ingest, personas, buyers, agent …)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    # SFT run folder holding stage2/ and single/ checkpoints (for the stages ablation)
    sft: Path | None = None
    # ablations to run: token, stages
    which: list[str] = field(default_factory=lambda: ["token", "stages"])
    # agents of the token ablation (policy, llm, endpoint), each run with and without the token
    token_agents: list[str] = field(default_factory=lambda: ["policy", "llm"])
    # buyers per shop of an LLM / endpoint agent's runs (token and stages ablations; CPU-bound);
    # the fast policy runs `simulate.buyers`
    llm_buyers: int = 6
    # decoding of the two-stage vs single-stage runs: free text, so the paper's malformed-output
    # comparison (Tables 7–8 "other") measures the models (constrained decoding makes it 0 by construction)
    stages_decoding: Literal["constrained", "free"] = "free"


def run(cfg: AblationRunsConfig, run_dir: Path) -> dict[str, Any]:
    """Simulate every condition of cfg.which; write runs.json (see module doc) and return it."""
    from simpersona.simulate import cards, stage

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = {}
    if "token" in cfg.which:
        runs["token"] = {}
        for agent in cfg.token_agents:
            sim = cards.variant(dataclasses.replace(cfg.simulate, intent="neutral"), agent)
            if agent in ("llm", "endpoint"):
                sim = dataclasses.replace(sim, buyers=cfg.llm_buyers)
            why = cards.unavailable(sim)
            if why is not None:
                runs["token"][agent] = {"status": "not run", "reason": why}
                continue
            for name, persona in (("with", True), ("without", False)):
                stage.run(dataclasses.replace(sim, persona=persona), run_dir / f"token_{agent}_{name}", echo=lambda s: None)
            runs["token"][agent] = {"status": "run", "with": f"token_{agent}_with", "without": f"token_{agent}_without"}
    if "stages" in cfg.which:
        ckpts = {"two_stage": Path(cfg.sft or "") / "stage2", "single_stage": Path(cfg.sft or "") / "single"}
        missing = [str(p) for p in ckpts.values() if not (p / "config.json").exists()]
        if cfg.sft is None or missing:
            why = "no SFT folder given (sft)" if cfg.sft is None else f"missing checkpoint(s) {missing}"
            runs["stages"] = {"status": "not run", "reason": f"needs the two-stage and single-stage SFT checkpoints: {why}"}
        else:
            for name, path in ckpts.items():
                sim = dataclasses.replace(cfg.simulate, agent="llm", persona=True, buyers=cfg.llm_buyers, llm=dataclasses.replace(
                    cfg.simulate.llm, checkpoint=path, decoding=cfg.stages_decoding))
                stage.run(sim, run_dir / name, echo=lambda s: None)
            runs["stages"] = {"status": "run", "two_stage": "two_stage", "single_stage": "single_stage",
                              "decoding": cfg.stages_decoding}
    (run_dir / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    write_meta(run_dir, "simulate.ablations", cfg)
    return runs

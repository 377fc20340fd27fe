"""Tables 2–3 with the LLM agent: the same simulated population (k ~ p̂_s, stratum intents, same
goals and seeds) run by each agent variant of `agents` on the evaluation shops; `evaluate.alignment`
and `evaluate.separation` read each folder (the fast policy's large population is the `simulate`
stage itself).

    agents   llm (the SFT checkpoint with its persona token), llm_no_persona (the same
             checkpoint, no token), … any `simulate.cards.variant` name

An LLM agent without a checkpoint (or an endpoint without a URL) is "not run" with the reason.

RUN_DIR/
  <agent>/     a `simulate` RUN_DIR per agent variant (episodes, events, summary with agent and data cards)
  runs.json    agent → its folder, or {"status": "not run", "reason": …}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simpersona.config import write_meta
from simpersona.simulate.stage import SimulateConfig


@dataclass
class PopulationsConfig:
    # the population every agent runs (ingest, personas, split, llm …; stratum intents); its `buyers` is not used
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    # agent variants simulated on that population (`simulate.cards.variant` names)
    agents: list[str] = field(default_factory=lambda: ["llm", "llm_no_persona"])
    # simulated buyers per evaluation shop (each an LLM episode: CPU-bound)
    buyers: int = 8
    # simulated sessions a Table 2 cell needs for these small populations (evaluate.alignment's holds for the policy's)
    min_sim_sessions: int = 1


def run(cfg: PopulationsConfig, run_dir: Path, echo=print) -> dict[str, Any]:
    """Simulate the population with every agent of cfg.agents; write runs.json (see module doc) and return it."""
    from simpersona.simulate import cards, stage

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Any] = {}
    for name in cfg.agents:
        sim = cards.variant(dataclasses.replace(cfg.simulate, buyers=cfg.buyers), name)
        why = cards.unavailable(sim)
        if why is not None:
            runs[name] = {"status": "not run", "reason": why}
            continue
        summary = stage.run(sim, run_dir / name, echo=lambda s: None)
        echo(f"[populations] {name}: " + stage.format_summary(summary).replace("\n", "; "))
        runs[name] = {"status": "run", "dir": name, "episodes": summary["episodes"], "wall_s": summary["wall_s"]}
    (run_dir / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    write_meta(run_dir, "simulate.populations", cfg)
    return runs

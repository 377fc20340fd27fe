"""What every figure names: the agent behind it and the data (GUIDE: "every figure names the agent,
checkpoint and data behind it; a figure on generated data says so").

`simulate` writes both cards into each simulation's summary.json; the evaluations copy them into
their reports and print them with `agent_label` / `data_label`.

- agent card: the variant name; for the LLM agent the checkpoint (resolved path + content hash,
  `stagedir.checkpoint_id`) and its decoding settings; for the fast policy its fitted policy.npz
  (path + hash); for an endpoint its URL and model.
- data card: the ingest folder, whether its input was generated (`simpersona synth` writes
  SYNTHETIC.txt beside it), the shops simulated and whether all are evaluation shops of the split.

Agent variants (`variant`, what Tables 2–4 and 9 compare side by side): `policy` (the fast persona
policy), `llm` (a local SFT checkpoint), `endpoint`; each suffixed `_no_persona` runs the same
population without the persona token (the code is still drawn, so tables can group by it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from simpersona.config import ConfigError, to_dict
from simpersona.contracts.split import load_split
from simpersona.stagedir import checkpoint_id, file_hash

# The agents a simulation can run; a variant name is one of them, optionally + NO_PERSONA.
AGENTS = ("policy", "llm", "endpoint")
NO_PERSONA = "_no_persona"


def variant(cfg, name: str):
    """cfg running the agent variant `name` (`llm`, `llm_no_persona`, `policy` …; see the module doc)."""
    agent = name.removesuffix(NO_PERSONA)
    if agent not in AGENTS:
        raise ConfigError(f"agent variant {name!r}: known agents {list(AGENTS)}, each optionally + '{NO_PERSONA}'")
    return dataclasses.replace(cfg, agent=agent, persona=not name.endswith(NO_PERSONA))


def variant_name(cfg) -> str:
    """The variant name of cfg's agent (inverse of `variant`)."""
    return cfg.agent + ("" if cfg.persona else NO_PERSONA)


def unavailable(cfg) -> str | None:
    """Why cfg's agent cannot run here (an LLM agent without a checkpoint, an endpoint without a URL), else None."""
    if cfg.agent == "llm" and (cfg.llm.checkpoint is None or not (Path(cfg.llm.checkpoint) / "config.json").is_file()):
        return f"no LLM checkpoint (llm.checkpoint {cfg.llm.checkpoint} holds no config.json)"
    if cfg.agent == "endpoint" and not cfg.endpoint.url:
        return "no endpoint.url"
    return None


def agent_card(cfg, policy_model: Path | None = None) -> dict[str, Any]:
    """The agent behind a figure: variant, checkpoint (path + content hash: `sft.train.checkpoint_id`) or
    fitted policy (path + hash), decoding settings, or endpoint (url, model)."""
    card: dict[str, Any] = {"name": variant_name(cfg), "agent": cfg.agent, "persona_token": cfg.persona}
    if cfg.agent == "llm":
        card["checkpoint"] = checkpoint_id(Path(cfg.llm.checkpoint))
        card["llm"] = {k: v for k, v in to_dict(cfg.llm).items() if k not in ("checkpoint", "threads", "device")}
    elif cfg.agent == "policy" and policy_model is not None and Path(policy_model).exists():
        card["checkpoint"] = {"path": str(Path(policy_model).resolve()), "sha256": file_hash(policy_model)[:12]}
    elif cfg.agent == "endpoint":
        card["endpoint"] = {"url": cfg.endpoint.url, "model": cfg.endpoint.model}
    return card


def agent_label(card: dict[str, Any] | None) -> str:
    """One line naming an agent card: `llm_no_persona, checkpoint /path (sha256 abc…)`."""
    if not card:
        return "(agent not recorded)"
    ck = card.get("checkpoint")
    where = f", checkpoint {ck['path']} (sha256 {ck['sha256']})" if ck else ""
    how = card.get("llm") or {}
    dec = f", {how.get('decoding')} decoding, temperature {how.get('temperature')}" if how else ""
    return f"{card['name']}{where}{dec}"


def data_card(ingest: Path, shops: list[str], split_path: Path | None) -> dict[str, Any]:
    """The data behind a figure: the ingest folder, whether it was generated (`simpersona synth` wrote
    SYNTHETIC.txt beside its input), the shops simulated and whether they are all evaluation shops."""
    meta = Path(ingest) / "meta.json"
    inputs = (json.loads(meta.read_text()).get("inputs") or []) if meta.exists() else []
    split = load_split(split_path)
    return {"ingest": str(Path(ingest).resolve()), "generated": any((Path(p).parent / "SYNTHETIC.txt").exists() for p in inputs),
            "shops": list(shops), "evaluation_shops_only": bool(split is not None and set(shops) <= set(split.eval))}


def data_label(card: dict[str, Any] | None) -> str:
    """One line naming a data card."""
    if not card:
        return "(data not recorded)"
    kind = "GENERATED data (simpersona synth)" if card["generated"] else "data"
    where = "evaluation shops" if card["evaluation_shops_only"] else "shops (NOT all evaluation shops)"
    return f"{kind} {card['ingest']}, {len(card['shops'])} {where}: {', '.join(card['shops'])}"

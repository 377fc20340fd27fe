"""The behaviour tables of a trained agent, and how many episodes fit on this CPU (issue 16 item 3):
Tables 2–3 (the fast policy's population and the LLM variants' populations), 4 and 7–9 on the
evaluation shops of an existing main-job run folder, written into a NEW run folder, then a table of
each part's episodes, LLM decisions, wall time and decisions/s.

    .venv/bin/python bench/bench_tables.py --run /work/agentrun/agent --out runs/llm-tables
    .venv/bin/python bench/bench_tables.py --run runs/demo --sft runs/agent-sft --out runs/llm-tables \
        --set evaluate.populations.buyers=4 --set evaluate.instructions.max_shops=2

RUN is only read: OUT/<stage> are symbolic links to RUN's complete synth … traces folders (their
completion markers and digests are what the later stages check) and OUT/sft to the SFT folder
(`--sft`, default RUN/sft) when that is a main job's complete sft stage; a `simpersona sft` folder
(stage2/ but no completion marker) is plugged in as the main job does it, by OUT's own sft stage with
`sft.checkpoint` (checked against RUN's K and record budget, scored on its validation records). OUT's
own stages are simulate (the fast policy), behaviour (Tables 2–4, 7–9 and fidelity) and report, run
by the main job's own steps (`simpersona.pipeline`) with `--preset` (default agent) and `--set`
overrides, each written aside and marked complete as in the main job; a finished stage with the same
config and inputs is skipped (so an interrupted run resumes). Every table names its agent
(checkpoint + content hash) and data; the figures are in OUT/behaviour/*/ and OUT/report/index.html.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# the run's stages OUT links to (when RUN has them); the rest OUT runs itself
INPUTS = ("synth", "ingest", "split", "features", "vqvae", "personas", "evaluate", "traces")


def link_inputs(src: Path, sft: Path, out: Path) -> list[str]:
    """OUT/<stage> → RUN/<stage> for every INPUTS stage RUN has, OUT/sft → the SFT folder; their names."""
    out.mkdir(parents=True, exist_ok=True)
    linked = []
    from simpersona.stagedir import read_marker

    main_job_sft = read_marker(sft) is not None  # else a `simpersona sft` folder: plugged in by OUT's sft stage
    for name, target in [(n, src / n) for n in INPUTS] + ([("sft", sft)] if main_job_sft else []):
        dst = out / name
        if not target.is_dir():
            continue
        if dst.is_symlink() and dst.resolve() == target.resolve():
            linked.append(name)
            continue
        if dst.exists() or dst.is_symlink():
            raise SystemExit(f"{dst} exists and is not a link to {target}: give a new --out")
        dst.symlink_to(target.resolve(), target_is_directory=True)
        linked.append(name)
    if not (sft / "stage2" / "config.json").is_file():
        raise SystemExit(f"no agent checkpoint at {sft}/stage2 (give --sft: a folder holding stage2/)")
    return linked


def run_stage(step, sections: dict, lay, echo=print) -> dict:
    """One main-job stage in OUT as `pipeline.run` runs it: skipped when its marker holds the same
    config and inputs, else written aside and committed (meta.json last)."""
    from simpersona import pipeline, stagedir
    from simpersona.config import to_dict

    stage_dir = lay.stage(step.name)
    cfg = step.make_config(sections, lay)
    inputs = pipeline.input_hashes(step, lay, None)
    marker = pipeline._done(stage_dir, cfg, inputs)
    if marker is not None:
        echo(f"{step.name}: done already (same config and inputs), skipped")
        return marker.get("summary") or {}
    echo(f"{step.name} …")
    key = json.dumps({"config": to_dict(cfg), "inputs": inputs}, sort_keys=True, default=str)
    part = stagedir.begin(stage_dir, key, resume=step.resumes)
    with stagedir.discard_on_error(part, keep=step.resumes, out=stage_dir):
        summary = stagedir.relocate(step.run(cfg, part), part, stage_dir)
    stagedir.commit(part, stage_dir, step.name, cfg, summary=summary, input_hashes=inputs)
    return summary


def costs(lay) -> list[list]:
    """One row per simulation OUT holds: part, agent variant, episodes, decisions (env steps), wall s, decisions/s, tokens/s."""
    rows = []
    for f in sorted([lay.simulate / "summary.json", *lay.behaviour.rglob("simulation/**/summary.json")]):
        if not f.exists():
            continue
        s = json.loads(f.read_text())
        if "episodes" not in s:
            continue
        rel = f.parent.relative_to(lay.root).as_posix()
        steps = round(s["mean_steps"] * s["episodes"])
        card = s.get("agent_card") or {}
        rows.append([rel, card.get("name", s.get("agent")), s["episodes"], steps, s["wall_s"],
                     round(steps / s["wall_s"], 2) if s["wall_s"] else None, s.get("tokens_per_s")])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a main-job run folder through traces (read only)")
    ap.add_argument("--sft", default=None, help="SFT folder holding stage2/ (default RUN/sft)")
    ap.add_argument("--out", required=True, help="the new run folder")
    ap.add_argument("--preset", default="agent", help="preset of the tables (default agent: ≈ 60 CPU-minutes of LLM episodes)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override (repeatable)")
    args = ap.parse_args()

    from simpersona import pipeline
    from simpersona.config import read_preset
    from simpersona.layout import STAGES, RunLayout

    src, out = Path(args.run).resolve(), Path(args.out)
    sft = Path(args.sft).resolve() if args.sft else src / "sft"
    linked = link_inputs(src, sft, out)
    lay = RunLayout(out)
    plug = "sft" not in linked
    sections = read_preset(args.preset, tuple(args.set) + ((f"sft.checkpoint={sft}",) if plug else ()))
    pipeline.check_sections(sections)
    before = tuple(n for n in STAGES if n in linked or n in ("sft", "simulate", "behaviour"))
    t_all = time.perf_counter()
    walls = {}
    for step in ((pipeline._sft(),) if plug else ()) + (pipeline._simulate(), pipeline._behaviour(), pipeline._report(before)):
        t0 = time.perf_counter()
        summary = run_stage(step, sections, lay)
        walls[step.name] = time.perf_counter() - t0
        if step.name == "behaviour":
            print(step.describe(summary))
    print(f"\nwall: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + f"; all {time.perf_counter() - t_all:.0f} s "
          f"(RUN {src}, agent {lay.stage2.resolve()})")
    print("\n| simulation | agent | episodes | decisions | wall s | decisions/s | tokens/s |\n|---|---|---|---|---|---|---|")
    for r in costs(lay):
        print("| " + " | ".join("–" if v is None else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()

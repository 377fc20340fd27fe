"""The import graph follows the data flow (GUIDE rule 10): a stage imports only the contracts layer,
the shared base modules and the public modules of EARLIER stages — never a later stage, and never
another stage's entry module (its outputs on disk are the interface). Checked on the source with
`ast` (imports inside functions count too), so it stays true as the code changes."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "simpersona"
# Stages in data-flow order; a stage may import stages with a lower rank (same rank: no).
RANK = {"events": 1, "synth": 2, "storefront": 2, "features": 3, "vqvae": 4, "personas": 5, "traces": 6, "sft": 7,
        "agents": 8, "simulate": 9, "evaluate": 10, "abtest": 10, "report": 11}
# May import anything; nothing but themselves imports them.
ORCHESTRATORS = {"cli", "pipeline", "__main__", "testing", "abharness"}
# Stage modules that are contracts themselves (the contracts layer may import them; they import no stage).
CONTRACT_MODULES = {"storefront.actions"}  # the agent's action space: parsed in one place, beside the env running it
# A stage's entry module (`run(config, run_dir)`): other stages read its outputs, never import it.
ENTRIES = {"events.ingest", "features.stage", "vqvae.train", "traces.stage", "sft.train", "simulate.stage", "abtest.stage"}


def _unit(mod: str) -> str:
    """The package (stage) of a module path "a.b" → "a"; a top-level module is its own unit."""
    return mod.split(".")[0]


def _kind(unit: str) -> str:
    if unit == "contracts":
        return "contracts"
    if unit in ORCHESTRATORS:
        return "orchestrator"
    if unit in RANK:
        return "stage"
    return "base"  # config, layout, stagedir, __init__: shared modules below every stage


def edges() -> list[tuple[str, str, str]]:
    """(importer, imported module, names) for every simpersona import in the package, relative to it."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        mod = ".".join(p for p in parts if p != "__init__") or "__init__"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "simpersona":
                target = node.module[len("simpersona."):] if node.module != "simpersona" else ""
                for a in node.names:  # `from simpersona.x import y` may import the module x.y
                    full = f"{target}.{a.name}" if target else a.name
                    sub = (PKG / Path(*full.split("."))).with_suffix(".py").exists() or (PKG / Path(*full.split("."))).is_dir()
                    out.append((mod, full if sub else target or "__init__", a.name))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name[len("simpersona."):], "") for a in node.names if a.name.startswith("simpersona.")]
    return out


def violations() -> list[str]:
    bad = []
    for src, dst, name in edges():
        su, du = _unit(src), _unit(dst)
        if su == du:
            continue
        sk, dk = _kind(su), _kind(du)
        why = None
        if sk == "orchestrator":
            continue
        if dk == "orchestrator":
            why = "imports an orchestrator (cli/pipeline/testing)"
        elif sk == "contracts" and dk == "stage" and dst not in CONTRACT_MODULES:
            why = "the contracts layer imports no stage"
        elif src in CONTRACT_MODULES and dk == "stage":
            why = "a contract module imports a stage"
        elif sk == "base" and dk == "stage":
            why = "a shared base module imports a stage"
        elif sk == "stage" and dk == "stage":
            if RANK[du] >= RANK[su]:
                why = f"stage {su} (rank {RANK[su]}) imports a later or sideways stage {du} (rank {RANK[du]})"
            elif dst in ENTRIES:
                why = f"imports the entry module {dst} of stage {du} (read its outputs instead)"
            elif name.startswith("_"):
                why = f"imports the private name {name}"
        if why:
            bad.append(f"simpersona.{src} -> simpersona.{dst} [{name}]: {why}")
    return bad


def test_edges_are_found():
    e = {(s, d) for s, d, _ in edges()}
    assert ("simulate.runner", "agents.base") in e and ("cli", "pipeline") in e  # module- and function-level imports
    assert ("features.stage", "features.engine") in e


def test_imports_follow_the_data_flow():
    assert violations() == []


def test_rules_catch_a_backward_edge(tmp_path, monkeypatch):
    """A later-stage import, an entry-module import and an orchestrator import are each reported."""
    pkg = tmp_path / "simpersona"
    for rel, text in {"features/x.py": "from simpersona.simulate.logs import episode_stats\n",
                      "evaluate/y.py": "def f():\n    from simpersona.features.stage import connect\n",
                      "agents/z.py": "from simpersona import pipeline\n",
                      "contracts/w.py": "from simpersona.features.layout import STRATA\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (pkg / "features" / "stage.py").write_text("")
    (pkg / "pipeline.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg)
    found = "\n".join(violations())
    assert "later or sideways stage simulate" in found and "entry module features.stage" in found
    assert "imports an orchestrator" in found and "contracts layer imports no stage" in found

"""The HTML report: built from an empty run folder (every part "not run"), from a populated run
whose every number in the page is checked against the JSON it came from (no browser needed), and
rendered in real headless Chromium with a screenshot kept as a test artefact."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from simpersona.layout import RunLayout
from simpersona.report import build


def test_report_from_an_empty_run_folder(tmp_path):
    s = build.run(build.ReportConfig(run=tmp_path / "nothing"), tmp_path / "out")
    page = Path(s["path"]).read_text()
    assert set(s["sections"].values()) == {"not run"} and page.count("not run") >= len(build.SECTIONS)
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from simpersona.evaluate import alignment, separation
    from simpersona.simulate import stage
    from simpersona.testing.world import make_toy_world

    root = tmp_path_factory.mktemp("run")
    lay = RunLayout(root)
    w = make_toy_world(root, shops=3, codes=4, buyers=60)  # ingest/, personas/, features/ as in a run
    stage.run(stage.SimulateConfig(ingest=w["ingest"], personas=w["personas"], buyers=30), lay.simulate)
    alignment.run(alignment.AlignmentConfig(features=w["features"], personas=w["personas"], simulation=lay.simulate,
                                            min_real_buyers=2, min_sim_sessions=2), lay.alignment)
    separation.run(separation.SeparationConfig(simulation=lay.simulate, personas=w["personas"], n_resamples=199),
                   lay.separation)
    return root


def test_report_finds_the_parts_where_the_main_job_writes_them(toy_run, tmp_path):
    """Regression: the report looked under evaluate/alignment while the main job writes behaviour/alignment."""
    s = build.run(build.ReportConfig(run=toy_run), tmp_path / "report")
    assert s["sections"]["Table 2 — action rate alignment"] == "ok"
    assert s["sections"]["Table 3 — behavioural separation"] == "ok"
    assert s["sections"]["Simulation: outcomes, simulated vs real funnel"] == "ok"


def test_report_renders_in_chromium(toy_run, tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from simpersona.storefront.transports import CHROMIUM_ARGS

    s = build.run(build.ReportConfig(run=toy_run), tmp_path / "report")
    assert s["sections"]["Table 2 — action rate alignment"] == "ok" and s["sections"]["Table 1 — clustering quality"] == "not run"
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS))
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors, remote = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: remote.append(r.url) if not r.url.startswith("file:") else None)
        page.goto(Path(s["path"]).as_uri())
        assert page.title() == "SimPersona report"
        assert page.locator("h2").count() == len(build.SECTIONS) and page.locator("svg").count() >= 4
        assert page.locator("svg").first.bounding_box()["width"] > 100
        assert page.get_by_text("not run: no evaluate/clustering/clustering.json").count() == 1
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == [] and remote == [] and shot.stat().st_size > 10_000
    print(f"report screenshot: {shot}")


@pytest.fixture(scope="module")
def populated_run(toy_run, tmp_path_factory):
    """The toy run plus real Table 1 / App. B (a tiny VQ-VAE on fabricated features), Table 4 (the
    script agent) and the token ablation (the persona policy); stages ablation "not run" (no SFT)."""
    from simpersona.evaluate import ablations, clustering, instructions, population
    from simpersona.evaluate.config import ClusteringConfig, PopulationConfig
    from simpersona.personas import assign
    from simpersona.pipeline import simulate_then_evaluate
    from simpersona.simulate import ablations as sim_ablations, instructions as sim_instructions
    from simpersona.simulate.stage import SimulateConfig
    from simpersona.vqvae import train
    from simpersona.testing.features import fabricate_features

    from simpersona.config import load_config

    lay, side = RunLayout(toy_run), tmp_path_factory.mktemp("side")
    feat = fabricate_features(side, n_shops=4, buyers_per_shop=60, n_holdout=2)
    vq = load_config(train.TrainConfig, values={"features": str(feat)},
                     overrides=["model.codebook_size=8", "batch_size=64", "progress=false", "max_epochs=2"])
    train.run(vq, side / "vqvae")
    assign.run(assign.PersonasConfig(model=side / "vqvae", features=feat), side / "personas")
    clustering.run(ClusteringConfig(model=side / "vqvae", features=feat, kmeans_k=8), lay.clustering)
    population.run(PopulationConfig(personas=side / "personas", features=feat), lay.population)
    simulate_then_evaluate(sim_instructions, sim_instructions.TasksConfig(ingest=lay.ingest, agents=["script"], fast_repetitions=1, max_shops=1),
                           instructions, instructions.InstructionsConfig, lay.instructions)
    simulate_then_evaluate(sim_ablations, sim_ablations.AblationRunsConfig(simulate=SimulateConfig(ingest=lay.ingest, personas=lay.personas, buyers=6)),
                           ablations, ablations.AblationsConfig, lay.ablations)
    from simpersona.abtest.stage import AbtestConfig, run as run_abtest
    from simpersona.contracts.experiment import VariantConfig

    run_abtest(AbtestConfig(ingest=lay.ingest, personas=lay.personas, buyers=30, variant=VariantConfig(name="small-pages", page_size=4),
                            bootstrap=200, min_group=10, workers=1), lay.abtest)
    return toy_run


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, under the title of its <h2> section."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self.title, self.cell, self.in_h2 = "", None, False

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self.in_h2, self.title = True, ""
        elif tag == "table":
            self.sections.setdefault(self.title, []).append([])
        elif tag == "tr":
            self.sections[self.title][-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self.in_h2 = False
            self.sections.setdefault(self.title, [])
        elif tag in ("td", "th"):
            self.sections[self.title][-1][-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.in_h2:
            self.title += data
        elif self.cell is not None:
            self.cell += data


def shows(cell: str, value, pct: bool = False) -> bool:
    """The page's cell text is `value` (a fraction shown as % when `pct`) to the digits it shows."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == "–"
    if isinstance(value, str):
        return cell == value
    text = cell.removesuffix("%").replace(",", "")
    x, v = float(text), 100 * value if pct else value
    if "e" in text.lower():
        return math.isclose(x, v, rel_tol=5e-3)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(x - v) <= 0.5 * 10 ** -decimals + 1e-9


def test_every_number_in_the_page_is_the_json_it_came_from(populated_run, tmp_path):
    s = build.run(build.ReportConfig(run=populated_run), tmp_path / "report")
    not_built = {k for k, v in s["sections"].items() if v != "ok"}
    # fidelity has its own test (test_fidelity); the toy run trains no SFT model
    assert not_built == {"Fidelity on evaluation shops", "SFT — the agent's checkpoints and validation curves"}, s["sections"]
    parser = _Tables()
    parser.feed(Path(s["path"]).read_text())
    tables = parser.sections
    lay = RunLayout(populated_run)
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    checked = 0

    # Table 1: metric, k-means (ours), VQ-VAE (ours), k-means (paper), VQ-VAE (paper)
    t1 = read(lay.clustering / "clustering.json")
    rows = {r[0]: r for r in tables["Table 1 — clustering quality"][0][1:]}
    assert set(rows) == set(t1["vqvae"])
    for m, row in rows.items():
        paper = t1["paper"].get(m, {})
        for cell, v in zip(row[1:], (t1["kmeans"][m], t1["vqvae"][m], paper.get("kmeans"), paper.get("vqvae"))):
            assert shows(cell, v), (m, cell, v)
            checked += 1
    m = next(m for m in rows if isinstance(t1["vqvae"][m], (int, float)))
    assert not shows(rows[m][2], t1["vqvae"][m] + 1)  # a different number does not pass

    # Table 2: stratum, cells, ARA correct / all-mismatch / 1-random, paper ×3, ATC, PUR alignment, correct − all-mis, CI
    t2 = read(lay.alignment / "alignment.json")
    rows = {r[0]: r for r in tables["Table 2 — action rate alignment"][0][1:]}
    assert set(rows) == set(t2["table"])
    for st, row in rows.items():
        x, p = t2["table"][st], t2["paper"].get(st, {})
        ci = f"[{x['gap_ci'][0]:+.3f}, {x['gap_ci'][1]:+.3f}]" if x["gap_ci"] else "–"
        want = [x["cells"], *x["ara"], *(p.get("ara") or [None] * 3), x["atc"][0], x["pur"][0], x["gap"], ci]
        for cell, v in zip(row[1:], want, strict=True):
            assert shows(cell, v), (st, cell, v)
            checked += 1

    # Table 3: per head the bin means, d and p values; the funnel rates by purchase bin
    t3 = read(lay.separation / "separation.json")
    heads, funnel = tables["Table 3 — behavioural separation"]
    for row in heads[1:]:
        x = t3["heads"][row[0]]
        for cell, v in zip(row[1:8], [*x["means"], x["d"], x["t_p"], x["kw_p"], x["perm_p"]], strict=True):
            assert shows(cell, v), (row[0], cell, v)
            checked += 1
    for row in funnel[1:]:
        for cell, v in zip(row[1:], [*t3["funnel"][row[0]], *t3["paper"]["funnel"][row[0]]], strict=True):
            assert shows(cell, v), (row[0], cell, v)
            checked += 1

    # Table 4: one column per agent (the script here): runs, steps, each rate with its interval and counts
    from simpersona.evaluate.instructions import rate_text

    t4 = read(lay.instructions / "instructions.json")["agents"]["script"]
    head, *body = tables["Table 4 — instruction following"][0]
    rows = {r[0]: r for r in body}
    assert head[1] == "script"
    assert shows(rows["runs"][1], t4["runs"]) and shows(rows["avg steps per run"][1], t4["overall"]["steps"])
    assert rows["self-reported goal reached"][1] == rate_text(t4["overall"], "self_reported")
    assert rows["judged completed"][1] == rate_text(t4["overall"], "completed") == "100.0% [64.6, 100.0] (7/7)"  # Wilson: 7/7 → [0.646, 1]
    checked += 4

    # Table 9: with / without the persona token (the policy's)
    t9 = read(lay.ablations / "ablations.json")["token"]["policy"]
    for row in tables["Ablations (Tables 7–9)"][0][1:]:
        if row[0].endswith("(95% CI)"):
            m, c = row[0].split()[0], t9["with"]
            assert row[1] == f"{100 * c[m]:.1f}% [{100 * c[m + '_ci'][0]:.1f}%, {100 * c[m + '_ci'][1]:.1f}%]", row
            continue
        assert shows(row[1], t9["with"][row[0]]) and shows(row[2], t9["without"][row[0]]), row
        checked += 2

    # the simulation's outcome counts
    sim = read(lay.simulate / "summary.json")
    head, row = tables["Simulation: outcomes, simulated vs real funnel"][0]
    assert shows(row[0], sim["episodes"]) and shows(row[3], sim["mean_steps"])
    for name, n in sim["outcomes"].items():
        assert shows(row[head.index(name)], n), name
        checked += 1

    # the A/B test: effects (A, B, B − A, both intervals, lift and its intervals, p, corrected p), power, breakdowns
    from simpersona.report.build import _ci

    ab = read(lay.abtest / "abtest.json")
    effects, power, *groups = tables["A/B test (simulated)"]
    assert [r[0] for r in effects[1:]] == [e["metric"] for e in ab["effects"]] and effects[0][-1] == "p (holm)"
    for row, e in zip(effects[1:], ab["effects"]):
        for cell, v in zip(row[1:4], (e["mean_a"], e["mean_b"], e["diff"])):
            assert shows(cell, v), (e["metric"], cell, v)
        assert row[4:6] == [_ci(e["diff_lo"], e["diff_hi"]), _ci(e["diff_boot_lo"], e["diff_boot_hi"])]
        assert shows(row[6], e["lift"], pct=True) and row[7:9] == [_ci(e["lift_lo"], e["lift_hi"], True), _ci(e["lift_boot_lo"], e["lift_boot_hi"], True)]
        assert shows(row[9], e["p_value"]) and shows(row[10], e["p_adjusted"]), (e["metric"], row)
        checked += 9
    for row, r in zip(power[1:], ab["power"]["metrics"], strict=True):
        assert row[0] == r["metric"] and shows(row[1], r["mde_abs"]) and shows(row[2], r["paired_buyers"]) and shows(row[3], r["unpaired_per_arm"])
    assert len(groups) == bool(ab["by_stratum"]) + bool(ab["by_persona"]) >= 1
    page = Path(s["path"]).read_text()
    section = page[page.index("<h2>A/B test (simulated)</h2>"):]
    assert "fast persona policy" in section and "policy.npz of this A/B test (sha256" in section and "small-pages" in section
    assert "A/B test small-pages: lift of B over A" in section  # the forest plot
    assert checked > 60

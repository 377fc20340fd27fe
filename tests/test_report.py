"""The HTML report: built from an empty run folder (every part "not run") and from a toy run,
then rendered in real headless Chromium with a screenshot kept as a test artefact."""

from __future__ import annotations

import shutil
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

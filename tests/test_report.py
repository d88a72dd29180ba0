"""The Snakemake report of a reduced study: every plot and table is in it with its caption, and it
opens in headless Chromium without console errors (the checker itself is shown to catch a real
JavaScript error). The reduced run is the session's shared one (conftest.reduced_study).

Chromium: without a browser these tests skip; with SFTRL_REQUIRE_CHROMIUM=1 (CI) they fail."""

import json
import re

import polars as pl
import pytest

from sftrl import plots

from browser import open_page, require_chromium
from conftest import run_snakemake

PLOTS = ["sft-trajectory", "rl-recovery", "stages", "sigma-change", "principal-angles", "uv-merge", "layer-reset"]
TABLES = ["findings", "sft-trajectory", "rl-recovery", "stages", "spectrum", "uv-merge", "layer-reset", "benchmarks"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_console_error_checker_catches_real_errors(tmp_path):
    """The browser check must be able to fail: a thrown error and console.error are reported,
    a clean page gives nothing."""
    require_chromium()
    pages = {
        "throw": '<script>throw new Error("deliberate boom")</script>',
        "console": '<script>console.error("logged failure")</script>',
        "clean": '<script>console.log("all fine")</script>',
    }
    found = {}
    for name, body in pages.items():
        page = tmp_path / f"{name}.html"
        page.write_text(f"<!DOCTYPE html><html><body><p>{name}</p>{body}</body></html>")
        found[name] = open_page(page.as_uri(), tmp_path / f"{name}.png", settle=0.5)
    assert any("deliberate boom" in e and "uncaught" in e for e in found["throw"]), found["throw"]
    assert any("logged failure" in e for e in found["console"]), found["console"]
    assert found["clean"] == []
    assert (tmp_path / "clean.png").read_bytes()[:8] == PNG


@pytest.fixture(scope="module")
def study(reduced_study):
    """The shared reduced study (conftest), then its report: (results dir, report path)."""
    run_snakemake(reduced_study, "--cores", "1", "--report", "results/test/report.html")
    results = reduced_study / "results" / "test"
    return results, results / "report.html"


def _report_results(report) -> dict:
    """The report's embedded result index: path → name, labels, caption, mime type, data URI."""
    text = report.read_text()
    m = re.search(r'<script id="results">\s*var results = (\{.*?\});?\s*</script>', text, re.DOTALL)
    assert m, "no result index in the report"
    return json.loads(m.group(1))


@pytest.mark.slow
def test_stage_table_and_plots_of_the_reduced_study(study):
    results, _ = study
    peak = json.loads((results / "seed-0" / "eval" / "peak-ood.json").read_text())["model"]
    stages = pl.read_csv(results / "tables" / "stages.csv")
    assert stages["stage"].to_list() == ["Premax", "Moderate", "RL"]
    # Moderate = the edits' target (the last SFT checkpoint), RL from every checkpoint
    assert stages["model"].to_list() == [peak, "sft-8", "ppo-8"]
    assert (results / "tables" / "stages.md").read_text().startswith("| stage | model |")
    profile = pl.read_csv(results / "tables" / "spectrum-profile.csv")
    assert "sft-8 → ppo-8" in profile["pair"].to_list() and "base → sft-8" in profile["pair"].to_list()
    for name in PLOTS:
        plots.check_offline_html(results / "plots" / f"{name}.html")
        assert (results / "plots" / f"{name}.png").read_bytes()[:8] == PNG, name
        assert (results / "plots" / f"{name}.svg").read_text().startswith("<svg"), name
    for name in TABLES:
        page = (results / "report" / "tables" / f"{name}.html").read_text()
        assert "<table>" in page and "<script" not in page, name


@pytest.mark.slow
def test_report_lists_every_plot_and_table_with_a_caption(study):
    _, report = study
    entries = _report_results(report)
    by_name = {e["name"]: e for e in entries.values()}
    expected = {f"{p}.svg" for p in PLOTS} | {f"{t}.html" for t in TABLES}
    assert set(by_name) == expected
    for name, entry in by_name.items():
        assert len(re.sub(r"<[^>]+>", "", entry["caption"]).strip()) > 40, f"{name}: no caption"
        assert entry["labels"]["kind"] == ("plot" if name.endswith(".svg") else "table")
        assert entry["mime_type"] == ("image/svg+xml" if name.endswith(".svg") else "text/html")
    assert "Premax" in by_name["stages.html"]["caption"]
    text = report.read_text()
    for category in ("0. Findings", "1. SFT and RL", "2. Spectra", "3. Edits", "4. Jobs"):
        assert category in text
    assert "24-point card game" in text  # the workflow description


@pytest.mark.slow
def test_report_opens_in_chromium_without_console_errors(study, tmp_path):
    require_chromium()
    _, report = study
    shot = tmp_path / "report.png"
    errors, body = open_page(report.as_uri(), shot, settle=2.0, evaluate="document.body.innerText")
    assert errors == []
    assert "1. SFT and RL" in body and "Workflow" in body  # the report app rendered its menu
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 10_000

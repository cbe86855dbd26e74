"""The linkage report: every GUILD section, no identifiers, renders offline in a browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pipelines.run import RunResult
from pipelines.synthetic import GeneratedData

pytestmark = pytest.mark.slow

SECTIONS = ("summary", "data-provided", "method", "quality", "bias", "diagnostics")


def _report(run: RunResult) -> tuple[str, dict]:
    html = Path(run.manifest["outputs"]["linkage_report"]).read_text()
    data = json.loads(Path(run.manifest["outputs"]["linkage_quality"]).read_text())
    return html, data


def test_report_has_every_section_and_the_same_figures_as_the_json(small_run: RunResult) -> None:
    html, data = _report(small_run)
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert set(data) >= {"data_provided", "method", "quality", "bias"}
    balanced = data["quality"]["estimated"]["balanced"]
    assert f"{1 - balanced['precision']:.2%}" in html  # the summary quotes the estimate
    assert data["quality"]["measured_against_ground_truth"]["balanced"]["recall"] > 0.9
    assert set(data["bias"]["dimensions"]) == {"source", "sex", "age_band", "region", "event_year"}
    sizes = data["quality"]["clusters"]["distribution"]
    assert (
        sum(r["records_per_person"] * r["persons"] for r in sizes)
        == small_run.manifest["reconciliation"]["rows_linked"]
    )
    assert "<script" not in html and "http" not in html.split("</style>")[1]


def test_report_holds_no_names_dates_of_birth_or_postcodes(
    small_run: RunResult, small_data: GeneratedData
) -> None:
    html, data = _report(small_run)
    text = html.lower() + json.dumps(data).lower()
    pupils = pd.read_parquet(small_data.files["pupils"])
    courts = pd.read_csv(small_data.files["magistrates_courts"], dtype=str)
    surnames = {s.lower() for s in pupils.surname.dropna() if len(s) > 5}
    postcodes = {p.lower() for p in courts.home_postcode.dropna()}
    dobs = {d for d in courts.date_of_birth.dropna()} | {
        str(d) for d in pupils.date_of_birth.dropna()
    }
    # Words of the report's own text (e.g. "Wilson" intervals) are not data.
    template = Path(__file__).parents[1] / "quality" / "templates" / "linkage_report.html.j2"
    fixed = set(re.findall(r"[a-z][a-z-]+", template.read_text().lower()))
    words = set(re.findall(r"[a-z][a-z-]+", text)) - fixed
    assert not (surnames & words), sorted(surnames & words)
    assert not any(p in text for p in postcodes)
    assert not any(d in text for d in dobs)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_a_headless_browser_without_network(
    small_run: RunResult, tmp_path: Path
) -> None:
    report = Path(small_run.manifest["outputs"]["linkage_report"])
    done = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Linkage bias: for whom are links worse?" in done.stdout
    assert "Linkage quality" in done.stdout


def test_diagnostics_are_offline_html_linked_from_the_report(small_run: RunResult) -> None:
    html, _ = _report(small_run)
    folder = small_run.output_dir / "reports" / "diagnostics"
    expected = {
        "match_weights.html",
        "m_u_parameters.html",
        "match_weight_histogram.html",
        "unlinkables.html",
        "completeness.html",
        "blocking_rule_comparisons.html",
        "waterfall_high_precision.html",
        "waterfall_balanced.html",
        "waterfall_high_recall.html",
        "comparison_viewer.html",
        "cluster_studio.html",
    }
    # (precision_recall.html joins them once clerical labels exist)
    assert expected <= {p.name for p in folder.glob("*.html")}
    for name in expected:
        assert f'href="diagnostics/{name}"' in html
        assert not re.search(r"<script[^>]*\bsrc=", (folder / name).read_text())
    # Those showing record values are marked as secure-setting only.
    assert html.count("shows identifiers: secure setting only") == 5

"""The linkage report: every GUILD section, no identifiers, renders offline in a browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dagster_project.linkage import input_tables, model_path
from dagster_project.quality import SAMPLED_KEYS, drop_sample, sample_of_persons
from linkage_models.diagnostics import score_sampled_persons
from linkage_models.linkage import make_linker
from linkage_models.project import LoadedProject
from pipelines.contract import OutputLayout, Tables
from pipelines.disclosure_control import rounded, shown_count
from pipelines.engines.duckdb_engine import DuckDBEngine
from pipelines.run import RunResult
from pipelines.synthetic import GeneratedData

from .helpers import html_tables, published, render_offline, small_counts_shown

pytestmark = pytest.mark.slow

SECTIONS = ("summary", "data-provided", "method", "quality", "bias", "diagnostics")


def _report(run: RunResult) -> tuple[str, dict]:
    folder = run.manifest_path.parent  # outputs are relative to the manifest's folder
    html = (folder / run.manifest["outputs"]["linkage_report"]).read_text()
    data = json.loads((folder / run.manifest["outputs"]["linkage_quality"]).read_text())
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
    # Persons per size are rounded to 5 (off by at most 4 each): the table still accounts
    # for every linked record, within that.
    sizes = data["quality"]["clusters"]["distribution"]
    assert all(r["persons"] % 5 == 0 for r in sizes)
    covered = sum(r["records_per_person"] * r["persons"] for r in sizes)
    linked = small_run.manifest["reconciliation"]["rows_linked"]
    assert abs(covered - linked) <= 4 * sum(r["records_per_person"] for r in sizes)
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


REPORT_COUNT_COLUMNS = {
    "Rows received",
    "Linked",
    "Quarantined",
    "Missing",
    "Rows",
    "Persons",
    "Records",
    "TP",
    "FP",
    "TN",
    "FN",
}


def test_report_suppresses_every_small_count(small_run: RunResult) -> None:
    html, data = _report(small_run)
    assert small_counts_shown(html, REPORT_COUNT_COLUMNS) == []
    (reasons,) = [t for t in html_tables(html) if t[0] == ["Source", "Reason", "Rows"]]
    shown = {(row[0], row[1]): row[2] for row in reasons[1:]}
    expected = {
        (s["source"], reason): n
        for s in data["data_provided"]["sources"]
        for reason, n in s["quarantined_by_reason"].items()
    }
    assert set(shown) == set(expected)
    assert any(n < 10 for n in expected.values())  # small cells exist in this data
    for key, n in expected.items():
        assert shown[key] == ("<10" if n < 10 else f"{n:,}"), key


def test_report_renders_in_a_headless_browser_without_network(
    small_run: RunResult, tmp_path: Path
) -> None:
    """Chromium opens the report with the network cut off; the page shows the run's own
    figures, with small counts suppressed, and asks for nothing from outside."""
    page = render_offline(
        small_run.manifest_path.parent / small_run.manifest["outputs"]["linkage_report"], tmp_path
    )
    _, data = _report(small_run)
    balanced = data["quality"]["estimated"]["balanced"]
    measured = data["quality"]["measured_against_ground_truth"]["balanced"]
    persons = data["quality"]["links"]["balanced"]["persons"]
    rows_in = sum(s["rows_in"] for s in data["data_provided"]["sources"])
    shown = page.text
    assert f"{rows_in:,} records from 5 sources were received" in shown
    assert f"into {shown_count(persons)} persons at the balanced threshold" in shown
    assert f"{1 - balanced['precision']:.2%} of linked record pairs are false links" in shown
    assert f"{1 - measured['recall']:.2%} missed" in shown
    assert f"balanced {balanced['precision']:.4f} ({balanced['precision_95ci'][0]:.4f}" in shown
    assert "<10" in shown  # suppressed cells reach the reader as such
    assert page.requests == []


def test_the_offline_check_sees_a_page_that_reaches_out(tmp_path: Path) -> None:
    """The check above can fail: a page that loads a stylesheet and an image from the
    internet is caught, even though neither arrives."""
    page = tmp_path / "leaky.html"
    page.write_text(
        '<html><head><link rel="stylesheet" href="https://cdn.example.org/site.css"></head>'
        '<body><p>Hello</p><img src="http://example.com/logo.png"></body></html>'
    )
    rendered = render_offline(page, tmp_path)
    assert rendered.text == "Hello"
    assert sorted(rendered.requests) == [
        "http://example.com/logo.png",
        "https://cdn.example.org/site.css",
    ]


def test_diagnostics_are_offline_html_and_identifying_ones_stay_secure(
    small_run: RunResult,
) -> None:
    """Charts of the model and of counts sit beside the report and are linked from it; the
    diagnostics that show record values are in the secure zone, named but not linked."""
    html, _ = _report(small_run)
    zone = published(small_run.output_dir)
    charts = {
        "match_weights.html",
        "m_u_parameters.html",
        "match_weight_histogram.html",
        "unlinkables.html",
        "completeness.html",
        "blocking_rule_comparisons.html",
    }
    identifying = {
        "waterfall_high_precision.html",
        "waterfall_balanced.html",
        "waterfall_high_recall.html",
        "comparison_viewer.html",
        "cluster_studio.html",
    }
    # (precision_recall.html joins the charts once clerical labels exist)
    assert charts <= {p.name for p in zone.charts_dir.glob("*.html")}
    assert identifying == {p.name for p in zone.diagnostics_dir.glob("*.html")}
    for name in charts:
        assert f'href="charts/{name}"' in html
        assert not re.search(r"<script[^>]*\bsrc=", (zone.charts_dir / name).read_text())
    for name in identifying:
        assert f'href="diagnostics/{name}"' not in html
        assert f"secure/snapshots/{small_run.snapshot}/diagnostics/{name}" in html
        assert not re.search(r"<script[^>]*\bsrc=", (zone.diagnostics_dir / name).read_text())
    assert html.count("shows identifiers: kept in the secure zone") == 5


def test_completeness_chart_shows_every_source_with_its_own_records(
    small_run: RunResult,
) -> None:
    """Each source has its own bars, counted over its own accepted records (the chart once
    showed one source's figures under another's name and left the rest out); the counts
    are rounded as every count the publication shows."""
    chart = (published(small_run.output_dir).charts_dir / "completeness.html").read_text()
    values = json.loads(re.search(r'"data": \{"values": (\[.*?\])\}', chart).group(1))
    rows = {(v["source_dataset"], v["total_rows_inc_nulls"]) for v in values}
    accepted = {
        (name, rounded(counts["rows_accepted"]))
        for name, counts in small_run.manifest["reconciliation"]["by_source"].items()
    }
    assert rows == accepted
    columns = {v["column_name"] for v in values}
    assert {"given_name", "date_of_birth"} <= columns and "source_dataset" not in columns
    assert all(v["total_null_rows"] % 5 == 0 for v in values)


def _chart_values(small_run: RunResult, name: str) -> list[dict]:
    chart = (published(small_run.output_dir).charts_dir / name).read_text()
    return json.loads(re.search(r'"data": \{"values": (\[.*?\])\}', chart).group(1))


def test_shareable_charts_show_counts_as_the_publication_does(small_run: RunResult) -> None:
    """The histogram's and the blocking chart's counts of pairs are rounded, the blocking
    chart's running total is the sum of what it shows and its possible pairs come from the
    shown numbers of records; the unlinkables chart's shares are of rounded counts (a
    share of 1 in N gave single records away)."""
    histogram = _chart_values(small_run, "match_weight_histogram.html")
    assert histogram and all(v["count_rows"] % 5 == 0 for v in histogram)
    blocking = sorted(
        _chart_values(small_run, "blocking_rule_comparisons.html"), key=lambda v: v["match_key"]
    )
    assert all(v["marginal_comparison_count"] % 5 == 0 for v in blocking)
    running = [
        sum(v["marginal_comparison_count"] for v in blocking[: i + 1]) for i in range(len(blocking))
    ]
    assert [v["cumulative_comparison_count"] for v in blocking] == running
    reconciliation = small_run.manifest["reconciliation"]
    shown = sum(rounded(c["rows_accepted"]) for c in reconciliation["by_source"].values())
    assert {v["total_possible_comparison_count"] for v in blocking} == {shown * (shown - 1) // 2}
    linked = rounded(reconciliation["rows_linked"])
    unlinkables = _chart_values(small_run, "unlinkables.html")
    assert unlinkables  # the demo's data has records too sparse to link
    for v in unlinkables:
        below = v["cum_prop"] * linked
        assert abs(below - round(below)) < 1e-6 and round(below) % 5 == 0


def test_report_draws_its_figures_as_static_charts(small_run: RunResult) -> None:
    """Error rates, cluster sizes and bias are drawn as inline SVG (no script, no network),
    and a chart never draws what the tables suppress."""
    from quality.charts import cluster_size_rows

    html, data = _report(small_run)
    for chart in ("chart-error-rates", "chart-clusters", "chart-bias-source", "chart-bias-sex"):
        figure = html.split(f'id="{chart}"', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in figure and "</svg>" in figure, chart
    distribution = data["quality"]["clusters"]["distribution"]
    drawn = cluster_size_rows(distribution)
    assert any(r["persons"] < 10 for r in distribution)  # this data has small sizes...
    assert all(r["persons"] >= 10 for r in drawn)  # ...which are not drawn
    assert [r for r in distribution if r["persons"] >= 10] == drawn


def test_report_says_when_a_person_was_too_large_to_pair(small_run: RunResult) -> None:
    from quality.linkage_report import render_linkage_report

    html, data = _report(small_run)
    assert 'id="too-large-to-pair"' not in html  # nothing that large in the small run
    data["quality"]["estimated"]["high_recall"]["persons_too_large_to_pair"] = 1
    words = " ".join(render_linkage_report(data, []).split())
    assert "Persons of more than 1,000 records: &lt;10 at high recall." in words  # "<10"


def test_at_scale_the_pair_diagnostics_show_every_pair_of_a_sample_of_whole_persons(
    small_project: LoadedProject, small_run: RunResult
) -> None:
    """Above about 100,000 records the waterfalls, comparison viewer and cluster studio show
    the pairs of a sample of persons, scored again with Splink's intermediate columns:
    exactly the linkage's own scored pairs that hold a sampled record, with the same
    weights, and every balanced person wholly in the sample or out of it."""
    layout = OutputLayout(small_run.output_dir)
    inputs = input_tables(layout)
    model = json.loads(Path(model_path(layout)).read_text())
    model = {**model, "retain_intermediate_calculation_columns": True}
    key = "{s}_l || '|' || {r}_l, {s}_r || '|' || {r}_r"
    pair = f"least({key}) AS a, greatest({key}) AS b".format(s="source_dataset", r="record_id")
    with DuckDBEngine(layout.work_dir / "joinedup.duckdb") as engine, engine.scratch():
        sample = sample_of_persons(engine, inputs, 0.2)
        assert sample is not None
        db_api = engine.splink_api()
        linker = make_linker(db_api, inputs, small_project.spec, model)
        scored = score_sampled_persons(db_api, linker, model, *sample)
        sampled = f"SELECT source_dataset || '|' || record_id FROM {SAMPLED_KEYS}"
        again = engine.fetch(f"SELECT {pair}, match_weight FROM {scored.physical_name}")
        linked = engine.fetch(
            f"SELECT * FROM (SELECT {pair}, match_weight FROM {Tables.PAIRWISE_PREDICTIONS}) "
            f"WHERE a IN ({sampled}) OR b IN ({sampled})"
        )
        records = sum(engine.count(t) for t in inputs.values())
        in_sample = engine.count(SAMPLED_KEYS)
        split_persons = engine.fetch(
            f"SELECT count(*) FROM (SELECT cluster_id FROM {Tables.clusters('balanced')} c "
            f"LEFT JOIN {SAMPLED_KEYS} k USING (source_dataset, record_id) "
            "GROUP BY cluster_id HAVING count(k.record_id) BETWEEN 1 AND count(*) - 1)"
        )[0][0]
        drop_sample(engine, sample)
    assert 0.1 * records < in_sample < 0.3 * records
    assert split_persons == 0
    assert len(again) == len({(a, b) for a, b, _ in again}) > 100  # each pair once
    assert {(a, b): round(w, 6) for a, b, w in again} == {(a, b): round(w, 6) for a, b, w in linked}

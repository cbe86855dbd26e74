"""The Dagster code location: loads, blocks bad deliveries, senses new ones, re-runs cleanly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from dagster_project.definitions import build_definitions
from linkage_models.project import LoadedProject, load_project
from pipelines.deliveries import delivery_statuses
from pipelines.disclosure_control import protected_delivery, rounded, shown_count, shown_rate
from pipelines.engines import open_engine
from pipelines.run import ProjectGraph, RunResult, run_project
from pipelines.synthetic import GeneratedData

from .helpers import (
    REPO,
    demo_settings,
    html_tables,
    identifiers_of,
    published,
    small_counts_shown,
    write_project,
)

pytestmark = pytest.mark.slow


def _landing_project(tmp_path: Path, data: GeneratedData, globbed: bool = True) -> LoadedProject:
    """The demo project pointed at a landing folder per source (a glob of deliveries)."""
    raw = demo_settings()
    for source in raw["sources"]:
        folder = tmp_path / "landing" / source["name"]
        folder.mkdir(parents=True)
        original = data.files[source["name"]]
        shutil.copy(original, folder / f"2024-01{original.suffix}")
        source["path"] = f"{source['name']}/*{original.suffix}" if globbed else source["path"]
    raw["data_dir"] = str(tmp_path / "landing")
    raw["output"]["path"] = str(tmp_path / "out")
    return load_project(write_project(raw, tmp_path / "project.yaml"))


SOURCES = ("magistrates_courts", "prisons", "probation", "pupils", "benefits")
LINKAGE_ASSETS = {
    "linkage/linkage_inputs",
    "linkage/model",
    "linkage/pairwise_predictions",
    "linkage/person_clusters",
    "published/person_lookup",
    "published/events",
    "published/manifest",
    "published/estimated_error_rates",
    "published/measured_accuracy",
    "quality/quality_reports",
    "quality/diagnostics",
    "quality/linkage_report",
    "published/snapshot",
}
REVIEW_ASSETS = {"review/clerical_sample", "review/clerical_labels"}
MODEL_ASSETS = {"linkage/candidate_model"}


def _names(keys) -> set[str]:
    return {k.to_user_string() for k in keys}


def test_definitions_wire_deliveries_into_one_linkage_graph(
    small_project: LoadedProject,
) -> None:
    defs = build_definitions(small_project)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    per_source = {f"deliveries/{s}_{a}" for s in SOURCES for a in ("delivery", "standardised")}
    assert (
        _names(graph.get_all_asset_keys())
        == per_source | LINKAGE_ASSETS | REVIEW_ASSETS | MODEL_ASSETS
    )

    def parents(key: str) -> set[str]:
        return _names(graph.get(dg.AssetKey(key.split("/"))).parent_keys)

    # Linkage waits for every source's deliveries; each later step for the one before.
    assert parents("linkage/linkage_inputs") == per_source
    assert parents("linkage/model") == {"linkage/linkage_inputs"}
    assert parents("linkage/person_clusters") == {"linkage/pairwise_predictions"}
    assert parents("published/manifest") == {
        "published/person_lookup",
        "published/events",
        "published/estimated_error_rates",
        "published/measured_accuracy",
    }
    assert parents("quality/linkage_report") == {
        "published/manifest",
        "quality/diagnostics",
        "review/clerical_labels",
    }
    # Nothing is published before the audit, which comes after every output is built.
    assert parents("published/snapshot") == {
        "published/manifest",
        "quality/quality_reports",
        "quality/diagnostics",
        "quality/linkage_report",
    }
    for source in SOURCES:
        assert parents(f"deliveries/{source}_standardised") == {f"deliveries/{source}_delivery"}

    # One blocking contract check per source's delivery; the manifest must reconcile.
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {(f"deliveries/{s}_delivery", "delivery_contract") for s in SOURCES} | {
        ("published/manifest", "reconciliation"),
        ("published/manifest", "identity_churn"),
        ("published/manifest", "estimated_error_rates"),
        ("published/events", "identifier_echoes"),
    }

    # The relink job and its schedule select all of the linkage, and no delivery.
    relink = defs.resolve_job_def("relink")
    assert _names(relink.asset_layer.selected_asset_keys) == LINKAGE_ASSETS
    schedule = defs.resolve_schedule_def("periodic_relink")
    assert (schedule.job_name, schedule.cron_schedule) == ("relink", "0 2 * * *")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    # The incremental job selects the same assets, linking only what changed; a delivery
    # that passed its ingest job starts it.
    link_deliveries = defs.resolve_job_def("link_deliveries")
    assert _names(link_deliveries.asset_layer.selected_asset_keys) == LINKAGE_ASSETS
    linked = defs.resolve_sensor_def("link_accepted_deliveries")
    assert linked.job_name == "link_deliveries"
    assert linked.default_status == dg.DefaultSensorStatus.RUNNING

    # Each landing-folder sensor runs its own source's ingest job, and only that.
    for source in SOURCES:
        sensor = defs.resolve_sensor_def(f"new_deliveries_{source}")
        assert sensor.job_name == f"ingest_{source}"
        job = defs.resolve_job_def(f"ingest_{source}")
        assert _names(job.asset_layer.selected_asset_keys) == {
            f"deliveries/{source}_delivery",
            f"deliveries/{source}_standardised",
        }
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # Training is its own job (a candidate beside the approved model); promoting another.
    train = defs.resolve_job_def("train_model")
    assert _names(train.asset_layer.selected_asset_keys) == {
        "linkage/linkage_inputs",
        "linkage/candidate_model",
    }
    assert defs.resolve_job_def("promote_model").name == "promote_model"
    review = defs.resolve_job_def("review_import")
    assert _names(review.asset_layer.selected_asset_keys) == {
        "review/clerical_labels",
        "quality/linkage_report",
        "published/snapshot",
    }


def test_code_location_module_loads_from_the_environment(small_project: LoadedProject) -> None:
    """What `dagster dev -m dagster_project` imports, in a fresh interpreter."""
    env = {
        **os.environ,
        "JOINEDUP_PROJECT": str(small_project.config_path),
        "JOINEDUP_DATA_DIR": str(small_project.data_dir),
        "JOINEDUP_OUTPUT_DIR": str(small_project.output_dir),
    }
    code = (
        "import json, dagster as dg, dagster_project; d = dagster_project.defs; "
        "dg.Definitions.validate_loadable(d); p = d.resources['project']; "
        "print(json.dumps({'config': p.config_path, 'data': p.data_dir, 'out': p.output_dir, "
        "'engine': d.resources['engine'].engine, "
        "'assets': len(d.resolve_asset_graph().get_all_asset_keys()), "
        "'sensors': sorted(s.name for s in d.sensors), "
        "'schedules': [s.name for s in d.schedules]}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {
        "config": str(small_project.config_path),
        "data": str(small_project.data_dir),
        "out": str(small_project.output_dir),
        "engine": "duckdb",
        "assets": 26,
        "sensors": sorted(["link_accepted_deliveries", *(f"new_deliveries_{s}" for s in SOURCES)]),
        "schedules": ["periodic_relink"],
    }


def test_code_location_is_pointed_at_spark_by_environment_alone(
    small_project: LoadedProject,
) -> None:
    """A platform engineer deploys the same code location against a cluster via env vars."""
    env = {
        **os.environ,
        "JOINEDUP_PROJECT": str(small_project.config_path),
        "JOINEDUP_ENGINE": "spark",
        "JOINEDUP_SPARK_MASTER": "spark://head:7077",
        "JOINEDUP_SPARK_CONF": "spark.executor.memory=8g",
        "JOINEDUP_SPARK_TABLES_DIR": "hdfs:///joinedup/tables",
    }
    code = (
        "import dagster as dg, dagster_project; "
        "dg.Definitions.validate_loadable(dagster_project.defs); "
        "e = dagster_project.defs.resources['engine']; "
        "print(e.engine, e.spark.master, e.spark.conf['spark.executor.memory'], "
        "e.spark.settings().tables_dir)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["spark", "spark://head:7077", "8g", "hdfs:///joinedup/tables"]


def test_a_delivery_failing_a_critical_check_is_stopped_and_others_link(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    project = _landing_project(tmp_path, small_data)
    bad = tmp_path / "landing" / "prisons" / "2024-01.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[::2], "sex"] = "Q"  # half the rows use an undeclared sex code
    frame.to_parquet(bad)

    result = run_project(project)
    manifest = result.manifest
    prisons = manifest["reconciliation"]["by_source"]["prisons"]
    assert prisons["rows_accepted"] == 0
    assert prisons["rows_quarantined"] == prisons["rows_in"] == len(frame)
    assert list(prisons["quarantined_by_reason"]) == [
        "delivery rejected by validation: sex_codes_declared"
    ]
    assert manifest["reconciliation"]["reconciles"]
    lookup = pd.read_parquet(published(result.output_dir).person_lookup)
    assert "prisons" not in set(lookup.source_dataset)
    assert {"magistrates_courts", "pupils"} <= set(lookup.source_dataset)
    report = published(result.output_dir).data_owner_dir / "prisons" / "2024-01.parquet.html"
    text = report.read_text()
    assert "This delivery was not linked" in text and "Sex (sex) uses only" in text
    # The Data Docs show sample values: the shareable page names where they are in the secure
    # zone and does not link to them.
    (docs,) = re.findall(r"stay in the secure zone \((secure/[^)]*index.html)\)", text)
    assert (result.output_dir / docs).exists() and 'index.html"' not in text
    # The index shows each delivery's counts and failures at a glance.
    index = html_tables((report.parent.parent / "index.html").read_text())[0]
    rows = {r[0]: dict(zip(index[0], r, strict=True)) for r in index[1:]}
    assert rows["prisons"]["Status"] == "rejected"
    assert rows["prisons"]["Rows received"] == shown_count(len(frame))  # rounded
    assert rows["prisons"]["Linked"] == "0"
    assert rows["prisons"]["Checks not met"].startswith("Sex (sex) uses only the declared codes")
    courts = manifest["reconciliation"]["by_source"]["magistrates_courts"]
    assert rows["magistrates_courts"]["Status"] == "accepted"
    assert rows["magistrates_courts"]["Linked"] == shown_count(courts["rows_accepted"])
    validation = json.loads(
        published(result.output_dir).validation_result("prisons", "2024-01.parquet").read_text()
    )
    assert not validation["success"]
    assert "Q" not in json.dumps(validation["expectations"])  # counts, never values


def test_sensor_registers_new_and_replaced_deliveries(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    project = _landing_project(tmp_path, small_data)
    defs = build_definitions(project)
    sensor = defs.resolve_sensor_def("new_deliveries_benefits")
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> dg.SensorResult:
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        for request in result.dynamic_partitions_requests:  # what the daemon does next
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        return result

    first = tick(None)
    assert [r.partition_key for r in first.run_requests] == ["2024-01.csv"]
    assert [
        (req.partitions_def_name, req.partition_keys) for req in first.dynamic_partitions_requests
    ] == [("benefits_deliveries", ["2024-01.csv"])]
    assert tick(first.cursor).run_requests == []

    new_file = tmp_path / "landing" / "benefits" / "2024-02.csv"
    shutil.copy(small_data.files["benefits"], new_file)
    later = tick(first.cursor)
    assert [(r.partition_key, r.tags["joinedup/source"]) for r in later.run_requests] == [
        ("2024-02.csv", "benefits")
    ]
    assert [r.partition_keys for r in later.dynamic_partitions_requests] == [["2024-02.csv"]]
    assert instance.get_dynamic_partitions("benefits_deliveries") == ["2024-01.csv", "2024-02.csv"]

    # A corrected file replacing a delivery under the same name is run again.
    replaced = tmp_path / "landing" / "benefits" / "2024-01.csv"
    os.utime(replaced, ns=(replaced.stat().st_atime_ns, replaced.stat().st_mtime_ns + 10**9))
    again = tick(later.cursor)
    assert [r.partition_key for r in again.run_requests] == ["2024-01.csv"]
    assert again.dynamic_partitions_requests == []


def test_a_corrected_delivery_reruns_without_clean_up(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    project = _landing_project(tmp_path, small_data)
    graph = ProjectGraph(project)
    path = tmp_path / "landing" / "magistrates_courts" / "2024-01.csv"
    good = path.read_text()
    lines = good.splitlines()
    path.write_text("\n".join([lines[0]] + [lines[1]] * 50 + lines[1:]) + "\n")  # repeated ids

    def materialize_delivery() -> str:
        graph.ingest("magistrates_courts", "2024-01.csv")
        with open_engine("duckdb", published(project.output_dir).work_dir) as engine:
            return delivery_statuses(engine, "magistrates_courts")[0]["status"]

    assert materialize_delivery() == "rejected"
    path.write_text(good)
    assert materialize_delivery() == "standardised"


OWNER_COUNT_COLUMNS = {"Rows not meeting it", "Missing", "Rows", "Records"}


def test_quality_reports_cover_every_delivery_and_protect_their_counts(
    small_run: RunResult,
) -> None:
    """Each page's counts are the delivery's rounded counts, adding up (received = linked +
    quarantined = linked + the sum of the reasons), with "<10" for the small ones."""
    folder = published(small_run.output_dir).data_owner_dir
    by_source = small_run.manifest["reconciliation"]["by_source"]
    pages = {p.relative_to(folder).as_posix(): p.read_text() for p in folder.glob("*/*.html")}
    expected = {f"{s}/{d}.html" for s, counts in by_source.items() for d in counts["by_delivery"]}
    assert set(pages) == expected
    index = (folder / "index.html").read_text()
    assert all(f'href="{href}"' in index for href in expected)

    small_cells = 0
    for source, counts in by_source.items():
        for delivery, exact in counts["by_delivery"].items():
            stats = protected_delivery(exact)
            html = pages[f"{source}/{delivery}.html"]
            assert small_counts_shown(html, OWNER_COUNT_COLUMNS) == []
            (reasons,) = [t for t in html_tables(html) if t[0] == ["Reason", "Rows"]]
            if not stats["quarantined_by_reason"]:  # one cell saying so
                assert reasons[1:] == [["None"]]
            shown = {row[0]: row[1] for row in reasons[1:] if len(row) == 2}
            assert set(shown) == set(stats["quarantined_by_reason"])
            for reason, n in stats["quarantined_by_reason"].items():
                assert shown[reason] == ("<10" if n < 10 else f"{n:,}"), (source, reason)
                small_cells += exact["quarantined_by_reason"][reason] < 10
            verdict = " ".join(html.split("This delivery was accepted.")[1].split())
            quarantined = stats["rows_quarantined"]
            held = "&lt;10" if 0 < quarantined < 10 else f"{quarantined:,}"
            assert f"{stats['rows_accepted']:,} linked, {held} quarantined" in verdict
            assert stats["rows_in"] == stats["rows_accepted"] + quarantined
            # What standardisation set missing is counted per identifier and reason.
            for reason in ("Date of birth in none of the declared formats", "(kept) A name"):
                assert reason in html, (source, reason)
    assert small_cells > 0  # the data has small cells, so protection is exercised


def test_counts_are_rounded_and_totals_add_up_so_subtraction_gives_nothing_away() -> None:
    assert [rounded(n) for n in (0, 1, 4, 7, 8, 12, 13, 1381)] == [0, 5, 5, 5, 10, 10, 15, 1380]
    assert [shown_count(n) for n in (None, 0, 1, 9, 10, 1234)] == [
        "—",
        "0",
        "<10",
        "10",
        "10",
        "1,235",
    ]
    # The case: 1,385 received, 1,381 linked, 4 quarantined.
    delivery = protected_delivery(
        {
            "rows_in": 1385,
            "rows_accepted": 1381,
            "rows_quarantined": 4,
            "quarantined_by_reason": {"missing record id": 1, "insufficient identifiers": 3},
        }
    )
    assert delivery["rows_in"] == delivery["rows_accepted"] + delivery["rows_quarantined"]
    assert delivery["rows_quarantined"] == sum(delivery["quarantined_by_reason"].values())
    assert delivery["rows_in"] - delivery["rows_accepted"] != 4  # the difference is rounded
    assert all(v % 5 == 0 for v in (delivery["rows_in"], delivery["rows_accepted"]))
    assert shown_rate(3, 1000) == "<1.0%"  # not 0.3%, which would give the 3 away
    assert shown_rate(0, 1000) == "0.0%"
    assert shown_rate(250, 1000) == "25.0%"
    assert shown_rate(5, 0) == "—"


def test_dagster_event_storage_holds_no_identifier_values(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    """Everything Dagster stores about a run (materialisations and their metadata, check
    results, step events and messages) names files, columns and counts, never values."""
    project = _landing_project(tmp_path, small_data)
    bad = tmp_path / "landing" / "prisons" / "2024-01.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[::2], "sex"] = "Q"  # a rejected delivery: its check fails too
    frame.to_parquet(bad)
    # Malformed rows (too few fields; latin-1 bytes) whose values must not reach storage.
    courts = tmp_path / "landing" / "magistrates_courts" / "2024-01.csv"
    with courts.open("ab") as fh:
        fh.write(b'MC1,"QUENTINELLA, RAGGEDROW"\n')
        fh.write(
            'MC2,"BRÖNSTEDTOVA, ZZYZX",01/02/1966,F,ZZ9 9ZZ,01/01/2020,theft,Wales\n'.encode(
                "latin-1"
            )
        )
    instance = dg.DagsterInstance.ephemeral()
    result = run_project(project, instance=instance)
    malformed = result.manifest["reconciliation"]["by_source"]["magistrates_courts"]
    assert malformed["quarantined_by_reason"]["malformed row: wrong number of fields"] == 1
    reason = "malformed row: bytes not valid in the declared encoding"
    assert malformed["quarantined_by_reason"][reason] == 1

    runs = instance.get_runs()
    assert len(runs) == 6  # five deliveries and the linkage
    stored = [dg.serialize_value(e) for r in runs for e in instance.all_logs(r.run_id)]
    text = "\n".join(stored)
    assert "ASSET_MATERIALIZATION" in text and "ASSET_CHECK_EVALUATION" in text
    assert '"dagster/row_count"' in text  # metadata is there, and checked below
    identifiers = identifiers_of(small_data)
    assert identifiers.found_in(text) == []
    for value in ("QUENTINELLA", "RAGGEDROW", "ZZYZX", "ZZ9 9ZZ", "01/02/1966"):
        assert value.lower() not in text.lower()

    # The checks on what is published ran: the demo's attributes (a court's region, not the
    # defendant's postcode area) repeat no identifier.
    evaluations = {
        e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data
        for r in runs
        for e in instance.all_logs(r.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evaluations["reconciliation"].passed
    assert evaluations["estimated_error_rates"].passed
    echoes = evaluations["identifier_echoes"]
    assert echoes.passed, echoes.description

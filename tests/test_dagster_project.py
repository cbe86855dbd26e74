"""The Dagster code location: loads, blocks bad deliveries, senses new ones, re-runs cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from dagster_project.assets import build_assets
from dagster_project.definitions import build_definitions, resources_for
from linkage_models.project import LoadedProject, load_project
from pipelines.deliveries import delivery_statuses
from pipelines.engine import open_engine
from pipelines.run import run_project
from pipelines.synthetic import GeneratedData

from .conftest import DEMO_CONFIG, REPO

pytestmark = pytest.mark.slow


def _landing_project(tmp_path: Path, data: GeneratedData, globbed: bool = True) -> LoadedProject:
    """The demo project pointed at a landing folder per source (a glob of deliveries)."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    for source in raw["sources"]:
        folder = tmp_path / "landing" / source["name"]
        folder.mkdir(parents=True)
        original = data.files[source["name"]]
        shutil.copy(original, folder / f"2024-01{original.suffix}")
        source["path"] = f"{source['name']}/*{original.suffix}" if globbed else source["path"]
    raw["data_dir"] = str(tmp_path / "landing")
    raw["output"]["path"] = str(tmp_path / "out")
    config = tmp_path / "project.yaml"
    config.write_text(yaml.safe_dump(raw))
    return load_project(config)


def test_definitions_load_with_every_asset_check_sensor_and_schedule(
    small_project: LoadedProject,
) -> None:
    defs = build_definitions(small_project)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for source in ("magistrates_courts", "prisons", "probation", "pupils", "benefits"):
        assert {f"{source}/delivery", f"{source}/standardised"} <= keys
    assert {
        "linkage/model",
        "published/person_lookup",
        "published/events",
        "published/manifest",
        "quality/quality_reports",
    } <= keys
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {"delivery_contract"}
    for source in ("magistrates_courts", "prisons", "probation", "pupils", "benefits"):
        assert defs.resolve_sensor_def(f"new_deliveries_{source}")
    assert defs.resolve_schedule_def("periodic_relink").cron_schedule == "0 2 * * *"


def test_code_location_module_loads_from_the_environment(small_project: LoadedProject) -> None:
    """What `dagster dev -m dagster_project` imports, in a fresh interpreter."""
    env = {
        **os.environ,
        "JOINEDUP_PROJECT": str(small_project.config_path),
        "JOINEDUP_DATA_DIR": str(small_project.data_dir),
        "JOINEDUP_OUTPUT_DIR": str(small_project.output_dir),
    }
    code = (
        "import dagster as dg, dagster_project; "
        "dg.Definitions.validate_loadable(dagster_project.defs); print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


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
    lookup = pd.read_parquet(result.output_dir / "linked" / "person_lookup.parquet")
    assert "prisons" not in set(lookup.source_dataset)
    assert {"magistrates_courts", "pupils"} <= set(lookup.source_dataset)
    report = result.output_dir / "reports" / "quality" / "prisons" / "2024-01.parquet.html"
    text = report.read_text()
    assert "This delivery was not linked" in text and "Sex (sex) uses only" in text
    validation = json.loads(
        (result.output_dir / "quality" / "prisons" / "2024-01.parquet.validation.json").read_text()
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
    assets = build_assets(project)
    courts = next(s for s in assets.sources if s.source == "magistrates_courts")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(courts.partitions.name, ["2024-01.csv"])
    path = tmp_path / "landing" / "magistrates_courts" / "2024-01.csv"
    good = path.read_text()
    lines = good.splitlines()
    path.write_text("\n".join([lines[0]] + [lines[1]] * 50 + lines[1:]) + "\n")  # repeated ids

    def materialize_delivery() -> str:
        dg.materialize(
            assets.all,
            selection=[courts.delivery.key, courts.standardised.key],
            partition_key="2024-01.csv",
            instance=instance,
            resources=resources_for(project),
            raise_on_error=False,
        )
        with open_engine("duckdb", project.output_dir / "work") as engine:
            return delivery_statuses(engine, "magistrates_courts")[0]["status"]

    assert materialize_delivery() == "rejected"
    path.write_text(good)
    assert materialize_delivery() == "standardised"


def test_quality_reports_exist_and_suppress_small_counts(small_run) -> None:
    index = small_run.output_dir / "reports" / "quality" / "index.html"
    assert index.exists()
    pages = list((small_run.output_dir / "reports" / "quality").glob("*/*.html"))
    assert len(pages) == 5
    text = "\n".join(p.read_text() for p in pages)
    assert "&lt;10" in text  # small cells suppressed
    assert "How well the records linked" in text

"""The Dagster code location for one linkage project.

    JOINEDUP_PROJECT=projects/my_project.yaml dagster dev -m dagster_project

Environment: JOINEDUP_PROJECT (default examples/demo_project.yaml), JOINEDUP_DATA_DIR and
JOINEDUP_OUTPUT_DIR (override the project's data_dir and output.path), JOINEDUP_ENGINE
(duckdb or spark) and, for Spark, the JOINEDUP_SPARK_* variables of docs/spark.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dagster_project.assets import build_assets
from dagster_project.resources import (
    EngineResource,
    LinkageProjectResource,
    SparkSessionResource,
)
from dagster_project.sensors import delivery_sensors, relink_job, relink_schedule
from linkage_models.project import LoadedProject, load_project

DEFAULT_PROJECT = Path(__file__).resolve().parents[1] / "examples" / "demo_project.yaml"


def resources_for(
    project: LoadedProject, engine: str = "duckdb", spark: SparkSessionResource | None = None
) -> dict[str, object]:
    spark = spark or SparkSessionResource.from_env()
    return {
        "project": LinkageProjectResource(
            config_path=str(project.config_path),
            data_dir=str(project.data_dir),
            output_dir=str(project.output_dir),
        ),
        "spark": spark,
        "engine": EngineResource(engine=engine, spark=spark),
    }


def build_definitions(project: LoadedProject, engine: str = "duckdb") -> dg.Definitions:
    assets = build_assets(project, engine)
    job = relink_job(assets)
    return dg.Definitions(
        assets=assets.all,
        jobs=[job],
        sensors=delivery_sensors(project, assets),
        schedules=[relink_schedule(project, job)],
        resources=resources_for(project, engine),
        # One DuckDB file has one writer, one Spark driver holds the session: steps of a run
        # execute in one process, in order.
        executor=dg.in_process_executor,
    )


def definitions_from_environment() -> dg.Definitions:
    config = os.environ.get("JOINEDUP_PROJECT", str(DEFAULT_PROJECT))
    data_dir = os.environ.get("JOINEDUP_DATA_DIR")
    output_dir = os.environ.get("JOINEDUP_OUTPUT_DIR")
    project = load_project(config, data_dir=data_dir, output_dir=output_dir)
    return build_definitions(project, engine=os.environ.get("JOINEDUP_ENGINE", "duckdb"))

"""The Dagster code location for one linkage project, assembled from its domains.

    JOINEDUP_PROJECT=projects/my_project.yaml dg dev   (from the repository root)

Environment: JOINEDUP_PROJECT (default examples/demo_project.yaml), JOINEDUP_DATA_DIR and
JOINEDUP_OUTPUT_DIR (override the project's data_dir and output.path), JOINEDUP_ENGINE
(duckdb or spark) and, for Spark, the JOINEDUP_SPARK_* variables of docs/spark.md.

`joinedup` (the CLI) finds `build_definitions` through the `joinedup.code_location` entry
point and runs the jobs defined here, so the command line and the UI run one graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dagster_project.deliveries import (
    SourceAssets,
    accepted_delivery_sensor,
    delivery_sensor,
    ingest_job,
    source_assets,
)
from dagster_project.linkage import LINKAGE_INPUTS, linkage_assets
from dagster_project.models import CANDIDATE_MODEL, model_assets, model_jobs
from dagster_project.publication import publication_assets
from dagster_project.published import (
    estimated_error_rates,
    identifier_echoes,
    identity_churn,
    published_assets,
    reconciliation,
)
from dagster_project.quality import quality_assets
from dagster_project.resources import (
    EngineResource,
    LinkageProjectResource,
    SparkSessionResource,
)
from dagster_project.review import review_assets, review_jobs
from linkage_models.project import LoadedProject, load_project
from pipelines.contract import LINK_DELIVERIES_JOB, LINKAGE_INPUTS_STEP, RELINK_JOB

DEFAULT_PROJECT = Path(__file__).resolve().parents[1] / "examples" / "demo_project.yaml"


def resources_for(
    project: LoadedProject, engine: str = "duckdb", spark: SparkSessionResource | None = None
) -> dict[str, object]:
    spark = spark or SparkSessionResource.from_env()
    return {
        "project": LinkageProjectResource.of(project),
        "spark": spark,
        "engine": EngineResource(engine=engine, spark=spark),
    }


def build_definitions(project: LoadedProject, engine: str = "duckdb") -> dg.Definitions:
    sources: list[SourceAssets] = [source_assets(s, engine) for s in project.spec.sources]
    per_source = [a for s in sources for a in s.all]
    upstream = [k for s in sources for k in (s.delivery.key, s.standardised.key)]
    linked = [
        *linkage_assets(upstream, engine),
        *published_assets(),
        *quality_assets(),
        *publication_assets(),
    ]
    relink = dg.define_asset_job(
        RELINK_JOB,
        selection=dg.AssetSelection.assets(*linked),
        description="Combine all accepted deliveries, relink everything, audit and publish "
        "a new snapshot.",
    )
    link_deliveries = dg.define_asset_job(
        LINK_DELIVERIES_JOB,
        selection=dg.AssetSelection.assets(*linked),
        description="Link only what changed since the latest publication (new, replaced and "
        "withdrawn deliveries) with its model, audit and publish a new snapshot.",
        config={"ops": {LINKAGE_INPUTS_STEP: {"config": {"incremental": True}}}},
    )
    ingest_jobs = [ingest_job(s) for s in sources]
    return dg.Definitions(
        assets=[*per_source, *linked, *model_assets(), *review_assets()],
        asset_checks=[reconciliation, identity_churn, estimated_error_rates, identifier_echoes],
        jobs=[
            relink,
            link_deliveries,
            *ingest_jobs,
            *review_jobs(),
            *model_jobs(dg.AssetSelection.assets(LINKAGE_INPUTS, CANDIDATE_MODEL)),
        ],
        sensors=[
            *(delivery_sensor(project, s, j) for s, j in zip(sources, ingest_jobs, strict=True)),
            accepted_delivery_sensor(ingest_jobs, link_deliveries),
        ],
        schedules=[
            dg.ScheduleDefinition(
                name="periodic_relink",
                cron_schedule=project.spec.orchestration.relink_cron,
                job=relink,
                description="The periodic full relink of every accepted delivery, with the "
                "approved model (it never trains).",
                default_status=dg.DefaultScheduleStatus.RUNNING,
            )
        ],
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

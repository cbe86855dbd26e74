"""Deliveries: per source, each delivery file is a partition that is ingested, checked
against the source's contract (a blocking Great Expectations check) and standardised. A
sensor per landing folder runs the source's ingest job for each new or replaced file.

    deliveries/<source>_delivery      the raw delivery, loaded as text
      check delivery_contract (blocking)
    deliveries/<source>_standardised  identifying fields as common data primitives
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_project.resources import EngineResource, LinkageProjectResource
from dagster_project.steps import step
from linkage_models.project import LoadedProject, SourceSpec
from pipelines.contract import LINKAGE_INPUTS_STEP, ingest_job_name
from pipelines.deliveries import Delivery, SourceError, discover_deliveries, set_status
from pipelines.ingest import ingest
from pipelines.standardise import standardise_delivery
from quality.validation import save_outcome, validate_delivery


@dataclass(frozen=True)
class SourceAssets:
    source: str
    partitions: dg.DynamicPartitionsDefinition
    delivery: dg.AssetsDefinition
    contract: dg.AssetChecksDefinition
    standardised: dg.AssetsDefinition

    @property
    def all(self) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
        return [self.delivery, self.contract, self.standardised]


def partitions_name(source: str) -> str:
    return f"{source}_deliveries"


def _delivery(project: LoadedProject, source: SourceSpec, key: str) -> Delivery:
    for d in discover_deliveries(project, source):
        if d.key == key:
            return d
    raise SourceError(
        f"source '{source.name}': delivery {key!r} is not in the landing folder "
        f"{project.source_path(source)}, or was withdrawn"
    )


def _schema(columns: list[str]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])


def source_assets(spec: SourceSpec, engine: str = "duckdb") -> SourceAssets:
    name = spec.name
    partitions = dg.DynamicPartitionsDefinition(name=partitions_name(name))
    delivery_key = dg.AssetKey(["deliveries", f"{name}_delivery"])

    @dg.asset(
        key=delivery_key,
        partitions_def=partitions,
        group_name="deliveries",
        kinds={engine, spec.format},
        description=f"A delivery of {spec.description or name} from {spec.department}, "
        "loaded as text (only the mapped columns).",
    )
    def delivery(
        context: dg.AssetExecutionContext,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        source = project.project.spec.source(name)
        d = _delivery(project.project, source, context.partition_key)
        with step(project, engine, f"ingest__{d.suffix}") as s:
            file = ingest(s.engine, source, d)
            s.record.update({"source": name, "delivery": d.key, "rows": file.rows})
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": file.rows,
                "dagster/column_schema": _schema(spec.mapped_columns()),
                "path": dg.MetadataValue.path(file.path),
                "sha256": file.sha256,
                "bytes": file.bytes,
            }
        )

    @dg.asset_check(
        asset=delivery_key,
        name="delivery_contract",
        blocking=True,
        description="Great Expectations suite generated from the source's contract; critical "
        "failures stop this delivery from being standardised and linked.",
    )
    def contract(
        context: dg.AssetCheckExecutionContext,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.AssetCheckResult:
        source = project.project.spec.source(name)
        d = _delivery(project.project, source, context.partition_key)
        with step(project, engine, f"validate__{d.suffix}") as s:
            outcome = validate_delivery(
                s.engine, source, d.key, d.raw_table, s.layout.validation_dir
            )
            save_outcome(outcome, s.layout.validation_result(name, d.key))
            failed = ", ".join(e.key for e in outcome.critical_failures)
            set_status(s.engine, d, "accepted" if outcome.success else "rejected", detail=failed)
            s.record.update({"source": name, "delivery": d.key, "success": outcome.success})
        metadata: dict[str, object] = {
            e.key: f"{'pass' if e.success else 'FAIL'} ({e.severity}): "
            f"{e.unexpected_count:,} of {e.element_count - e.missing_count:,} rows"
            for e in outcome.expectations
        }
        if outcome.data_docs_index:
            metadata["data_docs"] = dg.MetadataValue.url(
                (s.layout.validation_dir / outcome.data_docs_index).as_uri()
            )
        critical = outcome.critical_failures
        return dg.AssetCheckResult(
            passed=not critical and not outcome.warnings,
            severity=dg.AssetCheckSeverity.ERROR if critical else dg.AssetCheckSeverity.WARN,
            description=(
                "critical: " + ", ".join(e.key for e in critical)
                if critical
                else (
                    "warnings: " + ", ".join(e.key for e in outcome.warnings)
                    if outcome.warnings
                    else "all expectations met"
                )
            ),
            metadata=metadata,
        )

    @dg.asset(
        key=dg.AssetKey(["deliveries", f"{name}_standardised"]),
        deps=[delivery_key],
        partitions_def=partitions,
        group_name="deliveries",
        kinds={engine},
        description="Identifying fields standardised into data primitives (names, date of "
        "birth, sex, postcode) plus derived matching keys.",
    )
    def standardised(
        context: dg.AssetExecutionContext,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        source = project.project.spec.source(name)
        d = _delivery(project.project, source, context.partition_key)
        with step(project, engine, f"standardise__{d.suffix}") as s:
            rows = standardise_delivery(s.engine, source, d)
            s.record.update({"source": name, "delivery": d.key, "rows": rows})
        return dg.MaterializeResult(metadata={"dagster/row_count": rows})

    return SourceAssets(name, partitions, delivery, contract, standardised)


def ingest_job(sa: SourceAssets) -> Any:
    return dg.define_asset_job(
        ingest_job_name(sa.source),
        selection=dg.AssetSelection.assets(sa.delivery, sa.standardised),
        partitions_def=sa.partitions,
        description=f"Ingest, check and standardise one delivery of {sa.source}.",
    )


def _signature(path: str) -> str:
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def delivery_sensor(project: LoadedProject, sa: SourceAssets, job: Any) -> dg.SensorDefinition:
    """Watches a source's landing folder: each new delivery file is registered as a
    partition and its ingest run requested; a file replaced under the same name (a
    corrected delivery) is run again."""
    source = project.spec.source(sa.source)

    @dg.sensor(
        name=f"new_deliveries_{source.name}",
        minimum_interval_seconds=project.spec.orchestration.sensor_interval_seconds,
        job=job,
        description=f"Looks for new or changed files at {project.source_path(source)}.",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def new_deliveries(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        existing = set(context.instance.get_dynamic_partitions(sa.partitions.name))
        requests, new_keys = [], []
        for d in discover_deliveries(project, source):
            signature = _signature(d.path)
            if seen.get(d.key) == signature:
                continue
            seen[d.key] = signature
            if d.key not in existing:
                new_keys.append(d.key)
            requests.append(
                dg.RunRequest(
                    run_key=f"{source.name}/{d.key}@{signature}",
                    partition_key=d.key,
                    tags={"joinedup/source": source.name},
                )
            )
        additions = [sa.partitions.build_add_request(new_keys)] if new_keys else []
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=additions,
            cursor=json.dumps(seen, sort_keys=True),
        )

    return new_deliveries


def accepted_delivery_sensor(ingest_jobs: list[Any], link_job: Any) -> dg.SensorDefinition:
    """When a delivery has passed its contract and been standardised (its ingest run
    succeeded), link what changed incrementally. A rejected delivery fails its ingest run,
    so it starts nothing. Runs queued while one links find nothing more to do, or the next
    delivery."""

    @dg.run_status_sensor(
        name="link_accepted_deliveries",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=ingest_jobs,
        request_job=link_job,
        description="Links each accepted delivery incrementally (job link_deliveries).",
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def link_accepted(context: dg.RunStatusSensorContext) -> dg.RunRequest:
        run = context.dagster_run
        return dg.RunRequest(
            run_key=f"linked-after/{run.run_id}",
            run_config={"ops": {LINKAGE_INPUTS_STEP: {"config": {"incremental": True}}}},
            tags={"joinedup/after_ingest_run": run.run_id},
        )

    return link_accepted

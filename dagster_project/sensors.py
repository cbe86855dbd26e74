"""Watch the landing folders for new or changed deliveries; relink on a schedule."""

import json
from pathlib import Path

import dagster as dg

from dagster_project.assets import ProjectAssets, SourceAssets
from linkage_models.project import LoadedProject, SourceSpec
from pipelines.deliveries import discover_deliveries


def _signature(path: str) -> str:
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def delivery_sensors(project: LoadedProject, assets: ProjectAssets) -> list[dg.SensorDefinition]:
    """One sensor per source's landing folder: each new delivery file is registered as a
    partition and its ingest run requested; a file replaced under the same name (a
    corrected delivery) is run again."""
    return [_delivery_sensor(project, project.spec.source(sa.source), sa) for sa in assets.sources]


def _delivery_sensor(
    project: LoadedProject, source: SourceSpec, sa: SourceAssets
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"new_deliveries_{source.name}",
        minimum_interval_seconds=project.spec.orchestration.sensor_interval_seconds,
        target=[sa.delivery, sa.standardised],
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
                    asset_selection=[sa.delivery.key, sa.standardised.key],
                    asset_check_keys=list(sa.contract.check_keys),
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


def relink_job(assets: ProjectAssets):
    return dg.define_asset_job(
        "relink",
        selection=dg.AssetSelection.assets(*[key for a in assets.linkage for key in a.keys]),
        description="Combine all accepted deliveries and relink everything.",
    )


def relink_schedule(project: LoadedProject, job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="periodic_relink",
        cron_schedule=project.spec.orchestration.relink_cron,
        job=job,
        description="The periodic full relink of every accepted delivery.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )

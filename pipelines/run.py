"""Run a linkage project end to end by executing the project's Dagster asset graph in
process: each delivery's ingest -> contract check -> standardise, then the linkage assets.
The CLI, the tests and `dagster dev` therefore run exactly the same code.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkage_models.project import LoadedProject
from pipelines import stages
from pipelines.deliveries import delivery_statuses, require_deliveries
from pipelines.engines import check_engine_name, open_engine

StageCallback = Callable[[str], None]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


class RunError(RuntimeError):
    """A stage failed; the message is the underlying error (file, column or key named)."""


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]


def _prepare_output(out: Path) -> None:
    """A full run starts clean; the model registry keeps its versions across runs."""
    for sub in ("linked", "quarantine", "work", "quality", "reports"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("linked", "quarantine", "work", "model"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def _innermost_message(error: Any) -> str:
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip() if error is not None else "unknown error"


def _failure_message(result: Any) -> str:
    """The first failed step and its underlying error, e.g. 'prisons__delivery: SourceError:
    source 'prisons': file ... is missing column(s) [...]'."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            message = _innermost_message(event.event_specific_data.error)
            cls, _, text = message.partition(": ")
            return f"{event.step_key}: {cls.rsplit('.', 1)[-1]}: {text}"
    return "the run failed without a step failure (see the Dagster logs)"


def run_project(
    project: LoadedProject,
    *,
    engine_name: str = "duckdb",
    model_version: str | None = None,
    ground_truth: Path | None = None,
    on_stage: StageCallback | None = None,
    instance: Any = None,
) -> RunResult:
    """Link every delivery of every source of `project`; returns the manifest.

    `instance` is the Dagster instance that records the runs (default: an ephemeral one).
    """
    import dagster as dg

    from dagster_project.assets import build_assets
    from dagster_project.definitions import resources_for

    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    out = project.output_dir
    try:  # before anything is touched
        check_engine_name(engine_name)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    deliveries = {s.name: require_deliveries(project, s) for s in project.spec.sources}
    _prepare_output(out)
    assets = build_assets(project, engine_name)
    resources = resources_for(project, engine_name)
    instance = instance or dg.DagsterInstance.ephemeral()
    notify = on_stage or (lambda _: None)

    for sa in assets.sources:
        keys = [d.key for d in deliveries[sa.source]]
        instance.add_dynamic_partitions(sa.partitions.name, keys)
        for key in keys:
            notify(f"{sa.source}: {key}")
            result = dg.materialize(
                assets.all,
                selection=[sa.delivery.key, sa.standardised.key],
                partition_key=key,
                instance=instance,
                resources=resources,
                run_config=QUIET,
                raise_on_error=False,
            )
            if not result.success:
                rejected = [
                    r
                    for r in _statuses(project, engine_name, sa.source)
                    if r["delivery"] == key and r["status"] == "rejected"
                ]
                if not rejected:  # a real failure, not a delivery stopped by its contract
                    raise RunError(_failure_message(result))

    notify("linkage")
    config: dict[str, Any] = dict(QUIET)
    config["ops"] = {"linkage__model": {"config": {"model_version": model_version}}}
    result = dg.materialize(
        assets.all,
        selection=[k for a in assets.linkage for k in a.keys],
        instance=instance,
        resources=resources,
        run_config=config,
        raise_on_error=False,
    )
    if not result.success:
        raise RunError(_failure_message(result))

    if ground_truth is not None:
        notify("evaluate")
        with open_engine(
            engine_name, out / "work", memory_limit=project.spec.output.duckdb_memory_limit
        ) as engine:
            stages.evaluate(engine, project, ground_truth)
            stages.manifest(engine, project, run_id=result.run_id)
            stages.linkage_report(engine, project)
    manifest_path = out / "manifest.json"
    return RunResult(out, manifest_path, json.loads(manifest_path.read_text()))


def _statuses(project: LoadedProject, engine_name: str, source: str) -> list[dict[str, Any]]:
    with open_engine(
        engine_name,
        project.output_dir / "work",
        memory_limit=project.spec.output.duckdb_memory_limit,
    ) as engine:
        return delivery_statuses(engine, source)

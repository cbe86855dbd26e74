"""Run a linkage project's Dagster graph in process, as the UI would: each delivery's ingest
job (ingest -> contract check -> standardise), then the relink job (linkage, publication,
error rates, manifest and reports). Nothing is computed here; the command line only runs
the code location's jobs and reads what they published.

The code location is found through the `joinedup.code_location` entry point (installed
with joinedup: `dagster_project.definitions:build_definitions`), as `dagster dev -m`
finds one by module.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from linkage_models.project import LoadedProject
from pipelines.contract import (
    DECISIONS_STEP,
    EVALUATION_STEP,
    LINK_DELIVERIES_JOB,
    LINKAGE_INPUTS_STEP,
    MODEL_STEP,
    PROMOTE_JOB,
    PROMOTE_STEP,
    RELINK_JOB,
    REVIEW_IMPORT_JOB,
    REVIEW_SAMPLE_JOB,
    SAMPLE_STEP,
    TRAIN_JOB,
    OutputLayout,
    ingest_job_name,
    load_record,
)
from pipelines.deliveries import delivery_statuses, require_deliveries
from pipelines.engines import check_engine_name, open_engine
from pipelines.ground_truth import GroundTruth, check_ground_truth
from pipelines.ingest import file_sha256
from pipelines.publication import OutputFolderBusy, current_snapshot, run_lock

CODE_LOCATION_ENTRY_POINTS = "joinedup.code_location"
StageCallback = Callable[[str], None]
# Dagster's console log stays quiet: failures are reported from the run's events, briefly.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class RunError(RuntimeError):
    """A step failed; the message is the underlying error (file, column or key named)."""


@dataclass(frozen=True)
class RunResult:
    """A published run. `manifest_path` is the shareable manifest (its counts protected);
    `manifest` is the exact one, for the secure setting (the same document otherwise, with
    output paths relative to the shareable manifest's folder)."""

    output_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def shareable_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    @property
    def snapshot(self) -> str:
        """The publication this run made."""
        return self.manifest["snapshot"]

    @property
    def published(self) -> OutputLayout:
        """The layout of what this run published (the latest publication)."""
        return OutputLayout(self.output_dir).published


def code_location() -> Callable[..., Any]:
    """`build_definitions(project, engine)` of the installed code location."""
    found = list(entry_points(group=CODE_LOCATION_ENTRY_POINTS))
    if not found:
        raise RunError(
            f"no joinedup code location is installed (entry point group "
            f"{CODE_LOCATION_ENTRY_POINTS!r}); reinstall joinedup"
        )
    return found[0].load()


def _prepare_output(layout: OutputLayout) -> None:
    """A full run starts from a clean working state: the working database and validation
    results are rebuilt from the deliveries. The model registry, clerical labels and every
    publication are kept; the run's outputs are built in staging."""
    for folder in (layout.work_dir, layout.validation_dir):
        shutil.rmtree(folder, ignore_errors=True)
    for folder in (layout.work_dir, layout.model_dir):
        folder.mkdir(parents=True, exist_ok=True)


def still_published(layout: OutputLayout) -> str:
    """What a failed run left published: the previous snapshot, untouched."""
    snapshot = current_snapshot(layout)
    if snapshot is None:
        return f"Nothing was published; {layout.root} has no publication yet."
    return f"Nothing was published; the previous publication ({snapshot}) stands unchanged."


def _innermost_message(error: Any) -> str:
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip() if error is not None else "unknown error"


def _failure_message(result: Any) -> str:
    """The first failed step and its underlying error, e.g. 'prisons__delivery: SourceError:
    source 'prisons': file ... is missing column(s) [...]'. A failed blocking check is
    named with what it found."""
    for event in result.all_events:
        evaluation = event.event_specific_data
        if (
            event.event_type_value == "ASSET_CHECK_EVALUATION"
            and not evaluation.passed
            and evaluation.severity.value == "ERROR"  # a failed blocking check stops the run
        ):
            found = f": {evaluation.description}" if evaluation.description else ""
            return f"check {evaluation.check_name} failed{found}"
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            message = _innermost_message(event.event_specific_data.error)
            cls, _, text = message.partition(": ")
            cls = cls.rsplit(".", 1)[-1]
            if cls == "Failure":  # a step's own short message, already naming the problem
                return f"{event.step_key}: {text.strip()}"
            return f"{event.step_key}: {cls}: {text}"
    return "the run failed without a step failure (see the Dagster logs)"


class ProjectGraph:
    """The code location's definitions for one project, and how to run its jobs."""

    def __init__(self, project: LoadedProject, engine_name: str = "duckdb", instance: Any = None):
        import dagster as dg

        for category in (dg.BetaWarning, dg.PreviewWarning):
            warnings.filterwarnings("ignore", category=category)
        check_engine_name(engine_name)
        self.project = project
        self.engine_name = engine_name
        self.defs = code_location()(project, engine_name)
        self.instance = instance or dg.DagsterInstance.ephemeral()

    def execute(
        self, job_name: str, config: dict[str, Any] | None = None, partition: str | None = None
    ) -> Any:
        """Run a job to the end; returns Dagster's result (its success is not checked)."""
        run_config: dict[str, Any] = dict(QUIET)
        if config:
            run_config["ops"] = {step: {"config": c} for step, c in config.items()}
        return self.defs.resolve_job_def(job_name).execute_in_process(
            run_config=run_config,
            instance=self.instance,
            partition_key=partition,
            raise_on_error=False,
        )

    def run_or_raise(self, job_name: str, config: dict[str, Any] | None = None) -> Any:
        result = self.execute(job_name, config)
        if not result.success:
            raise RunError(_failure_message(result))
        return result

    def ingest(self, source: str, delivery: str) -> bool:
        """Ingest, check and standardise one delivery; False when its contract rejected it
        (a structural failure raises RunError)."""
        job = self.defs.resolve_job_def(ingest_job_name(source))
        partitions = job.partitions_def.name
        if delivery not in self.instance.get_dynamic_partitions(partitions):
            self.instance.add_dynamic_partitions(partitions, [delivery])
        result = self.execute(job.name, partition=delivery)
        if result.success:
            return True
        if self._status(source, delivery) == "rejected":
            return False
        raise RunError(_failure_message(result))

    def _status(self, source: str, delivery: str) -> str | None:
        with open_engine(
            self.engine_name,
            OutputLayout(self.project.output_dir).work_dir,
            memory_limit=self.project.spec.output.duckdb_memory_limit,
        ) as engine:
            for row in delivery_statuses(engine, source):
                if row["delivery"] == delivery:
                    return row["status"]
        return None


def _run_on_all_deliveries(
    project: LoadedProject,
    engine_name: str,
    instance: Any,
    notify: StageCallback,
    job: str,
    config: dict[str, Any],
) -> None:
    """Ingest every delivery of every source afresh, then run `job` on them, holding the
    output folder throughout."""
    deliveries = {s.name: require_deliveries(project, s) for s in project.spec.sources}
    layout = OutputLayout(project.output_dir)
    try:
        with run_lock(layout, project.spec.output.wait_for_running_seconds):
            _prepare_output(layout)
            graph = ProjectGraph(project, engine_name, instance)
            for source, found in deliveries.items():
                for delivery in found:
                    notify(f"{source}: {delivery.key}")
                    graph.ingest(source, delivery.key)
            notify("linkage" if job == RELINK_JOB else "training")
            graph.run_or_raise(job, config)
    except OutputFolderBusy as exc:
        raise RunError(str(exc)) from None


def _run_on_new_deliveries(
    project: LoadedProject,
    engine_name: str,
    instance: Any,
    notify: StageCallback,
    config: dict[str, Any],
) -> None:
    """Ingest only the deliveries not yet ingested as they are now (new files, and files
    replaced under the same name), then link what changed incrementally, holding the
    output folder throughout. The working database of earlier runs is kept."""
    deliveries = {s.name: require_deliveries(project, s) for s in project.spec.sources}
    layout = OutputLayout(project.output_dir)
    try:
        with run_lock(layout, project.spec.output.wait_for_running_seconds):
            layout.work_dir.mkdir(parents=True, exist_ok=True)
            with open_engine(
                engine_name, layout.work_dir, memory_limit=project.spec.output.duckdb_memory_limit
            ) as engine:
                ingested = {
                    (r["source"], r["delivery"]): r["sha256"] for r in delivery_statuses(engine)
                }
            graph = ProjectGraph(project, engine_name, instance)
            for source, found in deliveries.items():
                for delivery in found:
                    if ingested.get((source, delivery.key)) != file_sha256(delivery.path):
                        notify(f"{source}: {delivery.key}")
                        graph.ingest(source, delivery.key)
            notify("linkage (incremental)")
            graph.run_or_raise(
                LINK_DELIVERIES_JOB, {**config, LINKAGE_INPUTS_STEP: {"incremental": True}}
            )
    except OutputFolderBusy as exc:
        raise RunError(str(exc)) from None


def run_project(
    project: LoadedProject,
    *,
    engine_name: str = "duckdb",
    model_version: str | None = None,
    ground_truth: Path | GroundTruth | None = None,
    on_stage: StageCallback | None = None,
    instance: Any = None,
    incremental: bool = False,
) -> RunResult:
    """Link every delivery of every source of `project` with its approved model (a
    project's first run trains and approves one; `model_version` names another registered
    version); returns the manifest.

    `incremental` links only what changed since the latest publication: new and replaced
    deliveries are ingested, and their records scored against the linked population
    (pipelines.incremental); withdrawn ones are taken out. It needs a publication linked
    with the same model, thresholds and engine.

    `ground_truth` (a file in the layout of pipelines/ground_truth.py) adds measured accuracy.
    `instance` is the Dagster instance that records the runs (default: an ephemeral one).
    """
    truth = GroundTruth(ground_truth) if isinstance(ground_truth, Path) else ground_truth
    try:  # before anything is touched
        check_engine_name(engine_name)
        if truth is not None:
            check_ground_truth(truth, [s.name for s in project.spec.sources])
    except ValueError as exc:
        raise RunError(str(exc)) from None
    layout = OutputLayout(project.output_dir)
    config = {
        MODEL_STEP: {"model_version": model_version, "train_if_none_approved": True},
        EVALUATION_STEP: {
            "ground_truth": str(truth.path) if truth else None,
            "columns": truth.columns if truth else {},
        },
    }
    notify = on_stage or (lambda _: None)
    try:
        if incremental:
            _run_on_new_deliveries(project, engine_name, instance, notify, config)
        else:
            _run_on_all_deliveries(project, engine_name, instance, notify, RELINK_JOB, config)
    except RunError as exc:
        raise RunError(f"{exc}\n{still_published(layout)}") from None
    published = layout.published
    return RunResult(
        layout.root, published.manifest, json.loads(published.exact_manifest.read_text())
    )


@dataclass(frozen=True)
class TrainResult:
    """A trained candidate: its version, the version approved now (the candidate itself
    when it was the project's first), and its comparison with the approved model."""

    candidate: int
    approved: int
    promoted: bool
    comparison: dict[str, Any] | None


def train_project(
    project: LoadedProject,
    *,
    engine_name: str = "duckdb",
    on_stage: StageCallback | None = None,
    instance: Any = None,
) -> TrainResult:
    """Train a candidate model on every accepted delivery and compare it with the approved
    one on the same data. Nothing is published, and linkage keeps using the approved model
    until the candidate is promoted."""
    check_engine_name(engine_name)
    _run_on_all_deliveries(
        project, engine_name, instance, on_stage or (lambda _: None), TRAIN_JOB, {}
    )
    layout = OutputLayout(project.output_dir)
    record = load_record(layout, "train_candidate")
    comparison = (
        json.loads(Path(record["comparison"]).read_text()) if record["comparison"] else None
    )
    return TrainResult(record["candidate"], record["approved"], record["promoted"], comparison)


def promote_model(project: LoadedProject, version: int, instance: Any = None) -> None:
    """Approve a registered model version: the next linkage runs with it."""
    ProjectGraph(project, "duckdb", instance).run_or_raise(
        PROMOTE_JOB, {PROMOTE_STEP: {"version": version}}
    )


@dataclass(frozen=True)
class CheckedDelivery:
    source: str
    delivery: str
    rows: int
    accepted: bool
    critical_failures: list[str]
    warnings: list[str]


def validate_deliveries(
    project: LoadedProject, engine_name: str = "duckdb"
) -> list[CheckedDelivery]:
    """Every delivery through its source's ingest job (ingest, contract check, standardise)
    in a scratch output folder: the project's own outputs are not touched."""
    deliveries = {s.name: require_deliveries(project, s) for s in project.spec.sources}
    with tempfile.TemporaryDirectory(prefix="joinedup-validate-") as scratch:
        trial = project.model_copy(update={"output_dir": Path(scratch)})
        graph = ProjectGraph(trial, engine_name)
        layout = OutputLayout(trial.output_dir)
        checked = []
        for source, found in deliveries.items():
            for delivery in found:
                accepted = graph.ingest(source, delivery.key)
                result = json.loads(layout.validation_result(source, delivery.key).read_text())
                failed = [e for e in result["expectations"] if not e["success"]]
                checked.append(
                    CheckedDelivery(
                        source,
                        delivery.key,
                        int(result["rows"]),
                        accepted,
                        [e["key"] for e in failed if e["severity"] == "critical"],
                        [e["key"] for e in failed if e["severity"] != "critical"],
                    )
                )
    return checked


def last_engine(project: LoadedProject) -> str:
    """The engine the project's last linkage ran on (from its manifest)."""
    manifest = OutputLayout(project.output_dir).published.manifest
    if not manifest.exists():
        raise FileNotFoundError(
            f"{manifest}: no linkage has run for this project yet (run `joinedup run` first)"
        )
    return json.loads(manifest.read_text())["engine"]


def review_sample(project: LoadedProject, n: int, seed: int, path: Path | None) -> Path:
    """Export a stratified sample of scored pairs for reviewers; returns the CSV written."""
    graph = ProjectGraph(project, last_engine(project))
    target = path or OutputLayout(project.output_dir).review_sample(seed)
    graph.run_or_raise(
        REVIEW_SAMPLE_JOB, {SAMPLE_STEP: {"n": n, "seed": seed, "path": str(target)}}
    )
    return target


def review_import(project: LoadedProject, decisions: Path) -> None:
    """Store reviewers' decisions and refresh the linkage report."""
    graph = ProjectGraph(project, last_engine(project))
    graph.run_or_raise(REVIEW_IMPORT_JOB, {DECISIONS_STEP: {"path": str(decisions)}})

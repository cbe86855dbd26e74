"""How every asset runs its step: open the engine on the project's working folder, time the
step, and leave its record (counts and timings, never values) for later steps and the
manifest. The one place timings are taken.

Each step also says when it starts and finishes on the `joinedup.steps` logger (step names
and seconds only), which the command line turns into its progress display."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dagster_project.resources import EngineResource, LinkageProjectResource
from linkage_models.project import BalancedThresholdNotChosen, ConfigError, LoadedProject
from pipelines.contract import OutputLayout, ReconciliationError, measured, save_record
from pipelines.deliveries import SourceError
from pipelines.engines import Engine, error_summary, where_raised
from pipelines.identity import IdentityError
from pipelines.incremental import IncrementalUnavailable
from pipelines.linking import NoApprovedModel
from pipelines.publication import PublicationError
from quality.publication_audit import AuditFailure

log = logging.getLogger("joinedup.steps")
EXPECTED_FAILURES = (
    SourceError,
    ConfigError,
    ReconciliationError,
    AuditFailure,
    PublicationError,
    NoApprovedModel,
    IdentityError,
    IncrementalUnavailable,
    BalancedThresholdNotChosen,
)


@dataclass
class Step:
    project: LoadedProject
    layout: OutputLayout
    engine: Engine
    record: dict[str, Any] = field(default_factory=dict)


@contextmanager
def step(
    project: LinkageProjectResource,
    engine: EngineResource,
    record_name: str,
    model_chosen: bool = True,
) -> Iterator[Step]:
    """Run one step; on success its record is saved as `record_name` with its timings.
    `model_chosen`: the step runs after the model step, at the thresholds it recorded (the
    steps that pick a model resolve them themselves)."""
    loaded = project.project if model_chosen else project.configured
    log.info("%s started", record_name, extra={"step": record_name, "event": "started"})
    try:
        with engine.open(loaded) as e, measured() as figures:
            current = Step(loaded, project.layout, e)
            yield current
    except EXPECTED_FAILURES as exc:
        # A problem with the project or its data: its message names the file, column or
        # key, and a stack trace around it would only hide it.
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from None
    except dg.Failure:
        raise
    except Exception as exc:
        # Anything else, from DuckDB, Spark, GX, pyarrow or Splink, may quote a record in its
        # message; what reaches the run's events, logs and databases is rewritten here.
        raise dg.Failure(
            description=f"{record_name} failed: {type(exc).__name__}: {error_summary(exc)} "
            f"(at {where_raised(exc)})",
            allow_retries=False,
        ) from None
    save_record(current.layout, record_name, {**current.record, **figures})
    log.info(
        "%s finished in %.1f s",
        record_name,
        figures["seconds"],
        extra={"step": record_name, "event": "finished", "seconds": figures["seconds"]},
    )

"""Progress of a run on the command line: each step as it starts, its elapsed time, and how
long it took last time for steps that take a while. Steps announce themselves on the
`joinedup.steps` logger (names and seconds only); this turns that into a live display."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

STEP_LOGGER = "joinedup.steps"
# A step that took at least this long last time shows that time as its estimate.
ESTIMATE_FROM_SECONDS = 5.0


class StepProgress(logging.Handler):
    def __init__(self, progress: Progress, last_run: dict[str, float]):
        super().__init__(level=logging.INFO)
        self.progress = progress
        self.last_run = last_run
        self.context = ""
        self.tasks: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        step = getattr(record, "step", None)
        if step is None:
            return
        name = step.split("__")[0]
        label = f"{self.context} · {name}" if self.context else name
        if getattr(record, "event", None) == "started":
            previous = self.last_run.get(name, 0.0)
            hint = f"last run {previous:.0f} s" if previous >= ESTIMATE_FROM_SECONDS else ""
            self.tasks[step] = self.progress.add_task(label, total=1, hint=hint)
        elif step in self.tasks:
            self.progress.update(self.tasks.pop(step), completed=1, hint="done")


@contextmanager
def step_progress(console: Console, last_run: dict[str, float]) -> Iterator[StepProgress]:
    """Show steps while the block runs; `.context` names what the steps are working on."""
    progress = Progress(
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[hint]}"),
        console=console,
    )
    handler = StepProgress(progress, last_run)
    logger = logging.getLogger(STEP_LOGGER)
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with progress:
            yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def last_run_seconds(manifest: dict[str, Any] | None) -> dict[str, float]:
    """Seconds each step took in the run a manifest describes (for estimates)."""
    if not manifest:
        return {}
    return {name: float(s.get("seconds", 0.0)) for name, s in manifest.get("stages", {}).items()}

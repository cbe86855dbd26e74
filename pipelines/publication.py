"""Write-audit-publish: a run builds its outputs in `staging/`, they are audited there, and
only then published, atomically, as an immutable snapshot of each zone.

    staging/{shareable,secure}/           the build of the run holding the staging marker
    <zone>/snapshots/<snapshot id>/       every publication, never rewritten
    <zone>/current -> snapshots/<id>      the latest, switched in one rename

The secure zone's pointer moves first and the shareable zone's last: the shareable pointer
is the publication. A run that fails, is refused by the audit or is killed leaves both
pointers, and so the previous publication and its manifest, exactly as they were; one
killed between the two switches leaves the secure pointer ahead, which the next build puts
back (`repair_pointers`).

One run per output folder at a time: `run_lock` (the command line holds it for the whole
run); a Dagster run that finds another run's marker in staging refuses to publish.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.contract import CURRENT, STAGING, OutputLayout

log = logging.getLogger(__name__)
ZONES = ("secure", "shareable")  # the order pointers move in: shareable last
PUBLICATION_RECORD = "publication.json"


class PublicationError(RuntimeError):
    """The build in staging may not be published; the previous publication stands."""


class OutputFolderBusy(RuntimeError):
    """Another run is writing into the same output folder."""


# Locks this process holds, by lock file, with how many holders: the command line holds the
# folder for a whole run and the Dagster jobs it runs take it again without waiting on
# themselves.
_held: dict[Path, list[Any]] = {}


@contextmanager
def run_lock(layout: OutputLayout, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the output folder for one run. Waits up to `wait_seconds` for a run already
    there (0: stop at once), then stops with a message naming the folder and holder."""
    layout.lock_file.parent.mkdir(parents=True, exist_ok=True)
    path = layout.lock_file.resolve()
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    handle = path.open("a+")
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise OutputFolderBusy(
                        f"output folder {layout.root} is in use by another run ({holder}); "
                        "nothing was changed. Wait for it to finish, or set "
                        "output.wait_for_running_seconds to wait"
                    ) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()}, started {datetime.now(UTC).isoformat(timespec='seconds')}"
        )
        handle.flush()
        _held[path] = [handle, 1]
        yield
    finally:
        _held.pop(path, None)
        handle.close()  # releases the lock


def repair_pointers(layout: OutputLayout) -> str | None:
    """Undo a publication stopped between its two pointer switches: the secure zone's
    `current` is moved back to the shareable zone's (the publication). Says what it did."""
    links = {zone: layout.root / zone / CURRENT for zone in ZONES}
    if not all(link.is_symlink() for link in links.values()):
        return None
    published, secure = (Path(os.readlink(links[z])).name for z in ("shareable", "secure"))
    if published == secure:
        return None
    _point(layout.root / "secure", published)
    message = (
        f"{layout.root}: secure/current pointed at snapshot {secure} but the publication is "
        f"{published} (a run was stopped while publishing); secure/current now points at "
        f"{published} again"
    )
    log.warning(message)
    return message


def begin_staging(layout: OutputLayout, run_id: str) -> None:
    """Start a new build: staging emptied and marked as this run's, with the snapshot id
    it will be published as (start time and run). A publication left half-switched by a
    killed run is repaired first."""
    repair_pointers(layout)
    staging = layout.root / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    for zone in ZONES:
        (staging / zone).mkdir(parents=True)
    started = datetime.now(UTC)
    marker = {
        "run_id": run_id,
        "snapshot": f"{started:%Y-%m-%dT%H%M%SZ}_{run_id[:8]}",
        "started_at": started.isoformat(timespec="seconds"),
    }
    layout.staging_marker.write_text(json.dumps(marker))


def stage_from_current(layout: OutputLayout, run_id: str) -> None:
    """Start a build that revises the latest publication (e.g. a report refreshed after
    clerical review): staging begins as a copy of it."""
    current = layout.published
    if not current.manifest.exists():
        raise PublicationError(
            f"{layout.root}: nothing has been published yet (run `joinedup run` first)"
        )
    begin_staging(layout, run_id)
    for zone in ZONES:
        shutil.copytree(
            current.zone_dir(zone), layout.at(STAGING).zone_dir(zone), dirs_exist_ok=True
        )
        (layout.at(STAGING).zone_dir(zone) / PUBLICATION_RECORD).unlink(missing_ok=True)


def staged_run(layout: OutputLayout) -> str | None:
    """The run id that owns staging, if any."""
    marker = layout.staging_marker
    return json.loads(marker.read_text())["run_id"] if marker.exists() else None


def current_snapshot(layout: OutputLayout) -> str | None:
    """The id of the latest publication (None before the first)."""
    current = layout.published
    return current.snapshot if current.shareable_dir.is_symlink() else None


def snapshots(layout: OutputLayout) -> list[str]:
    """Every publication's id, oldest first."""
    folder = layout.root / "shareable" / "snapshots"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _point(zone_dir: Path, snapshot: str) -> None:
    """Switch `<zone>/current` to a snapshot in one atomic rename."""
    temporary = zone_dir / f".{CURRENT}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(Path("snapshots") / snapshot, temporary)
    os.replace(temporary, zone_dir / CURRENT)


def publish(layout: OutputLayout, run_id: str, audit: dict[str, Any]) -> dict[str, Any]:
    """Publish the audited build in staging as a new snapshot of each zone and point
    `current` at it; returns the publication record (also written into the snapshot)."""
    owner = staged_run(layout)
    if owner != run_id:
        raise PublicationError(
            f"{layout.root}: staging holds the build of run {owner or 'none'}, not of this "
            f"run ({run_id}): another run wrote into the same output folder. Nothing was "
            "published; the previous publication stands"
        )
    snapshot = layout.at(STAGING).snapshot
    record = {
        "snapshot": snapshot,
        "run_id": run_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous_snapshot": current_snapshot(layout),
        "audit": audit,
    }
    staging = layout.root / STAGING
    for zone in ZONES:
        target = layout.root / zone / "snapshots" / snapshot
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / zone / PUBLICATION_RECORD).write_text(json.dumps(record, indent=2))
        os.rename(staging / zone, target)
    for zone in ZONES:
        _point(layout.root / zone, snapshot)
    shutil.rmtree(staging, ignore_errors=True)
    return record

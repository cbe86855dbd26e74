"""Deliveries: each file matching a source's path is one delivery of that source.

A delivery is the unit of validation (and a Dagster partition). Its progress is kept in a
small status table in the engine, so a later relink knows which deliveries were accepted,
which were rejected by validation, and what each contained.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from linkage_models.project import LoadedProject, SourceSpec
from pipelines.contract import DeliveryTables, OutputLayout, Tables
from pipelines.engines import Engine
from pipelines.sql import lit


class SourceError(ValueError):
    """A structural problem with a delivered file: names the file and what was expected."""


@dataclass(frozen=True)
class DeliveryFile:
    path: str
    rows: int
    sha256: str
    bytes: int


STATUS_TABLE = Tables.DELIVERY_STATUS
STATUS_COLUMNS = ("source", "delivery", "path", "rows", "sha256", "bytes", "status", "detail")


@dataclass(frozen=True)
class Delivery:
    source: str
    key: str  # the file name: unique within a source, stable across re-deliveries
    path: str

    @property
    def suffix(self) -> str:
        """A safe table-name suffix for this delivery."""
        slug = re.sub(r"[^0-9a-zA-Z]+", "_", self.key).strip("_").lower()[:40]
        digest = hashlib.sha1(f"{self.source}/{self.key}".encode()).hexdigest()[:8]
        return f"{self.source}__{slug}_{digest}"

    @property
    def raw_table(self) -> str:
        return Tables.raw_delivery(self.suffix)

    @property
    def standardised_table(self) -> str:
        return Tables.standardised_delivery(self.suffix)


def withdrawn_deliveries(layout: OutputLayout) -> dict[str, dict[str, Any]]:
    """Withdrawn deliveries by "<source>/<delivery>": when, and why."""
    if not layout.withdrawals.exists():
        return {}
    return json.loads(layout.withdrawals.read_text())


def withdraw_delivery(
    project: LoadedProject, source_name: str, key: str, reason: str
) -> dict[str, Any]:
    """Withdraw a delivery (its owner retracted or replaced it): no later linkage takes it,
    and the next publication holds none of its records. Returns the withdrawal record."""
    layout = OutputLayout(project.output_dir)
    source = next((s for s in project.spec.sources if s.name == source_name), None)
    if source is None:
        raise SourceError(
            f"no source named {source_name!r}; the project's sources are "
            f"{[s.name for s in project.spec.sources]}"
        )
    withdrawn = withdrawn_deliveries(layout)
    name = f"{source_name}/{key}"
    if name in withdrawn:
        return withdrawn[name]
    published = layout.published.exact_manifest
    linked = (
        {f["delivery"] for i in json.loads(published.read_text())["inputs"] for f in i["files"]}
        if published.exists()
        else set()
    )
    if key not in linked and key not in {d.key for d in discover_deliveries(project, source)}:
        raise SourceError(
            f"source '{source_name}': no delivery {key!r} in the landing folder "
            f"{project.source_path(source)} or in the current publication"
        )
    withdrawn[name] = {
        "source": source_name,
        "delivery": key,
        "reason": reason,
        "withdrawn_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    layout.withdrawals.parent.mkdir(parents=True, exist_ok=True)
    temporary = layout.withdrawals.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(withdrawn, indent=2))
    temporary.replace(layout.withdrawals)
    return withdrawn[name]


def discover_deliveries(project: LoadedProject, source: SourceSpec) -> list[Delivery]:
    """Files currently matching the source's path, as deliveries (sorted by file name),
    leaving out withdrawn deliveries."""
    withdrawn = withdrawn_deliveries(OutputLayout(project.output_dir))
    pattern = project.source_path(source)
    paths = sorted(glob.glob(pattern))
    by_key: dict[str, str] = {}
    for path in paths:
        key = Path(path).name
        if key in by_key:
            raise SourceError(
                f"source '{source.name}': two delivery files share the name {key!r} "
                f"({by_key[key]} and {path}); delivery file names must be unique per source"
            )
        by_key[key] = path
    return [
        Delivery(source.name, key, path)
        for key, path in sorted(by_key.items())
        if f"{source.name}/{key}" not in withdrawn
    ]


def require_deliveries(project: LoadedProject, source: SourceSpec) -> list[Delivery]:
    deliveries = discover_deliveries(project, source)
    if not deliveries:
        withdrawn = [
            w["delivery"]
            for w in withdrawn_deliveries(OutputLayout(project.output_dir)).values()
            if w["source"] == source.name
        ]
        also = f"; withdrawn: {', '.join(withdrawn)}" if withdrawn else ""
        raise SourceError(
            f"source '{source.name}': no file found at {project.source_path(source)} "
            f"(expected at least one {source.format} file{also})"
        )
    return deliveries


_STATUS_TYPES = {
    "source": "VARCHAR",
    "delivery": "VARCHAR",
    "path": "VARCHAR",
    "rows": "BIGINT",
    "sha256": "VARCHAR",
    "bytes": "BIGINT",
    "status": "VARCHAR",
    "detail": "VARCHAR",
    "updated_at": "TIMESTAMP",
}


def ensure_status_table(engine: Engine) -> None:
    if not engine.table_exists(STATUS_TABLE):
        empty = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in _STATUS_TYPES.items())
        engine.create_table(STATUS_TABLE, f"SELECT {empty} LIMIT 0")


def set_status(
    engine: Engine,
    delivery: Delivery,
    status: str,
    file: DeliveryFile | None = None,
    detail: str = "",
) -> None:
    """Record a delivery's progress: ingested, accepted, rejected or standardised.

    The small table is rewritten whole, so engines without UPDATE (Spark on Parquet) work.
    """
    ensure_status_table(engine)
    this = f"source = {lit(delivery.source)} AND delivery = {lit(delivery.key)}"
    columns = ", ".join(_STATUS_TYPES)
    if file is None:
        changed = {"status": lit(status), "detail": lit(detail), "updated_at": "now()"}
        select = ", ".join(
            f"CASE WHEN {this} THEN CAST({changed[c]} AS {t}) ELSE {c} END AS {c}"
            if c in changed
            else c
            for c, t in _STATUS_TYPES.items()
        )
        engine.create_table(STATUS_TABLE, f"SELECT {select} FROM {STATUS_TABLE}")
        return
    values = [
        lit(delivery.source),
        lit(delivery.key),
        lit(file.path),
        str(file.rows),
        lit(file.sha256),
        str(file.bytes),
        lit(status),
        lit(detail),
        "now()",
    ]
    new_row = ", ".join(
        f"CAST({v} AS {t}) AS {c}" for v, (c, t) in zip(values, _STATUS_TYPES.items(), strict=True)
    )
    engine.create_table(
        STATUS_TABLE,
        f"SELECT {columns} FROM {STATUS_TABLE} WHERE NOT ({this}) UNION ALL SELECT {new_row}",
    )


def delivery_statuses(engine: Engine, source: str | None = None) -> list[dict[str, Any]]:
    ensure_status_table(engine)
    where = f"WHERE source = {lit(source)}" if source else ""
    rows = engine.fetch(
        f"SELECT {', '.join(STATUS_COLUMNS)} FROM {STATUS_TABLE} {where} ORDER BY source, delivery"
    )
    return [dict(zip(STATUS_COLUMNS, row, strict=True)) for row in rows]


def deliveries_for_linkage(
    engine: Engine, source: str, withdrawn: dict[str, Any] | None = None
) -> tuple[list[DeliveryTables], list[dict[str, Any]]]:
    """A source's deliveries that a linkage takes (standardised, or rejected and so
    quarantined whole), and those still pending (not yet through validation and
    standardisation), which this linkage leaves out. Withdrawn deliveries are neither."""
    tables: list[DeliveryTables] = []
    pending: list[dict[str, Any]] = []
    for row in delivery_statuses(engine, source):
        d = Delivery(source, row["delivery"], row["path"])
        if f"{source}/{d.key}" in (withdrawn or {}):
            continue
        if row["status"] == "standardised":
            tables.append(
                DeliveryTables(d.key, d.raw_table, d.standardised_table, sha256=row["sha256"])
            )
        elif row["status"] == "rejected":
            tables.append(DeliveryTables(d.key, d.raw_table, None, row["detail"], row["sha256"]))
        else:
            pending.append({"source": source, "delivery": d.key, "status": row["status"]})
    return tables, pending

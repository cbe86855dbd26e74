"""Publish the linked longitudinal dataset: person lookup and event timeline.

Published columns are pseudonymous ids, event dates, event types and each source's declared
non-identifying attributes: names, dates of birth and postcodes never reach `linked/`.
Person ids are keyed hashes of the cluster, so nothing about the person can be derived
from them; set JOINEDUP_PERSON_ID_KEY to a secret to stop anyone recomputing them.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

from linkage_models.project import LinkageProject
from pipelines.engines import Engine
from pipelines.sql import ident, lit

LOOKUP_COLUMNS = (
    "source_dataset",
    "source_record_id",
    "person_id",
    "person_id_high_precision",
    "person_id_high_recall",
    "linking_snapshot_date",
)
EVENT_BASE_COLUMNS = ("person_id", "source_dataset", "source_record_id", "event_date", "event_type")


def person_id_key(project: str) -> str:
    return os.environ.get("JOINEDUP_PERSON_ID_KEY", f"joinedup:{project}")


def _person_id_sql(cluster_column: str, key: str) -> str:
    return f"'P' || left(sha256({lit(key)} || {cluster_column}), 16)"


def person_lookup_sql(cluster_tables: dict[str, str], key: str, snapshot: date) -> str:
    """One row per accepted record with its person id at each of the three thresholds."""
    b, hp, hr = (cluster_tables[k] for k in ("balanced", "high_precision", "high_recall"))
    return f"""
SELECT b.source_dataset,
       b.record_id AS source_record_id,
       {_person_id_sql("b.cluster_id", key)} AS person_id,
       {_person_id_sql("hp.cluster_id", key)} AS person_id_high_precision,
       {_person_id_sql("hr.cluster_id", key)} AS person_id_high_recall,
       DATE {lit(snapshot.isoformat())} AS linking_snapshot_date
FROM {b} b
JOIN {hp} hp ON hp.source_dataset = b.source_dataset AND hp.record_id = b.record_id
JOIN {hr} hr ON hr.source_dataset = b.source_dataset AND hr.record_id = b.record_id
ORDER BY b.source_dataset, b.record_id
"""


def events_sql(project: LinkageProject, lookup_table: str, accepted_tables: dict[str, str]) -> str:
    """The timeline: every accepted record as an event, with its source's attributes."""
    all_attributes = list(dict.fromkeys(a for s in project.sources for a in s.attributes))
    parts = []
    for source in project.sources:
        if source.name not in accepted_tables:  # no accepted delivery: nothing to publish
            continue
        attrs = "".join(
            f", a.{ident(col)}"
            if col in source.attributes
            else f", CAST(NULL AS VARCHAR) AS {ident(col)}"
            for col in all_attributes
        )
        parts.append(
            f"""SELECT l.person_id, a.source_dataset, a.record_id AS source_record_id,
       a.event_date, a.event_type{attrs}
FROM {accepted_tables[source.name]} a
JOIN {lookup_table} l ON l.source_dataset = a.source_dataset AND l.source_record_id = a.record_id"""
        )
    return (
        "\nUNION ALL\n".join(parts)
        + "\nORDER BY person_id, event_date, source_dataset, source_record_id"
    )


def publish_linked_dataset(
    engine: Engine,
    project: LinkageProject,
    cluster_tables: dict[str, str],
    accepted_tables: dict[str, str],
    linked_dir: Path,
    snapshot: date,
) -> dict[str, Path]:
    """Write person_lookup.parquet and events.parquet; returns their paths."""
    engine.create_table(
        "person_lookup",
        person_lookup_sql(cluster_tables, person_id_key(project.project), snapshot),
    )
    engine.create_table("events", events_sql(project, "person_lookup", accepted_tables))
    paths = {
        "person_lookup": linked_dir / "person_lookup.parquet",
        "events": linked_dir / "events.parquet",
    }
    for table, path in paths.items():
        engine.write_parquet(f"SELECT * FROM {table}", path)
    return paths

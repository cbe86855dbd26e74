"""Publish the linked longitudinal dataset: person lookup and event timeline.

Published columns are pseudonymous ids, event dates, event types and each source's declared
non-identifying attributes: names, dates of birth and postcodes never reach `linked/`.
Person ids persist across linkages (pipelines.identity): a person keeps their id while their
cluster holds their records, and a new id is a keyed hash, so nothing about the person can
be derived from it and nobody without the key can compute it from record ids. The key is
JOINEDUP_PERSON_ID_KEY when set (a platform's secret store); otherwise a random secret
created on the first run in the secure zone (secure/person_id.key, readable by its owner
only) and kept there, so the same output folder keys ids the same way every run.
"""

from __future__ import annotations

import os
import secrets
from datetime import date
from typing import Any

from linkage_models.project import LinkageProject
from pipelines.contract import (
    LOOKUP_COLUMNS,
    PERSON_ID_COLUMNS,
    THRESHOLDS,
    OutputLayout,
    ReconciliationError,
    Tables,
)
from pipelines.engines import Engine
from pipelines.identity import (
    ASSIGNMENTS,
    IdentityFiles,
    carry_forward,
    churn_ledger,
    drop_working_tables,
    published_register_sql,
    write_store,
)
from pipelines.sql import ident, lit


def person_id_key(layout: OutputLayout) -> tuple[str, str]:
    """The secret person ids are keyed with, and where it is kept (never the key itself)."""
    secret = os.environ.get("JOINEDUP_PERSON_ID_KEY")
    if secret:
        return secret, "environment variable JOINEDUP_PERSON_ID_KEY"
    path = layout.person_id_key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # created meanwhile: read that one
        else:
            with os.fdopen(handle, "w") as file:
                file.write(secrets.token_hex(32))
    return path.read_text().strip(), layout.relative(path)


def person_lookup_sql(assignments: str, snapshot: date) -> str:
    """One row per accepted record with its person id at each of the three thresholds
    (the balanced threshold's is `person_id`), from the identity step's assignments."""
    ids = ",\n       ".join(
        f"{t}.person_id AS {PERSON_ID_COLUMNS[t]}"
        for t in sorted(THRESHOLDS, key=lambda t: LOOKUP_COLUMNS.index(PERSON_ID_COLUMNS[t]))
    )
    joins = "\n".join(
        f"JOIN {assignments} {t} ON {t}.threshold = {lit(t)} "
        f"AND {t}.source_dataset = balanced.source_dataset AND {t}.record_id = balanced.record_id"
        for t in THRESHOLDS
        if t != "balanced"
    )
    return f"""
SELECT balanced.source_dataset,
       balanced.record_id AS source_record_id,
       {ids},
       DATE {lit(snapshot.isoformat())} AS linking_snapshot_date
FROM {assignments} balanced
{joins}
WHERE balanced.threshold = 'balanced'
ORDER BY balanced.source_dataset, balanced.record_id
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
    layout: OutputLayout,
    accepted_tables: dict[str, str],
    rows_accepted: int,
    snapshot: date,
    model_version: int,
    changed_records: str | None = None,
) -> dict[str, Any]:
    """Carry the person ids of the previous publication forward to the clusters at each
    threshold, then write the person lookup, the event timeline and the register of ids;
    refuses to publish a lookup that does not hold exactly the accepted records.

    `changed_records`: after an incremental linkage, the table of the records it reclustered
    or removed, the only ones whose ids need recomputing."""
    clusters = {t: Tables.clusters(t) for t in THRESHOLDS}
    key, kept_in = person_id_key(layout)
    previous = IdentityFiles.of(layout.published)  # none before the first publication
    previous_state = previous.read_state() if previous.exists() else None
    # The identity step's tables are scratch: at 1M they are millions of rows, read only here.
    drop_working_tables(engine)
    with engine.scratch():
        carried = carry_forward(engine, clusters, previous, key, layout.snapshot, changed_records)
    engine.create_table(Tables.PERSON_LOOKUP, person_lookup_sql(ASSIGNMENTS, snapshot))
    rows = engine.count(Tables.PERSON_LOOKUP)
    if rows != rows_accepted:
        raise ReconciliationError(
            f"person lookup has {rows} rows but {rows_accepted} records were accepted"
        )
    engine.create_table(Tables.EVENTS, events_sql(project, Tables.PERSON_LOOKUP, accepted_tables))
    engine.write_parquet(f"SELECT * FROM {Tables.PERSON_LOOKUP}", layout.person_lookup)
    engine.write_parquet(f"SELECT * FROM {Tables.EVENTS}", layout.events)
    engine.write_parquet(published_register_sql(), layout.person_ids)
    identity = {
        "generation": carried.generation,
        "snapshot": layout.snapshot,
        "previous_snapshot": layout.published.snapshot if previous_state else None,
        "model_version": model_version,
        "previous_model_version": previous_state["model_version"] if previous_state else None,
        "thresholds": project.model.thresholds.as_dict(),
        "previous_thresholds": previous_state.get("thresholds") if previous_state else None,
    }
    write_store(engine, IdentityFiles.of(layout), identity)
    persons, linked_share = engine.fetch(
        "SELECT count(*), sum(CASE WHEN sources > 1 THEN n ELSE 0 END) / sum(n) FROM "
        "(SELECT person_id, count(DISTINCT source_dataset) AS sources, count(*) AS n "
        f"FROM {Tables.PERSON_LOOKUP} GROUP BY person_id)"
    )[0]
    churn = churn_ledger(engine, carried, layout.snapshot)
    with engine.scratch():
        drop_working_tables(engine)
    return {
        "rows": rows,
        "persons": int(persons),
        "share_linked_across_sources": round(float(linked_share or 0), 4),
        "snapshot_date": snapshot.isoformat(),
        "person_id_key": kept_in,
        "identity": {
            **identity,
            # Whose ids were worked out again: every record's, or (after an incremental
            # linkage) only those of the records it reclustered or removed.
            "ids_recomputed_for": carried.recomputed,
            "records_recomputed": carried.records_recomputed,
            "churn": churn,
        },
        "outputs": {
            "person_lookup": str(layout.person_lookup),
            "events": str(layout.events),
            "person_ids": str(layout.person_ids),
        },
    }

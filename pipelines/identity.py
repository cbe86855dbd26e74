"""Persistent person ids: the identity store, and how a new linkage's clusters inherit the
ids of the previous publication.

The store is part of each secure snapshot (`secure/snapshots/<id>/identity/`), so it is
published with the linkage it describes and a failed or refused run changes nothing:

    assignments.parquet  threshold, source_dataset, record_id, person_id: every record's id
    register.parquet     every person id ever issued, per threshold: when it was created
                         (generation, snapshot, origin), and for a retired id when, why
                         (merged / withdrawn), the id it was merged into and the id that
                         holds its records now (redirects followed to the end)
    state.json           generation (publications in this lineage), snapshot, model version

After a linkage, per threshold, each cluster is matched to the previous persons whose
records it holds:

1. Each previous person's *home* is the cluster holding most of its records (ties: the
   cluster whose smallest record key sorts first).
2. Among the previous persons whose home a cluster is, the *survivor* keeps its id: the one
   with most records there, then the oldest id (earliest generation), then the smallest id.
   So a cluster holding the records of exactly one previous person keeps that person's id,
   and on a split the largest part keeps it.
3. The other persons homed in that cluster are retired as *merged*, redirected to the
   survivor. A previous person with no record left is retired as *withdrawn*.
4. A cluster that is nobody's home gets a new id: a *split* when it holds records of a
   previous person, *new* when it holds only new records.

After an incremental linkage only the records it reclustered (and those it removed) can
have changed person: every other cluster is a previous person's, whole and unchanged, and
keeps its id. The rules above are then applied to those records alone, and the rest of the
store is carried over as it was. The result is the same as applying them to every record;
when the records given do not hold whole clusters and whole previous persons (they always
should), every record is recomputed instead.

A new id is 'P' and 16 hex digits of sha256(secret, threshold, generation, the cluster's
smallest record key): without the secret nobody can compute it from record ids; the same
sequence of deliveries and linkages gives the same ids; the generation keeps ids from being
issued twice, and an id that collides with one ever issued stops the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.contract import (
    PERSON_ID_COLUMNS,
    PERSON_IDS_IN_PUBLICATION,
    THRESHOLDS,
    OutputLayout,
    parquet_source,
)
from pipelines.engines import Engine
from pipelines.sql import lit, record_key

# Engine tables of the identity step.
CLUSTERS = "__identity_clusters"  # the clusters of the records recomputed
CHANGED = "__identity_changed_records"
PREVIOUS_ASSIGNMENTS = "__identity_previous_assignments"
PREVIOUS_OF_CHANGED = "__identity_previous_of_changed"
ASSIGNMENTS_OF_CHANGED = "__identity_assignments_of_changed"
PREVIOUS_REGISTER = "__identity_previous_register"
OVERLAP = "__identity_overlap"
HOME = "__identity_home"
SURVIVORS = "__identity_survivors"
CLUSTER_IDS = "__identity_cluster_ids"
ASSIGNMENTS = "person_id_assignments"
REGISTER = "person_id_register"

# Whose ids a carry-forward worked out again.
EVERY_RECORD = "every record"
RECLUSTERED_ONLY = "reclustered records"

ASSIGNMENT_COLUMNS = "threshold, source_dataset, record_id, person_id"
REGISTER_COLUMNS = (
    "threshold, person_id, created_generation, created_snapshot, origin, "
    "retired_snapshot, retired_reason, redirect_to, current_person_id"
)
# How the record key reads: source names are lower_case identifiers, so '|' cannot occur in
# them and (source, record id) keys are unique.
RECORD_KEY = record_key()


class IdentityError(RuntimeError):
    """The identity store cannot be carried forward (names the file or the problem)."""


@dataclass(frozen=True)
class CarriedForward:
    """What `carry_forward` did: the generation, and which records it recomputed (every
    record, or only those an incremental linkage reclustered or removed) with the tables
    of their previous and new ids, which the churn ledger compares."""

    generation: int
    recomputed: str  # EVERY_RECORD or RECLUSTERED_ONLY
    records_recomputed: int
    previous_assignments: str
    assignments: str


@dataclass(frozen=True)
class IdentityFiles:
    """Where one build's identity store lives (in its secure zone)."""

    folder: Path

    @classmethod
    def of(cls, layout: OutputLayout) -> IdentityFiles:
        return cls(layout.identity_dir)

    @property
    def assignments(self) -> Path:
        return self.folder / "assignments.parquet"

    @property
    def register(self) -> Path:
        return self.folder / "register.parquet"

    @property
    def state(self) -> Path:
        return self.folder / "state.json"

    def exists(self) -> bool:
        return self.state.exists()

    def read_state(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())


def _load_previous(engine: Engine, previous: IdentityFiles | None) -> int:
    """The previous publication's store as engine tables; returns its generation (0 when
    this is the first)."""
    if previous is None or not previous.exists():
        engine.create_table(
            PREVIOUS_ASSIGNMENTS,
            "SELECT CAST(NULL AS VARCHAR) AS threshold, CAST(NULL AS VARCHAR) AS source_dataset, "
            "CAST(NULL AS VARCHAR) AS record_id, CAST(NULL AS VARCHAR) AS person_id WHERE 1 = 0",
        )
        engine.create_table(
            PREVIOUS_REGISTER,
            "SELECT CAST(NULL AS VARCHAR) AS threshold, CAST(NULL AS VARCHAR) AS person_id, "
            "CAST(NULL AS INTEGER) AS created_generation, "
            "CAST(NULL AS VARCHAR) AS created_snapshot, CAST(NULL AS VARCHAR) AS origin, "
            "CAST(NULL AS VARCHAR) AS retired_snapshot, "
            "CAST(NULL AS VARCHAR) AS retired_reason, CAST(NULL AS VARCHAR) AS redirect_to, "
            "CAST(NULL AS VARCHAR) AS current_person_id WHERE 1 = 0",
        )
        return 0
    for table, path in (
        (PREVIOUS_ASSIGNMENTS, previous.assignments),
        (PREVIOUS_REGISTER, previous.register),
    ):
        if not path.exists():
            raise IdentityError(f"{path}: the previous identity store is incomplete")
        engine.register_file(f"{table}__file", parquet_source(path), "parquet")
        engine.create_table(table, f"SELECT * FROM {table}__file")
    return int(previous.read_state()["generation"])


def _clusters_sql(cluster_tables: dict[str, str], only: str | None = None) -> str:
    """Every record's cluster at each threshold, named by its smallest record key; `only`:
    a table of the records to take (whole clusters)."""
    within = (
        f" SEMI JOIN {only} o ON o.source_dataset = CAST(t.source_dataset AS VARCHAR)"
        " AND o.record_id = CAST(t.record_id AS VARCHAR)"
        if only
        else ""
    )
    parts = [
        f"SELECT {lit(t)} AS threshold, CAST(t.source_dataset AS VARCHAR) AS source_dataset, "
        f"CAST(t.record_id AS VARCHAR) AS record_id, CAST(t.cluster_id AS VARCHAR) AS cluster_id "
        f"FROM {cluster_tables[t]} t{within}"
        for t in THRESHOLDS
    ]
    return (
        f"SELECT threshold, source_dataset, record_id, "
        f"min({RECORD_KEY}) OVER (PARTITION BY threshold, cluster_id) AS cluster_key "
        f"FROM ({' UNION ALL '.join(parts)}) c"
    )


def _holds_whole_clusters(engine: Engine, cluster_tables: dict[str, str]) -> bool:
    """Whether the records in CHANGED hold whole clusters at every threshold, and every
    previous person of theirs whole: then no other record changed person."""
    on_key = "c.source_dataset = {0}.source_dataset AND c.record_id = {0}.record_id"
    for table in cluster_tables.values():
        outside = engine.fetch(
            f"""SELECT count(*) FROM (
    SELECT CAST(source_dataset AS VARCHAR) AS source_dataset,
           CAST(record_id AS VARCHAR) AS record_id, cluster_id FROM {table}) t
SEMI JOIN (SELECT DISTINCT x.cluster_id FROM {table} x
           SEMI JOIN {CHANGED} c ON c.source_dataset = CAST(x.source_dataset AS VARCHAR)
                                AND c.record_id = CAST(x.record_id AS VARCHAR)) k
  ON k.cluster_id = t.cluster_id
ANTI JOIN {CHANGED} c ON {on_key.format("t")}"""
        )[0][0]
        if outside:
            return False
    outside = engine.fetch(
        f"""SELECT count(*) FROM {PREVIOUS_ASSIGNMENTS} p
SEMI JOIN (SELECT DISTINCT threshold, person_id FROM {PREVIOUS_OF_CHANGED}) k
  ON k.threshold = p.threshold AND k.person_id = p.person_id
ANTI JOIN {CHANGED} c ON {on_key.format("p")}"""
    )[0][0]
    return not outside


def carry_forward(
    engine: Engine,
    cluster_tables: dict[str, str],
    previous: IdentityFiles | None,
    key: str,
    snapshot: str,
    changed: str | None = None,
) -> CarriedForward:
    """Give every clustered record its person id at each threshold (table ASSIGNMENTS) and
    carry the register of ids forward (table REGISTER).

    `changed`: after an incremental linkage, a table (source_dataset, record_id) of the
    records it reclustered or removed; only their ids are recomputed (see the module's
    docstring), and every other record keeps its previous id."""
    generation = _load_previous(engine, previous) + 1
    recomputed = EVERY_RECORD
    if changed is not None and generation > 1:
        engine.create_table(
            CHANGED,
            f"SELECT DISTINCT CAST(source_dataset AS VARCHAR) AS source_dataset, "
            f"CAST(record_id AS VARCHAR) AS record_id FROM {changed}",
        )
        engine.create_table(
            PREVIOUS_OF_CHANGED,
            f"""SELECT p.* FROM {PREVIOUS_ASSIGNMENTS} p
SEMI JOIN {CHANGED} c ON c.source_dataset = p.source_dataset AND c.record_id = p.record_id""",
        )
        if _holds_whole_clusters(engine, cluster_tables):
            recomputed = RECLUSTERED_ONLY
    if recomputed == EVERY_RECORD:
        engine.create_table(CLUSTERS, _clusters_sql(cluster_tables))
        previous_assignments = PREVIOUS_ASSIGNMENTS
    else:
        engine.create_table(CLUSTERS, _clusters_sql(cluster_tables, only=CHANGED))
        previous_assignments = PREVIOUS_OF_CHANGED
    # How many records of each previous person each new cluster holds (one join of the
    # new clusters with the previous assignments; everything below reads this).
    engine.create_table(
        OVERLAP,
        f"""SELECT c.threshold, c.cluster_key, p.person_id, count(*) AS shared
FROM {CLUSTERS} c JOIN {previous_assignments} p
  ON p.threshold = c.threshold AND p.source_dataset = c.source_dataset
 AND p.record_id = c.record_id
GROUP BY c.threshold, c.cluster_key, p.person_id""",
    )
    # 1. Each previous person's home: the cluster holding most of its records.
    engine.create_table(
        HOME,
        f"""SELECT threshold, person_id, cluster_key, shared FROM (
    SELECT o.*, row_number() OVER (
        PARTITION BY threshold, person_id ORDER BY shared DESC, cluster_key) AS rank_in_person
    FROM {OVERLAP} o
) ranked WHERE rank_in_person = 1""",
    )
    # 2. The survivor of each cluster that is someone's home.
    engine.create_table(
        SURVIVORS,
        f"""SELECT threshold, cluster_key, person_id FROM (
    SELECT h.threshold, h.cluster_key, h.person_id, row_number() OVER (
        PARTITION BY h.threshold, h.cluster_key
        ORDER BY h.shared DESC, r.created_generation, h.person_id) AS rank_in_cluster
    FROM {HOME} h JOIN {PREVIOUS_REGISTER} r
      ON r.threshold = h.threshold AND r.person_id = h.person_id
) ranked WHERE rank_in_cluster = 1""",
    )
    # 3. Every cluster's id: its survivor's, or a new one (split when it holds old records).
    new_id = (
        f"'P' || left(sha256({lit(key)} || ':' || k.threshold || ':' || "
        f"{lit(str(generation))} || ':' || k.cluster_key), 16)"
    )
    engine.create_table(
        CLUSTER_IDS,
        f"""SELECT k.threshold, k.cluster_key, coalesce(s.person_id, {new_id}) AS person_id,
       s.person_id IS NOT NULL AS kept,
       CASE WHEN s.person_id IS NOT NULL THEN NULL
            WHEN k.old_records > 0 THEN 'split' WHEN {generation} = 1 THEN 'first'
            ELSE 'new' END AS origin
FROM (SELECT c.threshold, c.cluster_key, coalesce(max(o.shared), 0) AS old_records
      FROM (SELECT DISTINCT threshold, cluster_key FROM {CLUSTERS}) c
      LEFT JOIN {OVERLAP} o ON o.threshold = c.threshold AND o.cluster_key = c.cluster_key
      GROUP BY c.threshold, c.cluster_key) k
LEFT JOIN {SURVIVORS} s ON s.threshold = k.threshold AND s.cluster_key = k.cluster_key""",
    )
    _refuse_reissued_ids(engine)
    assigned = f"""SELECT c.threshold, c.source_dataset, c.record_id, i.person_id
FROM {CLUSTERS} c JOIN {CLUSTER_IDS} i
  ON i.threshold = c.threshold AND i.cluster_key = c.cluster_key"""
    if recomputed == EVERY_RECORD:
        engine.create_table(ASSIGNMENTS, assigned)
        assignments = ASSIGNMENTS
    else:
        engine.create_table(ASSIGNMENTS_OF_CHANGED, assigned)
        engine.create_table(
            ASSIGNMENTS,
            f"""SELECT p.threshold, p.source_dataset, p.record_id, p.person_id
FROM {PREVIOUS_ASSIGNMENTS} p
ANTI JOIN {CHANGED} c ON c.source_dataset = p.source_dataset AND c.record_id = p.record_id
UNION ALL SELECT threshold, source_dataset, record_id, person_id FROM {ASSIGNMENTS_OF_CHANGED}""",
        )
        assignments = ASSIGNMENTS_OF_CHANGED
    engine.create_table(
        REGISTER,
        _register_sql(generation, snapshot, only_changed=recomputed == RECLUSTERED_ONLY),
    )
    return CarriedForward(
        generation,
        recomputed,
        engine.count(CLUSTERS),
        previous_assignments,
        assignments,
    )


def _refuse_reissued_ids(engine: Engine) -> None:
    """A new id may not repeat one ever issued, nor another new one (a 64-bit hash
    collision: practically never, but an id must never be reused)."""
    clashes = engine.fetch(
        f"""SELECT count(*) FROM {CLUSTER_IDS} i JOIN {PREVIOUS_REGISTER} r
              ON r.person_id = i.person_id WHERE NOT i.kept"""
    )[0][0]
    repeated = engine.fetch(
        f"SELECT count(*) - count(DISTINCT person_id) FROM {CLUSTER_IDS} WHERE NOT kept"
    )[0][0]
    if clashes or repeated:
        raise IdentityError(
            "a new person id collides with one already issued; ids are never reused, so "
            "nothing was published. Rotate the person-id secret's lineage by starting a "
            "new output folder, or report this (it should not happen)"
        )


def _register_sql(generation: int, snapshot: str, only_changed: bool) -> str:
    """The previous register with this generation's retirements and current ids, and the
    ids issued in it. `only_changed`: only the previous persons of the changed records
    were recomputed; every other active id is kept."""
    recomputed = (
        f"LEFT JOIN (SELECT DISTINCT threshold, person_id FROM {PREVIOUS_OF_CHANGED}) a\n"
        "      ON a.threshold = r.threshold AND a.person_id = r.person_id"
        if only_changed
        else ""
    )
    untouched = "a.person_id IS NULL" if only_changed else "FALSE"
    return f"""WITH now_of AS (  -- what each previously active id is now
    SELECT r.threshold, r.person_id,
           CASE WHEN {untouched} OR s.person_id IS NOT NULL THEN 'kept'
                WHEN h.person_id IS NOT NULL THEN 'merged' ELSE 'withdrawn' END AS fate,
           CASE WHEN {untouched} OR s.person_id IS NOT NULL THEN r.person_id
                ELSE home_survivor.person_id END AS now_id
    FROM {PREVIOUS_REGISTER} r
    {recomputed}
    LEFT JOIN {SURVIVORS} s ON s.threshold = r.threshold AND s.person_id = r.person_id
    LEFT JOIN {HOME} h ON h.threshold = r.threshold AND h.person_id = r.person_id
    LEFT JOIN {SURVIVORS} home_survivor
      ON home_survivor.threshold = h.threshold AND home_survivor.cluster_key = h.cluster_key
    WHERE r.retired_snapshot IS NULL
)
SELECT r.threshold, r.person_id, r.created_generation, r.created_snapshot, r.origin,
       CASE WHEN r.retired_snapshot IS NOT NULL THEN r.retired_snapshot
            WHEN n.fate <> 'kept' THEN {lit(snapshot)} END AS retired_snapshot,
       CASE WHEN r.retired_snapshot IS NOT NULL THEN r.retired_reason
            WHEN n.fate <> 'kept' THEN n.fate END AS retired_reason,
       CASE WHEN r.retired_snapshot IS NOT NULL THEN r.redirect_to
            WHEN n.fate = 'merged' THEN n.now_id END AS redirect_to,
       current_now.now_id AS current_person_id
FROM {PREVIOUS_REGISTER} r
LEFT JOIN now_of n ON n.threshold = r.threshold AND n.person_id = r.person_id
LEFT JOIN now_of current_now
  ON current_now.threshold = r.threshold AND current_now.person_id = r.current_person_id
UNION ALL
SELECT threshold, person_id, {generation} AS created_generation,
       {lit(snapshot)} AS created_snapshot, origin, CAST(NULL AS VARCHAR) AS retired_snapshot,
       CAST(NULL AS VARCHAR) AS retired_reason, CAST(NULL AS VARCHAR) AS redirect_to,
       person_id AS current_person_id
FROM {CLUSTER_IDS} WHERE NOT kept"""


def _records_by_source(engine: Engine, carried: CarriedForward, threshold: str) -> dict:
    """Per source, the records added, kept, moved and withdrawn at one threshold: the
    recomputed records' previous and new ids compared; every other record was kept."""
    t = lit(threshold)
    counts: dict[str, dict[str, int]] = {
        source: {
            "records_added": int(added),
            "records_kept": int(kept),
            "records_moved": int(moved),
            "records_withdrawn": int(withdrawn),
        }
        for source, added, kept, moved, withdrawn in engine.fetch(
            f"""SELECT coalesce(n.source_dataset, p.source_dataset) AS source,
       count(*) FILTER (WHERE p.person_id IS NULL),
       count(*) FILTER (WHERE n.person_id = p.person_id),
       count(*) FILTER (WHERE n.person_id <> p.person_id),
       count(*) FILTER (WHERE n.person_id IS NULL)
FROM (SELECT * FROM {carried.assignments} WHERE threshold = {t}) n
FULL OUTER JOIN (SELECT * FROM {carried.previous_assignments} WHERE threshold = {t}) p
  ON p.source_dataset = n.source_dataset AND p.record_id = n.record_id
GROUP BY 1"""
        )
    }
    if carried.assignments != ASSIGNMENTS:
        for source, untouched in engine.fetch(
            f"""SELECT a.source_dataset, count(*) FROM {ASSIGNMENTS} a
ANTI JOIN {CHANGED} c ON c.source_dataset = a.source_dataset AND c.record_id = a.record_id
WHERE a.threshold = {t} GROUP BY 1"""
        ):
            entry = counts.setdefault(
                source,
                dict.fromkeys(
                    ("records_added", "records_kept", "records_moved", "records_withdrawn"), 0
                ),
            )
            entry["records_kept"] += int(untouched)
    return dict(sorted(counts.items()))


def churn_ledger(engine: Engine, carried: CarriedForward, snapshot: str) -> dict[str, Any]:
    """What this linkage did to the ids, per threshold: ids created (new, split), kept,
    merged, split and retired; records added, kept, moved to another person and withdrawn
    (also per source), with rates of the previous records still present."""
    generation = carried.generation
    ledger: dict[str, Any] = {}
    for t in THRESHOLDS:
        ids = engine.fetch(
            f"""SELECT count(*) FILTER (WHERE origin IN ('new', 'first')),
       count(*) FILTER (WHERE origin = 'split')
FROM {CLUSTER_IDS} WHERE threshold = {lit(t)} AND NOT kept"""
        )[0]
        kept, merged, withdrawn = engine.fetch(
            f"""SELECT count(*) FILTER (WHERE retired_snapshot IS NULL),
       count(*) FILTER (WHERE retired_snapshot = {lit(snapshot)}
                          AND retired_reason = 'merged'),
       count(*) FILTER (WHERE retired_snapshot = {lit(snapshot)}
                          AND retired_reason = 'withdrawn')
FROM {REGISTER} WHERE threshold = {lit(t)} AND created_generation < {generation}"""
        )[0]
        merges = engine.fetch(
            f"SELECT count(*) FROM (SELECT cluster_key FROM {HOME} WHERE threshold = {lit(t)} "
            "GROUP BY cluster_key HAVING count(*) > 1) m"
        )[0][0]
        split = engine.fetch(
            f"SELECT count(*) FROM (SELECT person_id FROM {OVERLAP} WHERE threshold = {lit(t)} "
            "GROUP BY person_id HAVING count(*) > 1) s"
        )[0][0]
        by_source = _records_by_source(engine, carried, t)
        records = {
            k: sum(s[k] for s in by_source.values())
            for k in ("records_added", "records_kept", "records_moved", "records_withdrawn")
        }
        still_present = records["records_kept"] + records["records_moved"]
        ledger[t] = {
            "id_column": PERSON_ID_COLUMNS[t],
            "ids_kept": int(kept),
            "ids_created": int(ids[0]) + int(ids[1]),
            "ids_created_for_new_records": int(ids[0]),
            "ids_created_by_splits": int(ids[1]),
            "merges": int(merges),
            "ids_retired_by_merges": int(merged),
            "persons_split": int(split),
            "ids_retired_withdrawn": int(withdrawn),
            **records,
            "share_of_previous_records_moved": round(records["records_moved"] / still_present, 6)
            if still_present
            else 0.0,
            "by_source": by_source,
        }
    return ledger


WORKING_TABLES = (
    CLUSTERS,
    CHANGED,
    PREVIOUS_ASSIGNMENTS,
    PREVIOUS_OF_CHANGED,
    ASSIGNMENTS_OF_CHANGED,
    PREVIOUS_REGISTER,
    OVERLAP,
    HOME,
    SURVIVORS,
    CLUSTER_IDS,
    ASSIGNMENTS,  # written to the store; read again from it by the next publication
    REGISTER,
)


def drop_working_tables(engine: Engine) -> None:
    """Drop the identity step's working tables: before it, any an earlier version left in
    the stored tables (none may hide the scratch ones: pipelines.publish); after it, once
    the store and the churn ledger are written. After a full relink at 1M records they
    held 15.6M rows."""
    for table in WORKING_TABLES:
        engine.drop_table(table)


def write_store(engine: Engine, files: IdentityFiles, state: dict[str, Any]) -> None:
    """The store of this build, next to its other secure outputs."""
    files.folder.mkdir(parents=True, exist_ok=True)
    engine.write_parquet(
        f"SELECT {ASSIGNMENT_COLUMNS} FROM {ASSIGNMENTS} "
        "ORDER BY threshold, source_dataset, record_id",
        files.assignments,
    )
    engine.write_parquet(
        f"SELECT {REGISTER_COLUMNS} FROM {REGISTER} ORDER BY threshold, person_id",
        files.register,
    )
    files.state.write_text(json.dumps(state, indent=2))


def published_register_sql() -> str:
    """Every person id ever issued, for researchers: which id column it belongs to, the
    snapshot it came from, and for a retired id when and why, and the id that holds its
    records now (NULL when they were withdrawn)."""
    cases = " ".join(f"WHEN {lit(t)} THEN {lit(c)}" for t, c in PERSON_ID_COLUMNS.items())
    return f"""SELECT CASE threshold {cases} END AS id_column, person_id,
       created_snapshot AS created_in_snapshot, origin,
       retired_snapshot AS retired_in_snapshot, retired_reason, redirect_to,
       current_person_id
FROM {REGISTER} ORDER BY id_column, person_id"""


def find_person_id(publication: Path, person_id: str) -> dict[str, Any] | None:
    """One id's entry in a publication's register (`<publication>/linked/person_ids.parquet`),
    or None if it was never issued. Read with a filter, not by loading the register."""
    import pyarrow.dataset as ds

    register = publication / PERSON_IDS_IN_PUBLICATION
    if not register.exists():
        raise FileNotFoundError(f"{register}: no register of person ids in this publication")
    rows = (
        ds.dataset(register, format="parquet")
        .to_table(filter=ds.field("person_id") == person_id)
        .to_pylist()
    )
    return rows[0] if rows else None

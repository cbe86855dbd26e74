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
from pipelines.sql import lit

# Engine tables of the identity step.
CLUSTERS = "__identity_clusters"
PREVIOUS_ASSIGNMENTS = "__identity_previous_assignments"
PREVIOUS_REGISTER = "__identity_previous_register"
OVERLAP = "__identity_overlap"
HOME = "__identity_home"
SURVIVORS = "__identity_survivors"
CLUSTER_IDS = "__identity_cluster_ids"
ASSIGNMENTS = "person_id_assignments"
REGISTER = "person_id_register"

ASSIGNMENT_COLUMNS = "threshold, source_dataset, record_id, person_id"
REGISTER_COLUMNS = (
    "threshold, person_id, created_generation, created_snapshot, origin, "
    "retired_snapshot, retired_reason, redirect_to, current_person_id"
)
# How the record key reads: source names are lower_case identifiers, so '|' cannot occur in
# them and (source, record id) keys are unique.
RECORD_KEY = "source_dataset || '|' || record_id"


class IdentityError(RuntimeError):
    """The identity store cannot be carried forward (names the file or the problem)."""


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


def _clusters_sql(cluster_tables: dict[str, str]) -> str:
    parts = [
        f"SELECT {lit(t)} AS threshold, CAST(source_dataset AS VARCHAR) AS source_dataset, "
        f"CAST(record_id AS VARCHAR) AS record_id, CAST(cluster_id AS VARCHAR) AS cluster_id "
        f"FROM {cluster_tables[t]}"
        for t in THRESHOLDS
    ]
    return (
        f"SELECT threshold, source_dataset, record_id, "
        f"min({RECORD_KEY}) OVER (PARTITION BY threshold, cluster_id) AS cluster_key "
        f"FROM ({' UNION ALL '.join(parts)}) c"
    )


def carry_forward(
    engine: Engine,
    cluster_tables: dict[str, str],
    previous: IdentityFiles | None,
    key: str,
    snapshot: str,
) -> int:
    """Give every clustered record its person id at each threshold (table ASSIGNMENTS) and
    carry the register of ids forward (table REGISTER); returns this generation."""
    generation = _load_previous(engine, previous) + 1
    engine.create_table(CLUSTERS, _clusters_sql(cluster_tables))
    # How many records of each previous person each new cluster holds (one join of the
    # new clusters with the previous assignments; everything below reads this).
    engine.create_table(
        OVERLAP,
        f"""SELECT c.threshold, c.cluster_key, p.person_id, count(*) AS shared
FROM {CLUSTERS} c JOIN {PREVIOUS_ASSIGNMENTS} p
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
    engine.create_table(
        ASSIGNMENTS,
        f"""SELECT c.threshold, c.source_dataset, c.record_id, i.person_id
FROM {CLUSTERS} c JOIN {CLUSTER_IDS} i
  ON i.threshold = c.threshold AND i.cluster_key = c.cluster_key""",
    )
    engine.create_table(REGISTER, _register_sql(generation, snapshot))
    return generation


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


def _register_sql(generation: int, snapshot: str) -> str:
    """The previous register with this generation's retirements and current ids, and the
    ids issued in it."""
    return f"""WITH now_of AS (  -- what each previously active id is now
    SELECT r.threshold, r.person_id,
           CASE WHEN s.person_id IS NOT NULL THEN 'kept'
                WHEN h.person_id IS NOT NULL THEN 'merged' ELSE 'withdrawn' END AS fate,
           CASE WHEN s.person_id IS NOT NULL THEN r.person_id
                ELSE home_survivor.person_id END AS now_id
    FROM {PREVIOUS_REGISTER} r
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


def churn_ledger(engine: Engine, generation: int, snapshot: str) -> dict[str, Any]:
    """What this linkage did to the ids, per threshold: ids created (new, split), kept,
    merged, split and retired; records added, kept, moved to another person and withdrawn
    (also per source), with rates of the previous records still present."""
    ledger: dict[str, Any] = {}
    for t in THRESHOLDS:
        ids = engine.fetch(
            f"""SELECT count(*) FILTER (WHERE kept),
       count(*) FILTER (WHERE origin IN ('new', 'first')),
       count(*) FILTER (WHERE origin = 'split')
FROM {CLUSTER_IDS} WHERE threshold = {lit(t)}"""
        )[0]
        retired = engine.fetch(
            f"""SELECT count(*) FILTER (WHERE retired_reason = 'merged'),
       count(*) FILTER (WHERE retired_reason = 'withdrawn')
FROM {REGISTER} WHERE threshold = {lit(t)} AND created_generation < {generation}
  AND retired_snapshot = {lit(snapshot)}"""
        )[0]
        merges = engine.fetch(
            f"SELECT count(*) FROM (SELECT cluster_key FROM {HOME} WHERE threshold = {lit(t)} "
            "GROUP BY cluster_key HAVING count(*) > 1) m"
        )[0][0]
        split = engine.fetch(
            f"SELECT count(*) FROM (SELECT person_id FROM {OVERLAP} WHERE threshold = {lit(t)} "
            "GROUP BY person_id HAVING count(*) > 1) s"
        )[0][0]
        by_source = {
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
FROM (SELECT * FROM {ASSIGNMENTS} WHERE threshold = {lit(t)}) n
FULL OUTER JOIN (SELECT * FROM {PREVIOUS_ASSIGNMENTS} WHERE threshold = {lit(t)}) p
  ON p.source_dataset = n.source_dataset AND p.record_id = n.record_id
GROUP BY 1 ORDER BY 1"""
            )
        }
        records = {
            k: sum(s[k] for s in by_source.values())
            for k in ("records_added", "records_kept", "records_moved", "records_withdrawn")
        }
        still_present = records["records_kept"] + records["records_moved"]
        ledger[t] = {
            "id_column": PERSON_ID_COLUMNS[t],
            "ids_kept": int(ids[0]),
            "ids_created": int(ids[1]) + int(ids[2]),
            "ids_created_for_new_records": int(ids[1]),
            "ids_created_by_splits": int(ids[2]),
            "merges": int(merges),
            "ids_retired_by_merges": int(retired[0]),
            "persons_split": int(split),
            "ids_retired_withdrawn": int(retired[1]),
            **records,
            "share_of_previous_records_moved": round(records["records_moved"] / still_present, 6)
            if still_present
            else 0.0,
            "by_source": by_source,
        }
    return ledger


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

"""Incremental linkage: link what changed since the last publication, not everything.

Each publication leaves its linkage state in its secure snapshot (`linkage_state/`):

    records.parquet  source_dataset, record_id, fingerprint: every linked record, with a hash
                     of its linkage input row (so a corrected record is seen as changed)
    pairs.parquet    the scored pairs above the prediction floor (before pair rules)
    state.json       engine, model version, thresholds, pair rule, the sums of the pairs
                     below the floor, and whether this build was linked in full

Its clusters are its identity store's assignments (one person id per cluster at each
threshold, pipelines.identity).

An incremental linkage compares the accepted records now with the previous state's:
records *new* (or changed) and records *removed* (withdrawn, replaced or changed). With the
approved model and the term-frequency tables of the whole current population, it scores the
new records against the kept ones (Splink's `predict_between`) and among themselves
(`predict_within`), drops the stored pairs of removed records and adds the new pairs. Then,
per threshold, only the clusters it touched are recomputed: the previous clusters holding an
end of a new link or a removed record, with the new records; every other cluster is carried
as it was. Scoring and clustering cost in proportion to the change.

What an incremental state does not hold is what a full relink would give now: the stored
pairs were scored with the term frequencies of their own time, and a removed record's pairs
below the floor stay in the floor's sums. The scheduled full relink recomputes everything
and reports how far the incremental clusters had drifted from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkage_models import linkage
from pipelines.contract import OutputLayout, Tables, parquet_source
from pipelines.engines import Engine
from pipelines.identity import RECORD_KEY, IdentityFiles
from pipelines.sql import ident, lit

# Engine tables of an incremental linkage.
PREVIOUS_RECORDS = "__incremental_previous_records"
PREVIOUS_PAIRS = "__incremental_previous_pairs"
PREVIOUS_CLUSTERS = "__incremental_previous_clusters"
CURRENT_RECORDS = "__incremental_current_records"
NEW_RECORDS = "__incremental_new_records"
REMOVED_RECORDS = "__incremental_removed_records"
NEW_PAIRS = "__incremental_new_pairs"
NODES = "__incremental_nodes"
EDGES = "__incremental_edges"
KEY_COLUMNS = ("record_id", "source_dataset")
RECORD_KEY_L = "source_dataset_l || '|' || record_id_l"
RECORD_KEY_R = "source_dataset_r || '|' || record_id_r"


class IncrementalUnavailable(RuntimeError):
    """The previous publication cannot be extended incrementally (says why and what to run)."""


@dataclass(frozen=True)
class LinkageStateFiles:
    """Where one build's linkage state lives (in its secure zone)."""

    folder: Path

    @classmethod
    def of(cls, layout: OutputLayout) -> LinkageStateFiles:
        return cls(layout.linkage_state_dir)

    @property
    def records(self) -> Path:
        return self.folder / "records.parquet"

    @property
    def pairs(self) -> Path:
        return self.folder / "pairs.parquet"

    @property
    def state(self) -> Path:
        return self.folder / "state.json"

    def exists(self) -> bool:
        return self.state.exists()

    def read_state(self) -> dict[str, Any]:
        return json.loads(self.state.read_text())


def linkage_conditions(
    engine_name: str, model_version: int, thresholds: dict[str, float], pair_rule: str
) -> dict[str, Any]:
    """What must be unchanged for stored pairs and clusters to be extended, not redone."""
    return {
        "engine": engine_name,
        "model_version": model_version,
        "thresholds": thresholds,
        "probable_twins_rule": pair_rule,
    }


def _fingerprints_sql(engine: Engine, input_tables: dict[str, str]) -> str:
    """Every input record's key and a hash of its linkage input row."""
    parts = []
    for table in input_tables.values():
        values = [
            f"coalesce(CAST({ident(c)} AS VARCHAR), '<null>')"
            for c in engine.columns(table)
            if c not in KEY_COLUMNS
        ]
        parts.append(
            f"SELECT source_dataset, CAST(record_id AS VARCHAR) AS record_id, "
            f"md5(concat_ws('|', {', '.join(values)})) AS fingerprint FROM {table}"
        )
    return " UNION ALL ".join(parts)


def save_state(
    engine: Engine,
    layout: OutputLayout,
    input_tables: dict[str, str],
    conditions: dict[str, Any],
    incremental: dict[str, Any] | None,
) -> dict[str, Any]:
    """Leave this build's linkage state for the next incremental linkage: the records
    linked, the pairs above the floor and the floor's sums. `incremental` is what an
    incremental linkage changed (None: this build linked everything)."""
    files = LinkageStateFiles.of(layout)
    files.folder.mkdir(parents=True, exist_ok=True)
    engine.write_parquet(_fingerprints_sql(engine, input_tables), files.records)
    engine.write_parquet(f"SELECT * FROM {Tables.PAIRWISE_PREDICTIONS}", files.pairs)
    below = engine.fetch(f"SELECT * FROM {Tables.PAIRS_BELOW_FLOOR}")[0]
    state = {
        **conditions,
        "linked": "incremental" if incremental else "full",
        "incremental": incremental,
        "below_floor": dict(
            zip(
                ("pairs", "expected_matches", "scored_pairs", "expected_matches_scored"),
                (float(v) for v in below),
                strict=True,
            )
        ),
    }
    files.state.write_text(json.dumps(state, indent=2))
    return state


def load_previous_state(
    engine: Engine, published: OutputLayout, conditions: dict[str, Any]
) -> dict[str, Any]:
    """The latest publication's linkage state and clusters as engine tables; refuses (with
    what to run instead) when there is none or it was linked under other conditions."""
    files, identity = LinkageStateFiles.of(published), IdentityFiles.of(published)
    full_relink = "run a full relink instead (`joinedup run`, or the Dagster job `relink`)"
    if not published.manifest.exists():
        raise IncrementalUnavailable(f"nothing is published yet to add to: {full_relink}")
    if not files.exists() or not identity.exists():
        raise IncrementalUnavailable(
            f"the latest publication ({published.snapshot}) has no linkage state to extend: "
            f"{full_relink}"
        )
    state = files.read_state()
    changed = [k for k, v in conditions.items() if state.get(k) != v]
    if changed:
        what = ", ".join(f"{k} {state.get(k)!r} -> {conditions[k]!r}" for k in changed)
        raise IncrementalUnavailable(
            f"the latest publication ({published.snapshot}) was linked under other "
            f"conditions ({what}): its pairs and clusters cannot be extended; {full_relink}"
        )
    for table, path in (
        (PREVIOUS_RECORDS, files.records),
        (PREVIOUS_PAIRS, files.pairs),
        (PREVIOUS_CLUSTERS, identity.assignments),
    ):
        engine.register_file(f"{table}__file", parquet_source(path), "parquet")
        engine.create_table(table, f"SELECT * FROM {table}__file")
    return state


def find_changes(engine: Engine, input_tables: dict[str, str]) -> dict[str, int]:
    """Records new (or changed) since the previous state, and records removed from it."""
    engine.create_table(CURRENT_RECORDS, _fingerprints_sql(engine, input_tables))
    for table, left, right in (
        (NEW_RECORDS, CURRENT_RECORDS, PREVIOUS_RECORDS),
        (REMOVED_RECORDS, PREVIOUS_RECORDS, CURRENT_RECORDS),
    ):
        engine.create_table(
            table,
            f"""SELECT a.source_dataset, a.record_id FROM {left} a
LEFT JOIN {right} b ON b.source_dataset = a.source_dataset AND b.record_id = a.record_id
 AND b.fingerprint = a.fingerprint
WHERE b.record_id IS NULL""",
        )
    new, removed = engine.count(NEW_RECORDS), engine.count(REMOVED_RECORDS)
    return {
        "population": engine.count(CURRENT_RECORDS),
        "records_new_or_changed": new,
        "records_removed_or_changed": removed,
        "records_kept": engine.count(CURRENT_RECORDS) - new,
    }


def _split_inputs(
    engine: Engine, input_tables: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Each source's input split into its new records and the records kept."""
    new, kept = {}, {}
    for source, table in input_tables.items():
        joined = (
            f"FROM {table} i LEFT JOIN {NEW_RECORDS} n ON n.source_dataset = i.source_dataset "
            "AND n.record_id = CAST(i.record_id AS VARCHAR)"
        )
        new_table, kept_table = f"__incremental_new_{source}", f"__incremental_kept_{source}"
        engine.create_table(new_table, f"SELECT i.* {joined} WHERE n.record_id IS NOT NULL")
        engine.create_table(kept_table, f"SELECT i.* {joined} WHERE n.record_id IS NULL")
        if engine.count(new_table):
            new[source] = new_table
        if engine.count(kept_table):
            kept[source] = kept_table
    return new, kept


def _tf_columns(trained: dict[str, Any]) -> list[str]:
    """The columns the model adjusts for term frequency."""
    return sorted(
        {
            level["tf_adjustment_column"]
            for comparison in trained["comparisons"]
            for level in comparison["comparison_levels"]
            if level.get("tf_adjustment_column")
        }
    )


def _oriented_sql(columns: list[str], table: str) -> str:
    """Pairs with their left record the one whose key sorts first, as Splink's predict
    orients them (predict_between puts the new record on the left)."""
    swap = (
        "(source_dataset_l || '-__-' || record_id_l) > (source_dataset_r || '-__-' || record_id_r)"
    )
    items = []
    for c in columns:
        other = c[:-2] + ("_r" if c.endswith("_l") else "_l")
        if c.endswith(("_l", "_r")) and other in columns:
            items.append(f"CASE WHEN {swap} THEN {ident(other)} ELSE {ident(c)} END AS {ident(c)}")
        else:
            items.append(ident(c))
    return f"SELECT {', '.join(items)} FROM {table}"


def score_new_records(
    engine: Engine, linker: Any, db_api: Any, trained: dict[str, Any], input_tables: dict[str, str]
) -> dict[str, Any]:
    """Score the new records against the kept ones and among themselves (the linker holds
    the whole current population, whose term frequencies are used); the stored pairs of
    removed records are dropped and the new pairs above the floor added, as
    PAIRWISE_PREDICTIONS, with the floor's sums in PAIRS_BELOW_FLOOR."""
    for column in _tf_columns(trained):
        linker.table_management.compute_tf_table(column)
    new, kept = _split_inputs(engine, input_tables)
    frames = {
        role: [db_api.register(t, table_name=f"__incremental_{role}_{s}") for s, t in parts.items()]
        for role, parts in (("new", new), ("kept", kept))
    }
    scored = []
    if frames["new"] and frames["kept"]:
        scored.append(linker.inference.predict_between(frames["new"], frames["kept"]))
    if frames["new"]:
        scored.append(linker.inference.predict_within(frames["new"]))
    columns = engine.columns(PREVIOUS_PAIRS)
    empty = f"SELECT {', '.join(ident(c) for c in columns)} FROM {PREVIOUS_PAIRS} WHERE 1 = 0"
    engine.create_table(
        NEW_PAIRS,
        " UNION ALL ".join(
            [empty, *(_oriented_sql(columns, frame.physical_name) for frame in scored)]
        ),
    )
    floor = linkage.PREDICTION_FLOOR
    below = f"match_probability < {floor}"
    new_below = engine.fetch(
        f"SELECT count(*) FILTER (WHERE {below}), "
        f"coalesce(sum(match_probability) FILTER (WHERE {below}), 0), count(*), "
        f"coalesce(sum(match_probability), 0) FROM {NEW_PAIRS}"
    )[0]
    return {"new_pairs_scored": int(new_below[2]), "new_below_floor": new_below}


def extend_pairs(
    engine: Engine, previous_state: dict[str, Any], new_below: tuple[Any, ...]
) -> dict[str, int]:
    """PAIRWISE_PREDICTIONS: the stored pairs of records still present, and the new pairs
    above the floor; PAIRS_BELOW_FLOOR: the stored sums plus the new ones."""
    columns = ", ".join(ident(c) for c in engine.columns(PREVIOUS_PAIRS))
    removed = f"SELECT source_dataset || '|' || record_id AS k FROM {REMOVED_RECORDS}"
    engine.create_table(
        Tables.PAIRWISE_PREDICTIONS,
        f"""SELECT {columns} FROM {PREVIOUS_PAIRS}
WHERE {RECORD_KEY_L} NOT IN ({removed}) AND {RECORD_KEY_R} NOT IN ({removed})
UNION ALL
SELECT {columns} FROM {NEW_PAIRS} WHERE match_probability >= {linkage.PREDICTION_FLOOR}""",
    )
    stored = previous_state["below_floor"]
    engine.create_table(
        Tables.PAIRS_BELOW_FLOOR,
        f"SELECT CAST({stored['pairs'] + new_below[0]} AS BIGINT) AS pairs, "
        f"CAST({stored['expected_matches'] + float(new_below[1])} AS DOUBLE) AS expected_matches, "
        f"CAST({stored['scored_pairs'] + new_below[2]} AS BIGINT) AS scored_pairs, "
        f"CAST({stored['expected_matches_scored'] + float(new_below[3])} AS DOUBLE) "
        "AS expected_matches_scored",
    )
    kept_pairs = engine.count(PREVIOUS_PAIRS)
    return {
        "stored_pairs": kept_pairs,
        "stored_pairs_dropped": kept_pairs
        + engine.fetch(
            f"SELECT count(*) FROM {NEW_PAIRS} WHERE match_probability >= "
            f"{linkage.PREDICTION_FLOOR}"
        )[0][0]
        - engine.count(Tables.PAIRWISE_PREDICTIONS),
    }


def recluster_touched(
    engine: Engine, db_api: Any, threshold: str, probability: float
) -> dict[str, int]:
    """The clusters at one threshold as Tables.clusters(threshold): the previous clusters
    touched by a new link or a removed record are recomputed with the new records, from the
    pairs clustering may use; every other previous cluster is kept as it was."""
    from splink.clustering import cluster_pairwise_predictions_at_threshold

    previous = (
        f"SELECT source_dataset, CAST(record_id AS VARCHAR) AS record_id, person_id "
        f"FROM {PREVIOUS_CLUSTERS} WHERE threshold = {lit(threshold)}"
    )
    new_links = (
        f"SELECT source_dataset_l AS source_dataset, CAST(record_id_l AS VARCHAR) AS record_id "
        f"FROM {NEW_PAIRS} WHERE match_probability >= {probability} UNION ALL "
        f"SELECT source_dataset_r, CAST(record_id_r AS VARCHAR) FROM {NEW_PAIRS} "
        f"WHERE match_probability >= {probability}"
    )
    touched = (
        f"SELECT DISTINCT p.person_id FROM ({previous}) p JOIN "
        f"({new_links} UNION ALL SELECT source_dataset, record_id FROM {REMOVED_RECORDS}) e "
        "ON e.source_dataset = p.source_dataset AND e.record_id = p.record_id"
    )
    kept_previous = (
        f"SELECT p.* FROM ({previous}) p JOIN {CURRENT_RECORDS} c "
        "ON c.source_dataset = p.source_dataset AND c.record_id = p.record_id "
        f"LEFT JOIN {NEW_RECORDS} n ON n.source_dataset = p.source_dataset "
        "AND n.record_id = p.record_id WHERE n.record_id IS NULL"
    )
    engine.create_table(
        NODES,
        f"""SELECT source_dataset, record_id, {RECORD_KEY} AS node_id
FROM ({kept_previous}) k WHERE person_id IN ({touched})
UNION ALL SELECT source_dataset, record_id, {RECORD_KEY} FROM {NEW_RECORDS}""",
    )
    engine.create_table(
        EDGES,
        f"""SELECT {RECORD_KEY_L} AS node_id_l, {RECORD_KEY_R} AS node_id_r, match_probability
FROM {Tables.PAIRS_FOR_CLUSTERING}
WHERE match_probability >= {probability}
  AND {RECORD_KEY_L} IN (SELECT node_id FROM {NODES})
  AND {RECORD_KEY_R} IN (SELECT node_id FROM {NODES})""",
    )
    reclustered = cluster_pairwise_predictions_at_threshold(
        db_api.table_to_splink_dataframe(NODES, NODES),
        db_api.table_to_splink_dataframe(EDGES, EDGES),
        db_api,
        node_id_column_name="node_id",
        edge_id_column_name_left="node_id_l",
        edge_id_column_name_right="node_id_r",
        threshold_match_probability=probability,
    )
    engine.create_table(
        Tables.clusters(threshold),
        f"""SELECT source_dataset, record_id, 'kept:' || person_id AS cluster_id
FROM ({kept_previous}) k WHERE person_id NOT IN ({touched})
UNION ALL
SELECT n.source_dataset, n.record_id, 'new:' || c.cluster_id
FROM {NODES} n JOIN {reclustered.physical_name} c ON c.node_id = n.node_id""",
    )
    return {"records_reclustered": engine.count(NODES)}

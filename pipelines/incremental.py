"""Incremental linkage: link what changed since the last publication, not everything.

The working database keeps, between runs, what the last linkage built: the scored pairs
above the floor (PAIRWISE_PREDICTIONS), the pairs clustering may use, every record's person
ids (the identity step's assignments: one id per cluster at each threshold) and a
fingerprint of every linked record (STATE_RECORDS: a hash of its linkage input row, so a
corrected record is seen as changed; `Engine.row_fingerprint_sql`).
`secure/work/linkage_state.json` says which publication those tables are, with the model,
thresholds, pair rule and engine they were linked under and the sums of the pairs below the
floor. It is written only once that publication is out, and removed as soon as any job
starts rebuilding the linkage tables, so an incremental linkage never extends tables that
are not the latest publication's.

An incremental linkage compares the accepted records now with the stored fingerprints:
records *new* (or changed) and records *removed* (withdrawn, replaced or changed). With the
approved model and the term-frequency tables of the whole current population it scores the
new records against every record (Splink's `predict_between`, in one pass: against the kept
records and among themselves, a record's pair with itself dropped); in place, the stored
pairs of removed records are deleted and the new pairs inserted. Then only the clusters it
touched are recomputed: the previous clusters holding an end of a new link or a removed
record, with the new records (one set for all three thresholds, `recluster_touched`); every
other cluster is carried as it was. Scoring and clustering cost in proportion to the change.

What the stored pairs do not have is what a full relink would give now: they keep the term
frequencies of their own linkage, and a removed record's pairs below the floor stay in the
floor's sums. The scheduled full relink recomputes everything and reports how far the
incremental clusters had drifted from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from linkage_models import linkage
from pipelines.contract import DeliveryTables, OutputLayout, Tables
from pipelines.engines import Engine
from pipelines.identity import RECORD_KEY
from pipelines.sql import ident, record_key

# Engine tables of an incremental linkage.
STATE_RECORDS = "linkage_state_records"  # kept between runs, with the linkage's tables
CURRENT_RECORDS = "__incremental_current_records"
NEW_RECORDS = "__incremental_new_records"
REMOVED_RECORDS = "__incremental_removed_records"
EVERY_RECORD = "__incremental_every_record"  # every input record (a view)
NEW_RECORD_ROWS = "__incremental_new_record_rows"  # the new records' input rows (a view)
SCORED_PAIRS = "__incremental_scored_pairs"  # every new pair scored (a view)
NEW_PAIRS = "__incremental_new_pairs"  # those at or above the prediction floor, every column
TOUCHED = "__incremental_touched_clusters"
NODES = "__incremental_nodes"
# The records an incremental linkage reclustered or removed: only their person ids can
# have changed (pipelines.identity).
RECLUSTERED_RECORDS = "__incremental_reclustered_records"
EDGES = "__incremental_edges"
KEY_COLUMNS = ("record_id", "source_dataset")
RECORD_KEY_L = record_key("record_id_l", "source_dataset_l")
RECORD_KEY_R = record_key("record_id_r", "source_dataset_r")
FULL_RELINK = "run a full relink instead (`joinedup run`, or the Dagster job `relink`)"


class IncrementalUnavailable(RuntimeError):
    """The latest publication cannot be extended incrementally (says why and what to run)."""


def _state_file(layout: OutputLayout) -> Path:
    return layout.work_dir / "linkage_state.json"


def _pending_file(layout: OutputLayout) -> Path:
    return layout.work_dir / "linkage_state.pending.json"


def forget_state(layout: OutputLayout) -> dict[str, Any] | None:
    """The linkage tables are about to be rebuilt: from now on they are not a publication's.
    Returns the state they were (None when they were no publication's)."""
    path = _state_file(layout)
    state = json.loads(path.read_text()) if path.exists() else None
    path.unlink(missing_ok=True)
    _pending_file(layout).unlink(missing_ok=True)
    return state


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


def _fingerprints_sql(
    engine: Engine, input_tables: dict[str, str], only: dict[str, str | None] | None = None
) -> str:
    """Every input record's key and a hash of its linkage input row (`only`: just the
    records whose ids a table per source holds; a source without one has none)."""
    parts = []
    for source, table in input_tables.items():
        values = [c for c in engine.columns(table) if c not in KEY_COLUMNS]
        where = ""
        if only is not None:
            ids = only.get(source)
            where = f" WHERE record_id IN (SELECT record_id FROM {ids})" if ids else " WHERE 1 = 0"
        parts.append(
            f"SELECT source_dataset, CAST(record_id AS VARCHAR) AS record_id, "
            f"{engine.row_fingerprint_sql(values)} AS fingerprint FROM {table}{where}"
        )
    return " UNION ALL ".join(parts)


def stage_state(
    engine: Engine,
    layout: OutputLayout,
    input_tables: dict[str, str] | None,
    conditions: dict[str, Any],
    incremental: dict[str, Any] | None,
    combined: dict[str, Any],
) -> dict[str, Any]:
    """After clustering: fingerprint the linked records (an incremental linkage did so
    already: `input_tables` None) and stage the state of this build, to be committed when
    it is published. `incremental` is what an incremental linkage changed (None: this build
    linked everything); `combined`, per source, how its deliveries were combined (the
    linkage_inputs step's entries, with the deliveries they hold)."""
    if input_tables is None:  # in place: out with the removed, in with the new
        engine.delete_rows(
            STATE_RECORDS, f"{RECORD_KEY} IN (SELECT {RECORD_KEY} FROM {REMOVED_RECORDS})"
        )
        engine.insert_rows(
            STATE_RECORDS,
            f"SELECT c.source_dataset, c.record_id, c.fingerprint FROM {CURRENT_RECORDS} c "
            f"JOIN {NEW_RECORDS} n ON n.source_dataset = c.source_dataset "
            "AND n.record_id = c.record_id",
        )
    else:
        engine.create_table(STATE_RECORDS, _fingerprints_sql(engine, input_tables))
    below = engine.fetch(f"SELECT * FROM {Tables.PAIRS_BELOW_FLOOR}")[0]
    state = {
        "snapshot": layout.snapshot,
        **conditions,
        "linked": "incremental" if incremental else "full",
        "combined": combined,
        "below_floor": dict(
            zip(
                ("pairs", "expected_matches", "scored_pairs", "expected_matches_scored"),
                (float(v) for v in below),
                strict=True,
            )
        ),
    }
    _pending_file(layout).write_text(json.dumps(state, indent=2))
    return state


def commit_state(layout: OutputLayout, published_snapshot: str) -> bool:
    """The build staged by the clustering step is now the publication: its tables may be
    extended. (A publication without a new linkage, e.g. after clerical review, keeps the
    state as it was.)"""
    pending = _pending_file(layout)
    if not pending.exists() or json.loads(pending.read_text())["snapshot"] != published_snapshot:
        return False
    pending.replace(_state_file(layout))
    return True


def not_extendable(published: OutputLayout, state: dict[str, Any] | None) -> str | None:
    """Why the latest publication's linkage cannot be extended with `state` (what
    `forget_state` returned when this linkage began); None when it can."""
    if not published.exact_manifest.exists():
        return "nothing is published yet to add to"
    linked = json.loads(published.exact_manifest.read_text())["snapshot"]
    if state is None or state["snapshot"] != linked:
        return (
            f"the working database does not hold the linkage of the latest publication "
            f"({linked}): another job rebuilt its tables (`joinedup train` links the "
            "models it compares into them), a run failed, or they were started afresh"
        )
    return None


def check_state(
    published: OutputLayout, state: dict[str, Any] | None, conditions: dict[str, Any]
) -> dict[str, Any]:
    """`state` (what `forget_state` returned when this linkage began) when it is the latest
    publication's and was linked under the same conditions: an incremental linkage may
    extend it. Otherwise says why not and what to run."""
    why = not_extendable(published, state)
    if why is not None or state is None:
        raise IncrementalUnavailable(f"{why}: {FULL_RELINK}")
    linked = state["snapshot"]
    changed = [k for k, v in conditions.items() if state.get(k) != v]
    if changed:
        what = ", ".join(f"{k} {state.get(k)!r} -> {conditions[k]!r}" for k in changed)
        raise IncrementalUnavailable(
            f"the latest publication ({linked}) was linked under other conditions ({what}): "
            f"its pairs and clusters cannot be extended; {FULL_RELINK}"
        )
    return state


def combination_to_extend(
    engine: Engine, entry: dict[str, Any] | None, source: str, deliveries: list[DeliveryTables]
) -> dict[str, Any] | None:
    """`entry` (how the publication's linkage combined the source: its state's "combined")
    when the working database still holds it and its deliveries are the first of
    `deliveries`, unchanged: the deliveries after them can be added to it in place. None
    when the source must be combined afresh (a delivery withdrawn, replaced, re-validated
    or ordered before a combined one; or nothing to extend)."""
    if not entry or not entry.get("accepted_table") or not entry.get("linkage_input"):
        return None
    held = entry["deliveries"]
    if [d.fingerprint() for d in deliveries[: len(held)]] != held:
        return None
    tables = (Tables.checked(source), entry["accepted_table"], Tables.quarantined(source))
    if not all(engine.table_exists(t) for t in (*tables, entry["linkage_input"])):
        return None
    return entry


def find_changes(
    engine: Engine, input_tables: dict[str, str], added: dict[str, str | None] | None = None
) -> dict[str, int]:
    """Records new (or changed) since the previous state, and records removed from it.

    `added`: when every source's new deliveries were added to the publication's combination
    in place, each source's table of the rows added (None: none). Those are then the new
    records (their ids were not combined before) and none was removed, so only they are
    fingerprinted; otherwise every record is, and compared with the stored fingerprints."""
    if added is not None:
        engine.create_table(CURRENT_RECORDS, _fingerprints_sql(engine, input_tables, added))
        engine.create_table(NEW_RECORDS, f"SELECT source_dataset, record_id FROM {CURRENT_RECORDS}")
        engine.create_table(REMOVED_RECORDS, f"SELECT * FROM {NEW_RECORDS} WHERE 1 = 0")
        population = sum(engine.count(t) for t in input_tables.values())
    else:
        engine.create_table(CURRENT_RECORDS, _fingerprints_sql(engine, input_tables))
        for table, left, right in (
            (NEW_RECORDS, CURRENT_RECORDS, STATE_RECORDS),
            (REMOVED_RECORDS, STATE_RECORDS, CURRENT_RECORDS),
        ):
            engine.create_table(
                table,
                f"""SELECT a.source_dataset, a.record_id FROM {left} a
LEFT JOIN {right} b ON b.source_dataset = a.source_dataset AND b.record_id = a.record_id
 AND b.fingerprint = a.fingerprint
WHERE b.record_id IS NULL""",
            )
        population = engine.count(CURRENT_RECORDS)
    new, removed = engine.count(NEW_RECORDS), engine.count(REMOVED_RECORDS)
    return {
        "population": population,
        "records_new_or_changed": new,
        "records_removed_or_changed": removed,
        "records_kept": population - new,
    }


def _new_and_every_record_views(engine: Engine, input_tables: dict[str, str]) -> bool:
    """Two views, one frame each for Splink: every input record (EVERY_RECORD) and the new
    ones among them (NEW_RECORD_ROWS). False when no record is new."""
    columns = ", ".join(ident(c) for c in engine.columns(next(iter(input_tables.values()))))
    engine.create_view(
        EVERY_RECORD,
        " UNION ALL ".join(f"SELECT {columns} FROM {t}" for t in input_tables.values()),
    )
    engine.create_view(
        NEW_RECORD_ROWS,
        f"SELECT i.* FROM {EVERY_RECORD} i JOIN {NEW_RECORDS} n "
        "ON n.source_dataset = i.source_dataset AND n.record_id = CAST(i.record_id AS VARCHAR)",
    )
    return engine.count(NEW_RECORDS) > 0


def drop_working_tables(engine: Engine, sources: list[str]) -> None:
    """A full linkage replaces what incremental ones extended: their working tables (the
    records and pairs the last one added, what it reclustered) then describe nothing."""
    for source in sources:  # each source's views, left by earlier versions
        for role in ("new", "kept"):
            engine.drop_view(f"__incremental_{role}_{source}")
    for view in (SCORED_PAIRS, NEW_RECORD_ROWS, EVERY_RECORD):
        engine.drop_view(view)
    for table in (CURRENT_RECORDS, NEW_RECORDS, REMOVED_RECORDS, NEW_PAIRS, RECLUSTERED_RECORDS):
        engine.drop_table(table)
    _drop_reclustering_tables(engine)


def _drop_reclustering_tables(engine: Engine) -> None:
    for table in (TOUCHED, NODES, EDGES):
        engine.drop_table(table)


def _new_pairs_sql(columns: list[str], table: str) -> str:
    """Splink's pairs of new records against every record (`predict_between`, the new
    record on the left) as the pairs they are: a record with itself dropped, a pair of two
    new records once (the way round `predict_within` would give it), and every pair with
    its left record the one whose key sorts first, as Splink's predict orients them."""
    key_l = "(p.source_dataset_l || '-__-' || p.record_id_l)"
    key_r = "(p.source_dataset_r || '-__-' || p.record_id_r)"
    items = []
    for c in columns:
        other = c[:-2] + ("_r" if c.endswith("_l") else "_l")
        if c.endswith(("_l", "_r")) and other in columns:
            items.append(
                f"CASE WHEN {key_l} > {key_r} THEN p.{ident(other)} ELSE p.{ident(c)} END "
                f"AS {ident(c)}"
            )
        else:
            items.append(f"p.{ident(c)}")
    return f"""SELECT {", ".join(items)} FROM {table} p
LEFT JOIN {NEW_RECORDS} n ON n.source_dataset = p.source_dataset_r
 AND n.record_id = CAST(p.record_id_r AS VARCHAR)
WHERE n.record_id IS NULL OR {key_l} < {key_r}"""


def score_changes(
    engine: Engine, linker: Any, db_api: Any, trained: dict[str, Any], input_tables: dict[str, str]
) -> Any | None:
    """Splink's scored pairs of the new records against every record, the new ones
    included (one pass scores them against the kept records and among themselves; the
    linker holds the whole population, whose term frequencies are used). None when no
    record is new. Splink's working tables, and the scored pairs, are the engine's scratch
    tables."""
    if not _new_and_every_record_views(engine, input_tables):
        return None
    new = db_api.register(NEW_RECORD_ROWS, table_name=NEW_RECORD_ROWS)
    every = db_api.register(EVERY_RECORD, table_name=EVERY_RECORD)
    with engine.scratch():
        for column in linkage.tf_columns(trained):
            linker.table_management.compute_tf_table(column)
        return linker.inference.predict_between([new], [every])


def score_new_records(
    engine: Engine, linker: Any, db_api: Any, trained: dict[str, Any], input_tables: dict[str, str]
) -> dict[str, Any]:
    """Score the new records against the kept ones and among themselves (the linker holds
    the whole current population, whose term frequencies are used). The new pairs at or
    above the floor, with every column Splink gave them (its intermediate ones when it kept
    them, which the diagnostics show), become NEW_PAIRS, written once: extend_pairs adds
    them to the stored pairs and recluster_touched reads their ends. Below the floor a pair
    is only summed, as in a full linkage. "detailed_pairs": NEW_PAIRS, or "" when no record
    was new."""
    scored = score_changes(engine, linker, db_api, trained, input_tables)
    if scored is not None:
        every = _new_pairs_sql(engine.columns(scored.physical_name), scored.physical_name)
    else:
        columns = engine.columns(Tables.PAIRWISE_PREDICTIONS)
        every = (
            f"SELECT {', '.join(ident(c) for c in columns)} FROM {Tables.PAIRWISE_PREDICTIONS} "
            "WHERE 1 = 0"
        )
    engine.drop_view(SCORED_PAIRS)  # stored by earlier versions, which would hide this one
    with engine.scratch():  # a view of Splink's scratch tables goes with them
        engine.create_view(SCORED_PAIRS, every)
    below = f"match_probability < {linkage.PREDICTION_FLOOR}"
    engine.create_table(NEW_PAIRS, f"SELECT * FROM {SCORED_PAIRS} WHERE NOT ({below})")
    # Each side of the floor read once: below it summed, above it from NEW_PAIRS.
    sums = "count(*), coalesce(sum(match_probability), 0)"
    under, under_sum = engine.fetch(f"SELECT {sums} FROM {SCORED_PAIRS} WHERE {below}")[0]
    over, over_sum = engine.fetch(f"SELECT {sums} FROM {NEW_PAIRS}")[0]
    new_below = (under, under_sum, under + over, under_sum + over_sum)
    return {
        "new_pairs_scored": int(new_below[2]),
        "new_below_floor": new_below,
        "detailed_pairs": NEW_PAIRS if scored is not None else "",
    }


def extend_pairs(
    engine: Engine, state: dict[str, Any], new_below: tuple[Any, ...], pair_rule: str | None
) -> dict[str, int]:
    """In place: the stored pairs of removed records deleted and the new pairs above the
    floor inserted, into PAIRWISE_PREDICTIONS and, when a pair rule is on, those it keeps
    into PAIRS_FOR_CLUSTERING; PAIRS_BELOW_FLOOR: the stored sums plus the new ones."""
    columns = ", ".join(ident(c) for c in engine.columns(Tables.PAIRWISE_PREDICTIONS))
    removed = f"SELECT {RECORD_KEY} FROM {REMOVED_RECORDS}"
    touches_removed = f"{RECORD_KEY_L} IN ({removed}) OR {RECORD_KEY_R} IN ({removed})"
    stored = engine.count(Tables.PAIRWISE_PREDICTIONS)
    any_removed = engine.count(REMOVED_RECORDS) > 0
    tables = [(Tables.PAIRWISE_PREDICTIONS, "")]
    if pair_rule:
        tables.append((Tables.PAIRS_FOR_CLUSTERING, f" WHERE NOT ({pair_rule})"))
    for table, condition in tables:
        if any_removed:
            engine.delete_rows(table, touches_removed)
        engine.insert_rows(table, f"SELECT {columns} FROM {NEW_PAIRS}{condition}")
    floor = state["below_floor"]
    engine.create_table(
        Tables.PAIRS_BELOW_FLOOR,
        f"SELECT CAST({floor['pairs'] + new_below[0]} AS BIGINT) AS pairs, "
        f"CAST({floor['expected_matches'] + float(new_below[1])} AS DOUBLE) "
        "AS expected_matches, "
        f"CAST({floor['scored_pairs'] + new_below[2]} AS BIGINT) AS scored_pairs, "
        f"CAST({floor['expected_matches_scored'] + float(new_below[3])} AS DOUBLE) "
        "AS expected_matches_scored",
    )
    added = engine.count(NEW_PAIRS)
    return {
        "stored_pairs": stored,
        "stored_pairs_dropped": stored + added - engine.count(Tables.PAIRWISE_PREDICTIONS),
        "new_pairs_kept": int(added),
    }


def recluster_touched(
    engine: Engine, db_api: Any, thresholds: dict[str, float], pairs: str
) -> dict[str, dict[str, int]]:
    """In place, the clusters at each threshold (Tables.clusters(name), the stored
    linkage's): those touched by a new link or a removed record are recomputed with the new
    records, from the pairs clustering may use (table `pairs`); every other cluster stays as
    it was.

    One set of records is reclustered at every threshold: the clusters touched at the
    lowest one, with the new records. Clusters at a higher threshold nest inside those at a
    lower one, and a link at or above a higher threshold is one at or above the lowest, so
    that set holds every cluster touched at any threshold and consists of whole clusters at
    each: no link at or above a threshold leaves it, and its components are exact."""
    from splink.clustering import cluster_pairwise_predictions_at_threshold

    lowest = min(thresholds.values())
    widest = Tables.clusters(min(thresholds, key=lambda name: thresholds[name]))
    linked = f"FROM {NEW_PAIRS} WHERE match_probability >= {lowest}"
    ends = (
        f"SELECT {RECORD_KEY_L} {linked} UNION ALL SELECT {RECORD_KEY_R} {linked} "
        f"UNION ALL SELECT {RECORD_KEY} FROM {REMOVED_RECORDS}"
    )
    _drop_reclustering_tables(engine)  # stored by earlier versions, they would hide these
    with engine.scratch():  # the step's working tables, not the stored linkage's
        engine.create_table(
            TOUCHED, f"SELECT DISTINCT cluster_id FROM {widest} WHERE {RECORD_KEY} IN ({ends})"
        )
        engine.create_table(
            NODES,
            f"""SELECT source_dataset, CAST(record_id AS VARCHAR) AS record_id,
  {RECORD_KEY} AS node_id
FROM {widest} WHERE cluster_id IN (SELECT cluster_id FROM {TOUCHED})
  AND {RECORD_KEY} NOT IN (SELECT {RECORD_KEY} FROM {REMOVED_RECORDS})
UNION ALL SELECT source_dataset, record_id, {RECORD_KEY} FROM {NEW_RECORDS}""",
        )
        engine.create_table(
            EDGES,
            f"""SELECT {RECORD_KEY_L} AS node_id_l, {RECORD_KEY_R} AS node_id_r, match_probability
FROM {pairs} p
SEMI JOIN {NODES} l ON l.source_dataset = p.source_dataset_l AND l.record_id = p.record_id_l
SEMI JOIN {NODES} r ON r.source_dataset = p.source_dataset_r AND r.record_id = p.record_id_r
WHERE match_probability >= {lowest}""",
        )
    nodes = db_api.table_to_splink_dataframe(NODES, NODES)
    edges = db_api.table_to_splink_dataframe(EDGES, EDGES)
    reclustered = engine.count(NODES)
    # The records whose clusters are replaced: the set, and the removed records.
    engine.create_table(
        RECLUSTERED_RECORDS,
        f"SELECT source_dataset, record_id FROM {NODES} "
        f"UNION ALL SELECT source_dataset, record_id FROM {REMOVED_RECORDS}",
    )
    replaced = f"{RECORD_KEY} IN (SELECT {RECORD_KEY} FROM {RECLUSTERED_RECORDS})"
    for name, probability in thresholds.items():
        with engine.scratch():  # Splink's many small tables
            clusters = cluster_pairwise_predictions_at_threshold(
                nodes,
                edges,
                db_api,
                node_id_column_name="node_id",
                edge_id_column_name_left="node_id_l",
                edge_id_column_name_right="node_id_r",
                threshold_match_probability=probability,
            )
        # A recomputed cluster is named after one of its own records, which no untouched
        # cluster holds: the names stay unique.
        engine.delete_rows(Tables.clusters(name), replaced)
        engine.insert_rows(
            Tables.clusters(name),
            f"""SELECT n.source_dataset, n.record_id, 'i:' || c.cluster_id
FROM {NODES} n JOIN {clusters.physical_name} c ON c.node_id = n.node_id""",
        )
    return {name: {"records_reclustered": reclustered} for name in thresholds}

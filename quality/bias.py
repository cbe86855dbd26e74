"""Linkage bias: for which groups is linkage worse?

Per group of records (source, sex, age band at the event, region, event year): the share
linked to another source, the within-source duplicate rate, and label-free estimates of
precision and recall of the balanced clusters. The estimates are the published ones
(quality.error_rates) taken apart by group: each pair the estimate counts is attributed to
both of its records' groups, each record's clustermates are its pairs within clusters, and
the misses the estimate has only as totals (the expected matches below the prediction floor
and those no blocking rule reached) are shared out by the groups' numbers of records. Over
all records they give the published balanced estimate. Groups whose estimated recall is
markedly below the overall figure are flagged. Counts from 1 to 9 are suppressed by the
report, which may leave the secure setting.
"""

from __future__ import annotations

from typing import Any

from pipelines.contract import PERSON_ID_COLUMNS, Tables
from pipelines.engines import Engine
from quality.error_rates import add_missed_elsewhere, build_expected_pairs, drop_expected_pairs

AGE_BANDS = (
    (0, 17, "0-17"),
    (18, 24, "18-24"),
    (25, 34, "25-34"),
    (35, 49, "35-49"),
    (50, 64, "50-64"),
    (65, 200, "65+"),
)
DIMENSIONS = ("source", "sex", "age_band", "region", "event_year")
# A group is flagged when its estimated recall is this far below the overall estimate.
FLAG_RECALL_GAP = 0.01
# The balanced pairs counted here when no estimate kept them (bias_tables).
EXPECTED_PAIRS_BY_GROUP = "__expected_pairs_by_group"
# One row per linked record with its groups and its share of the group figures.
RECORD_STATS = "__record_stats"


def _age_sql(born: str, at: str) -> str:
    """Age in whole years on a date, in SQL every engine runs the same way."""
    return (
        f"(year({at}) - year({born}) - CASE WHEN month({at}) * 100 + day({at}) "
        f"< month({born}) * 100 + day({born}) THEN 1 ELSE 0 END)"
    )


def _age_band_sql(age: str) -> str:
    cases = " ".join(
        f"WHEN {age} BETWEEN {lo} AND {hi} THEN '{label}'" for lo, hi, label in AGE_BANDS
    )
    return f"CASE {cases} ELSE 'unknown' END"


def build_record_groups(engine: Engine, accepted_tables: dict[str, str]) -> None:
    """Table __record_groups: one row per linked record with its group on each dimension."""
    parts = []
    for table in accepted_tables.values():
        parts.append(
            f"SELECT source_dataset, record_id, sex, date_of_birth, postcode_area, event_date "
            f"FROM {table}"
        )
    age = _age_sql("a.date_of_birth", "a.event_date")
    engine.create_table(
        "__record_groups",
        f"""
        WITH a AS ({" UNION ALL ".join(parts)}),
        regions AS (SELECT area, region FROM {Tables.POSTCODE_REGIONS})
        SELECT a.source_dataset || '|' || a.record_id AS id,
               l.person_id,
               a.source_dataset AS source,
               coalesce(a.sex, 'unknown') AS sex,
               {_age_band_sql(age)} AS age_band,
               coalesce(r.region, 'unknown') AS region,
               coalesce(CAST(year(a.event_date) AS VARCHAR), 'unknown') AS event_year
        FROM a
        JOIN {Tables.PERSON_LOOKUP} l ON l.source_dataset = a.source_dataset
                            AND l.source_record_id = a.record_id
        LEFT JOIN regions r ON r.area = a.postcode_area""",
    )


def bias_tables(
    engine: Engine,
    accepted_tables: dict[str, str],
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    counted_table: str | None = None,
) -> dict[str, Any]:
    """Link rates and estimated error rates by group, for each dimension. `counted_table`
    is the balanced estimate's pairs as quality.error_rates kept them (a publication's
    Tables.BALANCED_EXPECTED_PAIRS); without it they are counted again here."""
    build_record_groups(engine, accepted_tables)
    if counted_table is None:
        drop_expected_pairs(engine)
        counted = build_expected_pairs(
            engine, PERSON_ID_COLUMNS["balanced"], pairs_table, table=EXPECTED_PAIRS_BY_GROUP
        )
        add_missed_elsewhere(engine, counted, EXPECTED_PAIRS_BY_GROUP)
        drop_expected_pairs(engine)
    counted_table = counted_table or EXPECTED_PAIRS_BY_GROUP
    build_record_stats(engine, counted_table)
    elsewhere = float(
        engine.fetch(f"SELECT sum(q) FROM {counted_table} WHERE kind = 'elsewhere'")[0][0] or 0
    )
    total_records = engine.count(RECORD_STATS)
    overall = _group_stats(engine, None, elsewhere, total_records)
    result: dict[str, Any] = {"overall": overall, "dimensions": {}}
    for dim in DIMENSIONS:
        rows = _group_stats(engine, dim, elsewhere, total_records)
        for row in rows:
            row["flagged"] = (
                row["estimated_recall"] is not None
                and overall[0]["estimated_recall"] is not None
                and row["estimated_recall"] < overall[0]["estimated_recall"] - FLAG_RECALL_GAP
            )
        result["dimensions"][dim] = rows
    for table in ("__record_groups", RECORD_STATS, EXPECTED_PAIRS_BY_GROUP):
        engine.execute(f"DROP TABLE IF EXISTS {table}")
    return result


def build_record_stats(engine: Engine, counted_table: str) -> None:
    """Table RECORD_STATS: each linked record's groups with what the group figures add up:
    whether its person spans sources, whether it has a duplicate in its own source, its
    clustermates, and the q of the counted pairs it is an end of (within persons, and
    across them: missed). One pass over the counted pairs serves every dimension."""
    engine.create_table(
        RECORD_STATS,
        f"""
        WITH ends AS (
            SELECT a AS id, q, kind FROM {counted_table} WHERE a IS NOT NULL
            UNION ALL
            SELECT b AS id, q, kind FROM {counted_table} WHERE b IS NOT NULL),
        per_end AS (
            SELECT id, sum(q) FILTER (WHERE kind <> 'cross') AS tp,
                   sum(q) FILTER (WHERE kind = 'cross') AS missed
            FROM ends GROUP BY id),
        person_sources AS (
            SELECT person_id, count(DISTINCT source) AS sources FROM __record_groups
            GROUP BY person_id),
        persons AS (
            SELECT g.*, count(*) OVER (PARTITION BY g.person_id, g.source) AS in_source,
                   count(*) OVER (PARTITION BY g.person_id) AS in_person
            FROM __record_groups g)
        SELECT p.id, {", ".join(f"p.{d}" for d in DIMENSIONS)},
               s.sources > 1 AS cross_linked, p.in_source > 1 AS dupe,
               p.in_person - 1 AS clustermates, e.tp, e.missed
        FROM persons p JOIN person_sources s ON s.person_id = p.person_id
        LEFT JOIN per_end e ON e.id = p.id""",
    )


def _group_stats(
    engine: Engine, dim: str | None, elsewhere: float, total_records: int
) -> list[dict[str, Any]]:
    """One row per group, from RECORD_STATS; pair figures count pair ends (a pair once for
    each record), and `elsewhere` (missed pairs known only as a total) goes to groups by
    their records."""
    grouped = f"GROUP BY {dim} ORDER BY {dim}" if dim else ""
    rows = engine.fetch(f"""
        SELECT {dim or "'all'"} AS grp, count(*) AS records,
               count(*) FILTER (WHERE cross_linked) AS linked_to_other_sources,
               count(*) FILTER (WHERE dupe) AS within_source_duplicates,
               sum(clustermates) AS within, sum(tp) AS tp, sum(missed) AS missed
        FROM {RECORD_STATS} {grouped}""")
    out = []
    for grp, records, linked, dupes, within, tp, missed in rows:
        share = 2 * elsewhere * int(records) / total_records if total_records else 0.0
        tp, missed = float(tp or 0), float(missed or 0) + share
        out.append(
            {
                "group": str(grp),
                "records": int(records),
                "linked_to_other_sources": int(linked),
                "within_source_duplicates": int(dupes),
                "estimated_precision": round(tp / int(within), 6) if within else None,
                "estimated_recall": round(tp / (tp + missed), 6) if tp + missed else None,
            }
        )
    return out

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
    engine.create_table(
        "__person_sources",
        """SELECT person_id, count(DISTINCT source) AS sources FROM __record_groups
           GROUP BY 1""",
    )
    engine.create_table(
        "__record_dupes",
        """SELECT id, count(*) OVER (PARTITION BY person_id, source) AS in_source,
                  count(*) OVER (PARTITION BY person_id) AS in_person
           FROM __record_groups""",
    )
    if counted_table is None:
        drop_expected_pairs(engine)
        counted = build_expected_pairs(
            engine, PERSON_ID_COLUMNS["balanced"], pairs_table, table=EXPECTED_PAIRS_BY_GROUP
        )
        add_missed_elsewhere(engine, counted, EXPECTED_PAIRS_BY_GROUP)
        drop_expected_pairs(engine)
    counted_table = counted_table or EXPECTED_PAIRS_BY_GROUP
    elsewhere = float(
        engine.fetch(f"SELECT sum(q) FROM {counted_table} WHERE kind = 'elsewhere'")[0][0] or 0
    )
    total_records = int(engine.fetch("SELECT count(*) FROM __record_groups")[0][0])
    overall = _group_stats(engine, counted_table, None, elsewhere, total_records)
    result: dict[str, Any] = {"overall": overall, "dimensions": {}}
    for dim in DIMENSIONS:
        rows = _group_stats(engine, counted_table, dim, elsewhere, total_records)
        for row in rows:
            row["flagged"] = (
                row["estimated_recall"] is not None
                and overall[0]["estimated_recall"] is not None
                and row["estimated_recall"] < overall[0]["estimated_recall"] - FLAG_RECALL_GAP
            )
        result["dimensions"][dim] = rows
    for table in ("__record_groups", "__person_sources", "__record_dupes", EXPECTED_PAIRS_BY_GROUP):
        engine.execute(f"DROP TABLE IF EXISTS {table}")
    return result


def _group_stats(
    engine: Engine, counted_table: str, dim: str | None, elsewhere: float, total_records: int
) -> list[dict[str, Any]]:
    """One row per group; pair figures count pair ends (a pair once for each record), and
    `elsewhere` (missed pairs known only as a total) goes to groups by their records."""
    group = f"g.{dim}" if dim else "'all'"
    rows = engine.fetch(f"""
        WITH per_record AS (
            SELECT {group} AS grp, g.id, ps.sources > 1 AS cross_linked,
                   d.in_source > 1 AS dupe, d.in_person - 1 AS clustermates
            FROM __record_groups g
            JOIN __person_sources ps USING (person_id)
            JOIN __record_dupes d USING (id)),
        pair_ends AS (
            SELECT {group} AS grp, p.q, p.kind
            FROM {counted_table} p JOIN __record_groups g ON g.id = p.a
            UNION ALL
            SELECT {group} AS grp, p.q, p.kind
            FROM {counted_table} p JOIN __record_groups g ON g.id = p.b),
        pair_stats AS (
            SELECT grp,
                   sum(q) FILTER (WHERE kind <> 'cross') AS tp,
                   sum(q) FILTER (WHERE kind = 'cross') AS missed
            FROM pair_ends GROUP BY grp)
        SELECT r.grp, count(*) AS records,
               count(*) FILTER (WHERE r.cross_linked) AS linked_to_other_sources,
               count(*) FILTER (WHERE r.dupe) AS within_source_duplicates,
               sum(r.clustermates) AS within, s.tp, s.missed
        FROM per_record r LEFT JOIN pair_stats s USING (grp)
        GROUP BY r.grp, s.tp, s.missed ORDER BY r.grp""")
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

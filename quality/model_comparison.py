"""A candidate model against the approved one, linked on the same data: what promoting it
would change. Per threshold: links (scored pairs at or above it, after pair rules) gained and
lost, and how the clusters differ: pairs of records together under one model and not the
other, the pairwise agreement of the two clusterings, and clusters not found unchanged."""

from __future__ import annotations

import json
from typing import Any

from linkage_models.project import LoadedProject
from pipelines.contract import (
    PERSON_ID_COLUMNS,
    OutputLayout,
    clusters_lookup_sql,
    parquet_source,
)
from pipelines.engines import Engine
from quality.accuracy import pairwise_cluster_metrics

PAIR_KEY = (
    "least(source_dataset_l || '|' || record_id_l, source_dataset_r || '|' || record_id_r) AS a, "
    "greatest(source_dataset_l || '|' || record_id_l, source_dataset_r || '|' || record_id_r) "
    "AS b"
)


def cluster_agreement(engine: Engine, lookup: str, reference: str, column: str) -> dict[str, Any]:
    """Pairs of records put together in `lookup` and in `reference` (both person lookups with
    `column` as their id), and the pairwise agreement: pairs together in both over pairs
    together in either. Records in only one of them are left out."""
    engine.create_table(
        "__agreement_reference",
        f"SELECT source_dataset, source_record_id, {column} AS true_person_id FROM {reference}",
    )
    m = pairwise_cluster_metrics(engine, lookup, column, "__agreement_reference", column)
    union = m.predicted_pairs + m.true_pairs - m.true_positive_pairs
    unchanged = engine.fetch(
        f"""WITH j AS (SELECT l.{column} AS x, r.{column} AS y
           FROM {lookup} l JOIN {reference} r ON r.source_dataset = l.source_dataset
            AND r.source_record_id = l.source_record_id),
        sizes AS (SELECT x, count(DISTINCT y) AS ys, count(*) AS n FROM j GROUP BY x),
        ref_sizes AS (SELECT y, count(*) AS n FROM j GROUP BY y)
        SELECT count(*) FILTER (WHERE s.ys = 1 AND s.n = r.n), count(DISTINCT s.x)
        FROM sizes s JOIN (SELECT DISTINCT x, y FROM j) xy ON xy.x = s.x
        JOIN ref_sizes r ON r.y = xy.y"""
    )[0]
    engine.drop_table("__agreement_reference")
    return {
        "records": m.records,
        "pairs_together": m.predicted_pairs,
        "pairs_together_in_reference": m.true_pairs,
        "pairs_together_in_both": m.true_positive_pairs,
        "pairwise_agreement": round(m.true_positive_pairs / union, 6) if union else 1.0,
        "clusters": int(unchanged[1]),
        "clusters_unchanged": int(unchanged[0]),
    }


def compare_linkages(
    engine: Engine,
    candidate_thresholds: dict[str, float],
    approved_thresholds: dict[str, float],
    candidate: dict[str, str],
    approved: dict[str, str],
) -> dict[str, Any]:
    """`candidate` and `approved` name each linkage's tables: "pairs" (the pairs clustering
    may use) and "lookup" (a person lookup with the contract's id columns), linked at each
    model's thresholds (a balanced one chosen with each model may differ)."""
    result: dict[str, Any] = {}
    for name, p in candidate_thresholds.items():
        links = {
            label: f"SELECT DISTINCT {PAIR_KEY} FROM {tables['pairs']} "
            f"WHERE match_probability >= {at[name]}"
            for label, tables, at in (
                ("candidate", candidate, candidate_thresholds),
                ("approved", approved, approved_thresholds),
            )
        }
        gained, lost, kept = engine.fetch(
            f"""SELECT count(*) FILTER (WHERE a.a IS NULL), count(*) FILTER (WHERE c.a IS NULL),
       count(*) FILTER (WHERE a.a IS NOT NULL AND c.a IS NOT NULL)
FROM ({links["candidate"]}) c FULL OUTER JOIN ({links["approved"]}) a
  ON a.a = c.a AND a.b = c.b"""
        )[0]
        agreement = cluster_agreement(
            engine, candidate["lookup"], approved["lookup"], PERSON_ID_COLUMNS[name]
        )
        result[name] = {
            "threshold": p,
            "approved_threshold": approved_thresholds[name],
            "links_gained": int(gained),
            "links_lost": int(lost),
            "links_in_both": int(kept),
            **agreement,
        }
    return result


def incremental_drift(
    engine: Engine, published: OutputLayout, project: LoadedProject
) -> dict[str, Any] | None:
    """For a full relink whose previous publication was linked incrementally: per threshold,
    how far that publication's clusters were from this relink's, on the records in both
    (None after a full linkage, or when nothing is published)."""
    if not published.exact_manifest.exists():
        return None
    previous = json.loads(published.exact_manifest.read_text())
    if (previous.get("linkage") or {}).get("linked") != "incremental":
        return None
    engine.register_file(
        "__drift_previous_lookup", parquet_source(published.person_lookup), "parquet"
    )
    engine.create_table("__drift_lookup", clusters_lookup_sql())
    drift = {}
    for name in project.spec.model.thresholds.as_dict():
        agreement = cluster_agreement(
            engine, "__drift_lookup", "__drift_previous_lookup", PERSON_ID_COLUMNS[name]
        )
        # Records of both published lookups: a comparison of two publications (exact, as
        # the churn ledger's counts are), not a count of the population.
        agreement["records_in_both"] = agreement.pop("records")
        drift[name] = agreement
    return {"previous_snapshot": previous["snapshot"], "by_threshold": drift}

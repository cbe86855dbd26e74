"""Label-free error-rate estimates for the clusters at each threshold, from the model alone.

These are ESTIMATES: they take the model's match probabilities at face value.

- Expected true pairs within clusters = for each scored pair of records in one cluster, the
  larger of its own match probability and that of its best path through one other record
  of the cluster (p1 * p2: both links true). A pair in a cluster is there because of such
  paths, and its own comparison does not see them: at 1M generated records 45,949 pairs
  sat in a balanced cluster with their own probability below 0.99, summing to 32,465 where
  45,215 were one person (pseudopeople: 1,905 where 2,506). Pairs of a cluster that were
  never scored (no blocking rule brought them together, or they scored below the
  prediction floor: their own evidence is against) count as not one person.
- Estimated precision = expected true pairs within clusters / pairs within clusters.
- Expected true pairs overall = sum of match probability over every scored pair, including
  pairs a pair rule (the opt-in probable-twins rule) kept out of clustering and pairs
  scored below the prediction floor (summed, not kept): the model expects some of those
  to be true, and they are missed.
- Estimated recall = expected true pairs within clusters / expected true pairs overall.
- 95% intervals treat each scored pair as an independent Bernoulli trial with its match
  probability (Poisson-binomial variance, normal approximation); they express sampling
  uncertainty given the model, not error in the model itself.

Assumptions that remain: blocking misses no true pairs (the manifest's `blocking_check`
compares the matches the prior expects among all pairs with those the blocked pairs hold;
read it, it is not folded in, because the prior is itself an estimate) and the
probabilities are calibrated (where ground truth exists, the report compares them). Where ground
truth exists, the manifest shows measured and estimated rates side by side so the
estimator's own error is visible.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.contract import PERSON_ID_COLUMNS, Tables
from pipelines.engines import Engine

Z95 = 1.959964


def _pairs_sql(pairs_table: str) -> str:
    """Scored pairs with the two records in a canonical order."""
    return f"""
    SELECT least(source_dataset_l || '|' || record_id_l, source_dataset_r || '|' || record_id_r)
             AS a,
           greatest(source_dataset_l || '|' || record_id_l, source_dataset_r || '|' || record_id_r)
             AS b,
           match_probability AS p
    FROM {pairs_table}"""


def _within_cluster_sums_sql() -> str:
    """Over the scored pairs of one cluster: how many, the sum of p and of p(1 - p), and the
    same two sums of q, the probability each is one person: the larger of its own match
    probability and that of its best path through one other record of the cluster (both
    links true: p1 * p2). A pair scored below the threshold sits in the cluster because of
    such a path, which its own comparison does not see: on every data set measured, far
    more of these pairs were one person than their own probabilities said. Counting
    unscored pairs through paths too was optimistic where false links join two people
    (pseudopeople at 0.9: 469 expected, 163 true)."""
    return """
    WITH links AS (
        SELECT a AS x, b AS y, p FROM __within_scored
        UNION ALL SELECT b AS x, a AS y, p FROM __within_scored
    ),
    paths AS (
        SELECT l1.x AS a, l2.y AS b, max(l1.p * l2.p) AS h
        FROM links l1 JOIN links l2 ON l1.y = l2.x
        WHERE l1.x < l2.y
        GROUP BY l1.x, l2.y
    )
    SELECT count(*), coalesce(sum(p), 0), coalesce(sum(p * (1 - p)), 0),
           coalesce(sum(q), 0), coalesce(sum(q * (1 - q)), 0)
    FROM (
        SELECT s.p, greatest(s.p, coalesce(t.h, 0)) AS q
        FROM __within_scored s LEFT JOIN paths t ON s.a = t.a AND s.b = t.b
    ) AS counted"""


def estimate_error_rates(
    engine: Engine,
    threshold_columns: dict[str, str] = PERSON_ID_COLUMNS,
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    lookup_table: str = Tables.PERSON_LOOKUP,
    below_floor_table: str | None = Tables.PAIRS_BELOW_FLOOR,
) -> dict[str, dict[str, Any]]:
    """Estimated pairwise precision and recall of each threshold's clusters."""
    engine.create_table("__scored_pairs", _pairs_sql(pairs_table))
    total_p, total_var = engine.fetch(
        "SELECT coalesce(sum(p), 0), coalesce(sum(p * (1 - p)), 0) FROM __scored_pairs"
    )[0]
    below = 0.0
    if below_floor_table and engine.table_exists(below_floor_table):
        below = float(engine.fetch(f"SELECT expected_matches FROM {below_floor_table}")[0][0])
    # Below the floor p is small, so each pair's variance p(1 - p) is about p.
    total_p, total_var = float(total_p) + below, float(total_var) + below
    estimates: dict[str, dict[str, Any]] = {}
    for name, column in threshold_columns.items():
        engine.create_table(
            "__records",
            f"SELECT source_dataset || '|' || source_record_id AS id, {column} AS c "
            f"FROM {lookup_table}",
        )
        within_pairs = int(
            engine.fetch(
                "SELECT coalesce(sum(n * (n - 1) / 2), 0) FROM "
                "(SELECT count(*) AS n FROM __records GROUP BY c)"
            )[0][0]
        )
        engine.create_table(
            "__within_scored",
            """SELECT s.a, s.b, s.p FROM __scored_pairs s JOIN __records ra ON ra.id = s.a
               JOIN __records rb ON rb.id = s.b WHERE ra.c = rb.c""",
        )
        sums = engine.fetch(_within_cluster_sums_sql())[0]
        scored_n = int(sums[0])
        scored_p, scored_var, expected_tp, tp_var = (float(v) for v in sums[1:])
        unscored = within_pairs - scored_n
        expected_missed = max(float(total_p) - scored_p, 0.0)
        missed_var = max(float(total_var) - scored_var, 0.0)
        precision = expected_tp / within_pairs if within_pairs else 1.0
        recall = expected_tp / (expected_tp + expected_missed) if expected_tp else 1.0
        precision_sd = math.sqrt(tp_var) / within_pairs if within_pairs else 0.0
        denom = (expected_tp + expected_missed) ** 2
        recall_sd = (
            math.sqrt(expected_missed**2 * tp_var + expected_tp**2 * missed_var) / denom
            if denom
            else 0.0
        )
        estimates[name] = {
            "precision": round(precision, 6),
            "precision_95ci": [
                round(max(precision - Z95 * precision_sd, 0), 6),
                round(min(precision + Z95 * precision_sd, 1), 6),
            ],
            "recall": round(recall, 6),
            "recall_95ci": [
                round(max(recall - Z95 * recall_sd, 0), 6),
                round(min(recall + Z95 * recall_sd, 1), 6),
            ],
            "false_match_rate": round(1 - precision, 6),
            "missed_match_rate": round(1 - recall, 6),
            "pairs_within_clusters": within_pairs,
            "expected_false_pairs": round(within_pairs - expected_tp, 1),
            "expected_missed_pairs": round(expected_missed, 1),
            "expected_missed_below_floor": round(below, 1),
            "within_cluster_pairs_not_scored": unscored,
        }
    for table in ("__scored_pairs", "__records", "__within_scored"):
        engine.execute(f"DROP TABLE IF EXISTS {table}")
    return estimates

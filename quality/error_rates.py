"""Label-free error-rate estimates for the clusters at each threshold, from the model alone.

These are ESTIMATES: they take the model's match probabilities at face value.

- Expected true pairs within clusters = for each scored pair of records in one cluster, the
  larger of its own match probability and that of its best path through one other record
  of the cluster (p1 * p2: both links true). A pair in a cluster is there because of such
  paths, and its own comparison does not see them: at 1M generated records 45,949 pairs
  sat in a balanced cluster with their own probability below 0.99, summing to 32,465 where
  45,215 were one person (pseudopeople: 1,905 where 2,506). Pairs of a cluster that no
  blocking rule brought together count by their best path alone (nothing of their own
  says otherwise; optimistic where weak links chain two people: pseudopeople at
  high_recall, 155 expected, 79 true); pairs that scored below the prediction floor
  count as not one person (their own evidence is against).
- Estimated precision = expected true pairs within clusters / pairs within clusters.
- Expected missed pairs = for each scored pair whose records sit in two clusters, its match
  probability, capped by what the rest of the two clusters says: if a is one person with
  b, and a's link to its clustermate a2 is true, a2 is that person too, so
  P(a, b) <= P(a2, b) + 1 - P(a, a2), for every scored link (a, a2) inside a's cluster
  whose pair (a2, b) was scored too (and the same from b's side). A pair a model scores
  0.5 on a coincidence of name and birth date, whose records each already sit in a
  cluster with their own strong matches that the other record scored 0.02 against, is
  not half a missed pair. Unscored pairs (a2, b) give no cap: they were never compared
  or fell below the prediction floor, and treating them as not one person capped too
  hard on pseudopeople (at 0.9: 54 expected where 204 of the pairs were one person).
  Plus pairs a pair rule (the opt-in probable-twins rule) kept out of clustering, the
  expected matches among pairs scored below the prediction floor (summed, not kept), and
  the matches no blocking rule reached (the blocking check's estimate,
  pipelines.blocking_reach) less those found inside clusters above.
- Estimated recall = expected true pairs within clusters / (those + expected missed).
- 95% intervals treat each scored pair as an independent Bernoulli trial with its match
  probability (Poisson-binomial variance, normal approximation); they express sampling
  uncertainty given the model, not error in the model itself.

Assumptions that remain: the probabilities are calibrated, and identifiers agree
independently among matches (the blocking check's estimate rests on it). Measured against
truth (session 22), estimate minus measured recall in points at high_precision / balanced /
high_recall: pseudopeople with four times its noise +2.49 / +1.86 / +2.19 (it was +7.49 /
+6.52 / +5.51 before the matches never blocked were counted: 7.6% of its true pairs);
pseudopeople -0.19 / -0.98 / -1.01; FEBRL3 0 / 0 / -0.01; FEBRL4 -0.11 at each. What
remains is calibration: on pseudopeople, cross-cluster pairs scored 0.5-0.9 sum to 534
expected matches where 185 are (its noise copies a household member's SSN), and on the
noisy set pairs below the floor hold 427 true pairs where 181 were expected. Where ground
truth exists, the manifest and report show measured and estimated rates side by side so the
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


# The scored links inside clusters, once in each direction.
_LINKS_SQL = """links AS (
        SELECT a AS x, b AS y, p FROM __within_scored
        UNION ALL SELECT b AS x, a AS y, p FROM __within_scored
    )"""

# For each pair of a cluster joined through one other record by scored links: the
# probability both links are true (p1 * p2), the best such path.
_PATHS_SQL = f"""
    WITH {_LINKS_SQL}
    SELECT l1.x AS a, l2.y AS b, max(l1.p * l2.p) AS h
    FROM links l1 JOIN links l2 ON l1.y = l2.x
    WHERE l1.x < l2.y
    GROUP BY l1.x, l2.y"""

# Over the scored pairs of one cluster: how many, and the sums of q and q(1 - q), q being
# the larger of the pair's own match probability and its best path. A pair scored below
# the threshold sits in the cluster because of such a path, which its own comparison does
# not see: on every data set measured, far more of these pairs were one person than their
# own probabilities said.
_WITHIN_SCORED_SUMS_SQL = """
    SELECT count(*), coalesce(sum(q), 0), coalesce(sum(q * (1 - q)), 0)
    FROM (
        SELECT greatest(s.p, coalesce(t.h, 0)) AS q
        FROM __within_scored s LEFT JOIN __paths t ON s.a = t.a AND s.b = t.b
    ) AS counted"""


def _never_blocked_sums_sql(never_blocked_table: str) -> str:
    """The same sums over the pairs of one cluster no rule blocked (the table of them across
    all thresholds: pipelines.blocking_reach): q is the best path (no comparison of their
    own says otherwise)."""
    return f"""
    WITH pairs AS (
        SELECT least(x.id, y.id) AS a, greatest(x.id, y.id) AS b
        FROM {never_blocked_table} n
        JOIN __records x ON x.source_dataset = n.source_a AND x.record_id = n.record_a
        JOIN __records y ON y.source_dataset = n.source_b AND y.record_id = n.record_b
        WHERE x.c = y.c
    )
    SELECT count(*), coalesce(sum(q), 0), coalesce(sum(q * (1 - q)), 0)
    FROM (
        SELECT coalesce(t.h, 0) AS q FROM pairs n LEFT JOIN __paths t ON n.a = t.a AND n.b = t.b
    ) AS counted"""


def _cross_cluster_sums_sql() -> str:
    """Over the scored pairs whose records sit in two clusters: the sum of q and of
    q(1 - q), q being the pair's match probability capped through each clustermate (see
    the module docstring)."""
    return f"""
    WITH {_LINKS_SQL},
    caps AS (
        SELECT s.a, s.b, o.p + 1 - l.p AS cap
        FROM __cross_scored s JOIN links l ON l.x = s.a
        JOIN __scored_pairs o ON o.a = least(l.y, s.b) AND o.b = greatest(l.y, s.b)
        UNION ALL
        SELECT s.a, s.b, o.p + 1 - l.p AS cap
        FROM __cross_scored s JOIN links l ON l.x = s.b
        JOIN __scored_pairs o ON o.a = least(l.y, s.a) AND o.b = greatest(l.y, s.a)
    ),
    tightest AS (SELECT a, b, min(cap) AS cap FROM caps GROUP BY a, b)
    SELECT coalesce(sum(q), 0), coalesce(sum(q * (1 - q)), 0)
    FROM (
        SELECT least(s.p, coalesce(t.cap, 1)) AS q
        FROM __cross_scored s LEFT JOIN tightest t ON s.a = t.a AND s.b = t.b
    ) AS capped"""


def _expected_not_blocked(
    engine: Engine, table: str | None, pairs_table: str | None
) -> float | None:
    """The matches no rule blocked, as the blocking check estimated them (None: unknown, or
    no table of the never-blocked pairs inside persons to tell them from those below the
    floor)."""
    if not (table and pairs_table):
        return None
    if not (engine.table_exists(table) and engine.table_exists(pairs_table)):
        return None
    value = engine.fetch(f"SELECT expected_matches FROM {table}")[0][0]
    return None if value is None else float(value)


def estimate_error_rates(
    engine: Engine,
    threshold_columns: dict[str, str] = PERSON_ID_COLUMNS,
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    lookup_table: str = Tables.PERSON_LOOKUP,
    below_floor_table: str | None = Tables.PAIRS_BELOW_FLOOR,
    not_blocked_table: str | None = Tables.MATCHES_NOT_BLOCKED,
    never_blocked_pairs_table: str | None = Tables.PAIRS_NEVER_BLOCKED_IN_PERSONS,
) -> dict[str, dict[str, Any]]:
    """Estimated pairwise precision and recall of each threshold's clusters. With the
    blocking check's figure and the never-blocked pairs inside persons
    (pipelines.blocking_reach), the matches no rule blocked are counted too: as found where
    they sit in one cluster, as missed where they do not."""
    engine.create_table("__scored_pairs", _pairs_sql(pairs_table))
    below = 0.0
    if below_floor_table and engine.table_exists(below_floor_table):
        below = float(engine.fetch(f"SELECT expected_matches FROM {below_floor_table}")[0][0])
    not_blocked = _expected_not_blocked(engine, not_blocked_table, never_blocked_pairs_table)
    estimates: dict[str, dict[str, Any]] = {}
    for name, column in threshold_columns.items():
        engine.create_table(
            "__records",
            "SELECT source_dataset || '|' || source_record_id AS id, source_dataset, "
            f"source_record_id AS record_id, {column} AS c FROM {lookup_table}",
        )
        within_pairs = int(
            engine.fetch(
                "SELECT coalesce(sum(n * (n - 1) / 2), 0) FROM "
                "(SELECT count(*) AS n FROM __records GROUP BY c)"
            )[0][0]
        )
        for table, same in (("__within_scored", "="), ("__cross_scored", "<>")):
            engine.create_table(
                table,
                f"""SELECT s.a, s.b, s.p FROM __scored_pairs s JOIN __records ra ON ra.id = s.a
                    JOIN __records rb ON rb.id = s.b WHERE ra.c {same} rb.c""",
            )
        engine.create_table("__paths", _PATHS_SQL)
        scored_n, expected_tp, tp_var = engine.fetch(_WITHIN_SCORED_SUMS_SQL)[0]
        unscored = within_pairs - int(scored_n)
        expected_tp, tp_var = float(expected_tp), float(tp_var)
        missed, missed_var = engine.fetch(_cross_cluster_sums_sql())[0]
        # Below the floor p is small, so each pair's variance p(1 - p) is about p.
        expected_missed, missed_var = float(missed) + below, float(missed_var) + below
        never_blocked_pairs, missed_not_blocked = None, None
        if not_blocked is not None and never_blocked_pairs_table:
            sums = _never_blocked_sums_sql(never_blocked_pairs_table)
            n, found, found_var = engine.fetch(sums)[0]
            never_blocked_pairs = int(n)
            expected_tp, tp_var = expected_tp + float(found), tp_var + float(found_var)
            # The rest of them are missed; counted as a Poisson count, like those below
            # the floor (the estimate's own error is not in the interval).
            missed_not_blocked = max(0.0, not_blocked - float(found))
            expected_missed += missed_not_blocked
            missed_var += missed_not_blocked
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
            "expected_missed_not_blocked": None
            if missed_not_blocked is None
            else round(missed_not_blocked, 1),
            "within_cluster_pairs_not_scored": unscored,
            "within_cluster_pairs_never_blocked": never_blocked_pairs,
        }
    for table in (
        "__scored_pairs",
        "__records",
        "__within_scored",
        "__cross_scored",
        "__paths",
    ):
        engine.execute(f"DROP TABLE IF EXISTS {table}")
    return estimates

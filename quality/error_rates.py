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
  not half a missed pair. A pair (a2, b) the prediction rules compared but that was not
  stored scored below the prediction floor, and caps with the floor in place of P(a2, b)
  (when the caller says how to tell compared pairs: ComparedPairs). A pair (a2, b) never
  compared gives no cap: treating every unstored pair as not one person capped too hard
  on pseudopeople (at 0.9: 54 expected where 204 of the pairs were one person); telling
  the compared ones apart gives 200.3 where 214 are.
  Plus pairs a pair rule (the opt-in probable-twins rule) kept out of clustering, the
  expected matches among pairs scored below the prediction floor (summed, not kept), and
  the matches no blocking rule reached (the blocking check's estimate,
  pipelines.blocking_reach) less those found inside clusters above.
- Estimated recall = expected true pairs within clusters / (those + expected missed).
- The pairs and their q are one table per threshold (count_pairs, in the engine's scratch
  area, then kept as Tables.expected_pairs: quality.bias takes the balanced one apart by
  group). After an incremental linkage only the pairs of the records it reclustered or
  removed are counted again: a pair's q depends only on the scored pairs of its records'
  clusters, and every other cluster is as the publication it extended left it.
- Inside a person of more than LARGEST_PERSON_PAIRED records no pair is listed: its
  unscored pairs count as not one person, its never-blocked matches as missed, its cross
  pairs uncapped (counted per threshold as `persons_too_large_to_pair`). A cluster that
  size is a fault to look at, and its n(n - 1) / 2 pairs could not be listed anyway.
- 95% intervals treat each scored pair as an independent Bernoulli trial with its match
  probability (Poisson-binomial variance, normal approximation); they express sampling
  uncertainty given the model, not error in the model itself.

Assumptions that remain: the probabilities are calibrated, and identifiers agree
independently among matches (the blocking check's estimate rests on it). Measured against
truth (session 27), estimate minus measured recall in points at high_precision / balanced /
high_recall: pseudopeople +0.93 / +0.21 / +0.06 (-0.19 / -0.98 / -1.01 before the caps
through clustermates scored below the floor); the generator at 1M +0.37 / -0.03 / -0.15;
FEBRL3 0 / 0 / -0.01; FEBRL4 -0.11 at each; pseudopeople with four times its noise +3.71
/ +3.23 / +2.96 (+2.49 / +1.86 / +2.19 before those caps; +7.49 / +6.52 / +5.51 before
the matches never blocked were counted: 7.6% of its true pairs). What remains is
calibration: on the noisy set pairs below the floor hold 427 true pairs where 181 were
expected, and the caps trust the low probabilities that undercount them. At the top end
the model is overconfident where households share a name and an address: precision at
high_recall is estimated 1.17 points high on pseudopeople's census, survey and 1040 files
(session 28; stored pairs scored 0.9-0.99 inside clusters, 921 expected one person, 862
were, and each pulls a second person's pairs in by their paths). Where ground
truth exists, the manifest and report show measured and estimated rates side by side so the
estimator's own error is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipelines.contract import LARGEST_PERSON_PAIRED, PERSON_ID_COLUMNS, Tables
from pipelines.engines import Engine
from pipelines.sql import lit, record_key

Z95 = 1.959964
# Each pair an estimate counts, with its probability of being one person (build_expected_pairs).
EXPECTED_PAIRS = "__expected_pairs"
# The balanced threshold's kept pairs were once stored under this name alone; a working
# database from then still holds them, stale (Tables.expected_pairs names them now).
FORMER_BALANCED_EXPECTED_PAIRS = "balanced_expected_pairs"


def _pairs_sql(pairs_table: str) -> str:
    """Scored pairs with the two records in a canonical order."""
    return f"""
    SELECT least(source_dataset_l || '|' || record_id_l, source_dataset_r || '|' || record_id_r)
             AS a,
           greatest(source_dataset_l || '|' || record_id_l, source_dataset_r || '|' || record_id_r)
             AS b,
           match_probability AS p
    FROM {pairs_table}"""


def _links_sql(largest_person: int) -> str:
    """The scored links inside clusters, once in each direction; none in a cluster of more
    than `largest_person` records (its paths and caps are not listed: its unscored pairs
    count as not one person, its cross pairs uncapped)."""
    return f"""
    SELECT a AS x, b AS y, p FROM __within_scored WHERE n <= {int(largest_person)}
    UNION ALL SELECT b AS x, a AS y, p FROM __within_scored WHERE n <= {int(largest_person)}"""


# For each pair of a cluster joined through one other record by scored links: the
# probability both links are true (p1 * p2), the best such path.
_PATHS_SQL = """
    SELECT l1.x AS a, l2.y AS b, max(l1.p * l2.p) AS h
    FROM __links l1 JOIN __links l2 ON l1.y = l2.x
    WHERE l1.x < l2.y
    GROUP BY l1.x, l2.y"""

# Each scored pair of one cluster with q, the larger of its own match probability and its
# best path. A pair scored below the threshold sits in the cluster because of such a path,
# which its own comparison does not see: on every data set measured, far more of these
# pairs were one person than their own probabilities said.
_WITHIN_SCORED_SQL = """
    SELECT s.a, s.b, greatest(s.p, coalesce(t.h, 0)) AS q, 'within' AS kind
    FROM __within_scored s LEFT JOIN __paths t ON s.a = t.a AND s.b = t.b"""


def _within_never_blocked_sql(never_blocked_table: str) -> str:
    """The pairs of one cluster no rule blocked (the table of them across all thresholds:
    pipelines.blocking_reach), q being the best path (no comparison of their own says
    otherwise)."""
    return f"""
    SELECT n.a, n.b, coalesce(t.h, 0) AS q, 'never_blocked' AS kind
    FROM (
        SELECT least(x.id, y.id) AS a, greatest(x.id, y.id) AS b
        FROM {never_blocked_table} n
        JOIN __records x ON x.source_dataset = n.source_a AND x.record_id = n.record_a
        JOIN __records y ON y.source_dataset = n.source_b AND y.record_id = n.record_b
        WHERE x.c = y.c
    ) AS n LEFT JOIN __paths t ON n.a = t.a AND n.b = t.b"""


@dataclass(frozen=True)
class ComparedPairs:
    """How to tell the pairs the prediction rules compared: a pair they compared that was
    not stored was scored below `floor` (pipelines.blocking_reach.rule_records)."""

    records: str  # table: id (source|record) and the columns the rules read
    condition: str  # over aliases l and r of `records`
    floor: float


def _cross_sql(below_floor: bool) -> str:
    """The scored pairs whose records sit in two clusters, q being the pair's match
    probability capped through each clustermate (see the module docstring); with
    `below_floor`, also through a clustermate compared with the other record and scored
    below the floor (table __below_floor_near, p at most the floor)."""
    evidence = ["__scored_pairs", "__below_floor_near"] if below_floor else ["__scored_pairs"]
    caps = " UNION ALL ".join(
        f"""SELECT s.a, s.b, o.p + 1 - l.p AS cap
            FROM __cross_scored s JOIN __links l ON l.x = s.{end}
            JOIN {table} o ON o.a = least(l.y, s.{other}) AND o.b = greatest(l.y, s.{other})"""
        for table in evidence
        for end, other in (("a", "b"), ("b", "a"))
    )
    return f"""
    SELECT s.a, s.b, least(s.p, coalesce(t.cap, 1)) AS q, 'cross' AS kind
    FROM __cross_scored s LEFT JOIN (
        SELECT a, b, min(cap) AS cap FROM ({caps}) AS caps GROUP BY a, b
    ) AS t ON s.a = t.a AND s.b = t.b"""


def _below_floor_near_sql(compared: ComparedPairs) -> str:
    """The pairs (clustermate of one record of a cross pair, the other record) that were
    not stored but that the rules compared: scored below the floor, p at most the floor."""
    return f"""
    WITH candidates AS (
        SELECT least(l.y, s.b) AS a, greatest(l.y, s.b) AS b
        FROM __cross_scored s JOIN __links l ON l.x = s.a
        UNION
        SELECT least(l.y, s.a) AS a, greatest(l.y, s.a) AS b
        FROM __cross_scored s JOIN __links l ON l.x = s.b),
    unstored AS (
        SELECT c.a, c.b FROM candidates c
        ANTI JOIN __scored_pairs o ON o.a = c.a AND o.b = c.b)
    SELECT u.a, u.b, CAST({float(compared.floor)!r} AS DOUBLE) AS p FROM unstored u
    JOIN {compared.records} l ON l.id = u.a JOIN {compared.records} r ON r.id = u.b
    WHERE {compared.condition}"""


_HELPER_TABLES = (
    "__scored_pairs",
    "__records",
    "__within_scored",
    "__cross_scored",
    "__links",
    "__paths",
    "__below_floor_near",
)


@dataclass(frozen=True)
class ExpectedPairs:
    """What one threshold's estimate counts: EXPECTED_PAIRS summed by kind, and the expected
    matches it knows only as totals."""

    within_pairs: int  # pairs within clusters, scored or not
    persons_not_paired: int  # clusters too large to list pairs in (LARGEST_PERSON_PAIRED)
    sums: dict[str, tuple[int, float, float]]  # kind: pairs, sum of q, sum of q(1 - q)
    below_floor: float
    not_blocked: float | None  # None: the matches no rule blocked are not counted

    def of_kind(self, kind: str) -> tuple[int, float, float]:
        return self.sums.get(kind, (0, 0.0, 0.0))

    @property
    def missed_not_blocked(self) -> float | None:
        """The matches no rule blocked, less those found inside clusters."""
        if self.not_blocked is None:
            return None
        return max(0.0, self.not_blocked - self.of_kind("never_blocked")[1])

    @property
    def missed_elsewhere(self) -> float:
        """The missed pairs known only as a total: below the floor, and never blocked."""
        return self.below_floor + (self.missed_not_blocked or 0.0)


def _records_sql(lookup_table: str, column: str, touching: str | None) -> str:
    """The lookup's records keyed, with their cluster and its size; `touching`: only the
    clusters holding a record of that table or one scored against such a record."""
    key = record_key("source_record_id")
    where = ""
    if touching:
        near = f"""SELECT id FROM {touching}
            UNION SELECT b FROM __scored_pairs WHERE a IN (SELECT id FROM {touching})
            UNION SELECT a FROM __scored_pairs WHERE b IN (SELECT id FROM {touching})"""
        where = f" WHERE {column} IN (SELECT {column} FROM {lookup_table} WHERE {key} IN ({near}))"
    return (
        f"SELECT {key} AS id, source_dataset, source_record_id AS record_id, {column} AS c, "
        f"count(*) OVER (PARTITION BY {column}) AS n FROM {lookup_table}{where}"
    )


def count_pairs(
    engine: Engine,
    column: str,
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    lookup_table: str = Tables.PERSON_LOOKUP,
    never_blocked_pairs_table: str | None = None,
    largest_person: int = LARGEST_PERSON_PAIRED,
    table: str = EXPECTED_PAIRS,
    touching: str | None = None,
    compared: ComparedPairs | None = None,
) -> None:
    """Table `table` (a, b, q, kind) for the clusters of one person-id column: each
    pair the estimate counts, with q, the probability it is one person: kind 'within'
    (scored, in one cluster), 'never_blocked' (in one cluster, no rule blocked it; listed
    when `never_blocked_pairs_table` is given) and 'cross' (scored, in two clusters).
    Records are keyed source_dataset|record_id. The scored pairs are copied once and kept
    for the next threshold until drop_expected_pairs.

    `touching`: a table (id) of record keys; only the pairs with a record among them are
    counted. A pair's q depends only on the scored pairs of its records' clusters, so after
    an incremental linkage only the pairs of the records it reclustered can have changed.
    `compared`: how to tell the pairs the rules compared, so that a cross pair is capped
    through a clustermate scored below the floor against its other record too."""
    if not engine.table_exists("__scored_pairs"):
        engine.create_table("__scored_pairs", _pairs_sql(pairs_table))
    engine.create_table("__records", _records_sql(lookup_table, column, touching))
    for helper, same in (("__within_scored", "="), ("__cross_scored", "<>")):
        engine.create_table(
            helper,
            f"""SELECT s.a, s.b, s.p, ra.n FROM __scored_pairs s
                JOIN __records ra ON ra.id = s.a JOIN __records rb ON rb.id = s.b
                WHERE ra.c {same} rb.c""",
        )
    engine.create_table("__links", _links_sql(largest_person))
    engine.create_table("__paths", _PATHS_SQL)
    if compared:
        engine.create_table("__below_floor_near", _below_floor_near_sql(compared))
    parts = [_WITHIN_SCORED_SQL, _cross_sql(below_floor=compared is not None)]
    if never_blocked_pairs_table:
        parts.append(_within_never_blocked_sql(never_blocked_pairs_table))
    counted = " UNION ALL ".join(parts)
    if touching:  # the clusters around them are read, their own pairs counted
        ids = f"SELECT id FROM {touching}"
        counted = f"SELECT * FROM ({counted}) AS t WHERE a IN ({ids}) OR b IN ({ids})"
    engine.create_table(table, counted)


def tally(
    engine: Engine,
    table: str,
    column: str,
    lookup_table: str = Tables.PERSON_LOOKUP,
    below_floor_table: str | None = Tables.PAIRS_BELOW_FLOOR,
    not_blocked: float | None = None,
    largest_person: int = LARGEST_PERSON_PAIRED,
) -> ExpectedPairs:
    """What the estimate counts: the pairs of `table` (count_pairs) summed by kind, the
    pairs within clusters (from the lookup) and the expected matches known only as totals
    (below the floor; `not_blocked`, the blocking check's figure, None when not counted)."""
    below = 0.0
    if below_floor_table and engine.table_exists(below_floor_table):
        below = float(engine.fetch(f"SELECT expected_matches FROM {below_floor_table}")[0][0])
    within_pairs, not_paired = engine.fetch(
        "SELECT coalesce(sum(n * (n - 1) / 2), 0), "
        f"count(*) FILTER (WHERE n > {int(largest_person)}) FROM "
        f"(SELECT count(*) AS n FROM {lookup_table} GROUP BY {column}) AS sizes"
    )[0]
    sums = {
        kind: (int(n), float(q), float(var))
        for kind, n, q, var in engine.fetch(
            f"SELECT kind, count(*), sum(q), sum(q * (1 - q)) FROM {table} "
            "WHERE kind <> 'elsewhere' GROUP BY kind"
        )
    }
    return ExpectedPairs(int(within_pairs), int(not_paired), sums, below, not_blocked)


def build_expected_pairs(
    engine: Engine,
    column: str,
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    lookup_table: str = Tables.PERSON_LOOKUP,
    below_floor_table: str | None = Tables.PAIRS_BELOW_FLOOR,
    not_blocked_table: str | None = Tables.MATCHES_NOT_BLOCKED,
    never_blocked_pairs_table: str | None = Tables.PAIRS_NEVER_BLOCKED_IN_PERSONS,
    largest_person: int = LARGEST_PERSON_PAIRED,
    table: str = EXPECTED_PAIRS,
) -> ExpectedPairs:
    """Every pair the estimate counts for one person-id column, as table `table`
    (count_pairs), and their tally. The matches no rule blocked are counted when the
    blocking check's figure and the table of the never-blocked pairs exist."""
    not_blocked = _expected_not_blocked(engine, not_blocked_table, never_blocked_pairs_table)
    listed = never_blocked_pairs_table if not_blocked is not None else None
    count_pairs(engine, column, pairs_table, lookup_table, listed, largest_person, table)
    return tally(
        engine, table, column, lookup_table, below_floor_table, not_blocked, largest_person
    )


def add_missed_elsewhere(engine: Engine, counted: ExpectedPairs, table: str) -> None:
    """Add to `table`, built by build_expected_pairs, one row of kind 'elsewhere' (a and b
    NULL) whose q is the missed pairs known only as a total (ExpectedPairs.missed_elsewhere):
    then the table holds all the estimate counted."""
    engine.insert_rows(
        table,
        "SELECT CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), "
        f"CAST({float(counted.missed_elsewhere)!r} AS DOUBLE), 'elsewhere'",
    )


def drop_expected_pairs(engine: Engine) -> None:
    """Drop EXPECTED_PAIRS and the tables it was built from."""
    for table in (*_HELPER_TABLES, EXPECTED_PAIRS):
        engine.execute(f"DROP TABLE IF EXISTS {table}")


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


def kept_pairs_of(engine: Engine) -> str | None:
    """The publication whose counted pairs the stored tables (Tables.expected_pairs) hold,
    forgotten as it is read: from now on they are being rebuilt (None: unknown)."""
    mark = Tables.EXPECTED_PAIRS_OF
    if not engine.table_exists(mark):
        return None
    snapshot = engine.fetch(f"SELECT snapshot FROM {mark}")[0][0]
    engine.drop_table(mark)
    return snapshot


def estimate_error_rates(
    engine: Engine,
    threshold_columns: dict[str, str] = PERSON_ID_COLUMNS,
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    lookup_table: str = Tables.PERSON_LOOKUP,
    below_floor_table: str | None = Tables.PAIRS_BELOW_FLOOR,
    not_blocked_table: str | None = Tables.MATCHES_NOT_BLOCKED,
    never_blocked_pairs_table: str | None = Tables.PAIRS_NEVER_BLOCKED_IN_PERSONS,
    largest_person: int = LARGEST_PERSON_PAIRED,
    changed: str | None = None,
    snapshot: str | None = None,
    compared: ComparedPairs | None = None,
) -> dict[str, dict[str, Any]]:
    """Estimated pairwise precision and recall of each threshold's clusters. With the
    blocking check's figure and the never-blocked pairs inside persons
    (pipelines.blocking_reach), the matches no rule blocked are counted too: as found where
    they sit in one cluster, as missed where they do not.

    Each threshold's counted pairs are kept (Tables.expected_pairs, with add_missed_elsewhere:
    quality.bias takes the balanced one apart by group), marked as `snapshot`'s when given.
    `changed`: a table (source_dataset, record_id) of the records an incremental linkage
    reclustered or removed, when the kept pairs are those of the publication it extended
    (kept_pairs_of): only the pairs of those records are counted again, the rest read as
    kept (at 1M records, a 1% delivery: the estimate step 7.5 s, not 25.5 s).
    `compared`: how to tell the pairs the prediction rules compared, for the caps through a
    clustermate scored below the floor (count_pairs)."""
    drop_expected_pairs(engine)  # any left in the stored tables by an earlier version
    engine.drop_table(FORMER_BALANCED_EXPECTED_PAIRS)
    engine.drop_table(Tables.EXPECTED_PAIRS_OF)
    not_blocked = _expected_not_blocked(engine, not_blocked_table, never_blocked_pairs_table)
    listed = never_blocked_pairs_table if not_blocked is not None else None
    touching = "__changed_records" if changed else None
    if touching:
        engine.drop_table(touching)  # a stored one, left by a failed run, would hide it
        with engine.scratch():
            engine.create_table(touching, f"SELECT DISTINCT {record_key()} AS id FROM {changed}")
    estimates: dict[str, dict[str, Any]] = {}
    for name, column in threshold_columns.items():
        kept = Tables.expected_pairs(name)
        # The working tables are scratch: at 1M, written to the database file the three
        # thresholds took 42-48 s, in memory 23-27 s.
        with engine.scratch():
            count_pairs(
                engine,
                column,
                pairs_table,
                lookup_table,
                listed,
                largest_person,
                touching=touching,
                compared=compared,
            )
        if touching:
            engine.delete_rows(
                kept,
                f"kind = 'elsewhere' OR a IN (SELECT id FROM {touching}) "
                f"OR b IN (SELECT id FROM {touching})",
            )
            engine.insert_rows(kept, f"SELECT * FROM {EXPECTED_PAIRS}")
        else:
            engine.create_table(kept, f"SELECT * FROM {EXPECTED_PAIRS}")
        counted = tally(
            engine, kept, column, lookup_table, below_floor_table, not_blocked, largest_person
        )
        add_missed_elsewhere(engine, counted, kept)
        within_pairs = counted.within_pairs
        scored_n, expected_tp, tp_var = counted.of_kind("within")
        never_blocked_n, found, found_var = counted.of_kind("never_blocked")
        expected_tp, tp_var = expected_tp + found, tp_var + found_var
        _, missed, missed_var = counted.of_kind("cross")
        # Those below the floor (p small, so each pair's variance p(1 - p) is about p) and
        # the never-blocked ones not found are counted as Poisson counts (the never-blocked
        # estimate's own error is not in the interval).
        expected_missed = missed + counted.missed_elsewhere
        missed_var += counted.missed_elsewhere
        missed_not_blocked = counted.missed_not_blocked
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
            "expected_missed_below_floor": round(counted.below_floor, 1),
            "expected_missed_not_blocked": None
            if missed_not_blocked is None
            else round(missed_not_blocked, 1),
            "within_cluster_pairs_not_scored": within_pairs - scored_n,
            "within_cluster_pairs_never_blocked": None
            if missed_not_blocked is None
            else never_blocked_n,
            "persons_too_large_to_pair": counted.persons_not_paired,
        }
    with engine.scratch():
        drop_expected_pairs(engine)
        engine.drop_table("__changed_records")
    if snapshot:
        engine.create_table(Tables.EXPECTED_PAIRS_OF, f"SELECT {lit(snapshot)} AS snapshot")
    return estimates

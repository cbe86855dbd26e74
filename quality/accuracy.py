"""Measured accuracy against ground truth: pairwise precision, recall and F1 of clusters.

Pairs are unordered pairs of records. A predicted pair is two records in the same cluster;
a true pair is two records of the same true person. Only records in the person lookup are
counted (quarantined rows have no cluster); `recall_including_quarantined` also counts the
true pairs that quarantine made unreachable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines.engines import Engine
from pipelines.sql import ident


@dataclass(frozen=True)
class PairwiseMetrics:
    threshold: str
    records: int
    true_pairs: int
    predicted_pairs: int
    true_positive_pairs: int
    precision: float
    recall: float
    f1: float
    recall_including_quarantined: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _pairs(count_expr: str) -> str:
    return f"coalesce(sum({count_expr} * ({count_expr} - 1) / 2), 0)"


def pairwise_cluster_metrics(
    engine: Engine, lookup_table: str, cluster_column: str, truth_view: str, threshold: str
) -> PairwiseMetrics:
    """Compare clusters in `lookup_table` with ground truth: `truth_view` has columns
    source_dataset, source_record_id and true_person_id (pipelines/ground_truth.py)."""
    joined = (
        f"SELECT l.{ident(cluster_column)} AS c, t.true_person_id AS t "
        f"FROM {lookup_table} l JOIN {truth_view} t "
        "ON l.source_dataset = t.source_dataset AND l.source_record_id = t.source_record_id"
    )
    row = engine.fetch(
        f"""
        WITH j AS ({joined}),
        both_ AS (SELECT count(*) AS n FROM j GROUP BY c, t),
        pred AS (SELECT count(*) AS n FROM j GROUP BY c),
        true_ AS (SELECT count(*) AS n FROM j GROUP BY t),
        all_true AS (SELECT count(*) AS n FROM {truth_view} GROUP BY true_person_id)
        SELECT (SELECT count(*) FROM j),
               (SELECT {_pairs("n")} FROM true_),
               (SELECT {_pairs("n")} FROM pred),
               (SELECT {_pairs("n")} FROM both_),
               (SELECT {_pairs("n")} FROM all_true)
        """
    )[0]
    records, true_pairs, predicted, tp, all_true_pairs = (int(v) for v in row)
    precision = tp / predicted if predicted else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairwiseMetrics(
        threshold=threshold,
        records=records,
        true_pairs=true_pairs,
        predicted_pairs=predicted,
        true_positive_pairs=tp,
        precision=round(precision, 6),
        recall=round(recall, 6),
        f1=round(f1, 6),
        recall_including_quarantined=round(tp / all_true_pairs, 6) if all_true_pairs else 1.0,
    )

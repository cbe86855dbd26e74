"""The balanced threshold, chosen with a model from its own estimates, without labels.

A fixed balanced threshold of 0.99 linked every data set measured below its best F1: at it
the generator at 1M and FEBRL4 fell short of a hand-written Splink script, and the three
pseudopeople sets lost 2-4 points (docs/benchmarks.md, "The balanced threshold"). Where
the best threshold lies depends on the data, and the label-free estimates find it.

The rule: with the model's pairs clustered at each candidate threshold
(pipelines.linking.cluster_at_candidates; the candidates run from the high-recall threshold
to the high-precision one), estimate precision and recall there as the estimate step does
(quality.error_rates), and take the lowest candidate whose estimated precision reaches
the project's target (0.999 unless it says otherwise) at the lower end of its 95%
interval: the most recall the target allows, with the sampling error of a small linkage
on the safe side (on 7,000 generated records 0.9's precision was estimated 0.99912,
interval [0.99873, 0.99952], and measured 0.99890), as long as it costs at most
`balanced_max_f1_loss` (0.01) of estimated F1 against the best candidate. Otherwise, or
where none reaches it, take the candidate of highest estimated F1.

It is chosen once, on a model's first linkage, and frozen with the model in the registry
(linkage_models.registry), so every later linkage with that model, incremental ones too,
clusters at the same threshold and person ids move only when the model does. What it
rests on is what the estimates rest on: on the project's generator they put precision
0.05-0.07 points high near 0.95-0.97, so the rule took 0.97 at 1M records (estimated
0.99904, measured 0.99855) and 0.95 on the demo's 29k (0.99928, measured 0.9986), short of
the target it believed it reached (docs/benchmarks.md, session 29).
"""

from __future__ import annotations

from typing import Any

from linkage_models.project import Thresholds
from pipelines.contract import Tables
from pipelines.engines import Engine
from quality.error_rates import ComparedPairs, estimate_error_rates

# Between the high-recall and high-precision thresholds, which are candidates too.
CANDIDATES = (0.95, 0.97, 0.98, 0.99, 0.995)


def candidate_thresholds(thresholds: Thresholds) -> list[float]:
    """The thresholds tried for balanced, lowest first."""
    low, high = thresholds.high_recall, thresholds.high_precision
    return sorted({low, high, *(t for t in CANDIDATES if low < t < high)})


def f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def pick_balanced(
    estimates: dict[float, dict[str, float]], target: float, max_f1_loss: float
) -> tuple[float, str]:
    """The threshold the rule takes from each candidate's estimated precision (and the low
    end of its interval) and recall, and why.

    The target is taken where it costs at most `max_f1_loss` of estimated F1 against the
    best candidate: a precision target bought with a tenth of the recall is not what the
    data allows. The estimates near the top rest on few pairs, and a candidate can reach the
    target on paper at a recall cliff (0.71 on the pseudopeople households set with a level
    tried in session 39, measured precision 0.9981 there all the same)."""
    scores = {t: f1(e["precision"], e["recall"]) for t, e in estimates.items()}
    best = max(scores, key=lambda t: (scores[t], t))
    reaching = sorted(t for t, e in estimates.items() if e["precision_low"] >= target)
    if not reaching:
        return best, (
            f"no candidate's estimated precision reaches {target}: the one of highest estimated F1"
        )
    lowest = reaching[0]
    loss = scores[best] - scores[lowest]
    if loss <= max_f1_loss:
        return lowest, (
            f"the lowest candidate whose estimated precision reaches {target} (at the lower "
            "end of its 95% interval)"
        )
    return best, (
        f"the lowest candidate whose estimated precision reaches {target}, {lowest}, would "
        f"cost {loss:.4f} of estimated F1, more than {max_f1_loss}: the one of highest "
        "estimated F1"
    )


def choose_balanced_threshold(
    engine: Engine,
    thresholds: Thresholds,
    columns: dict[str, float],
    lookup_table: str,
    never_blocked_pairs_table: str,
    compared: ComparedPairs,
) -> dict[str, Any]:
    """The balanced threshold for clusters at each candidate (`columns` of `lookup_table`:
    column -> threshold; pipelines.linking.cluster_at_candidates), with the rule and every
    candidate's estimates."""
    estimated = estimate_error_rates(
        engine,
        threshold_columns={c: c for c in columns},
        lookup_table=lookup_table,
        never_blocked_pairs_table=never_blocked_pairs_table,
        compared=compared,
    )
    for column in columns:
        engine.drop_table(Tables.expected_pairs(column))
    estimates = {
        t: {
            "precision": estimated[c]["precision"],
            "precision_low": estimated[c]["precision_95ci"][0],
            "recall": estimated[c]["recall"],
        }
        for c, t in columns.items()
    }
    target = thresholds.balanced_precision_target
    chosen, why = pick_balanced(estimates, target, thresholds.balanced_max_f1_loss)
    return {
        "threshold": chosen,
        "rule": why,
        "precision_target": target,
        "max_f1_loss": thresholds.balanced_max_f1_loss,
        "candidates": [
            {
                "threshold": t,
                "estimated_precision": e["precision"],
                "estimated_precision_95ci_low": e["precision_low"],
                "estimated_recall": e["recall"],
                "estimated_f1": round(f1(e["precision"], e["recall"]), 6),
            }
            for t, e in sorted(estimates.items())
        ],
    }

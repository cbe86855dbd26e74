"""How a finished run's stored pairs' match probabilities compare with the truth, band by
band, and the logistic line (logit = a + b * the model's log-odds) that would calibrate them.

Analysis with ground truth, for the methodologist: nothing in the product reads it. Each
argument is a folder `bench/external_benchmarks.py --out DIR` wrote for one data set (its
`truth.csv` and `joinedup/` output), e.g. `DIR/pseudopeople_noisy`.

    .venv/bin/python bench/calibration_against_truth.py DIR/pseudopeople_noisy DIR/febrl3
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import numpy as np

BANDS = [(0.01, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 0.99), (0.99, 0.999), (0.999, 1.01)]

PAIRS_WITH_TRUTH = """
SELECT p.match_weight, (l.true_person_id = r.true_person_id)::INT AS same_person
FROM pairwise_predictions p
JOIN truth l ON l.source_dataset = p.source_dataset_l
 AND l.source_record_id = CAST(p.record_id_l AS VARCHAR)
JOIN truth r ON r.source_dataset = p.source_dataset_r
 AND r.source_record_id = CAST(p.record_id_r AS VARCHAR)
"""


def logistic_line(log_odds: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood a, b of P(same) = 1 / (1 + exp(-(a + b * log_odds))) (Newton)."""
    x = np.column_stack([np.ones_like(log_odds), log_odds])
    beta = np.array([0.0, 1.0])
    for _ in range(50):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -35, 35)))
        step = np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x, x.T @ (same - p))
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return float(beta[0]), float(beta[1])


def report(folder: Path) -> None:
    database = folder / "joinedup" / "secure" / "work" / "joinedup.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        con.execute(
            "CREATE TEMP TABLE truth AS SELECT * FROM read_csv(?, all_varchar = true)",
            [str(folder / "truth.csv")],
        )
        rows = con.execute(PAIRS_WITH_TRUTH).fetchnumpy()
    log_odds = rows["match_weight"].astype(float) * np.log(2)  # Splink's weights are log2
    same = rows["same_person"].astype(int)
    a, b = logistic_line(log_odds, same)
    model = 1 / (1 + np.exp(-log_odds))
    refit = 1 / (1 + np.exp(-(a + b * log_odds)))
    print(
        f"{folder.name}: {len(same):,} stored pairs, {same.sum():,} the same person, "
        f"{model.sum():,.0f} expected; calibrating line: logit = {a:+.2f} + {b:.3f} x log-odds"
    )
    print("  band          pairs   same person   model expects   the line expects")
    for low, high in BANDS:
        band = (model >= low) & (model < high)
        print(
            f"  {low:<5}-{min(high, 1):<6} {band.sum():>7,} {same[band].sum():>13,} "
            f"{model[band].sum():>15,.0f} {refit[band].sum():>18,.0f}"
        )


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        report(Path(argument))

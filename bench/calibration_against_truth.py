"""How a finished run's stored pairs' match probabilities compare with the truth, band by
band, and the logistic line (logit = a + b * the model's log-odds) that would calibrate them.

Analysis with ground truth, for the methodologist: nothing in the product reads it. Each
argument is a folder `bench/external_benchmarks.py --out DIR` wrote for one data set (its
`truth.csv` and `joinedup/` output), e.g. `DIR/pseudopeople_noisy`.

With `--levels`, also each comparison level's m (its share among matches) as the model
learnt it beside its share among the stored pairs that are the same person, and the bands
again with every m taken from the truth: whether the calibration is off because m was
learnt wrong, or despite m (identifiers that do not agree independently).

    .venv/bin/python bench/calibration_against_truth.py DIR/pseudopeople_noisy DIR/febrl3
    .venv/bin/python bench/calibration_against_truth.py --levels DIR/pseudopeople_noisy
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

BANDS = [(0.01, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 0.99), (0.99, 0.999), (0.999, 1.01)]

PAIRS_WITH_TRUTH = """
SELECT p.*, (l.true_person_id = r.true_person_id)::INT AS same_person
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


def learnt_levels(model: dict[str, Any]) -> list[tuple[str, str, int, float]]:
    """(comparison, level label, comparison vector value, m) of each level whose m the
    model learnt (not null levels, not fixed ones); an m Splink left unset is taken as the
    default it scores with, 0.05 shared among the comparison's other levels."""
    found = []
    for comparison in model["comparisons"]:
        levels = [c for c in comparison["comparison_levels"] if not c.get("is_null_level")]
        for i, level in enumerate(levels):
            if not level.get("fix_m_probability"):
                m = level.get("m_probability") or 0.05 / (len(levels) - 1)
                name = comparison["output_column_name"]
                found.append((name, level["label_for_charts"], len(levels) - 1 - i, m))
    return found


def m_from_truth(
    rows: dict[str, np.ndarray], model: dict[str, Any]
) -> tuple[np.ndarray, list[str]]:
    """The stored pairs' log-odds with every learnt m replaced by the level's share among
    the stored pairs that are the same person; and a line per level, m learnt against m
    from the truth."""
    same = rows["same_person"].astype(bool)
    log2_odds = rows["match_weight"].astype(float).copy()
    lines = []
    for name, label, value, m in learnt_levels(model):
        gamma = rows[f"gamma_{name}"]
        known = same & (gamma >= 0)
        in_level = int((known & (gamma == value)).sum())
        if not in_level:  # no share to take: the level keeps the m it was learnt with
            lines.append(f"  {name}: {label[:44]:<44} learnt {m:.4f}  no pair the same person")
            continue
        truth = in_level / int(known.sum())
        log2_odds[gamma == value] += math.log2(truth / m)
        lines.append(
            f"  {name}: {label[:44]:<44} learnt {m:.4f}  truth {truth:.4f} ({in_level:,} pairs)"
            f"  {math.log2(truth / m):+.2f} bits"
        )
    return log2_odds * np.log(2), lines


def report(folder: Path, levels: bool = False) -> None:
    output = folder / "joinedup" / "secure"
    with duckdb.connect(str(output / "work" / "joinedup.duckdb"), read_only=True) as con:
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
    if levels:
        model_file = max((output / "model").glob("model_v*.json"))
        truth_log_odds, lines = m_from_truth(rows, json.loads(model_file.read_text()))
        print(f"  m of each learnt level ({model_file.name}) against the truth:")
        print("\n".join(lines))
        with_truth = 1 / (1 + np.exp(-truth_log_odds))
        print("  the bands with every m from the truth: band, same person, expected")
        for low, high in BANDS:
            band = (with_truth >= low) & (with_truth < high)
            expected = with_truth[band].sum()
            print(f"  {low:<5}-{min(high, 1):<6} {same[band].sum():>13,} {expected:>15,.0f}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    for argument in arguments:
        if argument != "--levels":
            report(Path(argument), levels="--levels" in arguments)

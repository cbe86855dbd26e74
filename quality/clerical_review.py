"""Clerical review: a stratified sample of scored pairs for reviewers, and the precision and
recall their decisions imply, weighted back to the population of scored pairs.

The sample is stratified by match weight (2-point bands), with equal allocation, so pairs
near the thresholds, where decisions are hardest, are well represented. Each labelled pair
stands for stratum_pairs / labelled_in_stratum pairs. Intervals are Wilson score intervals
on the effective sample size of the weighted labels. Figures are pairwise over scored pairs
(not clusters): a pair is a link at a threshold when its match probability reaches it.

The exported CSV holds identifiers for reviewers in the secure setting; the stored labels
(OUT/review/labels.parquet) hold only pair ids, strata and decisions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.contract import OutputLayout, Tables
from pipelines.engines import Engine

STRATUM_WIDTH = 2.0  # match weight
LABEL_COLUMNS = [
    "source_dataset_l",
    "record_id_l",
    "source_dataset_r",
    "record_id_r",
    "stratum",
    "stratum_pairs",
    "match_weight",
    "match_probability",
    "clerical_match",
]
REVIEW_COLUMNS = ["given_name", "middle_names", "family_name", "date_of_birth", "sex", "postcode"]
Z95 = 1.959964


class ReviewError(ValueError):
    """A problem with a review file: names the file, row or column and what was expected."""


def _stratum_sql() -> str:
    return f"CAST(floor(match_weight / {STRATUM_WIDTH}) * {STRATUM_WIDTH} AS INTEGER)"


def sample_pairs(engine: Engine, n: int, seed: int = 42) -> pd.DataFrame:
    """About n pairs, equally allocated across match-weight strata, with identifiers."""
    strata = engine.fetch(
        f"SELECT count(DISTINCT {_stratum_sql()}) FROM {Tables.PAIRWISE_PREDICTIONS}"
    )[0][0]
    per_stratum = max(1, math.ceil(n / max(int(strata), 1)))
    side_cols = ", ".join(f"{c}_l, {c}_r" for c in REVIEW_COLUMNS)
    return engine.fetch_df(f"""
        WITH scored AS (
            SELECT *, {_stratum_sql()} AS stratum,
                   count(*) OVER (PARTITION BY {_stratum_sql()}) AS stratum_pairs,
                   row_number() OVER (PARTITION BY {_stratum_sql()}
                       ORDER BY hash(source_dataset_l || record_id_l || source_dataset_r
                                     || record_id_r || '{int(seed)}')) AS draw
            FROM {Tables.PAIRWISE_PREDICTIONS})
        SELECT source_dataset_l, record_id_l, source_dataset_r, record_id_r, stratum,
               stratum_pairs, round(match_weight, 3) AS match_weight,
               round(match_probability, 6) AS match_probability, {side_cols},
               CAST(NULL AS VARCHAR) AS clerical_match
        FROM scored WHERE draw <= {per_stratum}
        ORDER BY stratum, draw""")


def read_decisions(path: Path) -> pd.DataFrame:
    """Reviewed CSV -> labels (identifiers dropped). Blank decisions are skipped."""
    if not path.is_file():
        raise ReviewError(f"{path}: review file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise ReviewError(
            f"{path}: missing column(s) {missing}; expected the columns of a file "
            "written by `joinedup review sample`"
        )
    return read_decisions_frame(frame, str(path))


def read_decisions_frame(frame: pd.DataFrame, origin: str = "review") -> pd.DataFrame:
    """Validate a reviewed sample (all columns as text) and keep only the decided pairs."""
    frame = frame.astype(str).replace({"None": "", "nan": ""})
    decisions = frame["clerical_match"].str.strip()
    bad = [i + 2 for i, v in enumerate(decisions) if v not in ("", "0", "1")]
    if bad:
        raise ReviewError(
            f"{origin}: clerical_match must be 1 (same person), 0 (different) or "
            f"blank (not reviewed); rows {bad[:10]} are not"
        )
    labels = frame.loc[decisions != "", LABEL_COLUMNS].copy()
    labels["clerical_match"] = decisions[decisions != ""].astype(int)
    for col in ("stratum", "stratum_pairs"):
        labels[col] = labels[col].astype(int)
    for col in ("match_weight", "match_probability"):
        labels[col] = labels[col].astype(float)
    return labels


def store_labels(labels: pd.DataFrame, layout: OutputLayout) -> pd.DataFrame:
    """Merge new decisions into the stored labels (a later decision on a pair wins)."""
    path = layout.review_labels
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ["source_dataset_l", "record_id_l", "source_dataset_r", "record_id_r"]
    if path.exists():
        labels = pd.concat([pd.read_parquet(path), labels], ignore_index=True)
    merged = labels.drop_duplicates(key, keep="last").reset_index(drop=True)
    merged.to_parquet(path, index=False)
    return merged


def _wilson(p: float, n_eff: float) -> list[float]:
    if n_eff <= 0:
        return [0.0, 1.0]
    denom = 1 + Z95**2 / n_eff
    centre = (p + Z95**2 / (2 * n_eff)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n_eff + Z95**2 / (4 * n_eff**2)) / denom
    return [round(max(centre - half, 0.0), 6), round(min(centre + half, 1.0), 6)]


def _weighted_share(weights: pd.Series, hits: pd.Series) -> tuple[float, list[float], float]:
    total = weights.sum()
    if total == 0:
        return 1.0, [0.0, 1.0], 0.0
    share = float((weights * hits).sum() / total)
    n_eff = float(total**2 / (weights**2).sum())
    return share, _wilson(share, n_eff), n_eff


def clerical_estimates(labels: pd.DataFrame, thresholds: dict[str, float]) -> dict[str, Any]:
    """Weighted pairwise precision and recall of each threshold, from the labels."""
    counts = labels.groupby("stratum").size().rename("labelled")
    frame = labels.join(counts, on="stratum")
    frame["weight"] = frame["stratum_pairs"] / frame["labelled"]
    matches = frame[frame.clerical_match == 1]
    result: dict[str, Any] = {
        "labelled_pairs": int(len(labels)),
        "labelled_matches": int(len(matches)),
        "thresholds": {},
    }
    for name, t in thresholds.items():
        links = frame[frame.match_probability >= t]
        precision, p_ci, p_n = _weighted_share(links.weight, links.clerical_match)
        recall, r_ci, r_n = _weighted_share(
            matches.weight, (matches.match_probability >= t).astype(int)
        )
        result["thresholds"][name] = {
            "precision": round(precision, 6),
            "precision_95ci": p_ci,
            "precision_effective_n": round(p_n, 1),
            "recall": round(recall, 6),
            "recall_95ci": r_ci,
            "recall_effective_n": round(r_n, 1),
        }
    return result


def current_labels(engine: Engine, layout: OutputLayout) -> pd.DataFrame | None:
    """Stored labels with the current model's match probability (0 if no longer scored)."""
    path = layout.review_labels
    if not path.exists():
        return None
    labels = pd.read_parquet(path)
    engine.register_file("__labels", str(path), "parquet")
    label_columns = ", ".join(f"l.{c}" for c in labels.columns if c != "match_probability")
    refreshed = engine.fetch_df(f"""
        SELECT {label_columns},
               coalesce(p.match_probability, p2.match_probability, 0) AS match_probability
        FROM __labels l
        LEFT JOIN {Tables.PAIRWISE_PREDICTIONS} p
          ON p.source_dataset_l = l.source_dataset_l AND p.record_id_l = l.record_id_l
         AND p.source_dataset_r = l.source_dataset_r AND p.record_id_r = l.record_id_r
        LEFT JOIN {Tables.PAIRWISE_PREDICTIONS} p2
          ON p2.source_dataset_l = l.source_dataset_r AND p2.record_id_l = l.record_id_r
         AND p2.source_dataset_r = l.source_dataset_l AND p2.record_id_r = l.record_id_l""")
    return refreshed if len(labels) else None

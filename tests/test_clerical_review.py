"""The clerical review loop: sample -> review -> import -> reviewed error rates in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.engines import DuckDBEngine
from pipelines.run import RunResult
from pipelines.synthetic import GeneratedData, label_from_ground_truth
from quality.clerical_review import clerical_estimates

from .helpers import published

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture
def run_out(small_run: RunResult, tmp_path: Path) -> Path:
    """A copy of the shared run's outputs: review writes labels and a new report, which
    must not change what other tests read."""
    copy = tmp_path / "run"
    shutil.copytree(small_run.output_dir, copy, symlinks=True)  # keep `current` a link
    return copy


def _population_rates(out: Path, truth: Path, threshold: float) -> tuple[float, float]:
    """Pairwise precision and recall over every scored pair, from ground truth: what the
    weighted review estimates."""
    with DuckDBEngine(published(out).work_dir / "joinedup.duckdb") as engine:
        engine.register_file("__truth", str(truth), "parquet")
        linked, true_linked, true_all = engine.fetch(f"""
            WITH pairs AS (
                SELECT p.match_probability >= {threshold} AS link,
                       tl.true_person_id = tr.true_person_id AS same
                FROM pairwise_predictions p
                JOIN __truth tl ON tl.source_dataset = p.source_dataset_l
                                AND tl.source_record_id = p.record_id_l
                JOIN __truth tr ON tr.source_dataset = p.source_dataset_r
                                AND tr.source_record_id = p.record_id_r)
            SELECT count_if(link), count_if(link AND same), count_if(same) FROM pairs""")[0]
    return true_linked / linked, true_linked / true_all


def test_sample_review_import_and_report(
    run_out: Path, small_data: GeneratedData, small_project, tmp_path: Path
) -> None:
    sample_csv = tmp_path / "sample.csv"
    args = ["--project-out", str(run_out)]
    config = str(small_project.config_path)
    done = runner.invoke(
        app, ["review", "sample", config, "--n", "240", "--out", str(sample_csv), *args]
    )
    assert done.exit_code == 0, done.output
    sample = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    assert {"given_name_l", "date_of_birth_r", "postcode_l", "clerical_match"} <= set(sample)
    strata = sample.stratum.astype(int)
    assert strata.nunique() >= 5  # spread across the match-weight range
    assert sample.groupby("stratum").size().max() <= -(-240 // strata.nunique())  # equal shares
    reviewed = label_from_ground_truth(sample, small_data.ground_truth)
    reviewed.loc[reviewed.index[:3], "clerical_match"] = ""  # not reviewed: skipped
    reviewed.to_csv(sample_csv, index=False)

    done = runner.invoke(app, ["review", "import", config, str(sample_csv), *args])
    assert done.exit_code == 0, done.output
    labels = pd.read_parquet(published(run_out).review_labels)
    assert len(labels) == len(sample) - 3
    assert "given_name_l" not in labels.columns  # decisions stored without identifiers

    quality = json.loads((published(run_out).linkage_quality).read_text())
    review = quality["clerical_review"]
    assert review["labelled_pairs"] == len(labels)
    assert review["labelled_matches"] == int(labels.clerical_match.sum())
    linked_at = json.loads(published(run_out).exact_manifest.read_text())["thresholds"]
    for name, threshold in linked_at.items():
        rates = review["thresholds"][name]
        precision, recall = _population_rates(run_out, small_data.ground_truth, threshold)
        # Weighted back to all scored pairs, the reviewed rates estimate the population's.
        assert rates["precision_95ci"][0] <= precision <= rates["precision_95ci"][1], name
        assert rates["recall_95ci"][0] <= recall <= rates["recall_95ci"][1], name
        assert abs(rates["recall"] - recall) < 0.05, (name, rates["recall"], recall)
    # Splink's truth-space counts over the reviewed pairs, one row per threshold.
    truth_space = review["truth_space_unweighted"]
    assert [r["threshold"] for r in truth_space] == ["high_precision", "balanced", "high_recall"]
    for row in truth_space:
        assert row["tp"] + row["fp"] + row["tn"] + row["fn"] == len(labels)
        assert row["tp"] + row["fn"] == int(labels.clerical_match.sum())
    html = (published(run_out).linkage_report).read_text()
    balanced = review["thresholds"]["balanced"]
    assert f"{len(labels)} scored pairs were reviewed" in html
    assert f"{balanced['recall']:.4f}" in html


def test_bad_decisions_are_named_by_row(run_out: Path, small_project, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    cols = [
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
    pd.DataFrame([["a", "1", "b", "2", "0", "10", "1.0", "0.5", "yes"]], columns=cols).to_csv(
        bad, index=False
    )
    done = runner.invoke(
        app,
        [
            "review",
            "import",
            str(small_project.config_path),
            str(bad),
            "--project-out",
            str(run_out),
        ],
    )
    assert done.exit_code == 2
    assert "clerical_match must be 1" in done.output and "rows [2]" in done.output


def test_weighting_back_to_the_population() -> None:
    # Two strata: 1,000 high-weight pairs (all matches) and 99,000 low ones (1 in 3 labelled
    # a match). 10 labels each: each high label stands for 100 pairs, each low for 9,900.
    labels = pd.DataFrame(
        {
            "stratum": [20] * 10 + [0] * 10,
            "stratum_pairs": [1_000] * 10 + [99_000] * 10,
            "match_probability": [0.999] * 10 + [0.2] * 10,
            "clerical_match": [1] * 10 + [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        }
    )
    result = clerical_estimates(labels, {"balanced": 0.99})["thresholds"]["balanced"]
    assert result["precision"] == 1.0
    # Matches: 1,000 above the threshold, 29,700 below -> recall 1000/30700.
    assert result["recall"] == pytest.approx(1_000 / 30_700, abs=1e-6)

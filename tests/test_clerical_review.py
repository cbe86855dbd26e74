"""The clerical review loop: sample -> review -> import -> reviewed error rates in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.run import RunResult
from pipelines.synthetic import GeneratedData
from quality.clerical_review import clerical_estimates, label_from_ground_truth

pytestmark = pytest.mark.slow
runner = CliRunner()


def _args(run: RunResult) -> list[str]:
    return ["--project-out", str(run.output_dir)]


def test_sample_review_import_and_report(
    small_run: RunResult, small_data: GeneratedData, small_project, tmp_path: Path
) -> None:
    sample_csv = tmp_path / "sample.csv"
    done = runner.invoke(
        app,
        [
            "review",
            "sample",
            str(small_project.config_path),
            "--n",
            "120",
            "--out",
            str(sample_csv),
            *_args(small_run),
        ],
    )
    assert done.exit_code == 0, done.output
    sample = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    assert {"given_name_l", "date_of_birth_r", "postcode_l", "clerical_match"} <= set(sample)
    assert sample.stratum.nunique() >= 5  # spread across the match-weight range
    reviewed = label_from_ground_truth(sample, small_data.ground_truth)
    reviewed.loc[reviewed.index[:3], "clerical_match"] = ""  # not reviewed: skipped
    reviewed.to_csv(sample_csv, index=False)

    done = runner.invoke(
        app,
        ["review", "import", str(small_project.config_path), str(sample_csv), *_args(small_run)],
    )
    assert done.exit_code == 0, done.output
    labels = pd.read_parquet(small_run.output_dir / "review" / "labels.parquet")
    assert len(labels) == len(sample) - 3
    assert "given_name_l" not in labels.columns  # decisions stored without identifiers
    quality = json.loads((small_run.output_dir / "reports" / "linkage_quality.json").read_text())
    reviewed_rates = quality["clerical_review"]["thresholds"]["balanced"]
    assert reviewed_rates["precision_95ci"][0] <= reviewed_rates["precision"] <= 1
    assert reviewed_rates["recall"] > 0.8
    assert (
        "Clerical review" in (small_run.output_dir / "reports" / "linkage_report.html").read_text()
    )


def test_bad_decisions_are_named_by_row(
    small_run: RunResult, small_project, tmp_path: Path
) -> None:
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
        app, ["review", "import", str(small_project.config_path), str(bad), *_args(small_run)]
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

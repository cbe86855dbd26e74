"""The balanced threshold chosen with the model (`balanced: auto`, the default): from the
model's own estimates at each candidate, recorded with the model, and kept by every later
linkage with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage_models.project import Thresholds, load_project
from linkage_models.registry import ModelRegistry
from pipelines.contract import PERSON_ID_COLUMNS, OutputLayout
from pipelines.engines import DuckDBEngine
from pipelines.run import RunResult, run_project
from pipelines.synthetic import GeneratedData
from quality.threshold_choice import candidate_thresholds, pick_balanced

from .helpers import demo_settings, html_tables, published, write_project
from .test_incremental import members
from .test_persistent_ids import lookup


def _estimates(*rows: tuple[float, float, float, float]) -> dict[float, dict[str, float]]:
    return {t: {"precision": p, "precision_low": low, "recall": r} for t, p, low, r in rows}


def test_the_lowest_threshold_sure_of_the_precision_target_is_taken() -> None:
    estimates = _estimates(
        (0.9, 0.9992, 0.9985, 0.995),  # the estimate reaches 0.999, its interval does not
        (0.95, 0.9995, 0.9991, 0.993),
        (0.99, 0.9998, 0.9996, 0.990),
    )
    chosen, why = pick_balanced(estimates, 0.999, 0.01)
    assert chosen == 0.95 and "lowest candidate" in why


def test_where_no_threshold_reaches_the_target_the_best_estimated_f1_is_taken() -> None:
    estimates = _estimates(
        (0.9, 0.960, 0.955, 0.99),  # F1 0.9748
        (0.95, 0.975, 0.970, 0.98),  # F1 0.9775
        (0.99, 0.985, 0.980, 0.95),  # F1 0.9672
    )
    chosen, why = pick_balanced(estimates, 0.999, 0.01)
    assert chosen == 0.95 and "highest estimated F1" in why


def test_a_precision_target_reached_only_at_a_recall_cliff_is_not_taken() -> None:
    # The pseudopeople households set's candidates (session 38), its top one nudged to
    # reach the target: F1 0.84 there against 0.978 at 0.9.
    estimates = _estimates(
        (0.9, 0.99086, 0.99013, 0.9652),
        (0.95, 0.99287, 0.99223, 0.9592),
        (0.99, 0.99709, 0.99667, 0.9192),
        (0.999, 0.99930, 0.99910, 0.7216),
    )
    chosen, why = pick_balanced(estimates, 0.999, 0.01)
    assert chosen == 0.9 and "would cost" in why and "0.999," in why
    # A project that wants the target at any cost says so.
    assert pick_balanced(estimates, 0.999, 1.0)[0] == 0.999
    # Where the target costs little F1 it is still taken: the generator at 1M (session 37).
    estimates = _estimates(
        (0.9, 0.99738, 0.99733, 0.9884),
        (0.95, 0.99883, 0.99879, 0.9858),
        (0.97, 0.99902, 0.99899, 0.9842),
        (0.98, 0.99916, 0.99913, 0.9828),
    )
    assert pick_balanced(estimates, 0.999, 0.01)[0] == 0.98
    assert Thresholds(high_precision=0.999, high_recall=0.9).balanced_max_f1_loss == 0.01


def test_the_candidates_run_from_the_high_recall_to_the_high_precision_threshold() -> None:
    assert candidate_thresholds(Thresholds(high_precision=0.999, high_recall=0.9)) == [
        0.9,
        0.95,
        0.97,
        0.98,
        0.99,
        0.995,
        0.999,
    ]
    assert candidate_thresholds(Thresholds(high_precision=0.98, high_recall=0.96)) == [
        0.96,
        0.97,
        0.98,
    ]
    # A number fixes it; reading the thresholds before the model chose one says so.
    assert Thresholds(high_precision=0.999, balanced=0.95, high_recall=0.9).as_dict()[
        "balanced"
    ] == pytest.approx(0.95)
    with pytest.raises(RuntimeError, match="chosen with the model"):
        Thresholds(high_precision=0.999, high_recall=0.9).as_dict()


def test_the_run_links_at_the_threshold_the_model_chose_and_says_why(
    small_run: RunResult,
) -> None:
    manifest = small_run.manifest
    choice = manifest["balanced_threshold_choice"]
    balanced = manifest["thresholds"]["balanced"]
    # The rule, applied again to the estimates it recorded, takes the same threshold.
    estimates = {
        c["threshold"]: {
            "precision": c["estimated_precision"],
            "precision_low": c["estimated_precision_95ci_low"],
            "recall": c["estimated_recall"],
        }
        for c in choice["candidates"]
    }
    assert (
        pick_balanced(estimates, choice["precision_target"], choice["max_f1_loss"])[0] == balanced
    )
    assert choice["threshold"] == balanced
    assert [c["threshold"] for c in choice["candidates"]][0] == manifest["thresholds"][
        "high_recall"
    ]
    # It is frozen with the model it was chosen for.
    registry = ModelRegistry(OutputLayout(small_run.output_dir).model_dir)
    assert registry.get(manifest["model"]["version"]).balanced_threshold == balanced
    # The clusters are the chosen threshold's: its links are the pairs scored at or above it.
    with DuckDBEngine(published(small_run.output_dir).work_dir / "joinedup.duckdb") as engine:
        links = engine.fetch(
            f"SELECT count(*) FROM pairwise_predictions WHERE match_probability >= {balanced}"
        )[0][0]
    assert manifest["links"]["balanced"]["links"] == links
    # What the choice estimated there is what the published estimate says.
    at_chosen = next(c for c in choice["candidates"] if c["threshold"] == balanced)
    published_estimate = manifest["estimated_error_rates"]["balanced"]
    assert at_chosen["estimated_precision"] == pytest.approx(published_estimate["precision"])
    assert at_chosen["estimated_recall"] == pytest.approx(published_estimate["recall"])
    # Analysts read the choice in the linkage report, methodologists in the model card.
    tables = html_tables(small_run.published.linkage_report.read_text())
    rows = next(t for t in tables if "Lower end of its 95% interval" in t[0])
    assert len(rows) == len(choice["candidates"]) + 1
    assert any(r[0] == f"{balanced} (chosen)" for r in rows)
    card = OutputLayout(small_run.output_dir).model_card.read_text()
    assert "## Balanced threshold" in card and f"| {balanced} (chosen) |" in card


def _variant(folder: Path, data: GeneratedData, balanced: object) -> Path:
    raw = demo_settings()
    raw["model"]["thresholds"]["balanced"] = balanced
    raw["data_dir"] = str(data.out_dir)
    raw["output"]["path"] = str(folder / "out")
    return write_project(raw, folder / f"project_{balanced}.yaml")


def test_a_fixed_balanced_threshold_overrides_the_models_and_the_models_is_kept(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    chosen_run = run_project(load_project(_variant(tmp_path, small_data, "auto")))
    chosen = chosen_run.manifest["thresholds"]["balanced"]
    fixed = 0.985 if chosen != 0.985 else 0.975
    fixed_run = run_project(load_project(_variant(tmp_path, small_data, fixed)))
    assert fixed_run.manifest["model"]["version"] == chosen_run.manifest["model"]["version"]
    assert fixed_run.manifest["thresholds"]["balanced"] == fixed
    assert fixed_run.manifest["balanced_threshold_choice"] is None
    report = fixed_run.published.linkage_report.read_text()
    assert "The balanced threshold is the project's own" in report
    # Back to auto: the model's frozen choice again, not chosen a second time.
    again = run_project(load_project(_variant(tmp_path, small_data, "auto")))
    assert again.manifest["thresholds"]["balanced"] == chosen
    assert (
        again.manifest["balanced_threshold_choice"]
        == chosen_run.manifest["balanced_threshold_choice"]
    )
    assert again.manifest["links"] == chosen_run.manifest["links"]
    # The first run's predict and cluster steps took the pairs the choice scored and the
    # clusters it made; the later run, which did not choose, made them itself, the same.
    assert chosen_run.manifest["pairs"]["scored_in_model_step"] is True
    assert chosen_run.manifest["linkage"]["clusters_made_in_model_step"] is True
    assert "scored_in_model_step" not in again.manifest["pairs"]
    assert again.manifest["linkage"]["clusters_made_in_model_step"] is False
    for count in ("scored", "kept_above_floor", "below_floor"):
        assert again.manifest["pairs"][count] == chosen_run.manifest["pairs"][count]
    for column in PERSON_ID_COLUMNS.values():
        assert members(lookup(again), column) == members(lookup(chosen_run), column)

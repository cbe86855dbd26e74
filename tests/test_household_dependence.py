"""Agreement within one household priced as such (`household_dependence: learnt`): a birth
date shared by two people of one household with unrelated given names (twins) is learnt to
be common there, not scored at the population's rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from linkage_models.project import load_project
from linkage_models.registry import ModelRegistry
from linkage_models.settings import WITHIN_HOUSEHOLD
from pipelines.contract import OutputLayout
from pipelines.engines import DuckDBEngine
from pipelines.run import RunResult, run_project
from pipelines.synthetic import GeneratedData

from .helpers import demo_settings, published, write_project

WITHIN = f"Exact match on date_of_birth, unrelated given names, {WITHIN_HOUSEHOLD}"


def _learnt(data: GeneratedData, folder: Path, engine_name: str = "duckdb") -> RunResult:
    """The shared test data, linked by the demo with the household opted in."""
    raw = demo_settings()
    raw["model"]["training"]["u_max_pairs"] = 1e8
    raw["model"]["household_dependence"] = "learnt"
    project = load_project(
        write_project(raw, folder / "project.yaml"),
        data_dir=data.out_dir,
        output_dir=folder / "out",
    )
    return run_project(project, engine_name=engine_name, ground_truth=data.ground_truth)


@pytest.fixture(scope="module")
def learnt_run(small_data: GeneratedData, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return _learnt(small_data, tmp_path_factory.mktemp("household"))


def _date_of_birth_levels(output_dir: Path) -> dict[str, dict]:
    _, model = ModelRegistry(OutputLayout(output_dir).model_dir).load("approved")
    comparison = next(c for c in model["comparisons"] if c["output_column_name"] == "date_of_birth")
    return {lv.get("label_for_charts"): lv for lv in comparison["comparison_levels"]}


def test_a_birth_date_shared_within_a_household_is_learnt_to_be_common_there(
    learnt_run: RunResult, small_run: RunResult
) -> None:
    levels = _date_of_birth_levels(learnt_run.output_dir)
    within, exact = levels[WITHIN], levels["Exact match on date_of_birth"]
    # Same evidence among one person's records; among different people far commoner in a
    # household (the generator's twins: about 0.1 of pairs of one household) than across
    # the population (under 0.001).
    assert within["m_probability"] == exact["m_probability"]
    assert within["u_probability"] > 20 * exact["u_probability"]
    assert 0.03 < within["u_probability"] < 0.3
    card = OutputLayout(learnt_run.output_dir).model_card.read_text()
    assert "| exact level | u within one household | u in the population |" in card
    # Off by default: the demo's own model has no such level.
    assert WITHIN not in _date_of_birth_levels(small_run.output_dir)


def _twins(run: RunResult, data: GeneratedData) -> tuple[int, float]:
    """Scored pairs of two people with one surname, birth date and postcode: how many, and
    how many matches the model expects among them."""
    truth = data.ground_truth
    with DuckDBEngine(published(run.output_dir).work_dir / "joinedup.duckdb") as engine:
        pairs, expected = engine.fetch(
            f"""
            SELECT count(*), coalesce(sum(p.match_probability), 0)
            FROM pairwise_predictions p
            JOIN '{truth}' l
              ON l.source_dataset = p.source_dataset_l AND l.source_record_id = p.record_id_l
            JOIN '{truth}' r
              ON r.source_dataset = p.source_dataset_r AND r.source_record_id = p.record_id_r
            WHERE l.true_person_id <> r.true_person_id
              AND p.family_name_l = p.family_name_r
              AND p.date_of_birth_l = p.date_of_birth_r
              AND p.postcode_l = p.postcode_r
            """
        )[0]
    return pairs, expected


def test_twins_of_one_household_are_not_counted_as_expected_matches(
    learnt_run: RunResult, small_run: RunResult, small_data: GeneratedData
) -> None:
    """Scored at the population's rate for a shared birth date (the default), the
    generator's twins are worth several expected matches, all counted in the error-rate
    estimates; learnt, less than one."""
    assert _twins(small_run, small_data)[1] > 5.0
    assert _twins(learnt_run, small_data)[1] < 1.0


@pytest.mark.spark
def test_spark_learns_the_same_weight_for_a_birth_date_shared_in_a_household(
    spark: Any, learnt_run: RunResult, small_data: GeneratedData, tmp_path: Path
) -> None:
    """The level's SQL (given names compared by each engine's functions) and its EM session
    (blocked on an array column) run on Spark, and learn what DuckDB learns."""
    on_spark = _learnt(small_data, tmp_path, engine_name="spark")
    weights = []
    for run in (learnt_run, on_spark):
        level = _date_of_birth_levels(run.output_dir)[WITHIN]
        weights.append(math.log2(level["m_probability"] / level["u_probability"]))
    assert abs(weights[0] - weights[1]) <= 0.05, weights
    assert weights[0] < 6  # against about +10 bits for the same date elsewhere

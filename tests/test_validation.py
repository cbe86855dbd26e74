"""The delivery contract: built from config (pure), run through Great Expectations."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd

from linkage_models.project import SourceSpec, load_project
from pipelines.deliveries import Delivery
from pipelines.engine import Engine
from pipelines.ingest import ingest_delivery
from quality.validation import build_expectations, validate_delivery

from .conftest import DEMO_CONFIG


def _courts():
    return load_project(DEMO_CONFIG).spec.source("magistrates_courts")


def test_suite_is_built_from_the_source_contract() -> None:
    specs = {s.key: s for s in build_expectations(_courts(), today=date(2026, 1, 2))}
    assert set(specs) == {
        "record_id_present",
        "record_id_unique",
        "full_name_completeness",
        "date_of_birth_completeness",
        "sex_completeness",
        "postcode_completeness",
        "date_of_birth_parseable",
        "date_of_birth_plausible",
        "event_date_parseable",
        "event_date_plausible",
        "sex_codes_declared",
        "postcode_well_formed",
        "row_count",
    }
    assert specs["date_of_birth_parseable"].severity == "critical"
    assert specs["postcode_well_formed"].severity == "warning"
    assert specs["date_of_birth_plausible"].kwargs["max_value"] == 20260102
    assert "%d/%m/%Y" in specs["date_of_birth_parseable"].description


def test_extra_expectations_from_yaml_are_added() -> None:
    raw = _courts().model_dump()
    raw["validation"]["expectations"] = [
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "court_region", "value_set": ["NE"]},
            "severity": "critical",
            "description": "Only the north east",
        }
    ]
    extra = build_expectations(SourceSpec.model_validate(raw))[-1]
    assert (extra.gx_type, extra.severity, extra.description) == (
        "expect_column_values_to_be_in_set",
        "critical",
        "Only the north east",
    )


def test_validation_counts_failures_without_values_and_writes_data_docs(
    any_engine: Engine, tmp_path: Path
) -> None:
    """On DuckDB through pandas batches, on Spark through GX's Spark datasource."""
    source = _courts()
    rows = pd.DataFrame(
        {
            "case_defendant_id": [f"C{i}" for i in range(40)],
            "defendant_name": ["SMITH, John"] * 40,
            "date_of_birth": ["01/02/1980"] * 30 + ["not a date"] * 10,
            "gender": ["M"] * 40,
            "home_postcode": ["LS1 4AP"] * 40,
            "hearing_date": ["01/02/2020"] * 40,
            "offence_group": ["theft"] * 40,
            "court_region": ["LS"] * 40,
        }
    )
    path = tmp_path / "courts.csv"
    rows.to_csv(path, index=False)
    d = Delivery("magistrates_courts", path.name, str(path))
    ingest_delivery(any_engine, source, d.path, d.key, d.raw_table)
    outcome = validate_delivery(
        any_engine, source, d.key, d.raw_table, tmp_path / "quality", batch_rows=15
    )  # on DuckDB three batches, judged as one delivery
    parse = next(e for e in outcome.expectations if e.key == "date_of_birth_parseable")
    assert (parse.success, parse.unexpected_count, parse.element_count) == (False, 10, 40)
    assert [e.key for e in outcome.critical_failures] == ["date_of_birth_parseable"]
    assert not outcome.success
    assert "not a date" not in json.dumps(outcome.to_json())
    assert "smith" not in json.dumps(outcome.to_json()).lower()
    assert (
        outcome.data_docs_index and Path(outcome.data_docs_index.removeprefix("file://")).exists()
    )

"""The delivery contract: built from config (pure), run through Great Expectations."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd

from linkage_models.project import SourceSpec, load_project
from pipelines.deliveries import Delivery
from pipelines.engines import Engine
from pipelines.ingest import ingest_delivery
from quality.validation import build_expectations, validate_delivery

from .helpers import DEMO_CONFIG, render_offline


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
        "date_of_birth_mostly_readable",
        "date_of_birth_plausible",
        "event_date_parseable",
        "event_date_mostly_readable",
        "event_date_plausible",
        "sex_codes_declared",
        "postcode_well_formed",
        "row_count",
    }
    # Unreadable dates become missing: a few are reported, most (a wrong format) block.
    assert specs["date_of_birth_parseable"].severity == "critical"
    assert specs["date_of_birth_parseable"].kwargs["mostly"] == 0.8
    assert specs["date_of_birth_mostly_readable"].severity == "warning"
    assert specs["postcode_well_formed"].severity == "warning"
    assert specs["date_of_birth_plausible"].kwargs["max_value"] == 20260102
    # In the data owner's terms, not strptime's or Python's.
    assert "read as dd/mm/yyyy" in specs["date_of_birth_parseable"].description
    assert "codes 0, 1, 2, 9, F, FEMALE," in specs["sex_codes_declared"].description


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
    assert outcome.data_docs_index
    index = tmp_path / "quality" / outcome.data_docs_index  # relative: the folder can move
    # The Data Docs open in a secure setting: no request leaves the machine, yet the index
    # lists the validation and its page shows the failed expectation.
    rendered = render_offline(index, tmp_path)
    assert rendered.requests == []
    assert "magistrates_courts__courts.csv" in rendered.text
    result_page = sorted(index.parent.glob("validations/**/*.html"))[-1]
    rendered = render_offline(result_page, tmp_path)
    assert rendered.requests == [] and "Unsuccessful Expectations" in rendered.text


def _contract(**validation: object) -> SourceSpec:
    """The courts source with its contract changed."""
    raw = _courts().model_dump()
    raw["validation"] = {**raw["validation"], **validation}
    return SourceSpec.model_validate(raw)


def _delivery_with_problems() -> pd.DataFrame:
    """40 rows: 3 repeated ids (7.5%), 4 missing dates of birth (10%), 2 undeclared sex
    codes (5%), 3 sex codes meaning 'unknown', 8 malformed postcodes (20%), all in one
    court region."""
    n = 40
    return pd.DataFrame(
        {
            "case_defendant_id": [f"C{i}" for i in range(n - 3)] + ["C1", "C2", "C3"],
            "defendant_name": ["SMITH, John"] * n,
            "date_of_birth": ["01/02/1980"] * (n - 4) + [""] * 4,
            "gender": ["M"] * (n - 5) + ["Q", "Q", "U", "U", "U"],
            "home_postcode": ["LS1 4AP"] * (n - 8) + ["not a postcode"] * 8,
            "hearing_date": ["01/02/2020"] * n,
            "offence_group": ["theft"] * n,
            "court_region": ["LS"] * n,
        }
    )


def _validate(engine: Engine, source: SourceSpec, rows: pd.DataFrame, tmp_path: Path):
    path = tmp_path / "courts.csv"
    rows.to_csv(path, index=False)
    d = Delivery("magistrates_courts", path.name, str(path))
    ingest_delivery(engine, source, d.path, d.key, d.raw_table)
    outcome = validate_delivery(engine, source, d.key, d.raw_table, tmp_path / "quality")
    return {e.key: e for e in outcome.expectations}, outcome


NORTH_EAST_ONLY = {
    "type": "expect_column_values_to_be_in_set",
    "kwargs": {"column": "court_region", "value_set": ["NE"]},
    "description": "Only the north east",
}


def test_contract_limits_decide_what_blocks_a_delivery(any_engine: Engine, tmp_path: Path) -> None:
    """Each limit of the contract, at a setting the delivery breaks."""
    strict = _contract(
        max_missing_rate={"date_of_birth": 0.05},
        max_duplicate_id_rate=0.05,
        unknown_sex_codes=["U"],
        max_unknown_sex_code_rate=0.01,
        row_count={"min": 50},
        expectations=[{**NORTH_EAST_ONLY, "severity": "critical"}],
    )
    results, outcome = _validate(any_engine, strict, _delivery_with_problems(), tmp_path)
    assert not outcome.success
    assert sorted(e.key for e in outcome.critical_failures) == [
        "date_of_birth_completeness",
        "extra_0_expect_column_values_to_be_in_set",
        "record_id_unique",
        "row_count",
        "sex_codes_declared",
    ]
    counts = {k: (e.unexpected_count, e.element_count) for k, e in results.items()}
    assert counts["date_of_birth_completeness"] == (4, 40)
    assert counts["record_id_unique"] == (3, 40)
    assert counts["sex_codes_declared"] == (2, 40)  # U is declared as unknown: only Q fails
    assert counts["extra_0_expect_column_values_to_be_in_set"] == (40, 40)
    assert counts["row_count"][1] == 40
    # A warning is reported and never blocks: 20% malformed postcodes > the 10% allowed.
    assert [e.key for e in outcome.warnings] == ["postcode_well_formed"]
    assert counts["postcode_well_formed"] == (8, 40)
    assert results["full_name_completeness"].success


def test_contract_limits_can_be_relaxed(any_engine: Engine, tmp_path: Path) -> None:
    """The same delivery passes when the contract allows what it contains; an extra
    expectation of warning severity is reported without blocking."""
    limits = {
        "max_missing_rate": {"date_of_birth": 0.2},
        "max_duplicate_id_rate": 0.1,
        "unknown_sex_codes": ["U", "Q"],
        "expectations": [{**NORTH_EAST_ONLY, "severity": "warning"}],
    }
    relaxed = _contract(**limits, row_count={"min": 10, "max": 40})
    results, outcome = _validate(any_engine, relaxed, _delivery_with_problems(), tmp_path)
    assert outcome.success and outcome.critical_failures == []
    assert sorted(e.key for e in outcome.warnings) == [
        "extra_0_expect_column_values_to_be_in_set",
        "postcode_well_formed",
    ]
    assert results["row_count"].success and results["sex_codes_declared"].success
    too_many = _contract(**limits, row_count={"min": 1, "max": 39})
    results, outcome = _validate(any_engine, too_many, _delivery_with_problems(), tmp_path)
    assert [e.key for e in outcome.critical_failures] == ["row_count"]

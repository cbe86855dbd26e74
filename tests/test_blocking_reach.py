"""The matches blocking never reached, estimated from how identifiers agree among the
matches it did reach: on a hand-made case where the answer is known, on both engines."""

from __future__ import annotations

import pandas as pd

from pipelines.blocking_reach import equality_columns, expected_unblocked_matches
from pipelines.engines import Engine
from pipelines.linking import prediction_rules_sql

RULES = [
    '(l."given_name" = r."given_name") AND (l."family_name" = r."family_name")',
    'l."date_of_birth" = r."date_of_birth"',
    "l.given_name = r.family_name AND l.family_name = r.given_name",
]


def _records(source: str, disagree: dict[str, set[int]]) -> pd.DataFrame:
    """Person i's record; a column in `disagree` holds another value for those people."""
    people = range(100)
    return pd.DataFrame(
        {
            "source_dataset": source,
            "record_id": [f"{source}{i}" for i in people],
            "given_name": [f"g{i}{source if i in disagree['given'] else ''}" for i in people],
            "family_name": [f"f{i}{source if i in disagree['family'] else ''}" for i in people],
            "date_of_birth": [f"d{i}{source if i in disagree['dob'] else ''}" for i in people],
        }
    )


def test_the_matches_no_rule_blocked_are_counted(any_engine: Engine) -> None:
    """Person i has a record in a and in b. Given names differ for one person in five,
    family names for one in two, dates of birth for the last ten people. Blocked: same
    date of birth, or same given and family name; so 6 of the last ten pairs are never
    blocked and never scored. Among the 90 pairs the date of birth blocked, given names
    agree for 0.8 and family names for 0.5; among the 40 the names blocked, the date of
    birth agrees for 0.9: P(blocked) = 1 - 0.1 (1 - 0.4) = 0.94 of the 94 scored, 6 short."""
    disagree = {
        "given": {i for i in range(100) if i % 5 == 0},
        "family": {i for i in range(100) if i % 2 == 1},
        "dob": set(range(90, 100)),
    }
    any_engine.load_frame("input_a", _records("a", {k: set() for k in disagree}))
    any_engine.load_frame("input_b", _records("b", disagree))
    blocked = [
        i
        for i in range(100)
        if i not in disagree["dob"] or not (i in disagree["given"] or i in disagree["family"])
    ]
    assert len(blocked) == 94
    any_engine.load_frame(
        "scored",
        pd.DataFrame(
            {
                "source_dataset_l": "a",
                "record_id_l": [f"a{i}" for i in blocked],
                "source_dataset_r": "b",
                "record_id_r": [f"b{i}" for i in blocked],
                "match_probability": 1.0,
            }
        ),
    )
    reach = expected_unblocked_matches(
        any_engine, {"a": "input_a", "b": "input_b"}, RULES, "scored"
    )
    assert reach["rules_read"] == 2 and reach["rules_left_out"] == 1
    (pair,) = reach["by_source_pair"]
    assert pair["sources"] == ["a", "b"]
    assert pair["share_of_matches_blocked"] == 0.94
    assert pair["expected_matches_blocked"] == 94
    assert reach["expected_matches_not_blocked"] == 6.0


def test_only_plain_equalities_are_read_as_rules() -> None:
    assert equality_columns(RULES[0]) == ["given_name", "family_name"]
    assert equality_columns("l.`postcode` = r.`postcode`") == ["postcode"]
    assert equality_columns(RULES[2]) is None
    assert equality_columns("l.dob = r.dob AND levenshtein(l.a, r.a) < 2") is None


def test_a_spark_trained_models_rules_are_read_in_duckdb_dialect() -> None:
    """A model trained on Spark quotes its rules with backticks; every engine is handed
    DuckDB's dialect, so the rules are transpiled when read."""
    trained = {
        "sql_dialect": "spark",
        "blocking_rules_to_generate_predictions": [
            {"blocking_rule": "(l.`dob` = r.`dob`) AND (l.`pc` = r.`pc`)", "sql_dialect": "spark"}
        ],
    }
    assert prediction_rules_sql(trained) == ['(l."dob" = r."dob") AND (l."pc" = r."pc")']

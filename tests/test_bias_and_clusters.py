"""The linkage report's bias tables and cluster sizes, on both engines, from small tables
whose answers are worked out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.engines import Engine
from pipelines.standardise import load_reference_tables
from quality.bias import bias_tables
from quality.linkage_report import OVERSIZED_CLUSTER, cluster_size_summary

# Six records of one source: a1+a2 (men) are one person, linked; c1+c2 (women) are one
# person, linked; b1 and b2 (women) scored as a likely match but left apart.
RECORDS = [
    ("a1", "M", "P1"),
    ("a2", "M", "P1"),
    ("b1", "F", "P2"),
    ("b2", "F", "P3"),
    ("c1", "F", "P4"),
    ("c2", "F", "P4"),
]
PAIRS = [("a1", "a2", 0.99), ("b1", "b2", 0.9), ("c1", "c2", 0.99)]


def _load(engine: Engine) -> dict[str, str]:
    ids = [r[0] for r in RECORDS]
    engine.load_frame(
        "accepted_courts",
        pd.DataFrame(
            {
                "source_dataset": "courts",
                "record_id": ids,
                "sex": [r[1] for r in RECORDS],
                "date_of_birth": pd.to_datetime(["1980-06-01"] * 6).date,
                "postcode_area": "LS",
                "event_date": pd.to_datetime(["2020-01-01"] * 6).date,
            }
        ),
    )
    engine.load_frame(
        "person_lookup",
        pd.DataFrame(
            {
                "source_dataset": "courts",
                "source_record_id": ids,
                "person_id": [r[2] for r in RECORDS],
            }
        ),
    )
    engine.load_frame(
        "scored_pairs",
        pd.DataFrame(
            {
                "source_dataset_l": "courts",
                "record_id_l": [p[0] for p in PAIRS],
                "source_dataset_r": "courts",
                "record_id_r": [p[1] for p in PAIRS],
                "match_probability": [p[2] for p in PAIRS],
            }
        ),
    )
    return {"courts": "accepted_courts"}


def test_groups_with_worse_recall_are_flagged(any_engine: Engine) -> None:
    load_reference_tables(any_engine)
    tables = bias_tables(any_engine, _load(any_engine), pairs_table="scored_pairs")
    # Each pair counts for both of its records' groups.
    overall = tables["overall"][0]
    assert overall["estimated_recall"] == pytest.approx(3.96 / 5.76, abs=1e-6)
    by_sex = {row["group"]: row for row in tables["dimensions"]["sex"]}
    assert by_sex["M"]["estimated_recall"] == 1.0 and not by_sex["M"]["flagged"]
    assert by_sex["F"]["estimated_recall"] == pytest.approx(1.98 / 3.78, abs=1e-6)
    assert by_sex["F"]["flagged"]
    assert (by_sex["F"]["records"], by_sex["F"]["within_source_duplicates"]) == (4, 2)
    assert by_sex["F"]["estimated_precision"] == pytest.approx(0.99)
    # Everyone is in one region and age band: nothing there to flag.
    assert [r["group"] for r in tables["dimensions"]["region"]] == ["Yorkshire and The Humber"]
    assert not any(r["flagged"] for r in tables["dimensions"]["age_band"])
    assert tables["dimensions"]["age_band"][0]["group"] == "35-49"


def test_oversized_persons_are_listed(any_engine: Engine) -> None:
    sizes = [OVERSIZED_CLUSTER + 5, OVERSIZED_CLUSTER, 2, 1, 1]
    persons = [f"P{i}" for i, n in enumerate(sizes) for _ in range(n)]
    any_engine.load_frame(
        "person_lookup",
        pd.DataFrame(
            {
                "source_dataset": "s",
                "source_record_id": [f"r{i}" for i in range(len(persons))],
                "person_id": persons,
            }
        ),
    )
    summary = cluster_size_summary(any_engine)
    assert summary["oversized"] == [{"person_id": "P0", "records": OVERSIZED_CLUSTER + 5}]
    # Persons per size may leave the secure setting: rounded to 5 (1-4 become 5).
    assert summary["distribution"] == [
        {"records_per_person": 1, "persons": 5},
        {"records_per_person": 2, "persons": 5},
        {"records_per_person": OVERSIZED_CLUSTER, "persons": 5},
        {"records_per_person": OVERSIZED_CLUSTER + 5, "persons": 5},
    ]

"""The linkage report's bias tables and cluster sizes, on both engines, from small tables
whose answers are worked out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from dagster_project.quality import drop_sample, sample_of_persons
from pipelines.contract import Tables
from pipelines.engines import Engine
from pipelines.standardise import load_reference_tables
from quality.bias import bias_tables
from quality.error_rates import estimate_error_rates
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


def _load(
    engine: Engine,
    records: list[tuple[str, str, str]] = RECORDS,
    pairs: list[tuple[str, str, float]] = PAIRS,
) -> dict[str, str]:
    ids = [r[0] for r in records]
    engine.load_frame(
        "accepted_courts",
        pd.DataFrame(
            {
                "source_dataset": "courts",
                "record_id": ids,
                "sex": [r[1] for r in records],
                "date_of_birth": pd.to_datetime(["1980-06-01"] * len(ids)).date,
                "postcode_area": "LS",
                "event_date": pd.to_datetime(["2020-01-01"] * len(ids)).date,
            }
        ),
    )
    engine.load_frame(
        "person_lookup",
        pd.DataFrame(
            {
                "source_dataset": "courts",
                "source_record_id": ids,
                "person_id": [r[2] for r in records],
            }
        ),
    )
    engine.load_frame(
        "scored_pairs",
        pd.DataFrame(
            {
                "source_dataset_l": "courts",
                "record_id_l": [p[0] for p in pairs],
                "source_dataset_r": "courts",
                "record_id_r": [p[1] for p in pairs],
                "match_probability": [p[2] for p in pairs],
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


def test_group_estimates_are_the_published_estimate_taken_apart(any_engine: Engine) -> None:
    """Men a1-a2-a3 are one person: a1-a3 never blocked, counted by its path (0.99 * 0.95);
    women b1, b2 are apart (scored 0.9), c1-c2 linked. 0.5 expected matches fell below the
    floor and 2 were never blocked, 0.9405 of them found inside a1-a2-a3: the other 1.0595
    and the 0.5 are shared out by records (3 of 7 men, 4 women)."""
    load_reference_tables(any_engine)
    records = [("a1", "M", "P1"), ("a2", "M", "P1"), ("a3", "M", "P1")] + [
        r for r in RECORDS if r[1] == "F"
    ]
    pairs = [("a1", "a2", 0.99), ("a2", "a3", 0.95), ("b1", "b2", 0.9), ("c1", "c2", 0.99)]
    accepted = _load(any_engine, records, pairs)
    any_engine.load_frame(Tables.PAIRS_BELOW_FLOOR, pd.DataFrame({"expected_matches": [0.5]}))
    any_engine.load_frame(Tables.MATCHES_NOT_BLOCKED, pd.DataFrame({"expected_matches": [2.0]}))
    any_engine.load_frame(
        Tables.PAIRS_NEVER_BLOCKED_IN_PERSONS,
        pd.DataFrame(
            {"source_a": ["courts"], "record_a": ["a1"], "source_b": ["courts"], "record_b": ["a3"]}
        ),
    )
    published = estimate_error_rates(
        any_engine, threshold_columns={"balanced": "person_id"}, pairs_table="scored_pairs"
    )["balanced"]
    tables = bias_tables(any_engine, accepted, pairs_table="scored_pairs")
    # A publication's report reads the pairs the estimate kept, without counting them again.
    kept = bias_tables(any_engine, accepted, counted_table=Tables.BALANCED_EXPECTED_PAIRS)
    assert kept == tables

    tp, missed = 0.99 + 0.95 + 0.99 * 0.95 + 0.99, 0.9 + 0.5 + (2 - 0.99 * 0.95)
    assert published["precision"] == pytest.approx(tp / 4, abs=1e-6)
    assert published["recall"] == pytest.approx(tp / (tp + missed), abs=1e-6)
    overall = tables["overall"][0]
    assert overall["estimated_precision"] == pytest.approx(published["precision"], abs=1e-6)
    assert overall["estimated_recall"] == pytest.approx(published["recall"], abs=1e-6)
    by_sex = {row["group"]: row for row in tables["dimensions"]["sex"]}
    men_tp, elsewhere = 2 * (0.99 + 0.95 + 0.99 * 0.95), 2 * (0.5 + 2 - 0.99 * 0.95)
    assert by_sex["M"]["estimated_precision"] == pytest.approx(men_tp / 6, abs=1e-6)
    assert by_sex["M"]["estimated_recall"] == pytest.approx(
        men_tp / (men_tp + elsewhere * 3 / 7), abs=1e-5
    )
    assert by_sex["F"]["estimated_recall"] == pytest.approx(
        1.98 / (1.98 + 1.8 + elsewhere * 4 / 7), abs=1e-5
    )
    assert by_sex["F"]["flagged"] and not by_sex["M"]["flagged"]


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


def test_a_sample_of_persons_takes_whole_persons_and_leaves_the_rest(any_engine: Engine) -> None:
    """The diagnostics' sample of persons (for the pairs they score again at scale): each
    person wholly in it or out of it, every record in exactly one of the two parts, about
    the share asked for, on both engines alike."""
    ids = [str(i) for i in range(2000)]
    any_engine.load_frame(
        "people_in", pd.DataFrame({"source_dataset": "s", "record_id": ids, "v": range(2000)})
    )
    any_engine.load_frame(
        Tables.clusters("balanced"),
        pd.DataFrame(
            {
                "source_dataset": "s",
                "record_id": ids,
                "cluster_id": [f"c{i % 500}" for i in range(2000)],
            }
        ),
    )
    sample = sample_of_persons(any_engine, {"s": "people_in"}, 0.3)
    assert sample is not None
    (sampled,), (others,) = sample[0].values(), sample[1].values()
    parts = any_engine.fetch(
        f"SELECT c.cluster_id, count(s.record_id), count(o.record_id) "
        f"FROM {Tables.clusters('balanced')} c "
        f"LEFT JOIN {sampled} s ON s.record_id = c.record_id "
        f"LEFT JOIN {others} o ON o.record_id = c.record_id GROUP BY c.cluster_id"
    )
    assert all((n_in == 4 and n_out == 0) or (n_in == 0 and n_out == 4) for _, n_in, n_out in parts)
    assert 0.2 * 500 < sum(1 for _, n_in, _ in parts if n_in) < 0.4 * 500
    assert any_engine.columns(sampled) == any_engine.columns("people_in")
    drop_sample(any_engine, sample)
    assert not any_engine.table_exists(sampled)
    assert sample_of_persons(any_engine, {"s": "people_in"}, 1.0) is None

"""Rules around the model, on both engines: the probable-twins rule (and `off`), and person
ids that are keyed by JOINEDUP_PERSON_ID_KEY."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from linkage_models.project import load_project
from linkage_models.settings import exact_match_gammas
from pipelines.contract import OutputLayout, Tables
from pipelines.engines import Engine
from pipelines.identity import ASSIGNMENTS, carry_forward
from pipelines.linking import apply_pair_rules, clustering_pairs
from pipelines.publish import person_id_key, person_lookup_sql

from .helpers import DEMO_CONFIG

DEMO = load_project(DEMO_CONFIG).spec
# The demo with the opt-in rule turned on, and the birth date within one household learnt.
PROJECT = DEMO.model_copy(
    update={
        "model": DEMO.model.model_copy(
            update={"probable_twins_rule": "exclude", "household_dependence": "learnt"}
        )
    }
)
# With a household learnt, the date of birth has two exact levels: within one household,
# given names unrelated (first), and the rest.
DOB_WITHIN_HOUSEHOLD, DOB_EXACT = exact_match_gammas(PROJECT, "date_of_birth")
(GIVEN_EXACT,) = exact_match_gammas(PROJECT, "given_name")


def _predictions(engine: Engine) -> None:
    """Scored pairs: (given-name level, date-of-birth level) as the model's gammas."""
    rows = [
        ("a", 0, DOB_EXACT),  # different given names, same date of birth: twins
        ("b", 1, DOB_EXACT),  # only the initial agrees, same date of birth: twins
        ("c", GIVEN_EXACT, DOB_EXACT),  # same given name: kept
        ("d", 2, DOB_EXACT),  # one edit apart: a typing error, kept
        ("e", 0, DOB_EXACT - 1),  # different names, date of birth not identical: kept
        ("f", -1, DOB_EXACT),  # a given name missing: kept
        ("g", 0, DOB_WITHIN_HOUSEHOLD),  # twins of one household
    ]
    frame = pd.DataFrame(
        {
            "source_dataset_l": "s",
            "record_id_l": [r[0] + "1" for r in rows],
            "source_dataset_r": "s",
            "record_id_r": [r[0] + "2" for r in rows],
            "match_probability": 0.999,
            "gamma_given_name": [r[1] for r in rows],
            "gamma_date_of_birth": [r[2] for r in rows],
        }
    )
    engine.load_frame("scored_pairs", frame)


def test_probable_twins_rule_removes_same_birth_date_different_given_names(
    any_engine: Engine,
) -> None:
    _predictions(any_engine)
    removed = apply_pair_rules(any_engine, PROJECT, "scored_pairs", "kept_pairs")
    assert removed == 3
    kept = sorted(r[0] for r in any_engine.fetch("SELECT record_id_l FROM kept_pairs"))
    assert kept == ["c1", "d1", "e1", "f1"]


def test_probable_twins_rule_off_keeps_every_pair(any_engine: Engine) -> None:
    _predictions(any_engine)
    off = PROJECT.model_copy(
        update={"model": PROJECT.model.model_copy(update={"probable_twins_rule": "off"})}
    )
    removed = apply_pair_rules(any_engine, off, "scored_pairs", "kept_pairs")
    assert removed == 0
    # Clustering reads every scored pair: the scored table itself, no copy of it.
    assert clustering_pairs(off) == Tables.PAIRWISE_PREDICTIONS
    assert clustering_pairs(PROJECT) == Tables.PAIRS_FOR_CLUSTERING
    assert not any_engine.table_exists("kept_pairs")


def _clusters(engine: Engine) -> dict[str, str]:
    """Cluster tables at the three thresholds: r1+r2 together at balanced, r3 alone."""
    tables = {}
    for name, clusters in {
        "high_precision": ["c1", "c2", "c3"],
        "balanced": ["c1", "c1", "c3"],
        "high_recall": ["c1", "c1", "c1"],
    }.items():
        engine.load_frame(
            f"clusters_{name}",
            pd.DataFrame(
                {"source_dataset": "s", "record_id": ["r1", "r2", "r3"], "cluster_id": clusters}
            ),
        )
        tables[name] = f"clusters_{name}"
    return tables


def _lookup(engine: Engine, key: str) -> pd.DataFrame:
    """A first linkage's lookup (no earlier ids to carry forward)."""
    carry_forward(engine, _clusters(engine), None, key, "snapshot")
    engine.create_table("lookup", person_lookup_sql(ASSIGNMENTS, date(2026, 1, 2)))
    return engine.fetch_df("SELECT * FROM lookup ORDER BY source_record_id")


def test_person_ids_are_keyed_by_the_secret(any_engine: Engine) -> None:
    first = _lookup(any_engine, "secret one")
    again = _lookup(any_engine, "secret one")
    other = _lookup(any_engine, "secret two")
    columns = ["person_id", "person_id_high_precision", "person_id_high_recall"]
    assert first[columns].stack().str.fullmatch(r"P[0-9a-f]{16}").all()
    pd.testing.assert_frame_equal(first, again)  # the same key gives the same ids
    for column in columns:
        assert not set(first[column]) & set(other[column]), column  # another key: all change
    # The grouping is the same whatever the key: r1 and r2 are one person at balanced.
    assert first.person_id[0] == first.person_id[1] != first.person_id[2]
    assert other.person_id[0] == other.person_id[1] != other.person_id[2]
    assert first.person_id_high_precision.nunique() == 3
    assert first.person_id_high_recall.nunique() == 1


def test_person_id_key_is_a_secret_nobody_outside_the_secure_zone_has(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOINEDUP_PERSON_ID_KEY", "a secret")
    layout = OutputLayout(tmp_path / "bold")
    assert person_id_key(layout) == ("a secret", "environment variable JOINEDUP_PERSON_ID_KEY")
    assert not layout.person_id_key_file.exists()
    monkeypatch.delenv("JOINEDUP_PERSON_ID_KEY")
    # Without one, a random secret is created in the secure zone, for the owner only, and
    # kept: the same folder keys ids the same way every run; another folder differently.
    key, kept_in = person_id_key(layout)
    assert kept_in == "secure/person_id.key" and len(key) == 64
    assert layout.person_id_key_file.stat().st_mode & 0o777 == 0o600
    assert person_id_key(layout)[0] == key
    assert person_id_key(OutputLayout(tmp_path / "other"))[0] != key
    assert "bold" not in key


def test_attributes_that_repeat_identifiers_are_measured(any_engine: Engine) -> None:
    from linkage_models.project import SourceSpec
    from quality.disclosure_checks import identifier_echo_rates

    project = load_project(DEMO_CONFIG).spec
    courts = project.source("magistrates_courts")
    spec = project.model_copy(
        update={
            "sources": [
                SourceSpec.model_validate(
                    {
                        **courts.model_dump(),
                        "identifiers": {
                            **courts.identifiers.model_dump(exclude_none=True),
                            "other": {"ni_number": {"type": "person_id", "column": "ni"}},
                        },
                        "attributes": ["court_region", "offence_group", "ref", "case"],
                    }
                )
            ]
        }
    )
    any_engine.load_frame(
        "accepted_magistrates_courts",
        pd.DataFrame(
            {
                "given_name": ["ann", "bob", "cy", "di"],
                "family_name": ["smith", "jones", "lee", "khan"],
                "date_of_birth": pd.to_datetime(["1980-01-02"] * 4).date,
                "postcode": ["LS1 4AP", "MK1 1AA", "BS2 4QA", "EC1 6AN"],
                "postcode_district": ["LS1", "MK1", "BS2", "EC1"],
                "postcode_area": ["LS", "MK", "BS", "EC"],
                "court_region": ["ls", "MK", "NE", "EC"],  # the postcode area, three times in 4
                "offence_group": ["theft", "theft", "theft", "M"],  # one letter: not counted
                "ref": ["1980-01-02", "", None, "x"],  # a date of birth in disguise, 1 in 2
                "ni_number": ["QQ123456C", "AB123456D", None, None],
                "case": ["qq 12 34 56 c", "C-1", "C-2", "C-3"],  # a national number, 1 in 4
            }
        ),
    )
    rates = identifier_echo_rates(any_engine, spec, ["magistrates_courts"])
    assert rates == {
        "magistrates_courts.court_region": 0.75,
        "magistrates_courts.offence_group": 0.0,
        "magistrates_courts.ref": 0.5,
        "magistrates_courts.case": 0.25,
    }

"""Identifiers beyond the primitives (person ids, addresses, non-UK postal codes, year of
birth or age, typed columns): standardised and compared alike on DuckDB and on Spark, and a
model derived from what a project maps when it leaves `model:` out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from linkage_models.blocking import choose_blocking_rules
from linkage_models.defaults import compared_columns
from linkage_models.linkage import (
    M_PROBABILITY_FLOOR,
    block_rate_derivable,
    hold_at_floor,
    level_driven_to_zero,
    make_linker,
)
from linkage_models.project import ComparisonSpec, ConfigError, LinkageProject, parse_project
from linkage_models.settings import build_settings, comparison
from pipelines.engines import DuckDBEngine, Engine
from pipelines.standardise import linkage_input_sql, load_reference_tables, standardise_table
from quality.quarantine import quarantine_reason_sql

AU_POSTCODE = {"country": "AU", "pattern": "^[0-9]{4}$", "prefix_lengths": [3, 2]}


def _project(model: dict[str, Any] | None = None) -> LinkageProject:
    """Two sources that carry the same people differently: one with names, a full date of
    birth and address lines, the other with a full name, an age and a one-line address."""
    raw = {
        "project": "identifiers",
        "sources": [
            {
                "name": "benefits",
                "department": "Test",
                "path": "a.csv",
                "format": "csv",
                "record_id": "id",
                "identifiers": {
                    "given_name": "forename",
                    "family_name": "surname",
                    "date_of_birth": {"column": "dob", "formats": ["%d/%m/%Y"]},
                    "postcode": {"column": "pc", **AU_POSTCODE},
                    "other": {
                        "ni_number": {
                            "type": "person_id",
                            "column": "ni",
                            "placeholder_values": ["QQ123456C"],
                        },
                        "address": {"type": "address", "columns": ["line1", "line2"]},
                        "state": {"type": "exact", "column": "state"},
                        "height": {"type": "numeric", "column": "height"},
                    },
                },
            },
            {
                "name": "census",
                "department": "Test",
                "path": "b.csv",
                "format": "csv",
                "record_id": "id",
                "identifiers": {
                    "full_name": "name",
                    "age": {"column": "age", "as_at": "2021-03-21"},
                    "postcode": {"column": "pc", **AU_POSTCODE},
                    "other": {
                        "ni_number": {"type": "person_id", "column": "ni"},
                        "address": {"type": "address", "column": "address"},
                        "state": {"type": "exact", "column": "state"},
                    },
                },
            },
        ],
    }
    if model is not None:
        raw["model"] = model
    return parse_project(raw, "test.yaml")


BENEFITS = [
    {
        "id": "b1",
        "forename": "Ann",
        "surname": "Lee",
        "dob": "03/04/1985",
        "pc": "2615",
        "ni": "ab 12 34 56 c",
        "line1": "Flat 2, 14 High St.",
        "line2": "Kingston",
        "state": " act ",
        "height": "165.5",
    },
    {
        "id": "b2",
        "forename": "Tom",
        "surname": "Ward",
        "dob": "31/02/1985",
        "pc": "ABC",
        "ni": "QQ123456C",
        "line1": None,
        "line2": None,
        "state": "NSW",
        "height": "tall",
    },
]
CENSUS = [
    {
        "id": "c1",
        "name": "Ann Lee",
        "age": "35",
        "pc": "2615",
        "ni": "AB123465C",
        "address": "flat 2 14 high street kingston",
        "state": "ACT",
    },
    {
        "id": "c2",
        "name": "Tom Ward",
        "age": "x",
        "pc": "2600",
        "ni": "ZZ999999Z",
        "address": "9 Other Road",
        "state": "NSW",
    },
]


def _load(engine: Engine, project: LinkageProject, name: str, rows: list[dict]) -> list[dict]:
    """Standardise `rows` as source `name` into table std_<name>; returns its rows."""
    source = project.source(name)
    columns = source.mapped_columns()
    raw = pd.DataFrame(
        [
            {"_row_number": i + 1, "_delivery": "f", "_delivery_file": "f", "_malformed": None}
            | {c: row.get(c) for c in columns}
            for i, row in enumerate(rows)
        ]
    ).astype({c: "object" for c in columns})
    engine.load_frame(f"raw_{name}", raw)
    standardise_table(engine, source, f"raw_{name}", f"std_{name}")
    names = engine.columns(f"std_{name}")
    return [
        dict(zip(names, r, strict=True))
        for r in engine.fetch(f"SELECT * FROM std_{name} ORDER BY _row_number")
    ]


def test_each_new_identifier_is_standardised_alike_on_both_engines(any_engine: Engine) -> None:
    load_reference_tables(any_engine)
    project = _project()
    ann, tom = _load(any_engine, project, "benefits", BENEFITS)
    census_ann, census_tom = _load(any_engine, project, "census", CENSUS)

    assert ann["ni_number"] == "AB123456C"  # spaces and case do not matter
    assert (tom["ni_number"], tom["ni_number_set_missing"]) == (None, True)  # a placeholder
    assert ann["address"] == "FLAT 2 14 HIGH STREET KINGSTON"  # lines joined, St expanded
    assert census_ann["address"] == ann["address"]
    assert list(ann["address_tokens"]) == ["FLAT", "HIGH", "STREET", "KINGSTON"]
    assert (ann["address_number"], ann["address_house"]) == ("2", "2 FLAT HIGH STREET KINGSTON")
    assert (tom["address"], tom["address_set_missing"]) == (None, False)  # not given at all
    # An Australian postcode is kept, with its prefixes; one not of the pattern is missing
    # and counted, never blanked silently.
    assert (ann["postcode"], ann["postcode_district"], ann["postcode_area"]) == (
        "2615",
        "261",
        "26",
    )
    assert (tom["postcode"], tom["postcode_invalid"]) == (None, True)
    assert (ann["state"], ann["height"]) == ("ACT", 165.5)
    assert (tom["height"], tom["height_set_missing"]) == (None, True)
    # An unreadable date of birth is missing; the row keeps its other identifiers.
    assert (tom["date_of_birth"], tom["dob_unparseable"], tom["given_name"]) == (
        None,
        True,
        "tom",
    )
    # Where there is no date of birth, the year comes from the age on census day.
    assert (ann["dob_year"], census_ann["dob_year"]) == (1985, 1986)
    assert census_ann["birth_year_from_age"] is True
    assert census_ann["date_of_birth"] is None
    assert census_tom["dob_year"] is None


def test_a_row_with_a_person_id_and_an_address_is_not_short_of_identifiers(
    any_engine: Engine,
) -> None:
    load_reference_tables(any_engine)
    project = _project()
    source = project.source("census")
    rows = [{"id": "c9", "ni": "AB123456C", "address": "14 High Street"}, {"id": "c8"}]
    _load(any_engine, project, "census", rows)
    reasons = any_engine.fetch(
        f"SELECT record_id, {quarantine_reason_sql(source)} FROM "
        "(SELECT *, 0 AS _delivery_order FROM std_census) ORDER BY record_id"
    )
    assert reasons == [("c8", "insufficient identifiers"), ("c9", None)]


def _gammas(engine: Engine, project: LinkageProject) -> dict[tuple[str, str], dict[str, int]]:
    """Every cross-source pair of the two test sources, with its comparison levels."""
    tables = {}
    for name, rows in (("benefits", BENEFITS), ("census", CENSUS)):
        _load(engine, project, name, rows)
        engine.create_table(
            f"input_{name}", linkage_input_sql(project, project.source(name), f"std_{name}")
        )
        tables[name] = f"input_{name}"
    everything = project.model_copy(
        update={"model": project.model.model_copy(update={"blocking_rules": ["1=1"]})}
    )
    linker = make_linker(engine.splink_api(), tables, everything)
    predictions = linker.inference.predict().as_pandas_dataframe()
    gamma = [c for c in predictions.columns if c.startswith("gamma_")]
    return {
        (r["record_id_l"], r["record_id_r"]): {c.removeprefix("gamma_"): int(r[c]) for c in gamma}
        for r in predictions.to_dict("records")
    }


def test_each_new_comparison_scores_alike_on_both_engines(any_engine: Engine) -> None:
    load_reference_tables(any_engine)
    project = _project(model={"link_type": "link_only"})
    pairs = _gammas(any_engine, project)
    same, different = pairs[("b1", "c1")], pairs[("b2", "c2")]
    # ni number: levels are null(-1), else(0), one transposition(1), exact(2).
    assert (same["ni_number"], different["ni_number"]) == (1, -1)
    assert pairs[("b1", "c2")]["ni_number"] == 0  # both present and different
    # Family name and address together (the household comparison): same name at the same
    # address is the top level; the other pair has an address on one side only, so its
    # place is not known; different names at different addresses are the else level.
    levels = _household_labels(project)
    assert levels[same["household"]] == "Same family name, same address"
    assert levels[different["household"]] == "Same family name, place not known"
    assert pairs[("b1", "c2")]["household"] == 0
    # Birth years one apart (an age on a date) has its own level, below "same year".
    assert same["date_of_birth"] == 1
    assert same["postcode"] == 3  # exact
    assert pairs[("b1", "c2")]["postcode"] == 1  # same first two characters
    assert same["state"] == 1


def _household_labels(project: LinkageProject) -> dict[int, str]:
    """gamma value -> label of the household comparison's levels."""
    levels = comparison(project, "household", ComparisonSpec()).create_comparison_levels()
    labels = [level.create_label_for_charts() for level in levels]
    return {len(labels) - 2 - i: label for i, label in enumerate(labels[1:])}


def test_a_project_without_a_model_gets_one_from_what_it_maps() -> None:
    project = _project()
    model = project.model
    assert model.derived == ["comparisons", "blocking_rules", "training"]
    # Every identifier mapped is compared; height only by one source, still compared when
    # records link within and across sources.
    # Family name and address are one comparison (household); beside an address the
    # postcode is compared on its own.
    assert set(model.comparisons) == {
        "given_name",
        "middle_names",
        "household",
        "date_of_birth",
        "postcode",
        "ni_number",
        "state",
        "height",
    }
    assert model.blocking_rules[0] == ["ni_number"]
    assert ["address_house"] in model.blocking_rules
    # A house number within the postcode finds a house whose street is mistyped.
    assert ["postcode", "address_number"] in model.blocking_rules
    # ... and with the family name or the date of birth, one whose postcode is mistyped too.
    assert ["family_name", "address_number"] in model.blocking_rules
    assert ["date_of_birth", "address_number"] in model.blocking_rules
    # No full date of birth in one source, so the year blocks.
    assert ["date_of_birth", "family_name_soundex"] in model.blocking_rules
    _assert_em_can_estimate_every_comparison(project)


def _assert_em_can_estimate_every_comparison(project: LinkageProject) -> None:
    """Splink's EM switches off, in a session, every comparison that reads a column the
    session blocks on; each comparison must be on in at least one session, or its m
    probabilities stay at Splink's defaults. The columns are asked of Splink's own
    comparison objects (a private attribute: the test must see what EM sees)."""
    sessions = project.model.training.em_blocking_rules
    assert len(sessions) >= 2
    for name, spec in project.model.comparisons.items():
        built = comparison(project, name, spec).get_comparison("duckdb")
        reads = {c.input_name for c in built._input_columns_used_by_case_statement}
        assert reads <= compared_columns(name, project.household_place()), name
        assert any(not set(s) & reads for s in sessions), f"{name}: blocked in every session"


def test_a_project_with_only_the_six_primitives_gets_every_comparison_estimated() -> None:
    """Names, date of birth, sex and postcode only (no person identifier, no address): the
    given name reads the family name too, so sessions that block on the family name or
    the date of birth alone would leave it, or the date of birth, untrained."""
    raw = _project().model_dump(mode="json", exclude={"model"})
    for source in raw["sources"]:
        source["identifiers"]["other"] = {}
    project = parse_project(raw, "test.yaml")
    assert "household" in project.model.comparisons
    assert {"given_name", "date_of_birth"} <= set(project.model.comparisons)
    _assert_em_can_estimate_every_comparison(project)
    # The given name is learnt at one postcode among people born the same day (where the
    # non-matches are twins, who differ by given name), not across everyone born the same
    # day (where twins pass for matches, their family name and postcode agreeing), and not
    # within one family name (where no pair has its given and family names swapped).
    sessions = project.model.training.em_blocking_rules
    assert ["postcode", "date_of_birth"] in sessions
    assert ["date_of_birth"] not in sessions
    # Where the second pass fixes a block's match rate from the prior: only where each
    # column blocked on has an exact-match level to derive it from. The postcode and the
    # family name are compared only inside the household, so their blocks stay free.
    # Alike on both engines, whose SQL quotes columns differently.
    for dialect in ("duckdb", "spark"):
        model = build_settings(project).create_settings_dict(dialect)
        assert block_rate_derivable(model, ["given_name", "date_of_birth"]), dialect
        assert not block_rate_derivable(model, ["postcode", "date_of_birth"]), dialect
        assert not block_rate_derivable(model, ["given_name", "family_name"]), dialect


def test_em_estimates_the_date_of_birth_where_the_person_id_source_has_none() -> None:
    """Tax returns carry an SSN and no date of birth; a census carries the date of birth and
    no SSN. A session blocked on the SSN holds tax returns alone, so it cannot estimate the
    date of birth, though it blocks on none of its columns: some other session must (else
    the date of birth is scored with Splink's default m, as pseudopeople's 1040 returns
    once left it)."""
    raw = _project().model_dump(mode="json", exclude={"model"})
    returns, census = raw["sources"]
    returns["identifiers"] = {
        "given_name": "forename",
        "family_name": "surname",
        "postcode": {"column": "pc", **AU_POSTCODE},
        "other": {"ssn": {"type": "person_id", "column": "ni"}},
    }
    census["identifiers"] = {
        "given_name": "forename",
        "family_name": "surname",
        "date_of_birth": {"column": "dob", "formats": ["%d/%m/%Y"]},
        "postcode": {"column": "pc", **AU_POSTCODE},
    }
    project = parse_project(raw, "test.yaml")
    sessions = project.model.training.em_blocking_rules
    assert sessions[0] == ["ssn"]  # still first: it admits few non-matches
    _assert_em_can_estimate_every_comparison(project)
    dob = compared_columns("date_of_birth", project.household_place())
    census_sessions = [s for s in sessions if "ssn" not in s]
    assert any(not set(s) & dob for s in census_sessions), sessions


def test_the_household_is_family_name_with_the_postcode_where_no_address_is_mapped() -> None:
    raw = _project().model_dump(mode="json", exclude={"model"})
    for source in raw["sources"]:
        del source["identifiers"]["other"]["address"]
    project = parse_project(raw, "test.yaml")
    assert "household" in project.model.comparisons
    assert not {"family_name", "postcode"} & set(project.model.comparisons)
    assert "Same family name, same postcode" in _household_labels(project).values()


def test_link_only_compares_only_what_two_sources_map() -> None:
    model = _project(model={"link_type": "link_only"}).model
    assert "height" not in model.comparisons  # one source only: nothing to compare it with
    assert "ni_number" in model.comparisons


def test_a_model_written_by_hand_is_kept_and_checked() -> None:
    with pytest.raises(ConfigError, match=r"unknown identifier\(s\) \['nhs_number'\]"):
        _project(
            model={
                "comparisons": {"nhs_number": None},
                "blocking_rules": [["ni_number"]],
                "training": {
                    "deterministic_rules": [["ni_number"]],
                    "em_blocking_rules": [["ni_number"], ["address"]],
                },
            }
        )


def test_an_identifier_declared_differently_by_two_sources_is_refused() -> None:
    raw = _project().model_dump(mode="json", exclude={"model"})
    raw["sources"][1]["identifiers"]["other"]["state"]["type"] = "name"
    with pytest.raises(ConfigError, match=r"\['state'\] are declared differently"):
        parse_project(raw, "test.yaml")


def _inputs(engine: Engine, project: LinkageProject) -> dict[str, str]:
    load_reference_tables(engine)
    tables = {}
    for name, rows in (("benefits", BENEFITS * 3), ("census", CENSUS * 3)):
        rows = [{**r, "id": f"{r['id']}_{i}"} for i, r in enumerate(rows)]
        _load(engine, project, name, rows)
        engine.create_table(
            f"input_{name}", linkage_input_sql(project, project.source(name), f"std_{name}")
        )
        tables[name] = f"input_{name}"
    return tables


@pytest.fixture
def duckdb_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = DuckDBEngine(tmp_path / "work" / "test.duckdb", memory_limit="1GB")
    yield engine
    engine.close()


def test_blocking_analysis_drops_derived_rules_over_the_bound(duckdb_engine: Engine) -> None:
    """Splink counts each rule's pairs: a derived rule over the user's bound is dropped (the
    one adding fewest pairs always stays); a rule written by hand is kept and flagged."""
    derived = _project(model={"link_type": "link_only", "max_comparisons_per_blocking_rule": 8})
    choice = choose_blocking_rules(
        duckdb_engine.splink_api(), _inputs(duckdb_engine, derived), derived
    )
    by_rule = {str(a["rule"]): a for a in choice["analysis"]}
    assert choice["derived"] and not choice["estimated"]
    # Three copies each of Ann and Tom on both sides: 2 x 3 x 3 pairs share the full name.
    names = by_rule[str(["given_name", "family_name"])]
    assert (names["adds_pairs"], names["kept"]) == (18, False)
    assert all(a["adds_pairs"] > 8 for a in choice["analysis"] if not a["kept"])
    assert choice["rules"] == [a["rule"] for a in choice["analysis"] if a["kept"]]
    assert choice["rules"]

    written = _project(
        model={
            "link_type": "link_only",
            "max_comparisons_per_blocking_rule": 8,
            "blocking_rules": [["given_name", "family_name"]],
        }
    )
    choice = choose_blocking_rules(
        duckdb_engine.splink_api(), _inputs(duckdb_engine, written), written
    )
    assert choice["rules"] == [["given_name", "family_name"]]
    assert choice["analysis"][0]["why"].startswith("kept (written in the project)")


def test_a_level_em_drives_to_zero_is_named_and_held_at_the_floor(
    duckdb_engine: Engine,
) -> None:
    """Where EM drives a level's m below what a float holds, Splink refuses the value and
    training would stop for the whole project; joinedup reads which level it was from
    Splink's refusal and holds its m at the floor, fixed, in the model it trains again.
    (Splink's own M-step is called here with the zero it refused on 28,582 generated
    records, whose extracts never disagree on sex.)"""
    from splink.internals.expectation_maximisation import populate_m_u_from_lookup

    project = _project()
    linker = make_linker(duckdb_engine.splink_api(), _inputs(duckdb_engine, project), project)
    comparison = linker._settings_obj.comparisons[0]
    level = comparison.comparison_levels[-1]
    lookup = {
        comparison.output_column_name: {
            level.comparison_vector_value: {"m_probability": 0.0, "u_probability": 0.5}
        }
    }
    with pytest.raises(ValueError) as refused:
        populate_m_u_from_lookup(set(), level, comparison.output_column_name, lookup)
    found = level_driven_to_zero(refused.value)
    assert found == (comparison.output_column_name, level.label_for_charts)

    model = linker.misc.save_model_to_json()
    assert hold_at_floor(model, *found) == f"{found[0]}: {found[1]}"
    relinked = make_linker(
        duckdb_engine.splink_api(), _inputs(duckdb_engine, project), project, model
    ).misc.save_model_to_json()
    held = next(
        lv
        for c in relinked["comparisons"]
        if c["output_column_name"] == found[0]
        for lv in c["comparison_levels"]
        if lv["label_for_charts"] == found[1]
    )
    assert held["m_probability"] == M_PROBABILITY_FLOOR and held["fix_m_probability"]
    assert level_driven_to_zero(ValueError("any other error")) is None

"""Standardisation SQL, run by DuckDB on the variety departments really send."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pandas as pd
import pytest

from linkage_models.project import SourceSpec
from pipelines.engines import Engine
from pipelines.standardise import load_reference_tables, soundex_sql, standardise_table


def _source(**identifiers: Any) -> SourceSpec:
    return SourceSpec.model_validate(
        {
            "name": "test_source",
            "department": "Test",
            "path": "unused.csv",
            "format": "csv",
            "record_id": "id",
            "identifiers": identifiers,
            "event": {
                "date": {"column": "event", "formats": ["%d/%m/%Y", "%Y-%m-%d"]},
                "type": "test_event",
            },
            "attributes": ["category"],
        }
    )


@pytest.fixture(autouse=True)
def _engine(any_engine: Engine) -> Iterator[None]:
    """Every test here runs on DuckDB and on Spark: the same SQL must give the same values."""
    global ENGINE
    load_reference_tables(any_engine)
    ENGINE = any_engine
    yield
    ENGINE = None


ENGINE: Engine | None = None


def _standardise(source: SourceSpec, rows: list[dict[str, str | None]]) -> list[dict[str, Any]]:
    assert ENGINE is not None
    columns = source.mapped_columns()
    raw = pd.DataFrame(
        [
            {
                "_row_number": i + 1,
                "_delivery": "f.csv",
                "_delivery_file": "f.csv",
                "_malformed": None,
                **{c: None if row.get(c) is None else str(row[c]) for c in columns},
            }
            for i, row in enumerate(rows)
        ]
    ).astype({c: "object" for c in columns})
    ENGINE.load_frame("raw", raw)
    standardise_table(ENGINE, source, "raw", "std")
    names = ENGINE.columns("std")
    rows = ENGINE.fetch("SELECT * FROM std ORDER BY _row_number")
    return [dict(zip(names, r, strict=True)) for r in rows]


NAMES = _source(full_name={"column": "name"}, date_of_birth={"column": "dob"})


@pytest.mark.parametrize(
    ("raw", "given", "middle", "family"),
    [
        ("SMITH, John Paul", "john", "paul", "smith"),
        ("  smith ,  JOHN  ", "john", None, "smith"),
        ("John Paul Smith", "john", "paul", "smith"),
        ("Mary Anne  Smith-Jones", "mary", "anne", "smith jones"),
        ("O'BRIEN, Siobhan", "siobhan", None, "obrien"),
        ("José Núñez", "jose", None, "nunez"),
        ("UNKNOWN, Sarah", "sarah", None, None),
        ("Dr. Jane Doe.", "dr", "jane", "doe"),
        ("N/A", None, None, None),
    ],
)
def test_full_name_in_one_field_is_split(raw: str, given: str, middle: str, family: str) -> None:
    [row] = _standardise(NAMES, [{"id": "1", "name": raw, "dob": "1980-01-02", "event": None}])
    assert (row["given_name"], row["middle_names"], row["family_name"]) == (given, middle, family)


def test_names_in_other_scripts_are_transliterated_not_erased() -> None:
    """Polish, Greek, Cyrillic, Chinese and Arabic names keep their letters (in Latin), are
    counted as transliterated, and a name cleaning leaves empty is counted too."""
    src = _source(
        given_name={"column": "fn"}, family_name={"column": "sn"}, date_of_birth={"column": "dob"}
    )
    rows = _standardise(
        src,
        [
            {"id": "1", "fn": "Łukasz", "sn": "Wałęsa", "dob": None},
            {"id": "2", "fn": "Γιώργος", "sn": "Παπαδόπουλος", "dob": None},
            {"id": "3", "fn": "Иван", "sn": "Петров", "dob": None},
            {"id": "4", "fn": "小明", "sn": "王", "dob": None},
            {"id": "5", "fn": "محمد", "sn": "Smith", "dob": None},
            {"id": "6", "fn": "Ann", "sn": "Smith", "dob": None},
            {"id": "7", "fn": "???", "sn": "Smith", "dob": None},
        ],
    )
    names = [(r["given_name"], r["family_name"]) for r in rows]
    assert names == [
        ("lukasz", "walesa"),
        ("giorgos", "papadopoylos"),
        ("ivan", "petrov"),
        ("xiaoming", "wang"),
        ("mhmd", "smith"),
        ("ann", "smith"),
        (None, "smith"),
    ]
    assert [r["name_transliterated"] for r in rows] == [True] * 5 + [False] * 2
    assert [r["name_unreadable"] for r in rows] == [False] * 6 + [True]


def test_separate_name_columns_with_middle_names_in_the_forename() -> None:
    src = _source(
        given_name={"column": "fn", "includes_middle_names": True},
        family_name={"column": "sn"},
        date_of_birth={"column": "dob"},
    )
    [row] = _standardise(src, [{"id": "1", "fn": "  Kieran IAN ", "sn": "FROST", "dob": None}])
    assert (row["given_name"], row["middle_names"], row["family_name"]) == (
        "kieran",
        "ian",
        "frost",
    )


@pytest.mark.parametrize(
    ("raw", "formats", "expected", "unparseable"),
    [
        ("05/03/1984", ["%d/%m/%Y"], date(1984, 3, 5), False),
        ("19840305", ["%Y%m%d"], date(1984, 3, 5), False),
        ("1984-03-05", ["%Y-%m-%d"], date(1984, 3, 5), False),
        ("05-Mar-1984", ["%d-%b-%Y"], date(1984, 3, 5), False),
        ("1984-03-05", ["%d/%m/%Y", "%Y-%m-%d"], date(1984, 3, 5), False),
        ("01/01/1900", ["%d/%m/%Y"], None, False),
        ("UNKNOWN", ["%d/%m/%Y"], None, False),
        ("", ["%d/%m/%Y"], None, False),
        ("31/02/1985", ["%d/%m/%Y"], None, True),
        ("??/??/19", ["%d/%m/%Y"], None, True),
    ],
)
def test_dates_of_birth(
    raw: str, formats: list[str], expected: date | None, unparseable: bool
) -> None:
    src = _source(full_name={"column": "name"}, date_of_birth={"column": "dob", "formats": formats})
    [row] = _standardise(src, [{"id": "1", "name": "A B", "dob": raw}])
    assert row["date_of_birth"] == expected
    assert row["dob_unparseable"] is unparseable
    if expected:
        assert (row["dob_year"], row["dob_month"], row["dob_day"]) == (1984, 3, 5)


def test_placeholder_and_implausible_dates_become_missing_and_are_counted() -> None:
    rows = _standardise(
        NAMES,
        [
            {"id": "1", "name": "A B", "dob": "1900-01-01"},
            {"id": "2", "name": "A B", "dob": "2999-01-01"},
        ],
    )
    assert [r["date_of_birth"] for r in rows] == [None, None]
    assert [(r["dob_placeholder"], r["dob_implausible"]) for r in rows] == [
        (True, False),
        (False, True),
    ]


@pytest.mark.parametrize(
    ("raw", "expected", "unknown"),
    [
        ("M", "M", False),
        ("f", "F", False),
        ("Male", "M", False),
        ("FEMALE", "F", False),
        ("1", "M", False),
        ("2", "F", False),
        ("U", None, True),
        ("9", None, True),
        ("0", None, True),
        ("", None, False),
    ],
)
def test_sex_codes(raw: str, expected: str | None, unknown: bool) -> None:
    src = _source(full_name={"column": "name"}, postcode={"column": "pc"}, sex={"column": "sex"})
    [row] = _standardise(src, [{"id": "1", "name": "A B", "pc": "SW1A 1AA", "sex": raw}])
    assert row["sex"] == expected
    assert row["sex_unknown"] is unknown


@pytest.mark.parametrize(
    ("raw", "postcode", "sector", "district", "area"),
    [
        ("sw1a1aa", "SW1A 1AA", "SW1A 1", "SW1A", "SW"),
        (" SW1A  1AA ", "SW1A 1AA", "SW1A 1", "SW1A", "SW"),
        ("b338th", "B33 8TH", "B33 8", "B33", "B"),
        ("M1 1AE", "M1 1AE", "M1 1", "M1", "M"),
        ("NFA", None, None, None, None),
        ("12345", None, None, None, None),
    ],
)
def test_postcodes(
    raw: str, postcode: str | None, sector: str | None, district: str | None, area: str | None
) -> None:
    src = _source(full_name={"column": "name"}, postcode={"column": "pc"})
    [row] = _standardise(src, [{"id": "1", "name": "A B", "pc": raw}])
    got = (row["postcode"], row["postcode_sector"], row["postcode_district"], row["postcode_area"])
    assert got == (postcode, sector, district, area)
    assert row["postcode_invalid"] is (postcode is None)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("robert", "R163"),
        ("rupert", "R163"),
        ("ashcraft", "A261"),
        ("tymczak", "T522"),
        ("pfister", "P236"),
        ("honeyman", "H555"),
        ("lee", "L000"),
        ("smith jones", "S532"),
    ],
)
def test_soundex_matches_the_standard_algorithm(name: str, code: str) -> None:
    assert ENGINE is not None
    assert ENGINE.fetch(f"SELECT {soundex_sql(repr(name))}")[0][0] == code


def test_nicknames_share_an_alias_with_the_formal_name() -> None:
    src = _source(given_name={"column": "fn"}, family_name={"column": "sn"})
    rows = _standardise(
        src,
        [
            {"id": str(i), "fn": fn, "sn": "x"}
            for i, fn in enumerate(["Bill", "William", "Sam", "Zebedee", "Polly", "Jules", "Kate"])
        ],
    )
    aliases = {r["given_name"]: set(r["given_name_aliases"]) for r in rows}
    assert aliases["bill"] & aliases["william"] and aliases["sam"] >= {"samuel", "samantha"}
    assert aliases["zebedee"] == {"zebedee"} and not aliases["bill"] & aliases["sam"]
    # From the maintained list (nicknames package) and the UK supplement beside it.
    assert {"paul", "pauline"} <= aliases["polly"] and "julian" in aliases["jules"]
    assert "catherine" in aliases["kate"]


def test_events_and_attributes_pass_through() -> None:
    [row] = _standardise(
        NAMES,
        [{"id": " R1 ", "name": "A B", "dob": None, "event": "02/03/2020", "category": "theft"}],
    )
    assert (row["record_id"], row["event_date"], row["event_type"], row["category"]) == (
        "R1",
        date(2020, 3, 2),
        "test_event",
        "theft",
    )

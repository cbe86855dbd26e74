"""The bad-input catalogue: what a delivery can get wrong, and what joinedup does about it.

Each case is one delivery of a small source. A structural problem stops with a clear error
naming the file (and column) and repeating no value of the file; a row-level problem sends
the row to quarantine with its reason, or sets a value missing and counts it; every case
that reads reconciles (rows in = rows accepted + rows quarantined), and nothing logged while
reading repeats a value of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from linkage_models.project import SourceSpec
from pipelines.deliveries import Delivery
from pipelines.engines import Engine
from pipelines.ingest import SourceError, ingest_delivery
from pipelines.standardise import load_reference_tables, standardise_table
from quality.quarantine import DeliveryTables, combine_and_quarantine

HEADER = ["person_ref", "forename", "surname", "dob", "postcode"]
SOURCE = SourceSpec.model_validate(
    {
        "name": "probation",
        "department": "HMPPS",
        "path": "*.csv",
        "format": "csv",
        "record_id": "person_ref",
        "identifiers": {
            "given_name": "forename",
            "family_name": "surname",
            "date_of_birth": {"column": "dob", "formats": ["%Y-%m-%d"]},
            "postcode": "postcode",
        },
    }
)
# The values of the good rows: none of them may appear in an error message or a log line.
GOOD_ROWS = [
    ["R1", "Wilhelmina", "Fairweather", "1981-03-04", "LS1 4AP"],
    ["R2", "Bartholomew", "Montgomery", "1975-11-30", "MK9 2BB"],
    ["R3", "Philippa", "Ravenscroft", "1990-07-15", "BS2 8QA"],
]
VALUES = [v for row in GOOD_ROWS for v in row[1:]]


def csv_bytes(rows: list[list[str]], header: list[str] | None = HEADER, end: str = "\n") -> bytes:
    lines = ([",".join(header)] if header else []) + [",".join(r) for r in rows]
    return (end.join(lines) + end).encode()


@dataclass(frozen=True)
class Case:
    """One bad delivery and what must happen to it."""

    name: str
    content: Callable[[], bytes]
    error: str | None = None  # a structural error whose message holds this
    rows_in: int = 3
    quarantined: dict[str, int] = field(default_factory=dict)
    set_missing: dict[str, int] = field(default_factory=dict)  # cleaning counts expected
    names: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # id: names
    suffix: str = ".csv"
    source: SourceSpec = SOURCE


def _parquet(table: pa.Table) -> Callable[[], bytes]:
    def write() -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return sink.getvalue().to_pybytes()

    return write


GOOD_TABLE = pa.table({c: [r[i] for r in GOOD_ROWS] for i, c in enumerate(HEADER)})
PARQUET = SOURCE.model_copy(update={"format": "parquet", "path": "*.parquet"})
LATIN1 = SOURCE.model_copy(update={"csv": SOURCE.csv.model_copy(update={"encoding": "latin-1"})})
SEMICOLON = SOURCE.model_copy(update={"csv": SOURCE.csv.model_copy(update={"delimiter": ";"})})

CASES = [
    # --- structural: the delivery cannot be read as declared -------------------------------
    Case("empty file", lambda: b"", error="is empty (0 bytes)"),
    Case("no header row", lambda: csv_bytes(GOOD_ROWS, header=None), error="header row"),
    Case(
        "a mapped column missing",
        lambda: csv_bytes([r[:4] for r in GOOD_ROWS], header=HEADER[:4]),
        error="missing column(s) ['postcode']",
    ),
    Case(
        "a mapped column renamed",
        lambda: csv_bytes(GOOD_ROWS, header=[*HEADER[:2], "family", *HEADER[3:]]),
        error="missing column(s) ['surname']",
    ),
    Case(
        "semicolons where commas were declared",
        lambda: csv_bytes(GOOD_ROWS).replace(b",", b";"),
        error="header row",
    ),
    Case(
        "truncated parquet",
        lambda: _parquet(GOOD_TABLE)()[:-40],
        error="cannot read",
        suffix=".parquet",
        source=PARQUET,
    ),
    Case("empty parquet file", lambda: b"", error="is empty", suffix=".parquet", source=PARQUET),
    Case(
        "not parquet at all",
        lambda: csv_bytes(GOOD_ROWS),
        error="cannot read",
        suffix=".parquet",
        source=PARQUET,
    ),
    # --- encodings and line endings that are fine --------------------------------------------
    Case("byte order mark", lambda: b"\xef\xbb\xbf" + csv_bytes(GOOD_ROWS)),
    Case("CRLF line endings", lambda: csv_bytes(GOOD_ROWS, end="\r\n")),
    Case("no newline at the end", lambda: csv_bytes(GOOD_ROWS)[:-1]),
    Case("blank lines at the end", lambda: csv_bytes(GOOD_ROWS) + b"\n\n"),
    Case(
        "a quoted field holding a newline",
        lambda: csv_bytes(GOOD_ROWS[:2]) + b'R3,"Philippa\nJane",Ravenscroft,1990-07-15,BS2 8QA\n',
        names={"R3": ("philippa jane", "ravenscroft")},
    ),
    Case(
        "a quoted field holding the delimiter",
        lambda: csv_bytes(GOOD_ROWS[:2]) + b'R3,Philippa,"Ravenscroft, Smith",1990-07-15,BS2 8QA\n',
        names={"R3": ("philippa", "ravenscroft smith")},
    ),
    Case(
        "declared latin-1 file",
        lambda: csv_bytes(GOOD_ROWS[:2]) + "R3,José,Núñez,1990-07-15,BS2 8QA\n".encode("latin-1"),
        source=LATIN1,
        names={"R3": ("jose", "nunez")},
    ),
    Case(
        "a declared delimiter other than a comma",
        lambda: csv_bytes(GOOD_ROWS).replace(b",", b";"),
        source=SEMICOLON,
    ),
    Case("header only", lambda: csv_bytes([]), rows_in=0),
    Case(
        "unmapped columns beside the mapped ones",
        lambda: csv_bytes([[*r, "x"] for r in GOOD_ROWS], header=[*HEADER, "notes"]),
    ),
    Case(
        "an injection-like column name (unmapped)",
        lambda: csv_bytes([[*r, "1"] for r in GOOD_ROWS], header=[*HEADER, 'x"); DROP TABLE t;--']),
    ),
    Case(
        "columns in another order",
        lambda: csv_bytes([r[::-1] for r in GOOD_ROWS], header=HEADER[::-1]),
    ),
    # --- row level: the row goes to quarantine with its reason -------------------------------
    Case(
        "a row with too few fields",
        lambda: csv_bytes(GOOD_ROWS) + b"R4,Only,Two\n",
        rows_in=4,
        quarantined={"malformed row: wrong number of fields": 1},
    ),
    Case(
        "a row with too many fields",
        lambda: csv_bytes(GOOD_ROWS) + b"R4,A,B,1980-01-01,LS1 1AA,extra\n",
        rows_in=4,
        quarantined={"malformed row: wrong number of fields": 1},
    ),
    Case(
        "latin-1 bytes in a UTF-8 file",
        lambda: csv_bytes(GOOD_ROWS) + "R4,José,Brën,1980-01-01,LS1 1AA\n".encode("latin-1"),
        rows_in=4,
        quarantined={"malformed row: bytes not valid in the declared encoding": 1},
    ),
    Case(
        "a duplicated record id",
        lambda: csv_bytes([*GOOD_ROWS, ["R1", "Other", "Person", "1970-01-01", "LS2 2BB"]]),
        rows_in=4,
        quarantined={"duplicate record id": 1},
    ),
    Case(
        "an empty and a blank record id",
        lambda: csv_bytes(
            [
                *GOOD_ROWS,
                ["", "Anne", "Smithson", "1970-01-01", "LS2 2BB"],
                ["   ", "Anne", "Smithson", "1970-01-01", "LS2 2BB"],
            ]
        ),
        rows_in=5,
        quarantined={"missing record id": 2},
    ),
    Case(
        "a row with too little to link on",
        lambda: csv_bytes([*GOOD_ROWS, ["R4", "", "Smithson", "", ""]]),
        rows_in=4,
        quarantined={"insufficient identifiers": 1},
    ),
    # --- values: set missing and counted, the row stays ----------------------------------------
    Case(
        "a date of birth in the future",
        lambda: csv_bytes([*GOOD_ROWS, ["R4", "Anne", "Smithson", "2999-01-01", "LS2 2BB"]]),
        rows_in=4,
        set_missing={"date_of_birth_implausible_set_missing": 1},
    ),
    Case(
        "a date of birth in no declared format",
        lambda: csv_bytes([*GOOD_ROWS, ["R4", "Anne", "Smithson", "04/03/1981", "LS2 2BB"]]),
        rows_in=4,
        set_missing={"date_of_birth_unparseable_set_missing": 1},
    ),
    Case(
        "a placeholder date of birth",
        lambda: csv_bytes([*GOOD_ROWS, ["R4", "Anne", "Smithson", "1900-01-01", "LS2 2BB"]]),
        rows_in=4,
        set_missing={"date_of_birth_placeholder_set_missing": 1},
    ),
    Case(
        "a postcode that is not one",
        lambda: csv_bytes([*GOOD_ROWS, ["R4", "Anne", "Smithson", "1970-01-01", "NOT A PC"]]),
        rows_in=4,
        set_missing={"postcode_invalid_set_missing": 1},
    ),
    Case(
        "a name with no letters",
        lambda: csv_bytes([*GOOD_ROWS, ["R4", "???", "Smithson", "1970-01-01", "LS2 2BB"]]),
        rows_in=4,
        set_missing={"name_unreadable_set_missing": 1},
        names={"R4": (None, "smithson")},
    ),
    Case(
        "names in other scripts",
        lambda: csv_bytes(
            [
                *GOOD_ROWS,
                ["R4", "Łukasz", "Wałęsa", "1970-01-01", "LS2 2BB"],
                ["R5", "Иван", "Петров", "1970-01-01", "LS2 2BB"],
            ]
        ),
        rows_in=5,
        names={"R4": ("lukasz", "walesa"), "R5": ("ivan", "petrov")},
    ),
    Case(
        "an injection-like value",
        lambda: csv_bytes(
            [
                *GOOD_ROWS,
                ["R4", "Robert'); DROP TABLE students;--", "Tables", "1970-01-01", "LS2 2BB"],
            ]
        ),
        rows_in=4,
        names={"R4": ("robert drop table students", "tables")},
    ),
    Case(
        "a 1 MB field",
        lambda: csv_bytes(
            [*GOOD_ROWS, ["R4", "A" * 1_000_000, "Smithson", "1970-01-01", "LS2 2BB"]]
        ),
        rows_in=4,
        names={"R4": ("a" * 1_000_000, "smithson")},
    ),
    Case(
        "parquet with numbers and dates where text was expected",
        _parquet(
            pa.table(
                {
                    "person_ref": [1, 2, 3],
                    "forename": [r[1] for r in GOOD_ROWS],
                    "surname": [r[2] for r in GOOD_ROWS],
                    "dob": pa.array(pd.to_datetime([r[3] for r in GOOD_ROWS]).date),
                    "postcode": [r[4] for r in GOOD_ROWS],
                }
            )
        ),
        suffix=".parquet",
        source=PARQUET,
        names={"1": ("wilhelmina", "fairweather")},
    ),
]


@pytest.fixture
def engine(any_engine: Engine) -> Engine:
    """Every case on DuckDB and on Spark."""
    load_reference_tables(any_engine)
    return any_engine


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(
    case: Case, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / f"delivery{case.suffix}"
    path.write_bytes(case.content())
    d = Delivery(case.source.name, path.name, str(path))
    if case.error:
        with pytest.raises(SourceError) as stopped:
            ingest_delivery(engine, case.source, d.path, d.key, d.raw_table)
        message = str(stopped.value)
        assert case.error in message and path.name in message
        assert not [v for v in VALUES if v in message]
        assert not [v for v in VALUES if v in caplog.text]
        return
    ingest_delivery(engine, case.source, d.path, d.key, d.raw_table)
    standardise_table(engine, case.source, d.raw_table, d.standardised_table)
    result = combine_and_quarantine(
        engine,
        case.source,
        [DeliveryTables(d.key, d.raw_table, d.standardised_table)],
        tmp_path / "quarantine.parquet",
    )
    assert result.reconciles
    assert (result.rows_in, result.by_reason) == (case.rows_in, case.quarantined)
    assert result.rows_accepted == case.rows_in - sum(case.quarantined.values())
    for count, n in case.set_missing.items():
        assert result.cleaning[count] == n, count
    names = (
        {
            str(r): (g, f)
            for r, g, f in engine.fetch(
                f"SELECT record_id, given_name, family_name FROM {result.accepted_table}"
            )
        }
        if result.accepted_table
        else {}
    )
    for record, expected in case.names.items():
        assert names[record] == expected
    assert not [v for v in VALUES if v in caplog.text]


def test_the_catalogue_is_long_enough() -> None:
    assert len(CASES) >= 30

"""Bad input: structural problems stop with a clear message; row problems go to quarantine."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from linkage_models.project import SourceSpec
from pipelines.deliveries import Delivery
from pipelines.engines import Engine, error_summary
from pipelines.ingest import SourceError, ingest_delivery
from pipelines.standardise import load_reference_tables, standardise_table
from quality.quarantine import DeliveryTables, QuarantineResult, combine_and_quarantine

SOURCE = SourceSpec.model_validate(
    {
        "name": "hospital",
        "department": "NHS",
        "path": "*.csv",
        "format": "csv",
        "record_id": "episode_id",
        "identifiers": {
            "given_name": "forename",
            "family_name": "surname",
            "date_of_birth": {"column": "dob", "formats": ["%d/%m/%Y"]},
            "postcode": "postcode",
        },
        "event": {"date": {"column": "admitted", "formats": ["%Y-%m-%d"]}, "type": "admission"},
    }
)

GOOD = {
    "episode_id": "E1",
    "forename": "Ann",
    "surname": "O'Brien",
    "dob": "01/02/1980",
    "postcode": "LS1 4AP",
    "admitted": "2020-01-01",
}


@pytest.fixture
def engine(any_engine: Engine) -> Engine:
    """Each test runs on DuckDB and on Spark."""
    load_reference_tables(any_engine)
    return any_engine


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _ingest(engine: Engine, path: Path, spec: SourceSpec = SOURCE) -> Delivery:
    d = Delivery(spec.name, path.name, str(path))
    ingest_delivery(engine, spec, d.path, d.key, d.raw_table)
    return d


def test_missing_column_names_file_and_column(engine: Engine, tmp_path: Path) -> None:
    row = {k: v for k, v in GOOD.items() if k != "surname"}
    path = _csv(tmp_path / "delivery.csv", [row])
    with pytest.raises(SourceError) as info:
        _ingest(engine, path)
    message = str(info.value)
    assert "delivery.csv is missing column(s) ['surname']" in message
    assert "O'Brien" not in message  # column names only, never values


def test_unreadable_parquet_names_the_file(engine: Engine, tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_text("this is not parquet")
    with pytest.raises(SourceError, match=r"cannot read .*broken\.parquet as parquet"):
        _ingest(engine, bad, SOURCE.model_copy(update={"format": "parquet"}))


def test_malformed_rows_go_to_quarantine_and_the_delivery_goes_on(
    engine: Engine, tmp_path: Path
) -> None:
    """A ragged row or a few latin-1 bytes in a UTF-8 file are row-level faults: the row is
    quarantined with its reason and its place in the file, every other row is read."""
    path = tmp_path / "ragged.csv"
    good = [",".join({**GOOD, "episode_id": f"E{i}"}.values()).encode() for i in range(3000)]
    lines = [
        ",".join(GOOD).encode(),
        *good[:1000],
        b"E9,too,few",  # row 1001
        *good[1000:2000],
        ",".join({**GOOD, "episode_id": "E10", "surname": "Br\xe9n"}.values()).encode("latin-1"),
        *good[2000:],
        b"E11,Ann,Smith,01/02/1980,LS1 4AP,2020-01-01,an extra field",  # row 3003
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    d = _ingest(engine, path)
    result = combine_and_quarantine(
        engine, SOURCE, [_standardised(engine, d)], tmp_path / "quarantine"
    )
    assert result.by_reason == {
        "malformed row: bytes not valid in the declared encoding": 1,
        "malformed row: wrong number of fields": 2,
    }
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (3003, 3000, 3)
    quarantined = pd.read_parquet(result.path).sort_values("row_number")
    assert quarantined["row_number"].tolist() == [1001, 2002, 3003]
    assert quarantined["surname"].isna().all()  # nothing half-read is kept
    positions = engine.fetch(f"SELECT min(_row_number), max(_row_number) FROM {d.raw_table}")
    assert positions == [(1, 3003)]


def test_an_empty_file_is_reported_as_empty(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "nothing.csv"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match=r"nothing\.csv is empty \(0 bytes\)"):
        _ingest(engine, path)


def test_a_file_without_its_header_row_does_not_show_its_first_record(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "headerless.csv"
    path.write_text(",".join(GOOD.values()) + "\n" + ",".join(GOOD.values()) + "\n")
    with pytest.raises(SourceError, match="is the header row missing") as info:
        _ingest(engine, path)
    for value in ("Ann", "O'Brien", "01/02/1980", "LS1 4AP"):
        assert value not in str(info.value)


def test_ingest_records_rows_and_hash(engine: Engine, tmp_path: Path) -> None:
    path = _csv(tmp_path / "d1.csv", [GOOD, {**GOOD, "episode_id": "E2"}])
    d = Delivery("hospital", "d1.csv", str(path))
    file = ingest_delivery(engine, SOURCE, d.path, d.key, d.raw_table)
    assert (file.rows, len(file.sha256), file.bytes) == (2, 64, path.stat().st_size)
    assert engine.fetch(f"SELECT DISTINCT _delivery FROM {d.raw_table}") == [("d1.csv",)]


def _standardised(engine: Engine, d: Delivery) -> DeliveryTables:
    standardise_table(engine, SOURCE, d.raw_table, d.standardised_table)
    return DeliveryTables(d.key, d.raw_table, d.standardised_table)


def test_row_problems_are_quarantined_with_reasons_and_reconcile(
    engine: Engine, tmp_path: Path
) -> None:
    rows = [
        GOOD,
        {**GOOD, "episode_id": "E1", "forename": "Different"},  # duplicate id
        {**GOOD, "episode_id": "E3", "dob": "31/02/1980"},  # impossible date: kept, dob missing
        {**GOOD, "episode_id": "E4", "admitted": "yesterday"},  # bad event date: kept
        {**GOOD, "episode_id": "E5", "forename": "", "surname": "", "dob": "", "postcode": "x"},
        {**GOOD, "episode_id": "", "forename": "Bob"},  # no record id
        {**GOOD, "episode_id": "E7", "dob": "UNKNOWN"},  # placeholder: kept
    ]
    d = _ingest(engine, _csv(tmp_path / "delivery.csv", rows))
    result = combine_and_quarantine(
        engine, SOURCE, [_standardised(engine, d)], tmp_path / "quarantine"
    )
    assert result.by_reason == {
        "duplicate record id": 1,
        "insufficient identifiers": 1,
        "missing record id": 1,
    }
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (7, 4, 3)
    assert result.reconciles
    quarantined = pd.read_parquet(result.path)
    assert len(quarantined) == 3
    assert set(quarantined.columns) >= {"episode_id", "quarantine_reason", "delivery"}
    # The first occurrence of a duplicated id is the one kept; a value that cannot be read
    # is set missing and counted, and its row links on what is left.
    kept = engine.fetch(
        "SELECT record_id, given_name, date_of_birth IS NULL FROM accepted_hospital ORDER BY 1"
    )
    assert kept == [
        ("E1", "ann", False),
        ("E3", "ann", True),
        ("E4", "ann", False),
        ("E7", "ann", True),
    ]
    assert result.cleaning["date_of_birth_unparseable_set_missing"] == 1
    assert result.cleaning["event_date_unparseable_set_missing"] == 1


def test_duplicates_across_deliveries_and_rejected_deliveries(
    engine: Engine, tmp_path: Path
) -> None:
    first = _ingest(engine, _csv(tmp_path / "2024-01.csv", [GOOD]))
    second = _ingest(engine, _csv(tmp_path / "2024-02.csv", [GOOD, {**GOOD, "episode_id": "E2"}]))
    rejected = _ingest(engine, _csv(tmp_path / "2024-03.csv", [{**GOOD, "episode_id": "E3"}]))
    result = combine_and_quarantine(
        engine,
        SOURCE,
        [
            _standardised(engine, first),
            _standardised(engine, second),
            DeliveryTables(rejected.key, rejected.raw_table, None, "record_id_unique"),
        ],
        tmp_path / "quarantine",
    )
    assert result.by_delivery["2024-01.csv"]["rows_accepted"] == 1
    assert result.by_delivery["2024-02.csv"]["quarantined_by_reason"] == {"duplicate record id": 1}
    assert result.by_delivery["2024-03.csv"] == {
        "rows_in": 1,
        "rows_accepted": 0,
        "rows_quarantined": 1,
        "status": "rejected",
        "quarantined_by_reason": {"delivery rejected by validation: record_id_unique": 1},
    }
    assert result.reconciles and (result.rows_in, result.rows_accepted) == (4, 2)


def test_deliveries_added_in_place_combine_as_all_at_once(engine: Engine, tmp_path: Path) -> None:
    """An incremental linkage adds new deliveries to the combination the publication holds:
    rows, reasons (a record id seen in an earlier delivery is a duplicate) and counts are
    those of combining every delivery afresh, and only the new deliveries are read."""
    month1 = _ingest(
        engine,
        _csv(tmp_path / "2024-01.csv", [GOOD, {**GOOD, "episode_id": "E2", "dob": "x"}]),
    )
    month2 = _ingest(
        engine,
        _csv(
            tmp_path / "2024-02.csv",
            [
                {**GOOD, "episode_id": "E2", "forename": "Later"},  # seen in January
                {**GOOD, "episode_id": "E3"},
                {**GOOD, "episode_id": "E3", "forename": "Again"},  # twice in February
                {**GOOD, "episode_id": "E4", "forename": "", "surname": "", "postcode": ""},
                {**GOOD, "episode_id": "E5", "dob": "UNKNOWN"},  # kept without a date
            ],
        ),
    )
    rejected = _ingest(engine, _csv(tmp_path / "2024-03.csv", [{**GOOD, "episode_id": "E6"}]))
    deliveries = [
        _standardised(engine, month1),
        _standardised(engine, month2),
        DeliveryTables(rejected.key, rejected.raw_table, None, "record_id_unique"),
    ]

    def combined(result: QuarantineResult) -> tuple:
        accepted = engine.fetch(
            "SELECT _delivery, _row_number, record_id, given_name FROM accepted_hospital "
            "ORDER BY 1, 2"
        )
        quarantined = pd.read_parquet(result.path)[["delivery", "row_number", "quarantine_reason"]]
        counts = asdict(result)
        for k in ("path", "added_to_previous", "appended_rows"):
            counts.pop(k)
        return accepted, sorted(map(tuple, quarantined.to_numpy().tolist())), counts

    at_once = combined(combine_and_quarantine(engine, SOURCE, deliveries, tmp_path / "q1"))
    first = combine_and_quarantine(engine, SOURCE, deliveries[:1], tmp_path / "q2")
    added = combine_and_quarantine(engine, SOURCE, deliveries, tmp_path / "q3", asdict(first))
    assert added.added_to_previous and not first.added_to_previous
    assert combined(added) == at_once
    assert at_once[2]["by_reason"] == {
        "delivery rejected by validation: record_id_unique": 1,
        "duplicate record id": 2,
        "insufficient identifiers": 1,
    }
    assert at_once[2]["cleaning"]["date_of_birth_unparseable_set_missing"] == 1
    # Nothing new: the combination is kept as it was.
    again = combine_and_quarantine(engine, SOURCE, deliveries, tmp_path / "q4", asdict(added))
    assert combined(again) == at_once


def test_a_row_with_several_problems_gets_the_first_reason_and_its_location(
    engine: Engine, tmp_path: Path
) -> None:
    """Reasons apply in the documented order, and each quarantined row says where it came
    from: its delivery, the file and its row number in the file (1 = first data row)."""
    nothing = {"forename": "", "surname": "", "postcode": ""}
    rows = [
        GOOD,  # row 1: kept
        {**GOOD, "episode_id": "", "dob": "31/02/1980", **nothing},  # 2: missing id first
        {**GOOD, "dob": "31/02/1980", "admitted": "never"},  # 3: duplicate of E1 first
        {**GOOD, "episode_id": "E3", "dob": "x", "admitted": "x", **nothing},  # 4: nothing left
        {**GOOD, "episode_id": "E4", "admitted": "x", **nothing, "dob": ""},  # 5: nothing left
        {**GOOD, "episode_id": "E5", **nothing, "dob": ""},  # 6: too few identifiers
        {**GOOD, "episode_id": "E6", "forename": "", "surname": ""},  # 7: kept (dob, postcode)
    ]
    path = _csv(tmp_path / "2024-05.csv", rows)
    d = _ingest(engine, path)
    result = combine_and_quarantine(
        engine, SOURCE, [_standardised(engine, d)], tmp_path / "quarantine"
    )
    quarantined = pd.read_parquet(result.path).sort_values("row_number")
    assert list(zip(quarantined.row_number, quarantined.quarantine_reason, strict=True)) == [
        (2, "missing record id"),
        (3, "duplicate record id"),
        (4, "insufficient identifiers"),
        (5, "insufficient identifiers"),
        (6, "insufficient identifiers"),
    ]
    assert set(quarantined.delivery) == {"2024-05.csv"}
    assert set(quarantined.delivery_file) == {str(path)}
    # Rows are quarantined as delivered: the values are the file's own.
    assert quarantined.set_index("row_number").loc[3, "dob"] == "31/02/1980"
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (7, 2, 5)


def test_an_engine_error_is_summarised_without_the_values_it_quotes(engine: Engine) -> None:
    with pytest.raises(Exception) as info:
        engine.fetch("SELECT CAST('Smith 1980-02-01' AS INTEGER) AS n")
    assert "Smith" in str(info.value) or "1980" in str(info.value)  # the library's own text
    summary = error_summary(info.value)
    assert "Smith" not in summary and "1980" not in summary
    assert summary  # still says what kind of error it was

"""Bad input: structural problems stop with a clear message; row problems go to quarantine."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from linkage_models.project import SourceSpec
from pipelines.engine import DuckDBEngine
from pipelines.ingest import SourceError, ingest_source
from pipelines.standardise import load_reference_tables_sql, standardise_sql
from quality.quarantine import split_accepted_and_quarantined

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


@pytest.fixture
def engine(tmp_path: Path) -> DuckDBEngine:
    eng = DuckDBEngine(tmp_path / "work" / "test.duckdb", memory_limit="1GB")
    for sql in load_reference_tables_sql():
        eng.execute(sql)
    yield eng
    eng.close()


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


GOOD = {
    "episode_id": "E1",
    "forename": "Ann",
    "surname": "O'Brien",
    "dob": "01/02/1980",
    "postcode": "LS1 4AP",
    "admitted": "2020-01-01",
}


def test_missing_file_names_source_and_path(engine: DuckDBEngine, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'hospital': no file found at .*missing\*\.csv"):
        ingest_source(engine, SOURCE, str(tmp_path / "missing*.csv"))


def test_missing_column_names_file_and_column(engine: DuckDBEngine, tmp_path: Path) -> None:
    row = {k: v for k, v in GOOD.items() if k != "surname"}
    path = _csv(tmp_path / "delivery.csv", [row])
    with pytest.raises(SourceError) as info:
        ingest_source(engine, SOURCE, str(path))
    message = str(info.value)
    assert "delivery.csv is missing column(s) ['surname']" in message
    assert "O'Brien" not in message  # column names only, never values


def test_unreadable_parquet_names_the_file(engine: DuckDBEngine, tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_text("this is not parquet")
    spec = SOURCE.model_copy(update={"format": "parquet"})
    with pytest.raises(SourceError, match=r"cannot read .*broken\.parquet as parquet"):
        ingest_source(engine, spec, str(bad))


def test_several_deliveries_are_read_together_with_counts_and_hashes(
    engine: DuckDBEngine, tmp_path: Path
) -> None:
    _csv(tmp_path / "d1.csv", [GOOD])
    _csv(tmp_path / "d2.csv", [{**GOOD, "episode_id": "E2"}, {**GOOD, "episode_id": "E3"}])
    ingested = ingest_source(engine, SOURCE, str(tmp_path / "d*.csv"))
    assert [(Path(f.path).name, f.rows) for f in ingested.files] == [("d1.csv", 1), ("d2.csv", 2)]
    assert all(len(f.sha256) == 64 for f in ingested.files)
    assert engine.count(ingested.table) == 3


def test_row_problems_are_quarantined_with_reasons_and_reconcile(
    engine: DuckDBEngine, tmp_path: Path
) -> None:
    rows = [
        GOOD,
        {**GOOD, "episode_id": "E1", "forename": "Different"},  # duplicate id
        {**GOOD, "episode_id": "E3", "dob": "31/02/1980"},  # impossible date
        {**GOOD, "episode_id": "E4", "admitted": "yesterday"},  # bad event date
        {**GOOD, "episode_id": "E5", "forename": "", "surname": "", "dob": "", "postcode": "x"},
        {**GOOD, "episode_id": "", "forename": "Bob"},  # no record id
        {**GOOD, "episode_id": "E7", "dob": "UNKNOWN"},  # placeholder: kept
    ]
    path = _csv(tmp_path / "delivery.csv", rows)
    ingested = ingest_source(engine, SOURCE, str(path))
    engine.create_table("std_hospital", standardise_sql(SOURCE, ingested.table))
    result = split_accepted_and_quarantined(
        engine, SOURCE, ingested.table, "std_hospital", tmp_path / "quarantine"
    )
    assert result.by_reason == {
        "duplicate record id": 1,
        "unparseable date of birth": 1,
        "unparseable event date": 1,
        "insufficient identifiers": 1,
        "missing record id": 1,
    }
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (7, 2, 5)
    assert result.reconciles
    quarantined = pd.read_parquet(result.path)
    assert len(quarantined) == 5
    assert set(quarantined.columns) >= {"episode_id", "quarantine_reason", "delivery_file"}
    # The first occurrence of a duplicated id is the one kept.
    kept = engine.fetch("SELECT record_id, given_name FROM accepted_hospital ORDER BY 1")
    assert kept == [("E1", "ann"), ("E7", "ann")]

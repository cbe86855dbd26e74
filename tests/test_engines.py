"""The engine's scratch area: Splink's working tables made there are read by name while the
step runs, never land in the stored database, and do not hide the stored tables."""

from __future__ import annotations

from pathlib import Path

from pipelines.engines import DuckDBEngine, Engine


def test_scratch_tables_are_read_by_name_and_stored_ones_outlive_them(
    any_engine: Engine,
) -> None:
    engine = any_engine
    engine.create_table("stored_before", "SELECT 1 AS x")
    with engine.scratch():
        engine.create_table("scratch_working", "SELECT x + 1 AS x FROM stored_before")
        assert engine.count("stored_before") == 1  # stored tables are read inside
    assert engine.fetch("SELECT x FROM scratch_working") == [(2,)]  # and scratch after
    engine.create_table("stored_after", "SELECT x * 10 AS x FROM scratch_working")
    assert engine.fetch("SELECT x FROM stored_after") == [(20,)]


def test_duckdb_scratch_tables_stay_out_of_the_database_file(tmp_path: Path) -> None:
    database = tmp_path / "work.duckdb"
    with DuckDBEngine(database) as engine:
        engine.create_table("stored_before", "SELECT 1 AS x")
        for _ in range(2):  # a second scratch in one step reuses the first
            with engine.scratch():
                engine.create_table("scratch_working", "SELECT 2 AS x")
        engine.create_table("stored_after", "SELECT x FROM scratch_working")
    with DuckDBEngine(database) as engine:
        assert engine.table_exists("stored_after")
        assert engine.fetch("SELECT x FROM stored_after") == [(2,)]
        assert not engine.table_exists("scratch_working")

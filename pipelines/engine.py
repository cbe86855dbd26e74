"""Engine sessions: where the SQL runs. DuckDB (one machine, a real database file) today.

The rest of the code talks to an engine through this small surface, so a Spark engine can
stand beside it: run a statement, materialise a SELECT as a table, read columns and counts,
write Parquet, and hand Splink its database API.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd


class Engine(Protocol):
    name: str

    def execute(self, sql: str) -> None: ...

    def create_table(self, name: str, select_sql: str) -> None: ...

    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    def fetch_df(self, sql: str) -> pd.DataFrame: ...

    def columns(self, table: str) -> list[str]: ...

    def count(self, table: str) -> int: ...

    def write_parquet(self, select_sql: str, path: Path) -> None: ...

    def splink_api(self) -> Any: ...

    def versions(self) -> dict[str, str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


def _connect_waiting_for_lock(database: Path, timeout: float) -> duckdb.DuckDBPyConnection:
    """A DuckDB file has one writer process at a time. Runs launched together (e.g. by the
    delivery sensors) wait their turn here instead of failing on the lock."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return duckdb.connect(str(database))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class DuckDBEngine:
    """A DuckDB database file with a memory cap and a spill directory."""

    name = "duckdb"

    def __init__(
        self,
        database: Path,
        *,
        memory_limit: str = "8GB",
        threads: int | None = None,
        lock_timeout_seconds: float = 1800,
    ):
        database.parent.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.con = _connect_waiting_for_lock(database, lock_timeout_seconds)
        spill = database.parent / "duckdb_spill"
        spill.mkdir(exist_ok=True)
        self.con.execute(f"SET memory_limit = '{memory_limit}'")
        self.con.execute(f"SET temp_directory = '{spill}'")
        self.con.execute("SET preserve_insertion_order = true")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def execute(self, sql: str) -> None:
        self.con.execute(sql)

    def create_table(self, name: str, select_sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {name} AS {select_sql}")

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def fetch_df(self, sql: str) -> pd.DataFrame:
        return self.con.execute(sql).df()

    def columns(self, table: str) -> list[str]:
        return [row[0] for row in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def count(self, table: str) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def write_parquet(self, select_sql: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con.execute(f"COPY ({select_sql}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)")

    def splink_api(self) -> Any:
        from splink import DuckDBAPI

        return DuckDBAPI(connection=self.con)

    def versions(self) -> dict[str, str]:
        return {"duckdb": duckdb.__version__}

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> DuckDBEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ENGINES = ("duckdb",)


def check_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {list(ENGINES)}")


def open_engine(name: str, work_dir: Path, memory_limit: str = "8GB") -> Engine:
    """The engine named in the CLI or config; DuckDB is the embedded default."""
    check_engine_name(name)
    return DuckDBEngine(work_dir / "joinedup.duckdb", memory_limit=memory_limit)

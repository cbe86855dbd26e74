"""Engine sessions: where the SQL runs. DuckDB (one machine, a real database file) today.

The rest of the code talks to an engine through this small surface, so a Spark engine can
stand beside it: run a statement, materialise a SELECT as a table, read columns and counts,
write Parquet, and hand Splink its database API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import duckdb


class Engine(Protocol):
    name: str

    def execute(self, sql: str) -> None: ...

    def create_table(self, name: str, select_sql: str) -> None: ...

    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    def columns(self, table: str) -> list[str]: ...

    def count(self, table: str) -> int: ...

    def write_parquet(self, select_sql: str, path: Path) -> None: ...

    def splink_api(self) -> Any: ...

    def versions(self) -> dict[str, str]: ...

    def close(self) -> None: ...


class DuckDBEngine:
    """A DuckDB database file with a memory cap and a spill directory."""

    name = "duckdb"

    def __init__(
        self,
        database: Path,
        *,
        memory_limit: str = "8GB",
        threads: int | None = None,
    ):
        database.parent.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.con = duckdb.connect(str(database))
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


def open_engine(name: str, work_dir: Path, memory_limit: str = "8GB") -> Engine:
    """The engine named in the CLI or config; DuckDB is the embedded default."""
    if name == "duckdb":
        return DuckDBEngine(work_dir / "joinedup.duckdb", memory_limit=memory_limit)
    raise ValueError(f"unknown engine {name!r}; expected 'duckdb'")

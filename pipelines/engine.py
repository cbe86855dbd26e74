"""Engine sessions: where the SQL runs. DuckDB (one machine, a real database file) is the
embedded default; Spark (`pipelines/spark_engine.py`) runs the same SQL on a cluster.

The rest of the code talks to an engine through this small surface: run a statement,
materialise a SELECT as a table, expose a file or a small frame as a table, read columns and
counts, write Parquet, and hand Splink its database API. All SQL is written in DuckDB's
dialect; the Spark engine transpiles it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from linkage_models.project import CsvOptions
from pipelines.standardise import lit


class Engine(Protocol):
    name: str

    def execute(self, sql: str) -> None: ...

    def create_table(self, name: str, select_sql: str) -> None: ...

    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    def fetch_df(self, sql: str) -> pd.DataFrame: ...

    def columns(self, table: str) -> list[str]: ...

    def table_exists(self, name: str) -> bool: ...

    def drop_table(self, name: str) -> None: ...

    def register_file(
        self,
        view: str,
        path: str,
        file_format: str,
        csv: CsvOptions | None = None,
        row_number_column: str | None = None,
    ) -> None: ...

    def load_frame(self, name: str, frame: pd.DataFrame) -> None: ...

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


def error_summary(exc: BaseException) -> str:
    """What went wrong in an engine, fit for a message: DuckDB's first line, or Spark's error
    classes (Spark quotes the offending record after them, which must not be shown)."""
    java = getattr(exc, "java_exception", None)
    if java is None:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    classes = []
    while java is not None:
        found = re.match(r"\s*\[([A-Z0-9_.]+)\]", str(java.getMessage() or ""))
        classes.append(found.group(1) if found else java.getClass().getSimpleName())
        java = java.getCause()
    return "Spark error " + " / ".join(dict.fromkeys(classes)) + " (row values withheld)"


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

    def table_exists(self, name: str) -> bool:
        found = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchall()
        return bool(found[0][0])

    def drop_table(self, name: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {name}")

    def register_file(
        self,
        view: str,
        path: str,
        file_format: str,
        csv: CsvOptions | None = None,
        row_number_column: str | None = None,
    ) -> None:
        """A temporary view over a CSV (every column as text) or Parquet file; with
        `row_number_column`, each row's position in the file (1-based)."""
        if file_format == "csv":
            opts = csv or CsvOptions()
            reader = (
                f"read_csv({lit(path)}, header=true, all_varchar=true, "
                f"delim={lit(opts.delimiter)}, quote={lit(opts.quote)}, "
                f"escape={lit(opts.quote)}, encoding={lit(opts.encoding)})"
            )
        else:
            reader = f"read_parquet({lit(path)})"
        numbered = f", row_number() OVER () AS {row_number_column}" if row_number_column else ""
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT *{numbered} FROM {reader}")

    def load_frame(self, name: str, frame: pd.DataFrame) -> None:
        self.con.register("__joinedup_frame", frame)
        try:
            self.con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM __joinedup_frame")
        finally:
            self.con.unregister("__joinedup_frame")

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


ENGINES = ("duckdb", "spark")


def check_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {list(ENGINES)}")


def open_engine(name: str, work_dir: Path, memory_limit: str = "8GB", spark: Any = None) -> Engine:
    """The engine named in the CLI or config; DuckDB is the embedded default.

    For Spark, `spark` is a `SparkSettings` (default: from JOINEDUP_SPARK_* variables).
    """
    check_engine_name(name)
    if name == "spark":
        from pipelines.spark_engine import SparkEngine, SparkSettings

        return SparkEngine.open(work_dir, spark or SparkSettings.from_env())
    return DuckDBEngine(work_dir / "joinedup.duckdb", memory_limit=memory_limit)

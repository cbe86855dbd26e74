"""The embedded engine: a DuckDB database file on one machine, with a memory cap and a spill
directory. One process writes it at a time; others wait for its lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from linkage_models.project import CsvOptions
from pipelines.engines.base import (
    MALFORMED_BYTES,
    MALFORMED_FIELDS,
    MALFORMED_OTHER,
    Engine,
    wait_for,
)
from pipelines.sql import ident, lit


def _connect(database: Path, timeout: float) -> duckdb.DuckDBPyConnection:
    def attempt() -> duckdb.DuckDBPyConnection | None:
        try:
            return duckdb.connect(str(database))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            return None

    return wait_for(attempt, timeout, f"{database}: the working database")


def _csv_reader(path: str, csv: CsvOptions | None, extra: str = "") -> str:
    """read_csv over a CSV file with a header, every column as text."""
    opts = csv or CsvOptions()
    return (
        f"read_csv({lit(path)}, header=true, all_varchar=true, "
        f"delim={lit(opts.delimiter)}, quote={lit(opts.quote)}, "
        f"escape={lit(opts.quote)}, encoding={lit(opts.encoding)}{', ' + extra if extra else ''})"
    )


class DuckDBEngine(Engine):
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
        self.con = _connect(database, lock_timeout_seconds)
        # The file's catalog name (DuckDB names it after the file), before any USE.
        self.catalog: str = self.con.execute("SELECT current_database()").fetchall()[0][0]
        spill = database.parent / "duckdb_spill"
        spill.mkdir(exist_ok=True)
        self.con.execute(f"SET memory_limit = {lit(memory_limit)}")
        self.con.execute(f"SET temp_directory = {lit(str(spill))}")
        self.con.execute("SET preserve_insertion_order = true")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def execute(self, sql: str) -> None:
        self.con.execute(sql)

    def create_table(self, name: str, select_sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {name} AS {select_sql}")

    def row_fingerprint_sql(self, columns: list[str]) -> str:
        # DuckDB hashes typed values (lists too) directly: a quarter of md5's cost.
        return f"hash({', '.join(ident(c) for c in columns)})"

    def create_view(self, name: str, select_sql: str) -> None:
        # A table of that name (left by an earlier version of a step) gives way to the view.
        if self.con.execute(
            "SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [name]
        ).fetchone():
            self.con.execute(f"DROP TABLE {name}")
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {select_sql}")

    def delete_rows(self, table: str, condition: str) -> None:
        self.con.execute(f"DELETE FROM {table} WHERE {condition}")

    def insert_rows(self, table: str, select_sql: str) -> None:
        self.con.execute(f"INSERT INTO {table} {select_sql}")

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def fetch_df(self, sql: str) -> pd.DataFrame:
        return self.con.execute(sql).df()

    def columns(self, table: str) -> list[str]:
        return [row[0] for row in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def table_exists(self, name: str) -> bool:
        found = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchall()
        return bool(found[0][0])

    def register_file(
        self, view: str, path: str, file_format: str, csv: CsvOptions | None = None
    ) -> None:
        reader = _csv_reader(path, csv) if file_format == "csv" else f"read_parquet({lit(path)})"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {reader}")

    def register_delivery(
        self, view: str, path: str, file_format: str, csv: CsvOptions | None = None
    ) -> None:
        """DuckDB's CSV reader keeps the rows it rejects (store_rejects) with their line and
        error type; they become rows with `_malformed` set, at their place in the file."""
        if file_format != "csv":
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT *, row_number() OVER () AS "
                f"_row_number, CAST(NULL AS VARCHAR) AS _malformed FROM read_parquet({lit(path)})"
            )
            return
        rejects, scans, read = f"{view}__rejects", f"{view}__scans", f"{view}__read"
        for table in (rejects, scans):  # DuckDB appends each scan's rejects to these
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
        reader = _csv_reader(
            path,
            csv,
            f"store_rejects=true, rejects_table={lit(rejects)}, rejects_scan={lit(scans)}",
        )
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE {read} AS "
            f"SELECT *, row_number() OVER () AS __ordinal FROM {reader}"
        )
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {view}__malformed AS
            SELECT line - 1 AS _row_number,
                   CASE WHEN bool_or(error_type IN ('TOO MANY COLUMNS', 'MISSING COLUMNS'))
                          THEN {lit(MALFORMED_FIELDS)}
                        WHEN bool_or(error_type IN ('INVALID ENCODING', 'INVALID UNICODE'))
                          THEN {lit(MALFORMED_BYTES)}
                        ELSE {lit(MALFORMED_OTHER)} END AS _malformed
            FROM {rejects} GROUP BY line""")
        bad = self.con.execute(f"SELECT count(*) FROM {view}__malformed").fetchall()[0][0]
        if not bad:
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * EXCLUDE (__ordinal), "
                f"__ordinal AS _row_number, CAST(NULL AS VARCHAR) AS _malformed FROM {read}"
            )
            return
        # The rows read take, in order, the positions the rejected rows left free.
        self.con.execute(f"""
            CREATE OR REPLACE TEMP VIEW {view} AS
            WITH slots AS (
                SELECT range AS _row_number, row_number() OVER (ORDER BY range) AS __ordinal
                FROM range(1, (SELECT count(*) FROM {read}) + {int(bad)} + 1)
                WHERE range NOT IN (SELECT _row_number FROM {view}__malformed))
            SELECT r.* EXCLUDE (__ordinal), s._row_number, CAST(NULL AS VARCHAR) AS _malformed
            FROM {read} r JOIN slots s USING (__ordinal)
            UNION ALL BY NAME
            SELECT _row_number, _malformed FROM {view}__malformed""")

    def load_frame(self, name: str, frame: pd.DataFrame) -> None:
        self.con.register("__joinedup_frame", frame)
        try:
            self.con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM __joinedup_frame")
        finally:
            self.con.unregister("__joinedup_frame")

    def write_parquet(self, select_sql: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con.execute(
            f"COPY ({select_sql}) TO {lit(str(path))} (FORMAT parquet, COMPRESSION zstd)"
        )

    def splink_api(self) -> Any:
        from splink import DuckDBAPI

        return DuckDBAPI(connection=self.con)

    def validation_frames(self, select_sql: str, batch_rows: int) -> Iterator[pd.DataFrame]:
        """Pandas frames of at most `batch_rows` rows (a large delivery never sits in memory
        whole); the checks are judged over all of them together."""
        start = 0
        while True:  # until a short batch: no separate pass to count the rows first
            frame = self.fetch_df(f"SELECT * FROM ({select_sql}) LIMIT {batch_rows} OFFSET {start}")
            if start == 0 or len(frame):
                yield frame
            if len(frame) < batch_rows:
                return
            start += batch_rows

    def gx_datasource(self, context: Any) -> Any:
        # GX over DuckDB through SQLAlchemy fails every expectation: pandas frames instead.
        return context.data_sources.add_or_update_pandas("joinedup")

    def versions(self) -> dict[str, str]:
        return {"duckdb": duckdb.__version__}

    @contextlib.contextmanager
    def scratch(self) -> Iterator[None]:
        """An in-memory database attached beside the file (spilling to the same directory
        past the memory cap): tables made inside go there, and stored tables are still read
        by name (search path; a DROP inside follows it too). At 1M records Splink's
        clustering took 33-40 s with its tables written to the file, 13-17 s in memory.
        After it, the stored database comes first again and the scratch tables are read by
        name until the engine is closed."""
        stored = self.catalog
        if not self.con.execute(
            "SELECT 1 FROM duckdb_databases() WHERE database_name = 'scratch'"
        ).fetchall():
            self.con.execute("ATTACH ':memory:' AS scratch")
        self.con.execute("USE scratch")
        self.con.execute(f"SET search_path = {lit(f'scratch.main,{stored}.main')}")
        try:
            yield
        finally:
            self.con.execute(f"USE {ident(stored)}")
            self.con.execute(f"SET search_path = {lit(f'{stored}.main,scratch.main')}")

    def close(self) -> None:
        """Splink's working tables go with the step that made them: no later step reads them
        (each makes its own linker), and at 1M records they were most of the database."""
        with contextlib.suppress(duckdb.Error):
            for name, kind in self.con.execute(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE starts_with(table_name, '__splink__') AND table_catalog = ?",
                [self.catalog],
            ).fetchall():
                what = "VIEW" if kind == "VIEW" else "TABLE"
                self.con.execute(f"DROP {what} IF EXISTS {ident(name)}")
        self.con.close()

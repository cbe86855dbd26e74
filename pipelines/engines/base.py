"""The engine API: where the SQL runs. One base class holds what every engine shares; each
backend (DuckDB for one machine, Spark for a cluster) implements only what its dialect and
its readers make different, as Splink's DatabaseAPI and dbt's adapters do.

All SQL handed to an engine is written in DuckDB's dialect; Spark transpiles it.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pandas as pd

from linkage_models.project import CsvOptions
from pipelines.sql import ident

T = TypeVar("T")


# Why a delivered CSV row could not be read (`_malformed`), the same on every engine.
MALFORMED_FIELDS = "wrong number of fields"
MALFORMED_BYTES = "bytes not valid in the declared encoding"
MALFORMED_OTHER = "not readable as CSV (a stray quote or an over-long line)"


# What a library's message may quote from the data: anything in quotes, and dates.
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_DATE_LIKE = re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b")
WITHHELD = "<value withheld>"


def error_summary(exc: BaseException) -> str:
    """What went wrong in a library (DuckDB, Spark, pyarrow, GX...), fit for a message that
    may be logged: the first line of the error with anything quoted and anything date-like
    withheld (these libraries quote the offending value or record), or Spark's error
    classes (Spark quotes the offending record after them)."""
    java = getattr(exc, "java_exception", None)
    if java is None:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return _DATE_LIKE.sub(WITHHELD, _QUOTED.sub(WITHHELD, first))
    classes = []
    while java is not None:
        found = re.match(r"\s*\[([A-Z0-9_.]+)\]", str(java.getMessage() or ""))
        classes.append(found.group(1) if found else java.getClass().getSimpleName())
        java = java.getCause()
    return "Spark error " + " / ".join(dict.fromkeys(classes)) + " (row values withheld)"


def where_raised(exc: BaseException) -> str:
    """Where an error was raised, as file:line of the innermost frame (no values)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "unknown"


def wait_for(attempt: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `attempt` until it returns something, backing off up to 5 s between tries.

    A working database has one writer at a time: runs launched together (by the delivery
    sensors, say) wait their turn here instead of failing."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        result = attempt()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still held by another run after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


class Engine(ABC):
    """A working database for one output folder: run statements, keep tables between steps,
    read files, write Parquet, and hand Splink its database API."""

    name: ClassVar[str]

    # --- statements and tables (the dialect differs) -------------------------------------
    @abstractmethod
    def execute(self, sql: str) -> None: ...

    @abstractmethod
    def create_table(self, name: str, select_sql: str) -> None:
        """Materialise a SELECT as a table (replacing one of that name)."""

    @abstractmethod
    def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def fetch_df(self, sql: str) -> pd.DataFrame: ...

    @abstractmethod
    def columns(self, table: str) -> list[str]: ...

    @abstractmethod
    def table_exists(self, name: str) -> bool: ...

    def drop_table(self, name: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {name}")

    def row_fingerprint_sql(self, columns: list[str]) -> str:
        """An expression over a row's `columns` that changes when any of their values does
        (a changed record is told from an unchanged one by it)."""
        values = ", ".join(f"coalesce(CAST({ident(c)} AS VARCHAR), '<null>')" for c in columns)
        return f"md5(concat_ws('|', {values}))"

    def create_view(self, name: str, select_sql: str) -> None:
        """A SELECT under a name, computed when read (nothing is copied)."""
        self.execute(f"CREATE OR REPLACE VIEW {name} AS {select_sql}")

    def drop_view(self, name: str) -> None:
        self.execute(f"DROP VIEW IF EXISTS {name}")

    def delete_rows(self, table: str, condition: str) -> None:
        """Remove the rows of a table meeting a condition (in place where the engine can)."""
        self.create_table(table, f"SELECT * FROM {table} WHERE NOT ({condition})")

    def insert_rows(self, table: str, select_sql: str) -> None:
        """Add rows to a table; `select_sql` gives the table's columns in its order."""
        self.create_table(table, f"SELECT * FROM {table} UNION ALL {select_sql}")

    def count(self, table: str) -> int:
        return int(self.fetch(f"SELECT count(*) FROM {table}")[0][0])

    def scratch(self) -> contextlib.AbstractContextManager[None]:
        """Tables made inside go to a working area kept out of the engine's stored tables
        until the engine is closed, and are read by name after it as before: for a step's
        working tables (Splink's, the error-rate estimates', the identity step's). Stored
        tables are read by name inside it; a stored table of the same name hides a scratch
        one after it, so drop any such first. (Spark: its tables are the session's anyway.)"""
        return contextlib.nullcontext()

    # --- files and frames (the readers differ) -------------------------------------------
    @abstractmethod
    def register_file(
        self, view: str, path: str, file_format: str, csv: CsvOptions | None = None
    ) -> None:
        """A temporary view over a CSV (every column as text) or Parquet file."""

    @abstractmethod
    def register_delivery(
        self, view: str, path: str, file_format: str, csv: CsvOptions | None = None
    ) -> None:
        """A delivery file as a temporary view: its columns as text, `_row_number` (the row's
        1-based position in the file) and `_malformed`.

        A CSV row the reader cannot take (a wrong number of fields, bytes not valid in the
        declared encoding, a stray quote) does not stop the read: it is a row whose columns
        are NULL and whose `_malformed` says which MALFORMED_* reason applies (NULL for
        every row read), so that it reaches quarantine with its reason."""

    @abstractmethod
    def load_frame(self, name: str, frame: pd.DataFrame) -> None:
        """A small pandas frame (reference data, labels) as a table."""

    @abstractmethod
    def write_parquet(self, select_sql: str, path: Path) -> None: ...

    # --- what other tools need from the engine -------------------------------------------
    @abstractmethod
    def splink_api(self) -> Any:
        """Splink's database API over this engine's tables."""

    @abstractmethod
    def validation_frames(self, select_sql: str, batch_rows: int) -> Iterator[Any]:
        """The rows of a SELECT as frames Great Expectations can validate."""

    @abstractmethod
    def gx_datasource(self, context: Any) -> Any:
        """The Great Expectations datasource that reads `validation_frames`."""

    @abstractmethod
    def versions(self) -> dict[str, str]: ...

    # --- lifetime ------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Release the working database for the next run."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

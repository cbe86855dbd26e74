"""Engines: where the SQL runs. DuckDB (a database file on one machine) is the embedded
default; Spark runs the same SQL on a cluster. `open_engine` picks one by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.engines.base import Engine, error_summary, wait_for, where_raised
from pipelines.engines.duckdb_engine import DuckDBEngine

ENGINES = ("duckdb", "spark")

__all__ = [
    "ENGINES",
    "DuckDBEngine",
    "Engine",
    "check_engine_name",
    "error_summary",
    "open_engine",
    "wait_for",
    "where_raised",
]


def check_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {list(ENGINES)}")


def open_engine(name: str, work_dir: Path, memory_limit: str = "8GB", spark: Any = None) -> Engine:
    """The engine named in the CLI or config, on the working folder `work_dir`.

    For Spark, `spark` is a `SparkSettings` (default: from JOINEDUP_SPARK_* variables).
    """
    check_engine_name(name)
    if name == "spark":
        from pipelines.engines.spark_engine import SparkEngine, SparkSettings

        return SparkEngine.open(work_dir, spark or SparkSettings.from_env())
    return DuckDBEngine(work_dir / "joinedup.duckdb", memory_limit=memory_limit)

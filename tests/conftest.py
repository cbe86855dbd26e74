"""Shared fixtures: one small synthetic delivery and one full run, reused across tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linkage_models.project import LoadedProject, load_project
from pipelines.engines import DuckDBEngine, Engine
from pipelines.engines.spark_engine import SparkEngine, SparkSettings, spark_session
from pipelines.run import RunResult, run_project
from pipelines.synthetic import GeneratedData, generate_extracts

from .helpers import demo_settings, write_project


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate_extracts(tmp_path_factory.mktemp("data"), people=3000, seed=11)


@pytest.fixture(scope="session")
def test_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project with u counted over every pair of the test data (4,540 records,
    10.3M pairs, above the demo's 1e7). A sample is drawn by a hash of the record id that
    each engine computes its own way, so sampled, DuckDB's and Spark's u differ by up to
    0.07 bits on rare levels, and comparing the engines would compare their hashes."""
    raw = demo_settings()
    raw["model"]["training"]["u_max_pairs"] = 1e8
    return write_project(raw, tmp_path_factory.mktemp("config") / "demo_project.yaml")


@pytest.fixture(scope="session")
def small_project(
    small_data: GeneratedData, test_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> LoadedProject:
    return load_project(
        test_config, data_dir=small_data.out_dir, output_dir=tmp_path_factory.mktemp("out")
    )


@pytest.fixture(scope="session")
def small_run(small_project: LoadedProject, small_data: GeneratedData) -> RunResult:
    return run_project(small_project, ground_truth=small_data.ground_truth)


# The one SparkSession of the test run: local[2], small shuffles (settings as the CLI uses).
SPARK_TEST_SETTINGS = SparkSettings(master="local[2]", shuffle_partitions=4, driver_memory="2g")


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    checkpoints = tmp_path_factory.mktemp("spark_checkpoints")
    session = spark_session(SPARK_TEST_SETTINGS, str(checkpoints))
    yield session
    session.stop()


@pytest.fixture(params=["duckdb", pytest.param("spark", marks=pytest.mark.spark)])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh engine of each kind: tests using it check both engines behave the same."""
    engine: Engine
    if request.param == "spark":
        engine = SparkEngine(request.getfixturevalue("spark"), tmp_path / "work")
    else:
        engine = DuckDBEngine(tmp_path / "work" / "test.duckdb", memory_limit="1GB")
    yield engine
    engine.close()

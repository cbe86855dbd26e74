"""Shared fixtures: one small synthetic delivery and one full run, reused across tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage_models.project import LoadedProject, load_project
from pipelines.run import RunResult, run_project
from pipelines.synthetic import GeneratedData, generate_extracts

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "examples" / "demo_project.yaml"


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate_extracts(tmp_path_factory.mktemp("data"), people=3000, seed=11)


@pytest.fixture(scope="session")
def small_project(
    small_data: GeneratedData, tmp_path_factory: pytest.TempPathFactory
) -> LoadedProject:
    return load_project(
        DEMO_CONFIG, data_dir=small_data.out_dir, output_dir=tmp_path_factory.mktemp("out")
    )


@pytest.fixture(scope="session")
def small_run(small_project: LoadedProject, small_data: GeneratedData) -> RunResult:
    return run_project(small_project, ground_truth=small_data.ground_truth)

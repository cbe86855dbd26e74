"""Dagster resources: the linkage project and the engine it runs on.

Both are configurable from environment variables, so one code location is deployed
unchanged and pointed at a project file, landing folders and an output folder.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from linkage_models.project import LoadedProject, load_project
from pipelines.engine import Engine, open_engine


class LinkageProjectResource(dg.ConfigurableResource):
    """The linkage project YAML, with optional overrides of its data and output folders."""

    config_path: str
    data_dir: str | None = None
    output_dir: str | None = None

    def load(self) -> LoadedProject:
        return load_project(self.config_path, data_dir=self.data_dir, output_dir=self.output_dir)


class EngineResource(dg.ConfigurableResource):
    """Where the SQL runs. `duckdb` keeps a database file under OUT/work/."""

    engine: str = "duckdb"
    memory_limit: str | None = None  # default: output.duckdb_memory_limit in the project

    @contextmanager
    def open(self, project: LoadedProject) -> Iterator[Engine]:
        limit = self.memory_limit or project.spec.output.duckdb_memory_limit
        with open_engine(self.engine, Path(project.output_dir) / "work", memory_limit=limit) as e:
            yield e

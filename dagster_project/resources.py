"""Dagster resources: the linkage project, the Spark session, and the engine it runs on.

All are configurable from environment variables, so one code location is deployed
unchanged and pointed at a project file, landing folders, an output folder and a cluster.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import PrivateAttr

from linkage_models.project import LoadedProject, load_project
from pipelines.contract import OutputLayout, StageNotRun, load_record
from pipelines.engines import Engine, open_engine
from pipelines.engines.spark_engine import SparkSettings
from pipelines.publication import run_lock


class LinkageProjectResource(dg.ConfigurableResource):
    """The linkage project YAML, with optional overrides of its data and output folders.
    Loaded and validated once per run; every asset of the run shares it."""

    config_path: str
    data_dir: str | None = None
    output_dir: str | None = None
    _loaded: LoadedProject | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, project: LoadedProject) -> "LinkageProjectResource":
        """The resource for a project already loaded (it is not read again)."""
        resource = cls(
            config_path=str(project.config_path),
            data_dir=str(project.data_dir),
            output_dir=str(project.output_dir),
        )
        resource._loaded = project
        return resource

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self._loaded is None:
            self._loaded = load_project(
                self.config_path, data_dir=self.data_dir, output_dir=self.output_dir
            )

    @contextmanager
    def yield_for_execution(
        self, context: dg.InitResourceContext
    ) -> Iterator["LinkageProjectResource"]:
        """Every run holds its output folder for as long as it runs: two runs never write
        into one folder at once (the second waits output.wait_for_running_seconds, then
        fails with a message naming the folder)."""
        self.setup_for_execution(context)
        with run_lock(self.layout, self.configured.spec.output.wait_for_running_seconds):
            yield self

    @property
    def configured(self) -> LoadedProject:
        """The project as its file says (`balanced: auto` left unresolved)."""
        if self._loaded is None:
            self.setup_for_execution(dg.build_init_resource_context())
        assert self._loaded is not None
        return self._loaded

    @property
    def project(self) -> LoadedProject:
        """The project with the thresholds the latest model step recorded: a balanced
        threshold chosen with the model (`balanced: auto`) put in place."""
        project = self.configured
        if not project.spec.model.thresholds.chosen_with_model:
            return project
        try:
            model = load_record(self.layout, "train")
        except StageNotRun:
            return project
        return project.with_balanced_threshold((model.get("thresholds") or {}).get("balanced"))

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.configured.output_dir)


class SparkSessionResource(dg.ConfigurableResource):
    """How to reach Spark: a master URL (local[2], spark://, yarn, k8s://) or a Spark
    Connect endpoint (sc://host:port), extra conf, and where intermediate tables go.
    Defaults come from JOINEDUP_SPARK_* variables (see docs/spark.md)."""

    master: str = "local[2]"
    remote: str | None = None
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    break_lineage_method: str | None = None  # parquet locally, persist over Spark Connect
    checkpoint_dir: str | None = None
    tables_dir: str | None = None
    conf: dict[str, str] = {}

    @classmethod
    def from_env(cls) -> "SparkSessionResource":
        settings = SparkSettings.from_env()
        return cls(**{name: getattr(settings, name) for name in cls.model_fields})

    def settings(self) -> SparkSettings:
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return SparkSettings(**{**fields, "conf": dict(self.conf)})


class EngineResource(dg.ConfigurableResource):
    """Where the SQL runs: `duckdb` keeps a database file under OUT/secure/work/; `spark` uses the
    Spark session resource."""

    engine: str = "duckdb"
    memory_limit: str | None = None  # default: output.duckdb_memory_limit in the project
    spark: SparkSessionResource

    @contextmanager
    def open(self, project: LoadedProject) -> Iterator[Engine]:
        limit = self.memory_limit or project.spec.output.duckdb_memory_limit
        with open_engine(
            self.engine,
            OutputLayout(project.output_dir).work_dir,
            memory_limit=limit,
            spark=self.spark.settings(),
        ) as e:
            yield e

"""The Spark engine: the same SQL and Splink models on PySpark, locally or on a cluster.

Statements arrive in DuckDB's dialect and are transpiled (`pipelines.dialect`). Tables that
stages hand to each other are written as Parquet under a tables location (local by default;
`hdfs://`, `s3a://` or a shared mount on a cluster) and exposed as temporary views, so a later
process (another Dagster run) finds them again through a small catalog file under OUT/work/.
A file lock on that catalog keeps concurrent runs from interleaving, as DuckDB's file lock
does for the embedded engine.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import sqlglot
from sqlglot import exp

from linkage_models.project import CsvOptions
from pipelines.engines.base import MALFORMED_BYTES, MALFORMED_FIELDS, Engine, wait_for
from pipelines.engines.dialect import duckdb_to_spark

log = logging.getLogger(__name__)
# py4j logs every message it carries to and from the JVM at DEBUG, rows and schemas
# included: never, whatever level the rest of the process logs at.
logging.getLogger("py4j").setLevel(logging.WARNING)

BREAK_LINEAGE_METHODS = ("parquet", "persist", "checkpoint", "delta_lake_table")
# Rows per Parquet part file of a published output.
ROWS_PER_OUTPUT_FILE = 2_000_000
_CSV_ENCODINGS = {"utf-8": "UTF-8", "latin-1": "ISO-8859-1", "utf-16": "UTF-16"}


class SparkUnavailableError(RuntimeError):
    """Spark cannot start here (no Java): says what is missing."""


@dataclass(frozen=True)
class SparkSettings:
    """How to reach Spark. Every field can be set from a JOINEDUP_SPARK_* variable."""

    master: str = "local[2]"  # local[*], spark://host:7077, yarn, k8s://https://...
    remote: str | None = None  # Spark Connect, e.g. sc://host:15002 (instead of master)
    app_name: str = "joinedup"
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    # How Splink materialises its intermediate tables: parquet files under the checkpoint
    # directory by default; Spark Connect needs "persist".
    break_lineage_method: str | None = None
    checkpoint_dir: str | None = None  # default OUT/work/spark/checkpoints
    tables_dir: str | None = None  # default OUT/work/spark/tables
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        method = self.break_lineage_method
        if method is not None and method not in BREAK_LINEAGE_METHODS:
            raise ValueError(
                f"JOINEDUP_SPARK_BREAK_LINEAGE / break_lineage_method: {method!r} is not one "
                f"of {list(BREAK_LINEAGE_METHODS)}"
            )

    @property
    def lineage_method(self) -> str:
        return self.break_lineage_method or ("persist" if self.remote else "parquet")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SparkSettings:
        """JOINEDUP_SPARK_MASTER, _REMOTE, _DRIVER_MEMORY, _SHUFFLE_PARTITIONS,
        _BREAK_LINEAGE, _CHECKPOINT_DIR, _TABLES_DIR, and _CONF as JSON or k=v;k=v."""
        env = dict(os.environ if env is None else env)
        base = cls()

        def get(key: str, default: Any) -> Any:
            value = env.get(f"JOINEDUP_SPARK_{key}", "").strip()
            return value or default

        partitions = get("SHUFFLE_PARTITIONS", str(base.shuffle_partitions))
        if not str(partitions).isdigit():
            raise ValueError(
                f"JOINEDUP_SPARK_SHUFFLE_PARTITIONS: expected a whole number, got {partitions!r}"
            )
        return cls(
            master=get("MASTER", base.master),
            remote=get("REMOTE", None),
            driver_memory=get("DRIVER_MEMORY", base.driver_memory),
            shuffle_partitions=int(partitions),
            break_lineage_method=get("BREAK_LINEAGE", None),
            checkpoint_dir=get("CHECKPOINT_DIR", None),
            tables_dir=get("TABLES_DIR", None),
            conf=parse_conf(get("CONF", "")),
        )


def parse_conf(text: str) -> dict[str, str]:
    """Extra Spark conf from an env var: a JSON object, or `key=value` pairs split by ';'."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"JOINEDUP_SPARK_CONF: not valid JSON ({exc.msg})") from None
        return {str(k): str(v) for k, v in parsed.items()}
    conf = {}
    for pair in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"JOINEDUP_SPARK_CONF: expected key=value, got {pair!r}")
        conf[key.strip()] = value.strip()
    return conf


def spark_session(
    settings: SparkSettings, checkpoint_dir: str, warehouse_dir: str | None = None
) -> Any:
    """Get or create the SparkSession, with Splink's similarity UDF jar on the classpath.

    Settings only take effect when this process creates the session; a session that
    already exists (a notebook's, a test fixture's) is reused as it is.
    """
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    # A JVM starts here unless the session is a remote Spark Connect server; remote "local"
    # (e.g. local[2]) starts a Spark Connect server in this process, for trying Connect out.
    local_jvm = not settings.remote or settings.remote.startswith("local")
    if local_jvm and not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise SparkUnavailableError(
            "the Spark engine needs Java 17 or later: none found (set JAVA_HOME or put java "
            "on PATH), or point JOINEDUP_SPARK_REMOTE at a Spark Connect server"
        )

    builder = SparkSession.builder.appName(settings.app_name)
    conf = {
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.adaptive.enabled": "true",
        # Not a spark-warehouse folder in whatever directory the process started in.
        "spark.sql.warehouse.dir": warehouse_dir or f"{checkpoint_dir.rstrip('/')}-warehouse",
        **settings.conf,
    }
    if local_jvm:
        jars = [similarity_jar_location(), *filter(None, conf.pop("spark.jars", "").split(","))]
        conf.update(
            {
                "spark.jars": ",".join(dict.fromkeys(jars)),
                "spark.driver.memory": settings.driver_memory,
                "spark.ui.showConsoleProgress": "false",
            }
        )
    if settings.remote:
        builder = builder.remote(settings.remote)
    else:
        builder = builder.master(settings.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if not settings.remote:
        session.sparkContext.setLogLevel("ERROR")  # warnings otherwise flood the console
    if not settings.remote and settings.lineage_method in ("parquet", "checkpoint"):
        session.sparkContext.setCheckpointDir(checkpoint_dir)
    return session


# Per SparkSession (by id): table name -> Parquet path its temporary view reads.
_SESSION_VIEWS: dict[int, dict[str, str]] = {}


@lru_cache(maxsize=4096)
def tables_named(sql: str) -> tuple[str, ...]:
    """The tables a DuckDB-dialect statement reads or writes (lower case)."""
    return tuple(
        {t.name.lower() for t in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Table)}
    )


def _with_row_numbers(frame: Any, column: str) -> Any:
    """Each row's 1-based position in the file, computed in parallel: file splits are read
    in order, and monotonically_increasing_id is (split << 33) + position in the split, so
    the position is the rows of earlier splits plus the position within its own."""
    from pyspark.sql import functions as F

    ids = frame.withColumn("__split", F.spark_partition_id()).withColumn(
        "__id", F.monotonically_increasing_id()
    )
    counts = sorted(
        (row["__split"], row["n"])
        for row in ids.groupBy("__split").count().withColumnRenamed("count", "n").collect()
    )
    offsets, total = [], 0
    for split, n in counts:
        offsets.append((split, total))
        total += n
    offset_frame = frame.sparkSession.createDataFrame(
        offsets or [(0, 0)], "__split INT, __offset LONG"
    )
    within_split = F.col("__id").bitwiseAND(F.lit((1 << 33) - 1))
    return (
        ids.join(F.broadcast(offset_frame), "__split")
        .withColumn(column, F.col("__offset") + within_split + 1)
        .drop("__split", "__id", "__offset")
    )


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://"))


class SparkEngine(Engine):
    """Tables as Parquet under `tables_dir`, known to later processes through a catalog."""

    name = "spark"

    def __init__(
        self,
        spark: Any,
        work_dir: Path,
        settings: SparkSettings | None = None,
        *,
        lock_timeout_seconds: float = 1800,
    ):
        self.spark = spark
        self.settings = settings or SparkSettings()
        work_dir.mkdir(parents=True, exist_ok=True)
        self.tables_dir = self.settings.tables_dir or str(work_dir / "spark" / "tables")
        self._catalog_path = work_dir / "spark" / "catalog.json"
        self._catalog_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock: str | None = _acquire_lock(
            work_dir / "spark" / "catalog.lock", lock_timeout_seconds
        )
        self._catalog: dict[str, str] = (
            json.loads(self._catalog_path.read_text()) if self._catalog_path.exists() else {}
        )
        # Views are registered when a statement first names them (opening stays cheap).
        self._views: dict[str, str] = _SESSION_VIEWS.setdefault(id(self.spark), {})
        # The working views this engine made (create_view). The session may hold other
        # temporary views, of another project or of Splink: they are not this project's.
        self._own_views: set[str] = set()

    @classmethod
    def open(cls, work_dir: Path, settings: SparkSettings) -> SparkEngine:
        checkpoints = settings.checkpoint_dir or str(work_dir / "spark" / "checkpoints")
        settings = replace(settings, checkpoint_dir=checkpoints)
        warehouse = str(work_dir / "spark" / "warehouse")
        return cls(spark_session(settings, checkpoints, warehouse), work_dir, settings)

    # --- statements ----------------------------------------------------------------------

    def execute(self, sql: str) -> None:
        """A DuckDB-dialect statement. CREATE TABLE AS and DROP TABLE go to the Parquet
        catalog; anything else runs as transpiled Spark SQL."""
        tree = sqlglot.parse_one(sql, read="duckdb")
        if isinstance(tree, exp.Drop) and tree.args.get("kind") in ("TABLE", "VIEW"):
            for table in tree.args.get("tables") or [tree.this]:
                self.drop_table(table.name)
        elif isinstance(tree, exp.Create) and isinstance(tree.expression, exp.Query):
            name = tree.this.name
            if tree.args.get("exists") and self.table_exists(name):
                return
            self.create_table(name, tree.expression.sql(dialect="duckdb"))
        else:
            self._sql(sql)

    def _sql(self, sql: str) -> Any:
        """A DuckDB-dialect statement as a Spark DataFrame, the tables it names registered."""
        self._ensure_views(tables_named(sql))
        return self.spark.sql(duckdb_to_spark(sql))

    def _ensure_views(self, names: Iterable[str]) -> None:
        """Temporary views for catalog tables this session has not seen at their current
        version (another process may have replaced a table since)."""
        for name in names:
            path = self._catalog.get(name)
            if path is not None and self._views.get(name) != path:
                self.spark.read.parquet(path).createOrReplaceTempView(name)
                self._views[name] = path

    def create_table(self, name: str, select_sql: str) -> None:
        self._store(name, self._sql(select_sql))

    def create_view(self, name: str, select_sql: str) -> None:
        """A temporary view of this session (a step's own working view)."""
        self._sql(select_sql).createOrReplaceTempView(name.lower())
        self._views.pop(name.lower(), None)
        self._own_views.add(name.lower())

    def drop_view(self, name: str) -> None:
        self.drop_table(name)  # a view here is the session's temporary view of that name

    def _store(self, name: str, frame: Any) -> None:
        key = name.lower()
        path = f"{self.tables_dir.rstrip('/')}/{key}/{uuid.uuid4().hex}"
        frame.write.mode("error").parquet(path)
        old = self._catalog.get(key)
        self._catalog[key] = path
        self._save_catalog()
        self._ensure_views([key])
        if old:
            self._remove_path(old)

    def _save_catalog(self) -> None:
        tmp = self._catalog_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._catalog, indent=1, sort_keys=True))
        tmp.replace(self._catalog_path)

    def _remove_path(self, path: str) -> None:
        if _is_local(path):
            shutil.rmtree(_local(path), ignore_errors=True)
            return
        try:  # through Hadoop's FileSystem, when the JVM is reachable (not Spark Connect)
            jvm = self.spark._jvm
            hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
            fs = hadoop_path.getFileSystem(self.spark._jsc.hadoopConfiguration())
            fs.delete(hadoop_path, True)
        except Exception:  # leave it: a stale version wastes space but is never read
            log.warning("could not remove the superseded table version at %s", path)

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._sql(sql).collect()]

    def fetch_df(self, sql: str) -> pd.DataFrame:
        return self._sql(sql).toPandas()

    def columns(self, table: str) -> list[str]:
        self._ensure_views([table.lower()])
        return list(self.spark.table(table).columns)

    def table_exists(self, name: str) -> bool:
        """A table of this project's catalog, or a view this engine made; never a temporary
        view the shared session holds for someone else."""
        return name.lower() in self._catalog or name.lower() in self._own_views

    def drop_table(self, name: str) -> None:
        key = name.lower()
        self.spark.catalog.dropTempView(key)
        self._views.pop(key, None)
        self._own_views.discard(key)
        old = self._catalog.pop(key, None)
        if old:
            self._save_catalog()
            self._remove_path(old)

    # --- files and frames ----------------------------------------------------------------

    def _csv(self, csv: CsvOptions | None) -> Any:
        opts = csv or CsvOptions()
        return (
            self.spark.read.option("header", True)
            .option("sep", opts.delimiter)
            .option("quote", opts.quote)
            .option("escape", opts.quote)
            .option("encoding", _CSV_ENCODINGS.get(opts.encoding, opts.encoding))
            # A quoted field may hold a newline (as DuckDB reads it); each file is then read
            # by one task, deliveries in parallel.
            .option("multiLine", True)
        )

    def register_file(
        self, view: str, path: str, file_format: str, csv: CsvOptions | None = None
    ) -> None:
        """A temporary view over a CSV (every column as text) or Parquet file, read by
        Spark's own readers."""
        if file_format == "csv":
            frame = self._csv(csv).option("mode", "FAILFAST").csv(path)
        else:
            frame = self.spark.read.parquet(path)
        frame.createOrReplaceTempView(view)

    def register_delivery(
        self, view: str, path: str, file_format: str, csv: CsvOptions | None = None
    ) -> None:
        """Spark's PERMISSIVE mode keeps a row with the wrong number of fields in a corrupt-
        record column; bytes not valid in the encoding are decoded as U+FFFD, which no
        delivered name, date or code holds, so a row holding one is malformed too."""
        from pyspark.sql import functions as F
        from pyspark.sql.types import StringType, StructField, StructType

        if file_format != "csv":
            frame = _with_row_numbers(self.spark.read.parquet(path), "_row_number")
            frame.withColumn("_malformed", F.lit(None).cast("string")).createOrReplaceTempView(view)
            return
        header = self._csv(csv).csv(path).columns
        corrupt = "__corrupt_record"
        schema = StructType(
            [StructField(c, StringType()) for c in header] + [StructField(corrupt, StringType())]
        )
        frame = (
            self._csv(csv)
            .schema(schema)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", corrupt)
            .csv(path)
        )
        frame = _with_row_numbers(frame, "_row_number")
        undecodable = F.concat_ws("", *[F.col(f"`{c}`") for c in header]).contains("\ufffd")
        malformed = (
            F.when(F.col(corrupt).isNotNull(), F.lit(MALFORMED_FIELDS))
            .when(undecodable, F.lit(MALFORMED_BYTES))
            .otherwise(F.lit(None).cast("string"))
        )
        frame = frame.withColumn("_malformed", malformed)
        frame.select(
            *[F.when(F.col("_malformed").isNull(), F.col(f"`{c}`")).alias(c) for c in header],
            "_row_number",
            "_malformed",
        ).createOrReplaceTempView(view)

    def load_frame(self, name: str, frame: pd.DataFrame) -> None:
        """A pandas frame as a table; a column with no values at all becomes text."""
        empty = [c for c in frame.columns if frame[c].isna().all()]
        self._store(name, self.spark.createDataFrame(frame.astype(dict.fromkeys(empty, "string"))))

    def write_parquet(self, select_sql: str, path: Path) -> None:
        """A directory of Parquet part files (Spark's layout), at most ~2M rows per file;
        row order is kept when the SELECT sorts. Computed once: adaptive execution merges
        small partitions, so a small output is one file without counting it first."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():  # an earlier DuckDB run wrote a single file here
            path.unlink()
        self._sql(select_sql).write.mode("overwrite").options(
            compression="zstd", maxRecordsPerFile=ROWS_PER_OUTPUT_FILE
        ).parquet(str(path))

    # --- Splink and housekeeping -----------------------------------------------------------

    def splink_api(self) -> Any:
        """Splink's SparkAPI; every catalog table is registered first, since Splink's own SQL
        names them directly."""
        from splink import SparkAPI

        self._ensure_views(list(self._catalog))
        return SparkAPI(
            spark_session=self.spark,
            break_lineage_method=self.settings.lineage_method,
            num_partitions_on_repartition=max(2, self.settings.shuffle_partitions),
        )

    def validation_frames(self, select_sql: str, batch_rows: int) -> Iterator[Any]:
        """The whole delivery as one Spark DataFrame: GX computes the metrics on Spark."""
        yield self._sql(select_sql)

    def gx_datasource(self, context: Any) -> Any:
        return context.data_sources.add_or_update_spark("joinedup_spark")

    def versions(self) -> dict[str, str]:
        import pyspark

        return {"spark": str(self.spark.version), "pyspark": pyspark.__version__}

    def close(self) -> None:
        """Releases the catalog lock; the SparkSession stays up for the process."""
        if self._lock is not None:
            _release_lock(self._lock)
            self._lock = None


# Lock files this process holds -> [handle, how many engines use it]: engines opened while
# another is open in the same process share the lock instead of waiting on themselves.
_HELD: dict[str, list[Any]] = {}


def _release_lock(key: str) -> None:
    held = _HELD[key]
    held[1] -= 1
    if held[1] == 0:
        fcntl.flock(held[0], fcntl.LOCK_UN)
        held[0].close()
        del _HELD[key]


def _acquire_lock(path: Path, timeout: float) -> str:
    """One process at a time works on a project's Spark tables; others wait their turn."""
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    handle = open(path, "w")  # noqa: SIM115 - held until released

    def attempt() -> str | None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        _HELD[key] = [handle, 1]
        return key

    try:
        return wait_for(attempt, timeout, f"{path}: the Spark tables of this output folder")
    except TimeoutError:
        handle.close()
        raise

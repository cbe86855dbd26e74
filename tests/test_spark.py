"""The Spark engine: the same project on Spark local[2] gives the same linkage as DuckDB.

The standardisation, ingest/quarantine and validation tests also run on both engines (the
`any_engine` fixture); this module compares whole runs. Select with `-m spark`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from dagster_project.linkage import input_tables
from linkage_models import linkage
from linkage_models.project import LoadedProject, load_project
from pipelines.contract import OutputLayout
from pipelines.engines import DuckDBEngine
from pipelines.engines.dialect import DialectError, duckdb_to_spark, java_date_pattern
from pipelines.engines.spark_engine import SparkEngine, SparkSettings, parse_conf
from pipelines.run import ProjectGraph, RunResult, run_project
from pipelines.synthetic import GeneratedData

from .conftest import SPARK_TEST_SETTINGS
from .helpers import REPO, published

# On the test data u is counted over every pair (conftest's test_config) and EM sees the
# same pairs on both engines: the models differ only where the engines' Jaro-Winkler
# functions do (measured: 0.0085 bits at most). A block whose match rate one engine fixed
# and the other left free moved household m by 0.0047 and its weight by 0.93 bits.
MAX_WEIGHT_DIFFERENCE_BITS = 0.05
MAX_M_DIFFERENCE = 0.001


@pytest.fixture(scope="session")
def spark_project(
    small_data: GeneratedData, test_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    return load_project(
        test_config,
        data_dir=small_data.out_dir,
        output_dir=tmp_path_factory.mktemp("spark_out"),
    )


@pytest.fixture(scope="session")
def spark_run(spark: Any, spark_project: LoadedProject, small_data: GeneratedData) -> RunResult:
    return run_project(spark_project, engine_name="spark", ground_truth=small_data.ground_truth)


def _model(run: RunResult) -> dict[str, Any]:
    return json.loads((run.output_dir / run.manifest["model"]["path"]).read_text())


def _members(run: RunResult, column: str) -> pd.Series:
    """Per record, the set of records in its cluster (ids differ in meaning across runs)."""
    lookup = pd.read_parquet(published(run.output_dir).person_lookup)
    lookup["key"] = lookup["source_dataset"] + "|" + lookup["source_record_id"]
    members = lookup.groupby(column)["key"].agg(frozenset)
    return lookup.set_index("key")[column].map(members)


@pytest.mark.spark
def test_trained_parameters_agree_with_duckdb(small_run: RunResult, spark_run: RunResult) -> None:
    duck, spark = _model(small_run), _model(spark_run)
    assert math.isclose(
        duck["probability_two_random_records_match"],
        spark["probability_two_random_records_match"],
        rel_tol=1e-9,
    )
    for cd, cs in zip(duck["comparisons"], spark["comparisons"], strict=True):
        for ld, ls in zip(cd["comparison_levels"], cs["comparison_levels"], strict=True):
            if "m_probability" not in ld:
                continue
            label = f"{cd['output_column_name']}: {ld.get('label_for_charts')}"
            assert abs(ld["m_probability"] - ls["m_probability"]) <= MAX_M_DIFFERENCE, label
            weight_d = math.log2(ld["m_probability"] / ld["u_probability"])
            weight_s = math.log2(ls["m_probability"] / ls["u_probability"])
            assert abs(weight_d - weight_s) <= MAX_WEIGHT_DIFFERENCE_BITS, label


@pytest.mark.spark
@pytest.mark.parametrize(
    "column", ["person_id_high_precision", "person_id", "person_id_high_recall"]
)
def test_person_lookups_agree_with_duckdb(
    small_run: RunResult, spark_run: RunResult, column: str
) -> None:
    """On the test project every record is in an identical cluster on both engines (the
    README's promise), even though each engine trains its own model."""
    duck, spark = _members(small_run, column), _members(spark_run, column)
    assert set(duck.index) == set(spark.index)
    differs = duck != spark.reindex(duck.index)
    assert not differs.any(), f"{column}: {differs.sum()} records in different clusters"


@pytest.mark.spark
def test_spark_run_reconciles_and_publishes_parquet_without_identifiers(
    spark_run: RunResult, small_run: RunResult
) -> None:
    m = spark_run.manifest
    assert m["engine"] == "spark" and m["versions"]["spark"].startswith("4.")
    assert m["reconciliation"]["reconciles"]
    assert m["reconciliation"]["rows_in"] == small_run.manifest["reconciliation"]["rows_in"]
    assert (
        m["reconciliation"]["rows_quarantined"]
        == small_run.manifest["reconciliation"]["rows_quarantined"]
    )
    lookup_dir = published(spark_run.output_dir).person_lookup
    assert lookup_dir.is_dir() and list(lookup_dir.glob("part-*.parquet"))
    for name in ("person_lookup", "events"):
        columns = set(
            pd.read_parquet(published(spark_run.output_dir).linked_dir / f"{name}.parquet").columns
        )
        assert not columns & {"given_name", "family_name", "date_of_birth", "postcode"}
    balanced = m["measured_accuracy"]["balanced"]
    assert balanced["precision"] >= 0.99 and balanced["recall"] >= 0.97
    assert (published(spark_run.output_dir).linkage_report).exists()


@pytest.mark.spark
def test_scoring_and_clustering_again_gives_the_same_person_ids(
    spark: Any, spark_run: RunResult, spark_project: LoadedProject
) -> None:
    """A relink of the same deliveries with the approved model publishes the same persons
    under the same ids (carried forward from the previous publication's identity store,
    written by Spark as folders of part files)."""
    layout = published(spark_run.output_dir).at(spark_run.snapshot)
    before = pd.read_parquet(layout.person_lookup)
    ProjectGraph(spark_project, "spark").run_or_raise("relink")
    current = published(spark_run.output_dir)
    assert current.snapshot != spark_run.snapshot
    after = pd.read_parquet(current.person_lookup)
    identity = json.loads(current.exact_manifest.read_text())["identity"]
    assert identity["previous_snapshot"] == spark_run.snapshot
    assert identity["churn"]["balanced"]["records_moved"] == 0
    keys = ["source_dataset", "source_record_id"]
    pd.testing.assert_frame_equal(
        before.sort_values(keys).reset_index(drop=True),
        after.sort_values(keys).reset_index(drop=True),
    )


# Comparisons with Jaro-Winkler levels: the only place the engines' functions differ.
JARO_WINKLER_COMPARISONS = ("gamma_given_name", "gamma_household")
GAMMAS = (*JARO_WINKLER_COMPARISONS, "gamma_middle_names", "gamma_date_of_birth", "gamma_sex")


def _scores(engine: Any, table: str) -> pd.DataFrame:
    """Match weight and comparison levels by pair (each pair's two records in a fixed order)."""
    frame = engine.fetch_df(
        "SELECT source_dataset_l || '|' || record_id_l AS a, "
        f"source_dataset_r || '|' || record_id_r AS b, match_weight, {', '.join(GAMMAS)} "
        f"FROM {table}"
    )
    first, second = frame[["a", "b"]].min(axis=1), frame[["a", "b"]].max(axis=1)
    return frame.assign(a=first, b=second).set_index(["a", "b"]).sort_index()


def _assert_scored_alike(on_spark: pd.DataFrame, on_duckdb: pd.DataFrame) -> None:
    """The same pairs, the same weights but for a few Jaro-Winkler level differences."""
    assert on_spark.index.equals(on_duckdb.index)
    differs = (on_spark.match_weight - on_duckdb.match_weight).abs() > 1e-6
    assert differs.mean() <= 0.002, f"{differs.sum()} of {len(differs)} pairs scored differently"
    levels_differ = on_spark[list(GAMMAS)].ne(on_duckdb[list(GAMMAS)])
    assert not levels_differ.drop(columns=list(JARO_WINKLER_COMPARISONS)).any().any()
    assert levels_differ[differs].any(axis=1).all()  # every difference is a level difference


@pytest.mark.spark
def test_a_project_never_takes_another_projects_tables_for_its_own(
    spark: Any, tmp_path: Path
) -> None:
    """Two projects in one Spark session (one Dagster process): a table one of them made
    is not there for the other, though the session holds its temporary view."""
    with SparkEngine(spark, tmp_path / "one", SPARK_TEST_SETTINGS) as one:
        one.create_table("accepted_prisons", "SELECT 1 AS record_id")
        one.create_view("__working_view", "SELECT 2 AS record_id")
        assert one.table_exists("accepted_prisons") and one.table_exists("__working_view")
    with SparkEngine(spark, tmp_path / "other", SPARK_TEST_SETTINGS) as other:
        assert not other.table_exists("accepted_prisons")
        assert not other.table_exists("__working_view")
        other.create_table("accepted_prisons", "SELECT 3 AS record_id")
        assert other.fetch("SELECT record_id FROM accepted_prisons") == [(3,)]
    with SparkEngine(spark, tmp_path / "one", SPARK_TEST_SETTINGS) as again:
        assert again.fetch("SELECT record_id FROM accepted_prisons") == [(1,)]
        again.drop_table("accepted_prisons")
        assert not again.table_exists("accepted_prisons")


@pytest.mark.spark
def test_a_model_trained_on_duckdb_scores_the_same_pairs_alike_on_spark(
    spark: Any,
    spark_run: RunResult,
    spark_project: LoadedProject,
    small_run: RunResult,
    small_project: LoadedProject,
) -> None:
    """Given one model (its SQL rebuilt for Spark's dialect when loaded there), the engines
    score the same pairs with the same weights, except where their Jaro-Winkler functions
    differ: DuckDB rounds the Jaro transposition count down, Splink's Spark jar does not
    (valerie/valrie: 0.928 on DuckDB, 0.908 on Spark), so a few pairs fall one level apart."""
    duck_model = _model(small_run)
    assert duck_model["sql_dialect"] == "duckdb"
    work = published(spark_project.output_dir).work_dir
    with SparkEngine(spark, work, SPARK_TEST_SETTINGS) as engine:
        linker = linkage.make_linker(
            engine.splink_api(),
            input_tables(OutputLayout(spark_project.output_dir)),
            spark_project.spec,
            duck_model,
        )
        on_spark = _scores(engine, linkage.predict(linker).table)
    with DuckDBEngine(published(small_project.output_dir).work_dir / "joinedup.duckdb") as duck:
        on_duckdb = _scores(duck, "pairwise_predictions")
    _assert_scored_alike(on_spark, on_duckdb)


@pytest.mark.spark
def test_a_model_trained_on_spark_scores_the_same_pairs_alike_on_duckdb(
    spark: Any,
    spark_run: RunResult,
    spark_project: LoadedProject,
    small_project: LoadedProject,
    tmp_path: Path,
) -> None:
    """The other way round: Spark's saved model (Spark SQL) rebuilt for DuckDB."""
    spark_model = _model(spark_run)
    assert spark_model["sql_dialect"] == "spark"
    database = tmp_path / "copy.duckdb"  # the shared run's database is left as it was
    shutil.copy(published(small_project.output_dir).work_dir / "joinedup.duckdb", database)
    with DuckDBEngine(database) as duck:
        linker = linkage.make_linker(
            duck.splink_api(),
            input_tables(OutputLayout(small_project.output_dir)),
            small_project.spec,
            spark_model,
        )
        on_duckdb = _scores(duck, linkage.predict(linker).table)
    work = published(spark_project.output_dir).work_dir
    with SparkEngine(spark, work, SPARK_TEST_SETTINGS) as engine:
        on_spark = _scores(engine, "pairwise_predictions")
    _assert_scored_alike(on_spark, on_duckdb)


CONNECT_SCRIPT = """
import json, sys
from pathlib import Path
from linkage_models import linkage
from linkage_models.project import load_project
from pipelines.deliveries import deliveries_for_linkage, discover_deliveries, set_status
from pipelines.engines.spark_engine import SparkEngine, SparkSettings
from pipelines.ingest import ingest
from pipelines.standardise import build_linkage_input, standardise_delivery
from quality.quarantine import combine_and_quarantine
from quality.validation import validate_delivery

config, data_dir, out, model_path = sys.argv[1:]
project = load_project(config, data_dir=data_dir, output_dir=out)
source = project.spec.source("magistrates_courts")
# Sort-merge joins: a broadcast can run the in-process Connect server out of memory.
settings = SparkSettings(
    remote="local[2]", shuffle_partitions=4, driver_memory="4g",
    conf={"spark.sql.autoBroadcastJoinThreshold": "-1"},
)
with SparkEngine.open(Path(out) / "work", settings) as engine:
    assert engine.settings.lineage_method == "persist"
    for delivery in discover_deliveries(project, source):
        ingest(engine, source, delivery)
        outcome = validate_delivery(
            engine, source, delivery.key, delivery.raw_table, Path(out) / "quality"
        )
        assert outcome.success
        set_status(engine, delivery, "accepted")
        standardise_delivery(engine, source, delivery)
    tables, _ = deliveries_for_linkage(engine, source.name)
    result = combine_and_quarantine(engine, source, tables, Path(out) / "quarantine.parquet")
    table = build_linkage_input(engine, project.spec, source.name, result.accepted_table)
    model = json.loads(Path(model_path).read_text())
    db_api = engine.splink_api()
    linker = linkage.make_linker(db_api, {source.name: table}, project.spec, model)
    predictions = linkage.predict(linker)
    clusters = linkage.cluster_at_thresholds(
        linker, db_api, predictions.table, {"balanced": 0.99}
    )
    print(json.dumps({
        "records": engine.count(table),
        "pairs": engine.count(predictions.table),
        "persons": engine.fetch(
            f"SELECT count(DISTINCT cluster_id) FROM {clusters['balanced']}"
        )[0][0],
    }))
"""


@pytest.mark.spark
def test_spark_connect_runs_the_stages_and_splink(
    small_run: RunResult, small_project: LoadedProject, tmp_path: Path
) -> None:
    """Over Spark Connect (a local Connect server, in its own process: a process has one
    kind of session): Spark readers, GX's Spark datasource, the Parquet table catalog and
    Splink with break_lineage_method="persist" all work through the Connect client."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CONNECT_SCRIPT,
            str(small_project.config_path),
            str(small_project.data_dir),
            str(tmp_path / "out"),
            str(small_run.output_dir / small_run.manifest["model"]["path"]),
        ],
        cwd=REPO,
        # PySpark's own switch for tests: the local Connect server binds an ephemeral port,
        # so a server left over from another run on 15002 cannot make this one fail.
        env={**os.environ, "SPARK_TESTING": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    with DuckDBEngine(published(small_project.output_dir).work_dir / "joinedup.duckdb") as duck:
        records, pairs = duck.fetch(
            "SELECT (SELECT count(*) FROM linkage_input_magistrates_courts), "
            "(SELECT count(*) FROM pairwise_predictions "
            "WHERE source_dataset_l = 'magistrates_courts' "
            "AND source_dataset_r = 'magistrates_courts')"
        )[0]
    assert (result["records"], result["pairs"]) == (records, pairs)
    assert 0 < result["persons"] < records


# --- fast checks of the pieces (no Spark session) ----------------------------------------


def test_date_formats_become_java_patterns() -> None:
    assert java_date_pattern("%d/%m/%Y") == "dd/MM/yyyy"
    assert java_date_pattern("%Y%m%d") == "yyyyMMdd"
    assert java_date_pattern("%d-%b-%Y") == "dd-MMM-yyyy"
    assert java_date_pattern("%Y-%m-%dT%H:%M:%S") == "yyyy-MM-dd'T'HH:mm:ss"
    with pytest.raises(DialectError, match="%j"):
        java_date_pattern("%Y-%j")


def test_duckdb_sql_is_transpiled_for_spark() -> None:
    sql = duckdb_to_spark(
        "SELECT try_strptime(d, '%d/%m/%Y'), list_contains(string_split(n, ' '), 'x') FROM t"
    )
    assert "TRY_TO_TIMESTAMP(d, 'dd/MM/yyyy')" in sql
    assert "ARRAY_CONTAINS(SPLIT(n" in sql and "STRPTIME" not in sql


def test_spark_settings_from_environment() -> None:
    settings = SparkSettings.from_env(
        {
            "JOINEDUP_SPARK_MASTER": "spark://head:7077",
            "JOINEDUP_SPARK_SHUFFLE_PARTITIONS": "400",
            "JOINEDUP_SPARK_CONF": "spark.executor.memory=8g; spark.executor.cores=4",
            "JOINEDUP_SPARK_TABLES_DIR": "hdfs:///joinedup/tables",
        }
    )
    assert settings.master == "spark://head:7077" and settings.shuffle_partitions == 400
    assert settings.conf == {"spark.executor.memory": "8g", "spark.executor.cores": "4"}
    assert settings.lineage_method == "parquet"
    connect = SparkSettings.from_env({"JOINEDUP_SPARK_REMOTE": "sc://spark:15002"})
    assert connect.lineage_method == "persist"  # Splink over Spark Connect
    assert parse_conf('{"spark.sql.shuffle.partitions": 64}') == {
        "spark.sql.shuffle.partitions": "64"
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOINEDUP_SPARK_SHUFFLE_PARTITIONS": "many"}, "JOINEDUP_SPARK_SHUFFLE_PARTITIONS"),
        ({"JOINEDUP_SPARK_CONF": "spark.executor.memory"}, "expected key=value"),
        ({"JOINEDUP_SPARK_CONF": "{not json"}, "not valid JSON"),
        ({"JOINEDUP_SPARK_BREAK_LINEAGE": "magic"}, "JOINEDUP_SPARK_BREAK_LINEAGE"),
    ],
)
def test_bad_spark_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparkSettings.from_env(env)

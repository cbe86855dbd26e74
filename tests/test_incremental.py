"""Incremental linkage of new, corrected and withdrawn deliveries: only what changed is
scored and reclustered, the result is what a full relink gives, and ids carry forward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pandas as pd
import pytest

from dagster_project.definitions import build_definitions
from dagster_project.linkage import input_tables, model_path
from linkage_models.linkage import PREDICTION_FLOOR
from linkage_models.project import LoadedProject, load_project
from pipelines.blocking_reach import pairs_never_blocked_in_persons, rule_records
from pipelines.contract import (
    LINK_DELIVERIES_JOB,
    PERSON_ID_COLUMNS,
    THRESHOLDS,
    OutputLayout,
    Tables,
    ingest_job_name,
)
from pipelines.deliveries import withdraw_delivery
from pipelines.engines import DuckDBEngine
from pipelines.linking import blocking_rules, clustering_pairs
from pipelines.run import ProjectGraph, RunResult, run_project, train_project
from pipelines.synthetic import GeneratedData
from quality.error_rates import ComparedPairs, estimate_error_rates

from .test_persistent_ids import (
    at_snapshot,
    deliver,
    ledger_matches,
    lookup,
    monthly_project,
    unchanged_clusters_keep_their_ids,
)

KEY = ["source_dataset", "source_record_id"]
ID_COLUMNS_BY_THRESHOLD = ("person_id_high_precision", "person_id", "person_id_high_recall")


def members(frame: pd.DataFrame, column: str) -> set[frozenset[str]]:
    """The clusters of a lookup as sets of record keys (ids mean nothing across folders)."""
    keys = frame.source_dataset + "|" + frame.source_record_id
    return set(keys.groupby(frame[column]).agg(frozenset))


def rows(folder: Path, name: str) -> pd.DataFrame:
    path = folder / "data" / name
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


FILES = {
    "magistrates_courts": "magistrates_courts_2026-{:02d}.csv",
    "prisons": "prisons_2026-{:02d}.parquet",
}


def pairs_for_clustering(project: LoadedProject) -> dict[tuple[str, str], float]:
    """The pairs the last linkage could cluster, from its working database: each pair's two
    record keys in order, with its match probability."""
    database = OutputLayout(project.output_dir).work_dir / "joinedup.duckdb"
    keys = ("source_dataset_l || '|' || record_id_l", "source_dataset_r || '|' || record_id_r")
    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.execute(
            f"SELECT least({keys[0]}, {keys[1]}), greatest({keys[0]}, {keys[1]}), "
            f"match_probability FROM {clustering_pairs(project.spec)}"
        ).fetchall()
    return {(a, b): p for a, b, p in rows}


def stored_pair_rows(project: LoadedProject) -> list[tuple[str, str]]:
    """Every stored scored pair as it is stored: its left and right record keys, in the
    form Splink orders a pair's records by."""
    database = OutputLayout(project.output_dir).work_dir / "joinedup.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        return con.execute(
            "SELECT source_dataset_l || '-__-' || record_id_l, "
            f"source_dataset_r || '-__-' || record_id_r FROM {Tables.PAIRWISE_PREDICTIONS}"
        ).fetchall()


def working_objects(project: LoadedProject) -> dict[str, bool]:
    """Every table and view of the working database, and whether it can be read (a view
    over tables that are gone cannot)."""
    database = OutputLayout(project.output_dir).work_dir / "joinedup.duckdb"
    readable = {}
    with duckdb.connect(str(database), read_only=True) as con:
        names = con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database()"
        ).fetchall()
        for (name,) in names:
            try:
                con.execute(f'SELECT * FROM "{name}" LIMIT 0')
                readable[name] = True
            except duckdb.Error:
                readable[name] = False
    return readable


def never_blocked_pairs(engine: DuckDBEngine) -> set[tuple]:
    return set(engine.fetch(f"SELECT * FROM {Tables.PAIRS_NEVER_BLOCKED_IN_PERSONS}"))


def count_every_pair_again(project: LoadedProject) -> dict[str, Any]:
    """The last publication's error-rate estimates and never-blocked pairs as it kept them,
    and as counting every pair of its working database again gives them."""
    layout = OutputLayout(project.output_dir)
    with DuckDBEngine(layout.work_dir / "joinedup.duckdb") as engine:
        kept = never_blocked_pairs(engine)
        inputs = input_tables(layout)
        rules = blocking_rules(project, model_path(layout), inputs)
        pairs_never_blocked_in_persons(engine, rules, list(PERSON_ID_COLUMNS.values()))
        condition = rule_records(engine, "__recount_rule_records", rules)
        compared = ComparedPairs("__recount_rule_records", condition, PREDICTION_FLOOR)
        return {
            "never_blocked_kept": kept,
            "never_blocked": never_blocked_pairs(engine),
            "estimated": estimate_error_rates(engine, compared=compared),
        }


@pytest.fixture(scope="module")
def sequence(small_data: GeneratedData, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Month 1 linked in full; month 2 ingested and linked by the job the accepted-delivery
    sensor launches; month 3 linked incrementally from the command line; then one record of
    month 2 corrected and prisons' month 1 withdrawn, linked incrementally; then a full
    relink of the same deliveries (to compare with)."""
    folder = tmp_path_factory.mktemp("incremental")
    project = load_project(monthly_project(small_data, folder))
    instance = dg.DagsterInstance.ephemeral()
    deliver(folder, 1)
    results: dict[str, RunResult | dict] = {"month1": run_project(project, instance=instance)}

    deliver(folder, 2)
    graph = ProjectGraph(project, instance=instance)
    defs = build_definitions(project)
    sensor = defs.resolve_sensor_def("link_accepted_deliveries")
    requests = []
    for source, file in FILES.items():
        job = defs.resolve_job_def(ingest_job_name(source))
        instance.add_dynamic_partitions(job.partitions_def.name, [file.format(2)])
        ingest = graph.execute(job.name, partition=file.format(2))
        assert ingest.success
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=ingest.dagster_run,
            dagster_event=ingest.get_run_success_event(),
        )
        requests.append(sensor(context))
    results["requests"] = {"job": sensor.job_name, "run_config": requests[-1].run_config}
    linked = defs.resolve_job_def(LINK_DELIVERIES_JOB).execute_in_process(
        run_config=requests[-1].run_config, instance=instance
    )
    assert linked.success
    layout = OutputLayout(project.output_dir).published
    results["month2"] = RunResult(
        layout.root, layout.manifest, json.loads(layout.exact_manifest.read_text())
    )

    deliver(folder, 3)
    results["month3"] = run_project(project, instance=instance, incremental=True)
    results["month3_objects"] = working_objects(project)

    corrected = rows(folder, FILES["magistrates_courts"].format(2))
    corrected.loc[0, "defendant_name"] = "Corrected Name"
    corrected.to_csv(folder / "data" / FILES["magistrates_courts"].format(2), index=False)
    withdraw_delivery(project, "prisons", "prisons_2026-01.parquet", "retracted by its owner")
    results["changed"] = run_project(project, instance=instance, incremental=True)
    results["changed_pairs"] = pairs_for_clustering(project)
    results["changed_pair_rows"] = stored_pair_rows(project)
    results["changed_objects"] = working_objects(project)
    results["changed_recounted"] = count_every_pair_again(project)
    results["full"] = run_project(project, instance=instance)
    results["full_pairs"] = pairs_for_clustering(project)
    results["full_objects"] = working_objects(project)
    return {"folder": folder, "project": project, **results}


def test_the_accepted_delivery_sensor_links_incrementally(sequence: dict) -> None:
    assert sequence["requests"]["job"] == LINK_DELIVERIES_JOB
    month2 = sequence["month2"].manifest
    assert month2["linkage"]["linked"] == "incremental"
    change = month2["linkage"]["incremental"]
    assert change["previous_snapshot"] == sequence["month1"].snapshot
    delivered = sum(len(rows(sequence["folder"], file.format(2))) for file in FILES.values())
    linked = [sequence[m].manifest["reconciliation"]["rows_linked"] for m in ("month1", "month2")]
    # Every delivered row is new, but for rows quarantined (a re-delivered copy of a row).
    assert change["records_new_or_changed"] == linked[1] - linked[0]
    assert 0.99 * delivered <= change["records_new_or_changed"] <= delivered
    assert change["records_removed_or_changed"] == 0
    assert change["records_kept"] == sequence["month1"].manifest["reconciliation"]["rows_linked"]
    assert month2["reconciliation"]["reconciles"]


def test_incremental_months_keep_ids_and_the_ledger_agrees(sequence: dict) -> None:
    for before, after in (
        (sequence["month1"], sequence["month2"]),
        (sequence["month2"], sequence["month3"]),
    ):
        assert after.manifest["identity"]["previous_snapshot"] == before.snapshot
        unchanged_clusters_keep_their_ids(lookup(before), lookup(after))
        ledger_matches(lookup(before), lookup(after), after.manifest["identity"]["churn"])
    # Only the new records' pairs were scored, and each month's new records reclustered
    # with the clusters they touched, not everything.
    month3 = sequence["month3"].manifest
    change = month3["linkage"]["incremental"]
    assert change["new_pairs_scored"] < month3["pairs"]["scored"]
    for counts in month3["links"].values():
        assert change["records_new_or_changed"] <= counts["records_reclustered"]
        assert counts["records_reclustered"] < change["population"]
    report = at_snapshot(sequence["month3"]).linkage_report.read_text()
    assert "Linked <strong>incrementally</strong>" in report
    # Its diagnostics show the pairs of the records it added, as its predict step scored
    # them (with Splink's intermediate columns: the comparison viewer needs them).
    assert "(pairs of the records this linkage added)" in report
    assert (at_snapshot(sequence["month3"]).diagnostics_dir / "comparison_viewer.html").exists()
    # Each month's deliveries were added to what the previous publication had combined:
    # only the new files were read.
    for month in ("month2", "month3"):
        combined = sequence[month].manifest["linkage"]["deliveries_combined"]
        assert combined == dict.fromkeys(FILES, "added to the publication's")
    # Only the reclustered records' person ids were worked out again (the ledger above,
    # checked against the lookups, shows the result is whole).
    for month, recomputed in (
        ("month1", "every record"),
        ("month2", "reclustered records"),
        ("month3", "reclustered records"),
        ("changed", "reclustered records"),
        ("full", "every record"),
    ):
        identity = sequence[month].manifest["identity"]
        assert identity["ids_recomputed_for"] == recomputed, month
    reclustered = month3["links"]["balanced"]["records_reclustered"]
    assert sequence["month3"].manifest["identity"]["records_recomputed"] == 3 * reclustered


def test_a_corrected_record_and_a_withdrawn_delivery_are_taken_out(sequence: dict) -> None:
    before, after = sequence["month3"], sequence["changed"]
    change = after.manifest["linkage"]["incremental"]
    withdrawn = rows(sequence["folder"], FILES["prisons"].format(1))
    assert change["records_new_or_changed"] == 1
    assert change["records_removed_or_changed"] == len(withdrawn) + 1
    assert change["stored_pairs_dropped"] > 0
    later = lookup(after)
    gone = set(withdrawn.prisoner_ref)
    assert not gone & set(later[later.source_dataset == "prisons"].source_record_id)
    churn = after.manifest["identity"]["churn"]["balanced"]
    assert churn["by_source"]["prisons"]["records_withdrawn"] == len(withdrawn)
    ledger_matches(lookup(before), later, after.manifest["identity"]["churn"])
    assert after.manifest["reconciliation"]["reconciles"]
    # A replaced file and a withdrawn delivery: those sources are combined afresh.
    assert after.manifest["linkage"]["deliveries_combined"] == dict.fromkeys(FILES, "afresh")

    def counts(result: RunResult) -> dict:
        by_source = result.manifest["reconciliation"]["by_source"]
        return {
            n: {k: v for k, v in s.items() if k != "quarantine_file"} for n, s in by_source.items()
        }

    assert counts(after) == counts(sequence["full"])
    assert counts(sequence["month3"])["prisons"]["by_delivery"].keys() > (
        counts(after)["prisons"]["by_delivery"].keys()
    )


def test_incremental_estimates_count_again_only_the_pairs_of_what_changed(
    sequence: dict,
) -> None:
    """After each incremental linkage the error-rate estimates count again only the pairs
    of the records it reclustered or removed, keeping the rest from the publication it
    extended: the figures, and the never-blocked pairs inside persons, are those counting
    every pair of the same clusters gives. A full relink counts them all."""
    for month, before in (("month2", "month1"), ("month3", "month2"), ("changed", "month3")):
        counted = sequence[month].manifest["linkage"]["estimates_counted"]
        assert counted == {
            "pairs_of": "records reclustered or removed",
            "kept_from": sequence[before].snapshot,
        }, month
    full = sequence["full"].manifest["linkage"]["estimates_counted"]
    assert full == {"pairs_of": "all records", "kept_from": None}
    recounted = sequence["changed_recounted"]
    assert recounted["never_blocked_kept"] == recounted["never_blocked"]
    kept = sequence["changed"].manifest["estimated_error_rates"]
    for name in THRESHOLDS:
        again, extended = recounted["estimated"][name], kept[name]
        assert extended.keys() == again.keys()
        for key, value in again.items():
            if isinstance(value, float | list):  # summed in another order: rates to 6
                # places, expected pairs to 1
                rounding = 0.11 if "expected" in key else 2e-6
                assert extended[key] == pytest.approx(value, abs=rounding), (name, key)
            else:  # counts
                assert extended[key] == value, (name, key)


def test_each_run_reports_the_time_of_the_deliveries_it_added(sequence: dict) -> None:
    """The manifest's per-delivery stages are the deliveries ingested for this publication
    (one file per source each month; then only the corrected file), not every delivery the
    folder ever took; the linkage steps are this run's."""
    for month, files in (("month1", 2), ("month2", 2), ("month3", 2), ("changed", 1)):
        stages = sequence[month].manifest["stages"]
        for step in ("ingest", "validate", "standardise"):
            assert stages[step]["steps"] == files, (month, step)
        assert stages["predict"]["steps"] == 1
    # The full relink ingests and checks every delivery again (all but the withdrawn one).
    delivered = len(list((sequence["folder"] / "data").iterdir())) - 1
    assert sequence["full"].manifest["stages"]["validate"]["steps"] == delivered == 5


def components(records: set[str], links: list[tuple[str, str]]) -> set[frozenset[str]]:
    """Connected components of the records under the links (union-find)."""
    parent = {r: r for r in records}

    def root(r: str) -> str:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for a, b in links:
        parent[root(a)] = root(b)
    groups: dict[str, set[str]] = {}
    for r in records:
        groups.setdefault(root(r), set()).add(r)
    return {frozenset(g) for g in groups.values()}


def together(frame: pd.DataFrame, column: str) -> set[tuple[str, str]]:
    """Pairs of records a lookup puts in one person."""
    pairs = set()
    for group in members(frame, column):
        ordered = sorted(group)
        pairs |= {(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]}
    return pairs


def test_incremental_clusters_are_the_components_of_all_its_links(sequence: dict) -> None:
    """Recomputing only the touched clusters gives exactly the connected components of
    every pair the incremental state holds (stored and new), at each threshold."""
    result, pairs = sequence["changed"], sequence["changed_pairs"]
    frame = lookup(result)
    records = set(frame.source_dataset + "|" + frame.source_record_id)
    for name, column in zip(THRESHOLDS, ID_COLUMNS_BY_THRESHOLD, strict=True):
        p = result.manifest["thresholds"][name]
        links = [pair for pair, probability in pairs.items() if probability >= p]
        assert members(frame, column) == components(records, links), name


@pytest.mark.spark
def test_incremental_linkage_on_spark_gives_the_clusters_it_gives_on_duckdb(
    spark: Any, sequence: dict, small_data: GeneratedData, tmp_path: Path
) -> None:
    """The same two months on Spark, the second linked incrementally (its stored pairs
    updated by rewriting, not in place): the clusters and error-rate estimates DuckDB
    gives."""
    project = load_project(monthly_project(small_data, tmp_path))
    deliver(tmp_path, 1)
    run_project(project, engine_name="spark")
    deliver(tmp_path, 2)
    result = run_project(project, engine_name="spark", incremental=True)
    assert result.manifest["linkage"]["linked"] == "incremental"
    assert result.manifest["identity"]["churn"]["balanced"]["ids_kept"] > 0
    on_spark, on_duckdb = lookup(result), lookup(sequence["month2"])
    for column in ID_COLUMNS_BY_THRESHOLD:
        assert members(on_spark, column) == members(on_duckdb, column), column
    # Its estimates extend month 1's, as on DuckDB, to the same figures.
    assert result.manifest["linkage"]["estimates_counted"]["pairs_of"] == (
        "records reclustered or removed"
    )
    for name, estimated in result.manifest["estimated_error_rates"].items():
        on_duckdb = sequence["month2"].manifest["estimated_error_rates"][name]
        for rate in ("precision", "recall"):
            assert estimated[rate] == pytest.approx(on_duckdb[rate], abs=2e-6), (name, rate)


def test_incremental_pairs_are_stored_once_each_as_a_full_linkage_stores_them(
    sequence: dict,
) -> None:
    """The new records are scored against every record, themselves included, in one pass:
    what is stored is each pair once, never a record with itself, its left record the one
    whose key sorts first (as a full linkage stores them)."""
    rows = sequence["changed_pair_rows"]
    assert rows, "no pair stored"
    assert len(set(rows)) == len(rows)
    assert all(left < right for left, right in rows)


def test_a_full_relink_reports_its_drift_from_the_incremental_state(sequence: dict) -> None:
    """The stored pairs keep the term frequencies of their own linkage; a full relink
    rescores them with today's. Its report of the drift is a direct comparison of the two
    lookups; here, with the population growing by half each month, it is small."""
    incremental, full = lookup(sequence["changed"]), lookup(sequence["full"])
    drift = sequence["full"].manifest["linkage"]["drift_from_incremental"]
    assert drift["previous_snapshot"] == sequence["changed"].snapshot
    for name, column in zip(THRESHOLDS, ID_COLUMNS_BY_THRESHOLD, strict=True):
        a, b = together(incremental, column), together(full, column)
        agreement = drift["by_threshold"][name]
        assert agreement["pairwise_agreement"] == round(len(a & b) / len(a | b), 6)
        assert agreement["pairwise_agreement"] >= 0.99
        assert agreement["records_in_both"] == len(full)
    report = at_snapshot(sequence["full"]).linkage_report.read_text()
    assert "pairwise agreement of the clusters" in report
    # The same pairs could be clustered: only their scores can differ.
    assert sequence["changed_pairs"].keys() == sequence["full_pairs"].keys()


def test_the_working_database_keeps_no_view_of_gone_tables_nor_stale_incremental_ones(
    sequence: dict,
) -> None:
    """Whoever opens the secure working database finds every view readable, and after a full
    relink none of the last incremental linkage's working tables (its pairs, its records).
    The rows a delivery added to a source's combination in place go once the source is
    combined afresh (here both: a record corrected in one, a delivery withdrawn from the
    other)."""
    for stage in ("changed_objects", "full_objects"):
        unreadable = [name for name, ok in sequence[stage].items() if not ok]
        assert unreadable == [], stage
    assert "__incremental_new_pairs" in sequence["changed_objects"]
    assert [n for n in sequence["full_objects"] if n.startswith("__incremental_")] == []
    added = tuple(f"__{t}_new_" for t in ("accepted", "checked", "quarantined"))
    assert "__accepted_new_prisons" in sequence["month3_objects"]
    assert [n for n in sequence["changed_objects"] if n.startswith(added)] == []


def test_an_incremental_linkage_with_nothing_to_extend_links_in_full_and_says_why(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    """With nothing published, or after `joinedup train` linked the models it compared into
    the working database, an incremental run links every record afresh (what a relink
    would publish) and says why; the next one is incremental again."""
    project = load_project(monthly_project(small_data, tmp_path))
    deliver(tmp_path, 1)
    first = run_project(project, incremental=True).manifest["linkage"]
    assert first["linked"] == "full"
    assert first["incremental_unavailable"].startswith("nothing is published yet")

    train_project(project)
    deliver(tmp_path, 2)
    after_train = run_project(project, incremental=True)
    linkage = after_train.manifest["linkage"]
    assert linkage["linked"] == "full"
    assert "joinedup train" in linkage["incremental_unavailable"]
    assert after_train.manifest["model"]["version"] == 1  # the approved model, not the candidate
    relinked = run_project(project)
    assert members(lookup(after_train), "person_id") == members(lookup(relinked), "person_id")

    deliver(tmp_path, 3)
    resumed = run_project(project, incremental=True).manifest["linkage"]
    assert resumed["linked"] == "incremental"
    assert resumed["incremental_unavailable"] is None

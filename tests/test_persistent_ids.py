"""Deliveries arriving in sequence, as a platform receives them: person ids persist, the
churn ledger agrees with the lookups, withdrawn deliveries leave no trace, the model is
frozen until a candidate is trained and promoted, and the schedule never trains."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from linkage_models.project import LoadedProject, load_project
from linkage_models.registry import ModelRegistry
from pipelines.contract import RELINK_JOB, OutputLayout
from pipelines.deliveries import require_deliveries, withdraw_delivery
from pipelines.run import (
    ProjectGraph,
    RunError,
    RunResult,
    promote_model,
    run_project,
    train_project,
)
from pipelines.synthetic import GeneratedData

from .helpers import demo_settings, write_project

SOURCES = ("magistrates_courts", "prisons")
MONTHS = 3


def monthly_project(data: GeneratedData, folder: Path, **checks: float) -> Path:
    """The demo project over two sources, each delivered as MONTHS monthly files (its
    extract cut in row order) matched by a glob; returns the project file. Only the
    deliveries later put in place with `deliver` are there to link."""
    raw = demo_settings()
    raw["sources"] = [s for s in raw["sources"] if s["name"] in SOURCES]
    (folder / "all").mkdir()
    for s in raw["sources"]:
        path = data.files[s["name"]]
        frame = (
            pd.read_parquet(path)
            if path.suffix == ".parquet"
            else pd.read_csv(path, dtype=str, keep_default_na=False)
        )
        stem, suffix = s["path"].rsplit(".", 1)
        size = -(-len(frame) // MONTHS)
        for month in range(MONTHS):
            part = frame.iloc[month * size : (month + 1) * size]
            target = folder / "all" / f"{stem}_2026-{month + 1:02d}.{suffix}"
            if suffix == "parquet":
                part.to_parquet(target, index=False)
            else:
                part.to_csv(target, index=False)
        s["path"] = f"{stem}_*.{suffix}"
    # These projects are about ids, not training: they train in one pass, the prior on the
    # declared rules recall (the path `prior_from_scored_pairs: false` takes).
    raw["model"]["training"]["prior_from_scored_pairs"] = False
    raw["data_dir"] = str(folder / "data")
    raw["output"]["path"] = str(folder / "out")
    raw["checks"] = {**raw.get("checks", {}), **checks}
    (folder / "data").mkdir()
    return write_project(raw, folder / "project.yaml")


def deliver(folder: Path, month: int, source: str | None = None) -> None:
    for file in (folder / "all").glob(f"*_2026-{month:02d}.*"):
        if source is None or file.name.startswith(source):
            (folder / "data" / file.name).write_bytes(file.read_bytes())


def at_snapshot(result: RunResult) -> OutputLayout:
    """The publication a run made (kept after later runs publish)."""
    return OutputLayout(result.output_dir).at(result.snapshot)


def lookup(result: RunResult) -> pd.DataFrame:
    return pd.read_parquet(at_snapshot(result).person_lookup)


def ingest_all(project: LoadedProject) -> ProjectGraph:
    """Every delivery through its ingest job, as the sensor would run them."""
    graph = ProjectGraph(project)
    for source in project.spec.sources:
        for delivery in require_deliveries(project, source):
            graph.ingest(source.name, delivery.key)
    return graph


def unchanged_clusters_keep_their_ids(before: pd.DataFrame, after: pd.DataFrame) -> None:
    """Every record whose cluster (its set of records) did not change keeps its id."""
    key = ["source_dataset", "source_record_id"]
    for column in ("person_id", "person_id_high_precision", "person_id_high_recall"):
        members = {
            name: before.groupby(column)[key].apply(lambda g: frozenset(map(tuple, g.values)))
            for name, before in (("before", before), ("after", after))
        }
        unchanged = set(members["before"].values) & set(members["after"].values)
        assert unchanged, "some clusters should be unchanged between months"
        id_before = {m: pid for pid, m in members["before"].items()}
        id_after = {m: pid for pid, m in members["after"].items()}
        kept = [id_before[m] == id_after[m] for m in unchanged]
        assert all(kept), f"{column}: {kept.count(False)} unchanged clusters changed id"


def ledger_matches(before: pd.DataFrame, after: pd.DataFrame, ledger: dict) -> None:
    """The churn ledger says what a direct comparison of the two lookups says."""
    key = ["source_dataset", "source_record_id"]
    joined = before.merge(after, on=key, how="outer", suffixes=("_b", "_a"), indicator=True)
    both = joined[joined._merge == "both"]
    for threshold, column in (
        ("balanced", "person_id"),
        ("high_precision", "person_id_high_precision"),
        ("high_recall", "person_id_high_recall"),
    ):
        c = ledger[threshold]
        assert c["records_added"] == (joined._merge == "right_only").sum()
        assert c["records_withdrawn"] == (joined._merge == "left_only").sum()
        assert c["records_moved"] == (both[f"{column}_b"] != both[f"{column}_a"]).sum()
        assert c["ids_kept"] == len(set(before[column]) & set(after[column]))
        assert c["ids_kept"] + c["ids_created"] == after[column].nunique()


@pytest.fixture(scope="module")
def monthly(small_data: GeneratedData, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three monthly deliveries of two sources, linked after each month, then the first
    month of prisons withdrawn (its file stays in the landing folder)."""
    folder = tmp_path_factory.mktemp("monthly")
    config = monthly_project(small_data, folder)
    project = load_project(config)
    results = []
    for month in range(1, MONTHS + 1):
        deliver(folder, month)
        results.append(run_project(project))
    withdraw_delivery(project, "prisons", "prisons_2026-01.parquet", "retracted by its owner")
    results.append(run_project(project))
    return {"folder": folder, "config": config, "project": project, "results": results}


def test_each_month_keeps_the_ids_of_unchanged_clusters_and_the_ledger_agrees(
    monthly: dict,
) -> None:
    results = monthly["results"]
    assert [r.manifest["identity"]["generation"] for r in results] == [1, 2, 3, 4]
    for before, after in zip(results, results[1:], strict=False):
        assert after.manifest["identity"]["previous_snapshot"] == before.snapshot
        unchanged_clusters_keep_their_ids(lookup(before), lookup(after))
        ledger_matches(lookup(before), lookup(after), after.manifest["identity"]["churn"])
        # The shareable manifest carries the same ledger (churn is not disclosive: it
        # compares published lookups).
        shareable = json.loads(at_snapshot(after).manifest.read_text())
        assert shareable["identity"] == after.manifest["identity"]
        report = at_snapshot(after).linkage_report.read_text()
        assert f"carried forward from snapshot <code>{before.snapshot}</code>" in report


def test_the_model_is_trained_once_and_then_frozen(monthly: dict) -> None:
    models = [r.manifest["model"] for r in monthly["results"]]
    assert [m["trained_in_this_run"] for m in models] == [True, False, False, False]
    assert {m["version"] for m in models} == {1} and all(m["approved"] for m in models)
    # Trained in one pass: the prior stands on the declared rules recall.
    assert {m["deterministic_rules_recall"] for m in models} == {0.7}
    rules_recall = monthly["results"][0].manifest["pairs"]["blocking_check"][
        "deterministic_rules_recall"
    ]
    assert rules_recall["declared"] == rules_recall["prior_built_on"] == 0.7
    assert len(ModelRegistry(OutputLayout(monthly["project"].output_dir).model_dir).versions()) == 1


def test_a_withdrawn_delivery_leaves_no_trace_in_the_next_snapshot(monthly: dict) -> None:
    before, after = monthly["results"][-2:]
    withdrawn = pd.read_parquet(monthly["folder"] / "all" / "prisons_2026-01.parquet")
    ids = set(withdrawn["prisoner_ref"])
    later = lookup(after)
    assert not ids & set(later[later.source_dataset == "prisons"].source_record_id)
    events = pd.read_parquet(at_snapshot(after).events)
    assert not ids & set(events[events.source_dataset == "prisons"].source_record_id)
    assert (monthly["folder"] / "data" / "prisons_2026-01.parquet").exists()
    assert [w["delivery"] for w in after.manifest["withdrawn_deliveries"]] == [
        "prisons_2026-01.parquet"
    ]
    files = [f["delivery"] for i in after.manifest["inputs"] for f in i["files"]]
    assert "prisons_2026-01.parquet" not in files
    churn = after.manifest["identity"]["churn"]["balanced"]
    assert churn["by_source"]["prisons"]["records_withdrawn"] == len(ids)
    assert churn["records_added"] == 0
    # Ids left without records are retired as withdrawn, and a researcher can find out.
    register = pd.read_parquet(at_snapshot(after).person_ids)
    gone = set(lookup(before).person_id) - set(later.person_id)
    retired = register[register.person_id.isin(gone)]
    assert len(retired) == len(gone) and retired.retired_in_snapshot.eq(after.snapshot).all()
    assert set(retired.retired_reason) <= {"withdrawn", "merged"}


def test_the_same_sequence_in_another_folder_gives_the_same_ids(
    monthly: dict, small_data: GeneratedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the same secret, as a platform keeps it in its secret store."""
    secret = (OutputLayout(monthly["project"].output_dir).person_id_key_file).read_text()
    monkeypatch.setenv("JOINEDUP_PERSON_ID_KEY", secret.strip())
    project = load_project(monthly_project(small_data, tmp_path))
    for month in (1, 2):
        deliver(tmp_path, month)
        again = run_project(project)
    pd.testing.assert_frame_equal(
        lookup(again).drop(columns="linking_snapshot_date"),
        lookup(monthly["results"][1]).drop(columns="linking_snapshot_date"),
    )


def test_the_schedule_never_trains(small_data: GeneratedData, tmp_path: Path) -> None:
    """The relink job as the schedule runs it (no run configuration): without an approved
    model it stops and says how to get one; with one, it links without training."""
    project = load_project(monthly_project(small_data, tmp_path))
    deliver(tmp_path, 1)
    graph = ingest_all(project)
    with pytest.raises(RunError, match="no approved model.*joinedup train"):
        graph.run_or_raise(RELINK_JOB)
    layout = OutputLayout(project.output_dir)
    assert not layout.published.manifest.exists()
    run_project(project)  # the project's first run trains and approves v1
    graph = ingest_all(project)
    graph.run_or_raise(RELINK_JOB)
    manifest = json.loads(layout.published.exact_manifest.read_text())
    assert not manifest["model"]["trained_in_this_run"] and manifest["model"]["version"] == 1
    assert len(ModelRegistry(layout.model_dir).versions()) == 1
    schedule = graph.defs.resolve_schedule_def("periodic_relink")
    assert schedule.job_name == RELINK_JOB
    # A delivery withdrawn after it was ingested: the scheduled relink leaves it out.
    withdraw_delivery(project, "prisons", "prisons_2026-01.parquet", "replaced")
    graph.run_or_raise(RELINK_JOB)
    relinked = pd.read_parquet(layout.published.person_lookup)
    assert "prisons" not in set(relinked.source_dataset)


def test_a_candidate_is_compared_then_promoted_and_its_relink_reports_churn(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    config = monthly_project(small_data, tmp_path)
    project = load_project(config)
    deliver(tmp_path, 1)
    first = run_project(project)
    deliver(tmp_path, 2)
    trained = train_project(project)
    assert (trained.candidate, trained.approved, trained.promoted) == (2, 1, False)
    balanced = trained.comparison["by_threshold"]["balanced"]
    assert 0.9 < balanced["pairwise_agreement"] <= 1.0
    assert balanced["links_in_both"] > 0
    # The copies of each model's pairs and persons it compared are not left behind.
    database = OutputLayout(project.output_dir).work_dir / "joinedup.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        left = con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE starts_with(table_name, '__candidate_') "
            "OR starts_with(table_name, '__approved_')"
        ).fetchall()
    assert left == []
    # Not promoted: linkage stays with v1.
    assert run_project(project).manifest["model"]["version"] == 1
    promote_model(project, 2)
    promoted = run_project(project)
    identity = promoted.manifest["identity"]
    assert (identity["previous_model_version"], identity["model_version"]) == (1, 2)
    assert promoted.manifest["model"]["approved"]
    assert set(identity["churn"]["balanced"]) >= {"records_moved", "ids_retired_by_merges"}
    with pytest.raises(RunError, match="no model version 7"):
        promote_model(project, 7)
    assert first.snapshot != promoted.snapshot


def test_too_much_churn_without_a_model_change_stops_the_publication(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    config = monthly_project(small_data, tmp_path, max_records_moved_share=0.01)
    deliver(tmp_path, 1)
    first = run_project(load_project(config))
    # The same model, and prisons re-deliver their month with every record's identifiers
    # shifted to the next record: records change person.
    path = tmp_path / "data" / "prisons_2026-01.parquet"
    frame = pd.read_parquet(path)
    identifying = ["first_name", "middle_name", "last_name", "dob", "sex", "postcode"]
    frame[identifying] = frame[identifying].shift(1, fill_value="").to_numpy()
    frame.to_parquet(path, index=False)
    moved = r"check identity_churn failed: .*% of previously linked records moved"
    with pytest.raises(RunError, match=moved) as failure:
        run_project(load_project(config))
    assert "previous publication" in str(failure.value)
    assert OutputLayout(first.output_dir).published.snapshot == first.snapshot

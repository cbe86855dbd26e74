"""End to end on DuckDB: the output contract, privacy, reconciliation, registry, accuracy."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from linkage_models.linkage import probable_twins_condition
from linkage_models.project import LinkageProject, load_project
from linkage_models.registry import ModelRegistry
from pipelines.contract import Tables
from pipelines.engines import DuckDBEngine
from pipelines.ground_truth import GroundTruth, check_ground_truth, register_ground_truth
from pipelines.publication import current_snapshot, snapshots
from pipelines.run import RunError, RunResult, run_project, train_project
from pipelines.synthetic import GeneratedData
from quality.accuracy import pairwise_cluster_metrics

from .helpers import DEMO_CONFIG, demo_settings, identifiers_of, published, write_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def twins_rule_run(
    small_data: GeneratedData, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, LinkageProject]:
    """The demo with the opt-in probable-twins rule turned on."""
    raw = demo_settings()
    raw["model"]["probable_twins_rule"] = "exclude"
    folder = tmp_path_factory.mktemp("twins_rule")
    config = write_project(raw, folder / "twins.yaml")
    project = load_project(config, data_dir=small_data.out_dir, output_dir=folder / "out")
    return run_project(project, ground_truth=small_data.ground_truth), project.spec


def test_outputs_follow_the_contract(small_run: RunResult) -> None:
    out = small_run.output_dir
    lookup = pd.read_parquet(published(out).person_lookup)
    assert list(lookup.columns) == [
        "source_dataset",
        "source_record_id",
        "person_id",
        "person_id_high_precision",
        "person_id_high_recall",
        "linking_snapshot_date",
    ]
    assert not lookup.duplicated(["source_dataset", "source_record_id"]).any()
    events = pd.read_parquet(published(out).events)
    assert list(events.columns[:5]) == [
        "person_id",
        "source_dataset",
        "source_record_id",
        "event_date",
        "event_type",
    ]
    assert {"offence_group", "benefit_type", "sen_provision"} <= set(events.columns)
    assert len(events) == len(lookup)
    assert events.event_date.notna().mean() > 0.99
    for name in ("magistrates_courts", "prisons", "probation", "pupils", "benefits"):
        assert published(out).quarantine_file(name).exists()
    assert list(published(out).model_dir.glob("model_v*.json"))
    assert "## Parameters" in published(out).model_card.read_text()


def test_person_ids_are_pseudonymous_and_nest_across_thresholds(small_run: RunResult) -> None:
    lookup = pd.read_parquet(published(small_run.output_dir).person_lookup)
    assert lookup.person_id.str.fullmatch(r"P[0-9a-f]{16}").all()
    ids = set(lookup.source_record_id)
    assert not any(pid[1:] in ids for pid in lookup.person_id)
    # Stricter thresholds only split persons: each high-precision person sits inside one
    # balanced person, and each balanced person inside one high-recall person.
    assert lookup.groupby("person_id_high_precision").person_id.nunique().max() == 1
    assert lookup.groupby("person_id").person_id_high_recall.nunique().max() == 1
    assert (
        lookup.person_id_high_precision.nunique()
        >= lookup.person_id.nunique()
        >= lookup.person_id_high_recall.nunique()
    )


def test_no_identifiers_in_published_outputs(
    small_run: RunResult, small_data: GeneratedData
) -> None:
    extracts = {
        name: (
            pd.read_parquet(p)
            if p.suffix == ".parquet"
            else pd.read_csv(p, sep=";" if name == "benefits" else ",", dtype=str)
        )
        for name, p in small_data.files.items()
    }
    name_and_postcode_columns = {
        "magistrates_courts": ["defendant_name", "home_postcode"],
        "prisons": ["first_name", "middle_name", "last_name", "postcode"],
        "probation": ["full_name", "postcode"],
        "pupils": ["forename", "surname", "postcode"],
        "benefits": ["claimant_forenames", "claimant_surname", "postcode"],
    }
    identifiers = set()
    for name, cols in name_and_postcode_columns.items():
        for col in cols:
            values = extracts[name][col].dropna().astype(str).str.strip().str.lower()
            identifiers |= {v for v in values if len(v) > 3}
            identifiers |= {w for v in values for w in v.replace(",", " ").split() if len(w) > 3}
    forbidden_columns = re.compile(r"name|birth|dob|postcode|sex|gender", re.IGNORECASE)
    for path in (published(small_run.output_dir).linked_dir).glob("*.parquet"):
        table = pd.read_parquet(path)
        assert not [c for c in table.columns if forbidden_columns.search(c)], path
        # Categories shared by many records (a court's region such as "Wales", which is also
        # a surname) cannot single anyone out: only columns of many distinct values count.
        distinctive = [c for c in table.columns if table[c].nunique() > 20]
        values = {str(v).lower() for col in distinctive for v in table[col].dropna()}
        assert not (values & identifiers), f"names or postcodes leaked into {path.name}"
    # No published date is a record's date of birth (event dates are genuine events).
    events = pd.read_parquet(published(small_run.output_dir).events)
    pupils = extracts["pupils"][["pupil_matching_ref", "date_of_birth"]]
    joined = events.merge(pupils, left_on="source_record_id", right_on="pupil_matching_ref")
    assert len(joined) > 0
    assert (pd.to_datetime(joined.event_date) == pd.to_datetime(joined.date_of_birth)).mean() < 0.01


def test_nothing_meant_to_leave_holds_an_identifier(
    small_run: RunResult, small_data: GeneratedData
) -> None:
    """Every text file of the shareable zone: the manifest, the linkage report and its JSON,
    the charts beside it and every data-owner page; the diagnostics that show identifiers
    are in the secure zone only."""
    zone = published(small_run.output_dir)
    shareable = [p for p in zone.shareable_dir.rglob("*") if p.suffix in (".html", ".json")]
    assert {zone.manifest, zone.linkage_report, zone.linkage_quality} <= set(shareable)
    assert len(list(zone.data_owner_dir.rglob("*.html"))) == 1 + 5  # index, one per delivery
    assert list(zone.charts_dir.glob("*.html"))
    identifiers = identifiers_of(small_data)
    for path in shareable:
        assert identifiers.found_in(path.read_text()) == [], path
    for name in ("comparison_viewer.html", "cluster_studio.html", "waterfall_balanced.html"):
        assert not list(zone.shareable_dir.rglob(name))
        assert (zone.diagnostics_dir / name).exists()


def test_the_demo_removes_no_pairs_by_rule(small_run: RunResult) -> None:
    """The demo links on the model's evidence alone: twins are kept apart by the household
    comparison, not by the opt-in rule (and clustering reads the scored pairs, not a copy)."""
    assert small_run.manifest["pairs"]["removed_by_probable_twins_rule"] == 0
    with DuckDBEngine(published(small_run.output_dir).work_dir / "joinedup.duckdb") as engine:
        assert engine.count("pairwise_predictions") > 0
        assert not engine.table_exists("pairs_for_clustering")


def test_probable_twins_rule_count_is_the_pairs_it_removed(
    twins_rule_run: tuple[RunResult, LinkageProject],
) -> None:
    run, project = twins_rule_run
    removed = run.manifest["pairs"]["removed_by_probable_twins_rule"]
    with DuckDBEngine(published(run.output_dir).work_dir / "joinedup.duckdb") as engine:
        kept = engine.count("pairs_for_clustering")
        scored = engine.count("pairwise_predictions")
        twins_left = engine.fetch(
            f"SELECT count(*) FROM pairs_for_clustering WHERE {probable_twins_condition(project)}"
        )[0][0]
        balanced = run.manifest["thresholds"]["balanced"]  # the model's choice
        removed_links = engine.fetch(
            f"SELECT count(*) FROM pairwise_predictions WHERE match_probability >= {balanced} "
            f"AND {probable_twins_condition(project)}"
        )[0][0]
    assert removed > 0 and removed == scored - kept
    assert twins_left == 0
    # What the opt-in rule cost is published: the links it removed at each threshold.
    cost = run.manifest["pairs"]["probable_twins_rule_cost"]
    assert cost["balanced"]["pairs_removed"] == removed_links > 0
    assert 0 < cost["balanced"]["expected_same_person"] <= removed_links
    html = (published(run.output_dir).linkage_report).read_text()
    assert "opted in to the probable-twins" in html


def test_every_row_reconciles(small_run: RunResult, small_data: GeneratedData) -> None:
    rec = small_run.manifest["reconciliation"]  # exact: the secure zone's manifest
    assert rec["reconciles"]
    assert rec["rows_in"] == sum(small_data.records.values())
    assert rec["rows_in"] == rec["rows_linked"] + rec["rows_quarantined"]
    for name, counts in rec["by_source"].items():
        quarantined = pd.read_parquet(small_run.output_dir / counts["quarantine_file"])
        assert len(quarantined) == counts["rows_quarantined"], name
        assert counts["rows_in"] == counts["rows_accepted"] + counts["rows_quarantined"]
    # The generator re-delivers some rows: those must be quarantined as duplicates.
    assert (
        sum(
            c["quarantined_by_reason"].get("duplicate record id", 0)
            for c in rec["by_source"].values()
        )
        > 0
    )
    # The shareable manifest's counts are rounded, and still add up at every level.
    shared = small_run.shareable_manifest["reconciliation"]
    assert shared["rows_in"] == shared["rows_linked"] + shared["rows_quarantined"]
    leaves = sum(
        1 + len(d["quarantined_by_reason"])
        for counts in rec["by_source"].values()
        for d in counts["by_delivery"].values()
    )
    assert abs(shared["rows_in"] - rec["rows_in"]) <= 4 * leaves  # each part off by <= 4
    for name, counts in shared["by_source"].items():
        assert counts["rows_in"] == counts["rows_accepted"] + counts["rows_quarantined"]
        assert counts["rows_quarantined"] == sum(counts["quarantined_by_reason"].values())
        for delivery in counts["by_delivery"].values():
            assert delivery["rows_in"] % 5 == 0 and delivery["rows_accepted"] % 5 == 0, name


def test_manifest_describes_the_run(small_run: RunResult, small_data: GeneratedData) -> None:
    m = small_run.manifest
    assert m["engine"] == "duckdb" and m["versions"]["splink"].startswith("5.")
    files = {f["path"]: f for i in m["inputs"] for f in i["files"]}
    assert set(files) == {str(p) for p in small_data.files.values()}
    for name, path in small_data.files.items():
        assert files[str(path)]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert files[str(path)]["bytes"] == path.stat().st_size
        assert files[str(path)]["rows"] == small_data.records[name]
    assert m["model"]["trained_in_this_run"] and m["model"]["version"] >= 1
    assert m["pairs"]["scored"] >= m["pairs"]["kept_above_floor"] > 0
    assert set(m["links"]) == {"high_precision", "balanced", "high_recall"}
    assert list(m["stages"]) == [
        "ingest",
        "validate",
        "standardise",
        "linkage_inputs",
        "train",
        "predict",
        "cluster",
        "publish",
        "estimate_errors",
        "evaluate",
    ]
    text = small_run.manifest_path.read_text().lower()
    assert "smith" not in text and "jones" not in text  # counts and rates only


def test_balanced_clusters_are_accurate_on_synthetic_data(small_run: RunResult) -> None:
    acc = small_run.manifest["measured_accuracy"]
    # Measured on 3,000 simulated people; the demo and benchmark report larger runs.
    assert acc["balanced"]["precision"] >= 0.99
    assert acc["balanced"]["recall"] >= 0.97
    # Clusters are nested, so looser thresholds find a superset of pairs (precision need
    # not move monotonically on a small sample, so it is not asserted).
    hp, bal, hr = (acc[k] for k in ("high_precision", "balanced", "high_recall"))
    assert hp["predicted_pairs"] <= bal["predicted_pairs"] <= hr["predicted_pairs"]
    assert hp["recall"] <= bal["recall"] <= hr["recall"]


def test_label_free_error_estimates_are_close_to_measured(small_run: RunResult) -> None:
    estimated = small_run.manifest["estimated_error_rates"]
    measured = small_run.manifest["measured_accuracy"]
    for name in ("high_precision", "balanced", "high_recall"):
        est, meas = estimated[name], measured[name]
        assert est["precision_95ci"][0] <= est["precision"] <= est["precision_95ci"][1]
        assert est["recall_95ci"][0] <= est["recall"] <= est["recall_95ci"][1]
        assert abs(est["precision"] - meas["precision"]) <= 0.01, name
        assert abs(est["recall"] - meas["recall"]) <= 0.01, name
        assert est["pairs_within_clusters"] == meas["predicted_pairs"]


def test_a_missing_middle_name_is_evidence_the_model_learns(small_run: RunResult) -> None:
    """Pupils carry no middle names and the other sources often do, so a pair missing one
    is less common among matches than among random pairs: trained, not scored as nothing."""
    model = json.loads((published(small_run.output_dir).model_dir / "model_v0001.json").read_text())
    (middle,) = [c for c in model["comparisons"] if c["output_column_name"] == "middle_names"]
    missing = middle["comparison_levels"][0]
    assert missing["label_for_charts"] == "Middle names missing on either record"
    assert not missing.get("is_null_level")
    assert 0.5 < missing["m_probability"] < missing["u_probability"] < 1


def _parameters(model_path: Path) -> list[float]:
    model = json.loads(model_path.read_text())
    values = [model["probability_two_random_records_match"]]
    for comparison in model["comparisons"]:
        for level in comparison["comparison_levels"]:
            values += [level.get("m_probability", 0.0), level.get("u_probability", 0.0)]
    return values


def _lookup(result: RunResult) -> pd.DataFrame:
    """The person lookup a run published (its snapshot stays readable after later runs)."""
    frame = pd.read_parquet(published(result.output_dir).at(result.snapshot).person_lookup)
    return frame.sort_values(["source_dataset", "source_record_id"]).reset_index(drop=True)


def test_runs_link_with_the_approved_model_and_training_adds_a_candidate(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    project = load_project(DEMO_CONFIG, data_dir=small_data.out_dir, output_dir=tmp_path)
    first = run_project(project)
    first_lookup = _lookup(first)
    second = run_project(project)
    # Each run published a snapshot of its own; the first stays readable as it was.
    layout = published(tmp_path)
    assert snapshots(layout) == sorted([first.snapshot, second.snapshot])
    assert current_snapshot(layout) == second.snapshot != first.snapshot
    earlier = layout.at(first.snapshot)
    assert json.loads(earlier.manifest.read_text())["run_id"] == first.manifest["run_id"]
    assert len(pd.read_parquet(earlier.person_lookup)) == len(first_lookup)
    # The first run trained and approved v1; the second linked with it.
    assert first.manifest["model"]["trained_in_this_run"] and first.manifest["model"]["approved"]
    assert not second.manifest["model"]["trained_in_this_run"]
    assert second.manifest["model"]["version"] == 1
    # Training registers a candidate beside the approved model, compared on the same data.
    trained = train_project(project)
    assert (trained.candidate, trained.approved, trained.promoted) == (2, 1, False)
    registry = ModelRegistry(layout.model_dir)
    versions = registry.versions()
    assert [v.version for v in versions] == [1, 2] and registry.approved().version == 1
    # Each version records the configuration and the data it was trained on.
    assert versions[0].config_hash == versions[1].config_hash == project.config_hash
    assert first.manifest["model"]["config_hash_at_training"] == project.config_hash
    assert versions[0].training_data_fingerprint == versions[1].training_data_fingerprint
    # Training is seeded: the same data gives the same parameters, and so the same links.
    assert _parameters(published(tmp_path).model_dir / "model_v0001.json") == pytest.approx(
        _parameters(published(tmp_path).model_dir / "model_v0002.json"), rel=1e-6
    )
    # The candidate chose its own balanced threshold on the data it was compared on: the
    # same data and seed, so the same threshold as the approved model's.
    assert versions[1].balanced_threshold == versions[0].balanced_threshold
    assert trained.comparison["thresholds"] == {
        "approved": first.manifest["thresholds"],
        "candidate": first.manifest["thresholds"],
    }
    for compared in trained.comparison["by_threshold"].values():
        assert compared["links_gained"] == compared["links_lost"] == 0
        assert compared["pairwise_agreement"] == 1.0
        assert compared["clusters_unchanged"] == compared["clusters"]

    chosen = run_project(project, model_version="2")  # a named version, not approved
    assert not chosen.manifest["model"]["trained_in_this_run"]
    assert chosen.manifest["model"]["version"] == 2 and not chosen.manifest["model"]["approved"]
    assert len(registry.versions()) == 2
    assert first.manifest["links"] == second.manifest["links"] == chosen.manifest["links"]
    # The same links give the same persons with the same ids, record for record (the
    # second and third runs carried the first's ids forward).
    pd.testing.assert_frame_equal(first_lookup, _lookup(second))
    pd.testing.assert_frame_equal(first_lookup, _lookup(chosen))
    churn = chosen.manifest["identity"]["churn"]["balanced"]
    assert churn["records_moved"] == churn["records_added"] == churn["ids_created"] == 0


def test_a_new_source_needs_only_yaml(small_data: GeneratedData, tmp_path: Path) -> None:
    """An unfamiliar extract (odd column names, formats and codes) joins by config alone."""
    courts = pd.read_csv(small_data.files["magistrates_courts"], dtype=str, keep_default_na=False)
    sample = courts.sample(300, random_state=1)
    names = sample.defendant_name.str.split(", ", n=1, expand=True)
    hospital = pd.DataFrame(
        {
            "EPISODE_KEY": "H" + sample.case_defendant_id.str[2:],
            "PATIENT SURNAME": names[0].str.title(),
            "PATIENT FORENAMES": names[1].str.lower(),
            "BIRTH_DT": pd.to_datetime(sample.date_of_birth, format="%d/%m/%Y", errors="coerce")
            .dt.strftime("%Y%m%d")
            .fillna(""),
            "GENDER_CD": sample.gender.map({"M": "1", "F": "2"}).fillna("9"),
            "PCODE": sample.home_postcode.str.replace(" ", "").str.lower(),
            "ADMIT": "2021-06-01",
            "SPECIALTY": "A&E",
        }
    )
    hospital_dir = tmp_path / "data"
    hospital_dir.mkdir()
    hospital.to_csv(hospital_dir / "hospital_2021.tsv", sep="\t", index=False)
    raw = demo_settings()
    raw["sources"] = [s for s in raw["sources"] if s["name"] == "magistrates_courts"]
    raw["sources"][0]["path"] = str(small_data.files["magistrates_courts"])
    raw["sources"].append(
        {
            "name": "hospital_episodes",
            "department": "NHS England",
            "path": "hospital_*.tsv",
            "format": "csv",
            "csv": {"delimiter": "\t"},
            "record_id": "EPISODE_KEY",
            "identifiers": {
                "given_name": {"column": "PATIENT FORENAMES", "includes_middle_names": True},
                "family_name": "PATIENT SURNAME",
                "date_of_birth": {"column": "BIRTH_DT", "formats": ["%Y%m%d"]},
                "sex": {"column": "GENDER_CD", "male_codes": ["1"], "female_codes": ["2"]},
                "postcode": "PCODE",
            },
            "event": {"date": "ADMIT", "type": "hospital_admission"},
            "attributes": ["SPECIALTY"],
        }
    )
    raw["data_dir"] = str(hospital_dir)
    config = write_project(raw, tmp_path / "with_hospital.yaml")
    result = run_project(load_project(config, output_dir=tmp_path / "out"))
    lookup = pd.read_parquet(published(result.output_dir).person_lookup)
    by_person = lookup.groupby("person_id").source_dataset.nunique()
    linked_hospital = lookup[lookup.source_dataset == "hospital_episodes"].person_id.isin(
        by_person[by_person > 1].index
    )
    # Each hospital row was copied from a court record, so nearly all should link to one.
    assert linked_hospital.mean() > 0.95
    assert "SPECIALTY" in pd.read_parquet(published(result.output_dir).events).columns


def test_accuracy_is_measured_against_ground_truth_with_its_own_column_names(
    small_run: RunResult, small_data: GeneratedData, tmp_path: Path
) -> None:
    """The same measurement from a CSV whose columns are named differently, once mapped."""
    truth = pd.read_parquet(small_data.ground_truth).rename(
        columns={"source_dataset": "src", "source_record_id": "id", "true_person_id": "who"}
    )
    path = tmp_path / "truth.csv"
    truth.to_csv(path, index=False)
    mapped = GroundTruth(
        path, {"source_dataset": "src", "source_record_id": "id", "true_person_id": "who"}
    )
    assert check_ground_truth(mapped, ["magistrates_courts"]) == len(truth)
    with DuckDBEngine(published(small_run.output_dir).work_dir / "joinedup.duckdb") as engine:
        measured = pairwise_cluster_metrics(
            engine,
            Tables.PERSON_LOOKUP,
            "person_id",
            register_ground_truth(engine, mapped),
            "balanced",
        )
    assert measured.as_dict() == small_run.manifest["measured_accuracy"]["balanced"]


@pytest.mark.slow
def test_dedupe_only_on_one_source_runs_end_to_end(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    """One source deduplicated on its own: the whole graph runs (diagnostics, error rates,
    reports) and finds the source's repeated people."""
    raw = demo_settings()
    raw["sources"] = [s for s in raw["sources"] if s["name"] == "probation"]
    raw["model"]["link_type"] = "dedupe_only"
    config = write_project(raw, tmp_path / "dedupe.yaml")
    project = load_project(config, data_dir=small_data.out_dir, output_dir=tmp_path / "out")
    result = run_project(project, ground_truth=small_data.ground_truth)
    rec = result.manifest["reconciliation"]
    assert rec["reconciles"] and list(rec["by_source"]) == ["probation"]
    lookup = pd.read_parquet(published(result.output_dir).person_lookup)
    assert set(lookup.source_dataset) == {"probation"}
    assert lookup.person_id.nunique() < len(lookup)  # repeated people were linked
    balanced = result.manifest["measured_accuracy"]["balanced"]
    assert balanced["precision"] > 0.95 and balanced["recall"] > 0.9
    assert (published(result.output_dir).linkage_report).exists()


@pytest.mark.slow
def test_link_only_with_a_derived_model_links_across_sources_and_needs_two(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    """A project that leaves the model to joinedup: link_only across two sources runs end to
    end with a derived model (recorded in the manifest), links only across the sources, and
    stops with a plain message when only one source has data to link."""
    raw = demo_settings()
    raw["sources"] = [s for s in raw["sources"] if s["name"] in ("probation", "prisons")]
    raw["model"] = {"link_type": "link_only"}
    config = write_project(raw, tmp_path / "link_only.yaml")
    project = load_project(config, data_dir=small_data.out_dir, output_dir=tmp_path / "out")
    result = run_project(project, ground_truth=small_data.ground_truth)
    model = result.manifest["model"]
    assert model["derived_from_identifiers"] == ["comparisons", "blocking_rules", "training"]
    assert [a["kept"] for a in model["blocking_analysis"]["analysis"]].count(True) >= 3
    assert result.manifest["links"]["balanced"]["links"] > 0
    with DuckDBEngine(published(result.output_dir).work_dir / "joinedup.duckdb") as engine:
        within = engine.fetch(
            f"SELECT count(*) FROM {Tables.PAIRWISE_PREDICTIONS} "
            "WHERE source_dataset_l = source_dataset_r"
        )[0][0]
    assert within == 0
    assert result.manifest["measured_accuracy"]["balanced"]["precision"] > 0.95

    # Every delivery of one source rejected by its contract: one source left to link.
    raw["sources"][1].setdefault("validation", {})["row_count"] = {"min": 10_000_000}
    write_project(raw, config)
    alone = load_project(config, data_dir=small_data.out_dir, output_dir=tmp_path / "alone")
    with pytest.raises(RunError, match="link_only needs accepted deliveries from at least two"):
        run_project(alone)

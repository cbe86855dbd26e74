"""The command line a platform engineer uses: clear errors, no stack traces."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.contract import THRESHOLDS, OutputLayout, Tables

from .helpers import DEMO_CONFIG, demo_subset, published

runner = CliRunner()


def test_invalid_config_exits_with_the_key_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: x\nsources: []\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "sources" in result.output
    assert "Traceback" not in result.output


def test_missing_source_file_is_named(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["run", str(DEMO_CONFIG), "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "source 'magistrates_courts': no file found" in result.output


def test_generate_writes_extracts_and_ground_truth(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", str(tmp_path), "--people", "200"])
    assert result.exit_code == 0, result.output
    truth = pd.read_parquet(tmp_path / "ground_truth.parquet")
    sources = ("magistrates_courts", "prisons", "probation", "pupils", "benefits")
    assert set(truth.source_dataset) == set(sources)
    assert not truth.duplicated(["source_dataset", "source_record_id"]).any()
    assert truth.true_person_id.nunique() <= 200
    printed = {
        cells[0]: cells[-1]
        for line in result.output.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")]) and cells[0] in sources
    }
    for source in sources:
        file = next(tmp_path.glob(f"{source}.*"))
        rows = (
            len(pd.read_parquet(file))
            if file.suffix == ".parquet"
            else (len(file.read_text().splitlines()) - 1)
        )
        assert printed[source] == f"{rows:,}"  # the table printed says what was written
        # Every record of the file has its true person (re-delivered rows share an id).
        ids = set(truth.source_record_id[truth.source_dataset == source])
        assert rows >= len(ids) > 0
    again = tmp_path / "again"
    runner.invoke(app, ["generate", "--out", str(again), "--people", "200"])
    assert (again / "prisons.parquet").read_bytes() == (tmp_path / "prisons.parquet").read_bytes()


def _figure(output: str, label: str, table: str) -> list[str]:
    """The cells of the row starting with `label` in the printed table titled `table`."""
    for line in output[output.index(table) :].splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{output}")


@pytest.mark.slow
def test_run_then_rerun_with_the_latest_model(
    small_data, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`joinedup run` with --data-dir, --out and --ground-truth; then again reusing the
    model it trained: the same persons with the same ids, no new model version; then the
    commands that read and manage what was published."""
    out = tmp_path / "out"
    args = ["run", str(DEMO_CONFIG), "--data-dir", str(small_data.out_dir), "--out", str(out)]
    done = runner.invoke(app, [*args, "--ground-truth", str(small_data.ground_truth)])
    assert done.exit_code == 0, done.output
    for step in ("linkage_inputs", "train", "predict", "cluster", "publish", "linkage_report"):
        assert f"linkage · {step}" in done.output  # each step shown as it ran
    # Splink's warnings of levels an EM session cannot see are not printed (the model
    # card lists the levels never seen); the threshold the model chose is, and why.
    assert not [r for r in caplog.records if "not observed in dataset" in r.getMessage()]
    assert "balanced chosen with model v1: the lowest candidate" in " ".join(done.output.split())
    manifest = json.loads((published(out).exact_manifest).read_text())
    rec = manifest["reconciliation"]
    assert rec["rows_in"] == sum(small_data.records.values())
    assert _figure(done.output, "all", "Reconciliation")[1:] == [
        f"{rec['rows_in']:,}",
        f"{rec['rows_linked']:,}",
        f"{rec['rows_quarantined']:,}",
    ]
    measured = manifest["measured_accuracy"]["balanced"]
    estimated = manifest["estimated_error_rates"]["balanced"]
    assert _figure(done.output, "balanced", "Pairwise precision")[1:] == [
        f"{estimated['precision']:.4f}",
        f"{estimated['recall']:.4f}",
        f"{measured['precision']:.4f}",
        f"{measured['recall']:.4f}",
    ]
    lookup = pd.read_parquet(published(out).person_lookup)
    assert len(lookup) == rec["rows_linked"]
    assert manifest["model"]["trained_in_this_run"] and manifest["model"]["version"] == 1

    again = runner.invoke(app, [*args, "--model-version", "latest"])
    assert again.exit_code == 0, again.output
    reused = json.loads((published(out).exact_manifest).read_text())
    assert not reused["model"]["trained_in_this_run"] and reused["model"]["version"] == 1
    assert reused["measured_accuracy"] is None  # no ground truth given this time
    assert "meas." not in again.output
    models = published(out).model_dir.glob("model_v*.json")
    assert sorted(p.name for p in models) == ["model_v0001.json"]
    keys = ["source_dataset", "source_record_id"]
    pd.testing.assert_frame_equal(
        lookup.sort_values(keys).reset_index(drop=True),
        pd.read_parquet(published(out).person_lookup).sort_values(keys).reset_index(drop=True),
    )
    assert "Person ids: generation 2" in again.output

    # With nothing delivered since, an incremental run scores nothing and keeps every id.
    unchanged = runner.invoke(app, [*args, "--incremental"])
    assert unchanged.exit_code == 0, unchanged.output
    said = " ".join(unchanged.output.split())
    assert f"0 new or changed records scored against {len(lookup):,}, 0 taken out" in said
    assert "0 records reclustered" in said
    pd.testing.assert_frame_equal(
        lookup.sort_values(keys).reset_index(drop=True),
        pd.read_parquet(published(out).person_lookup).sort_values(keys).reset_index(drop=True),
    )

    # The publications, and an id's history, as a researcher asks for them.
    listed = runner.invoke(app, ["snapshots", str(DEMO_CONFIG), "--out", str(out)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("current") == 1 and "v1" in listed.output
    shareable = str(published(out).shareable_dir)
    asked = runner.invoke(app, ["person-id", lookup.person_id.iloc[0], "--published", shareable])
    assert asked.exit_code == 0 and "issued in snapshot" in asked.output, asked.output
    assert "it holds its records in this publication" in asked.output
    unknown = runner.invoke(app, ["person-id", "P0000000000000000", "--published", shareable])
    assert unknown.exit_code == 1 and "not issued" in unknown.output
    # Withdrawing a delivery says what happens next; an unknown delivery or model is refused.
    where = ["--out", str(out), "--data-dir", str(small_data.out_dir)]
    withdraw = ["delivery", "withdraw", str(DEMO_CONFIG), "prisons"]
    wrong = runner.invoke(app, [*withdraw, "nope.parquet", "--reason", "x", *where])
    assert wrong.exit_code == 2 and "no delivery 'nope.parquet'" in wrong.output
    done = runner.invoke(app, [*withdraw, "prisons.parquet", "--reason", "re-issued", *where])
    assert done.exit_code == 0, done.output
    assert "(or with --incremental) to publish without it" in " ".join(done.output.split())
    refused = runner.invoke(app, ["promote", str(DEMO_CONFIG), "9", "--out", str(out)])
    assert refused.exit_code == 2 and "no model version 9" in refused.output


@pytest.mark.slow
def test_demo_generates_links_reviews_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = runner.invoke(app, ["demo", "--people", "400", "--out", str(out), "--seed", "3"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((published(out).exact_manifest).read_text())
    assert manifest["reconciliation"]["reconciles"]
    assert manifest["reconciliation"]["rows_in"] == sum(
        len(pd.read_parquet(p)) if p.suffix == ".parquet" else len(p.read_text().splitlines()) - 1
        for p in (out / "data").iterdir()
        if p.suffix in (".csv", ".parquet") and p.stem != "ground_truth"
    )
    assert manifest["measured_accuracy"]["balanced"]["recall"] > 0.9
    # The simulated clerical review has been imported and reported.
    quality = json.loads((published(out).linkage_quality).read_text())
    assert quality["clerical_review"]["labelled_pairs"] == len(
        pd.read_parquet(published(out).review_labels)
    )
    assert (published(out).data_owner_dir / "index.html").exists()
    # The prior's declared rules recall is set beside what the model's own scores imply.
    rules_recall = manifest["pairs"]["blocking_check"]["deterministic_rules_recall"]
    assert rules_recall["declared"] == 0.7
    assert 0.5 < rules_recall["implied_by_scored_pairs"] <= 1
    assert "times too" in published(out).linkage_report.read_text()
    # Training rebuilt the prior on the recall its first model's scores implied, so the
    # final model's scores bear it out.
    assert rules_recall["prior_built_on"] != 0.7
    assert rules_recall["prior_built_on"] == manifest["model"]["deterministic_rules_recall"]
    assert abs(rules_recall["prior_built_on"] - rules_recall["implied_by_scored_pairs"]) < 0.05
    assert "the prior was rebuilt on it" in published(out).model_card.read_text()
    # What blocking never reached is estimated per pair of sources and said in the report.
    reach = manifest["pairs"]["blocking_check"]
    assert reach["expected_matches_not_blocked"] > 0
    assert 0.9 < reach["share_of_matches_blocked"] < 1
    assert len(reach["by_source_pair"]) > 1
    assert "were never blocked" in published(out).linkage_report.read_text()
    # ... and counted in the estimates: missed, less those that sit inside one person (all
    # of them may, on small data), so fewer as the threshold falls and persons grow.
    estimates = manifest["estimated_error_rates"]
    missed = [estimates[t]["expected_missed_not_blocked"] for t in THRESHOLDS]
    assert all(0 <= m <= reach["expected_matches_not_blocked"] for m in missed)
    assert missed[0] > 0 and missed == sorted(missed, reverse=True)
    assert all(e["within_cluster_pairs_never_blocked"] >= 0 for e in estimates.values())
    report_words = " ".join(published(out).linkage_report.read_text().split())
    assert "The estimates count those too" in report_words
    # The bias tables take the published estimate apart by group: over everyone, they are it.
    overall = quality["bias"]["overall"][0]
    balanced = manifest["estimated_error_rates"]["balanced"]
    assert overall["estimated_precision"] == pytest.approx(balanced["precision"], abs=1e-5)
    assert overall["estimated_recall"] == pytest.approx(balanced["recall"], abs=1e-5)
    # Splink's working tables went with the steps that made them; the linkage's own stayed.
    database = OutputLayout(out).work_dir / "joinedup.duckdb"
    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        views = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    tables = {row[0] for row in rows}
    assert not [t for t in tables if t.startswith(("__splink__", "__identity_"))]
    assert not [v for (v,) in views if v.startswith("__completeness_")]
    # The estimates' counted pairs are kept, for the report and the next incremental linkage.
    kept = {Tables.expected_pairs(t) for t in THRESHOLDS} | {Tables.EXPECTED_PAIRS_OF}
    assert {"pairwise_predictions", "person_lookup", *kept} <= tables


def test_malformed_delivery_fails_its_ingest_with_the_file_named(
    small_data, tmp_path: Path
) -> None:
    config = demo_subset(small_data, tmp_path, ("probation", "benefits"))
    broken = tmp_path / "probation.csv"
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([lines[0].replace("birth_date", "dob")] + lines[1:]) + "\n")
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "deliveries__probation_delivery" in flat and "probation.csv is missing column(s)" in flat
    assert "['birth_date']" in flat and "Traceback" not in result.output


def test_unknown_engine_is_refused_before_outputs_are_touched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (published(out).linked_dir).mkdir(parents=True)
    marker = published(out).person_lookup
    marker.write_text("previous run")
    result = runner.invoke(app, ["run", str(DEMO_CONFIG), "--engine", "oracle", "--out", str(out)])
    assert result.exit_code == 2
    flat = " ".join(result.output.replace("│", " ").split())
    assert "'oracle' is not one of 'duckdb', 'spark'" in flat and "Traceback" not in flat
    assert marker.read_text() == "previous run"


def test_version_is_printed() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"joinedup {version('joinedup')}"


@pytest.mark.slow
def test_validate_checks_every_delivery_without_touching_outputs(
    small_data, tmp_path: Path
) -> None:
    config = demo_subset(small_data, tmp_path, ("prisons", "benefits"))

    good = runner.invoke(app, ["validate", str(config)])
    assert good.exit_code == 0, good.output
    assert "valid; 2 deliveries, 0 rejected" in " ".join(good.output.split())
    assert not (tmp_path / "out").exists()  # a dry run writes no outputs

    prisons = pd.read_parquet(tmp_path / "prisons.parquet")
    prisons.loc[prisons.index[::2], "sex"] = "Q"
    prisons.to_parquet(tmp_path / "prisons.parquet")
    bad = runner.invoke(app, ["validate", str(config)])
    assert bad.exit_code == 1, bad.output
    rows = {line.split("│")[1].strip(): line for line in bad.output.splitlines() if "│" in line}
    assert "rejected" in rows["prisons"] and "sex_codes_declared" in rows["prisons"]
    assert "accepted" in rows["benefits"]
    assert "valid; 2 deliveries, 1 rejected" in " ".join(bad.output.split())
    assert not (tmp_path / "out").exists()


def test_unusable_ground_truth_is_refused_before_the_run(small_data, tmp_path: Path) -> None:
    """A ground-truth file with its own column names stops the run up front (exit 2),
    naming the file, the missing columns and how to map them; outputs are untouched."""
    truth = pd.read_parquet(small_data.ground_truth).rename(
        columns={"source_record_id": "rec_id", "true_person_id": "person"}
    )
    path = tmp_path / "truth.csv"
    truth.to_csv(path, index=False)
    out = tmp_path / "out"
    args = ["run", str(DEMO_CONFIG), "--data-dir", str(small_data.out_dir), "--out", str(out)]
    result = runner.invoke(app, [*args, "--ground-truth", str(path)])
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, flat
    assert "truth.csv is missing column(s) source_record_id, true_person_id" in flat
    assert "--truth-columns" in flat and "Traceback" not in flat
    assert not out.exists()
    mapped = "source_record_id=rec_id,true_person_id=nobody"
    result = runner.invoke(app, [*args, "--ground-truth", str(path), "--truth-columns", mapped])
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "true_person_id (as 'nobody')" in flat
    assert not out.exists()


def test_an_unexpected_error_is_reported_without_the_values_it_quotes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error nobody foresaw (here from a library quoting a record) ends the command with
    its type and place, the record withheld, and no traceback."""
    from pipelines import cli

    def broken(*_: object, **__: object) -> None:
        raise ValueError("could not parse 'Ann SMITH' born 1980-01-02 at \"LS1 4AP\"")

    monkeypatch.setattr(cli, "generate_extracts", broken)
    monkeypatch.setattr("sys.argv", ["joinedup", "generate", "--out", "/tmp/unused"])
    with pytest.raises(SystemExit) as stopped:
        cli.entry_point()
    assert stopped.value.code == 1
    shown = capsys.readouterr().out
    assert "unexpected error: ValueError: could not parse" in shown and "cli.py" in shown
    for value in ("SMITH", "1980", "LS1"):
        assert value not in shown
    assert "Traceback" not in shown

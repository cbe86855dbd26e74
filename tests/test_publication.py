"""Write-audit-publish: a run publishes a new snapshot only after its audit; a failed,
refused or concurrent run leaves the last publication exactly as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from linkage_models.project import LoadedProject, load_project, parse_project
from pipelines.contract import OutputLayout
from pipelines.engines.duckdb_engine import DuckDBEngine
from pipelines.publication import (
    begin_staging,
    current_snapshot,
    snapshots,
    stage_from_current,
)
from pipelines.run import RunError, RunResult, run_project
from pipelines.synthetic import GeneratedData
from quality.publication_audit import AuditFailure, audit_build

from .helpers import demo_settings, demo_subset, write_project


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _published_files(layout: OutputLayout) -> dict[str, dict[str, str]]:
    return {z: _fingerprint(layout.published.zone_dir(z)) for z in ("shareable", "secure")}


def test_a_failed_run_leaves_the_last_publication_exactly_as_it_was(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    config = demo_subset(small_data, tmp_path, ("probation", "benefits"))
    first = run_project(load_project(config))
    layout = OutputLayout(first.output_dir)
    assert first.snapshot == current_snapshot(layout) == first.manifest["snapshot"]
    before = _published_files(layout)
    assert {"manifest.json", "linked/person_lookup.parquet"} <= set(before["shareable"])

    broken = tmp_path / "probation.csv"
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([lines[0].replace("birth_date", "dob")] + lines[1:]) + "\n")
    with pytest.raises(RunError) as failure:
        run_project(load_project(config))
    message = str(failure.value)
    assert "probation.csv is missing column(s)" in message
    assert f"the previous publication ({first.snapshot}) stands unchanged" in message

    assert current_snapshot(layout) == first.snapshot
    assert snapshots(layout) == [first.snapshot]
    assert _published_files(layout) == before


def test_a_second_run_into_the_same_folder_stops_and_changes_nothing(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    config = demo_subset(small_data, tmp_path, ("probation", "benefits"))
    project = load_project(config)
    layout = OutputLayout(project.output_dir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from pipelines.contract import OutputLayout\n"
            "from pipelines.publication import run_lock\n"
            "with run_lock(OutputLayout(Path(sys.argv[1]))):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
            str(layout.root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="is in use by another run"):
            run_project(project)
        raw = yaml.safe_load(config.read_text())
        raw["output"]["wait_for_running_seconds"] = 1.5
        write_project(raw, config)
        waiting = load_project(config)
        started = time.monotonic()
        with pytest.raises(RunError, match=rf"pid {holder.pid}"):
            run_project(waiting)
        assert time.monotonic() - started >= 1.5
    finally:
        holder.kill()
        holder.wait()
    assert not (layout.root / "shareable").exists() and not (layout.root / "staging").exists()
    assert not layout.work_dir.exists()  # the working state was not touched either


@contextmanager
def _staged_audit(small_run: RunResult) -> Iterator[tuple[OutputLayout, DuckDBEngine, list[str]]]:
    """The small run's publication staged again to be audited, with an engine on its
    working database and its sources; the staging is removed afterwards."""
    layout = OutputLayout(small_run.output_dir)
    stage_from_current(layout, "audit-test")
    try:
        with DuckDBEngine(layout.work_dir / "joinedup.duckdb") as engine:
            yield layout, engine, list(small_run.manifest["reconciliation"]["by_source"])
    finally:
        shutil.rmtree(layout.root / "staging")


def test_the_audit_passes_a_clean_build_and_refuses_one_showing_a_name(
    small_run: RunResult, small_project: LoadedProject
) -> None:
    with _staged_audit(small_run) as (layout, engine, sources):
        checked = audit_build(engine, small_project.spec, layout, sources)
        assert checked["identifier_values_found"] == 0 and checked["text_files_scanned"] > 10
        given, family = engine.fetch(
            "SELECT given_name, family_name FROM linkage_input_prisons "
            "WHERE given_name IS NOT NULL AND family_name IS NOT NULL LIMIT 1"
        )[0]
        note = layout.reports_dir / "analyst_note.md"
        note.write_text(f"Checked the record of {given.title()} {family.upper()} by hand.\n")
        with pytest.raises(AuditFailure) as refused:
            audit_build(engine, small_project.spec, layout, sources)
    message = str(refused.value)
    assert "analyst_note.md: 1 name value(s) of input records" in message
    assert given.lower() not in message.lower() and family.lower() not in message.lower()
    assert current_snapshot(layout) == small_run.snapshot


def test_the_audit_does_not_take_a_colour_code_for_a_record_named_by_initials(
    small_run: RunResult, small_project: LoadedProject
) -> None:
    """Found on pseudopeople's files: a record named "B B" matched the "#1b1b1b" of every
    page's style sheet, and the audit refused the whole publication."""
    with _staged_audit(small_run) as (layout, engine, sources):
        # A temporary table on this connection only: the shared run is left as it was.
        engine.execute(
            "CREATE TEMP TABLE linkage_input_prisons AS "
            "SELECT * REPLACE ('B' AS given_name, 'B' AS family_name) "
            "FROM main.linkage_input_prisons"
        )
        note = layout.reports_dir / "analyst_note.md"
        note.write_text("<p style='color: #1b1b1b'>Checked by hand.</p>\n")
        checked = audit_build(engine, small_project.spec, layout, sources)
        assert checked["identifier_values_found"] == 0
        # A real name beside the initials is still refused.
        engine.execute(
            "UPDATE linkage_input_prisons SET given_name = 'Bo', family_name = 'By' "
            "WHERE record_id = (SELECT min(record_id) FROM linkage_input_prisons)"
        )
        note.write_text("<p>Checked Bo By by hand.</p>\n")
        with pytest.raises(AuditFailure, match="analyst_note.md: 1 name value"):
            audit_build(engine, small_project.spec, layout, sources)
    assert current_snapshot(layout) == small_run.snapshot


def test_the_audit_does_not_take_the_products_own_words_for_a_name(
    small_run: RunResult, small_project: LoadedProject
) -> None:
    """Found at 1M generated records: a record named "Is Day" matched the words either side
    of a backtick in the chart text "If comparison level is `day and month swapped`", and
    the audit refused the whole publication. JSON keys, tag names, column names and the
    product's own sentences are not names; a name written into a page still is."""
    with _staged_audit(small_run) as (layout, engine, sources):
        names = [("is", "day"), ("start", "mark"), ("in", "code"), ("has", "more")]
        given, family = (
            " ".join(f"WHEN {i} THEN '{name[part]}'" for i, name in enumerate(names, 1))
            for part in (0, 1)
        )
        engine.execute(  # on this connection only: the shared run stays as it was
            "CREATE TEMP TABLE linkage_input_prisons AS SELECT * EXCLUDE (n) REPLACE ("
            f"CASE n {given} ELSE given_name END AS given_name, "
            f"CASE n {family} ELSE family_name END AS family_name) FROM ("
            "SELECT *, row_number() OVER (ORDER BY record_id) AS n "
            "FROM main.linkage_input_prisons)"
        )
        page = layout.reports_dir / "analyst_page.html"
        page.write_text(
            "<html><body><p>No person has more than 25 records, all in\n"
            "<code>linked/person_lookup.parquet</code>.</p>\n"
            '<script>var spec = {"data": [{"chart_start": 4644400}], "mark": "bar", '
            '"bayes_factor_description": "If comparison level is `day and month '
            'swapped` then comparison is 305 times more likely to be a match"};</script>'
            "</body></html>\n"
        )
        assert audit_build(engine, small_project.spec, layout, sources)["published_tables"]
        page.write_text("<table><tr><td>Is</td><td>Day</td></tr></table>\n")
        with pytest.raises(AuditFailure, match="analyst_page.html: 1 name value"):
            audit_build(engine, small_project.spec, layout, sources)
    assert current_snapshot(layout) == small_run.snapshot


@pytest.mark.parametrize(
    ("first_key", "step", "dense"),
    [(100_000, 1, True), (400_000_000_000, 7_919, False)],
    ids=["dense six-digit keys", "sparse twelve-digit keys"],
)
def test_the_audit_looks_for_numeric_person_keys_only_where_a_number_would_not_match_by_chance(
    small_run: RunResult, first_key: int, step: int, dense: bool
) -> None:
    """A pseudonymised key numbered 100000, 100001, ... makes almost every six-digit
    number in a report someone's key: looking for them would refuse every publication.
    Sparse keys are still looked for, and never in the digits of a rate (0.400000007919)."""
    raw = demo_settings()
    prisons = next(s for s in raw["sources"] if s["name"] == "prisons")
    prisons["identifiers"]["other"] = {"prison_key": {"type": "person_id", "column": "key"}}
    project = parse_project(raw, "keys.yaml")
    with _staged_audit(small_run) as (layout, engine, sources):
        for source in sources:  # on this connection only: the shared run stays as it was
            key = (
                f"CAST({first_key} + {step} * row_number() OVER (ORDER BY record_id) AS VARCHAR)"
                if source == "prisons"
                else "CAST(NULL AS VARCHAR)"
            )
            engine.execute(
                f"CREATE TEMP TABLE linkage_input_{source} AS "
                f"SELECT *, {key} AS prison_key FROM main.linkage_input_{source}"
            )
        key = engine.fetch("SELECT max(prison_key) FROM linkage_input_prisons")[0][0]
        note = layout.reports_dir / "analyst_note.md"
        note.write_text(f"Precision 0.{key}, estimated.\n")
        checked = audit_build(engine, project, layout, sources)
        assert checked["digit_codes_not_scanned_lengths"] == ([6] if dense else [])
        note.write_text(f"Records checked by hand: {key}.\n")
        if dense:
            assert audit_build(engine, project, layout, sources)["published_tables"]
        else:
            with pytest.raises(AuditFailure, match="analyst_note.md: 1 code value"):
                audit_build(engine, project, layout, sources)


def test_the_audit_refuses_a_shareable_count_that_escaped_disclosure_control(
    small_run: RunResult, small_project: LoadedProject
) -> None:
    """The shareable manifest holds rounded counts (the exact ones stay in the secure zone);
    an exact count written into it stops the publication, named by where it is."""
    layout = OutputLayout(small_run.output_dir)
    stage_from_current(layout, "audit-test")
    try:
        exact = json.loads(layout.exact_manifest.read_text())["reconciliation"]
        shared = json.loads(layout.manifest.read_text())
        assert shared["disclosure_control"]["base"] == 5
        source = next(iter(shared["reconciliation"]["by_source"]))
        shared["reconciliation"]["by_source"][source]["rows_in"] = 1383
        layout.manifest.write_text(json.dumps(shared))
        with (
            DuckDBEngine(layout.work_dir / "joinedup.duckdb") as engine,
            pytest.raises(AuditFailure) as refused,
        ):
            audit_build(engine, small_project.spec, layout, list(exact["by_source"]))
        assert "manifest.json: 1 count(s) not protected against disclosure" in str(refused.value)
        assert f"reconciliation.by_source.{source}.rows_in" in str(refused.value)
    finally:
        shutil.rmtree(layout.root / "staging")


def test_a_publication_killed_between_its_two_switches_is_put_back(tmp_path: Path) -> None:
    """Killed after the secure pointer moved and before the shareable one did: the next build
    points the secure zone back at the publication (the shareable zone's snapshot)."""
    layout = OutputLayout(tmp_path / "out")
    for zone, ids in (("shareable", ["old"]), ("secure", ["old", "new"])):
        for snapshot in ids:
            (layout.root / zone / "snapshots" / snapshot).mkdir(parents=True)
    (layout.root / "shareable" / "current").symlink_to(Path("snapshots") / "old")
    (layout.root / "secure" / "current").symlink_to(Path("snapshots") / "new")
    begin_staging(layout, "next-run")
    assert (layout.root / "secure" / "current").resolve().name == "old"
    assert current_snapshot(layout) == "old"


def _killed_at(config: Path, layout: OutputLayout, stage: str) -> None:
    """Start `joinedup run` in a process of its own and kill it (SIGKILL: no clean-up runs)
    as soon as it has finished `stage`."""
    record = layout.work_dir / "stages" / f"{stage}.json"
    started = time.time()
    run = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pipelines.cli import entry_point; entry_point()",
            "run",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (record.exists() and record.stat().st_mtime >= started):
            assert run.poll() is None, f"the run ended before {stage}"
            assert time.monotonic() < deadline, f"{stage} never finished"
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()


@pytest.mark.parametrize("stage", ["linkage_inputs", "cluster"])
def test_a_killed_run_leaves_the_publication_and_a_rerun_repeats_a_clean_run(
    small_data: GeneratedData, tmp_path: Path, stage: str
) -> None:
    config = demo_subset(small_data, tmp_path, ("probation", "benefits"))
    first = run_project(load_project(config))
    layout = OutputLayout(first.output_dir)
    before = _published_files(layout)

    _killed_at(config, layout, stage)
    assert current_snapshot(layout) == first.snapshot
    assert _published_files(layout) == before  # byte for byte

    again = run_project(load_project(config))  # the lock died with the killed run
    assert again.snapshot != first.snapshot
    for table in ("linked/person_lookup.parquet", "linked/events.parquet"):
        assert _published_files(layout)["shareable"][table] == before["shareable"][table]

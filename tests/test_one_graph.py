"""The command line and Dagster run one graph: `joinedup run` and Dagster's own command line
(`dg launch`, each job in its own process against a persistent instance) publish the same
bytes from the same project."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from linkage_models.project import load_project
from pipelines.contract import MODEL_STEP
from pipelines.deliveries import discover_deliveries
from pipelines.synthetic import GeneratedData

from .helpers import DEMO_CONFIG, published

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Provenance that differs by nature between two runs: the run's id, when it was written and
# how long each stage took. Everything else must agree.
RUN_PROVENANCE = ("run_id", "written_at", "stages")
# The platform's secret that keys person ids, shared by both ways of running.
SECRET = {"JOINEDUP_PERSON_ID_KEY": "one platform secret"}


def _digests(out: Path) -> dict[str, str]:
    """The linked dataset, quarantine and data-owner reports of the latest publication; the
    register of person ids without the snapshot ids it names (they differ by nature)."""
    zone = published(out)
    digests = {
        f"{folder.name}/{p.relative_to(folder)}": hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in (zone.linked_dir, zone.quarantine_dir, zone.data_owner_dir)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p != zone.person_ids
    }
    register = pd.read_parquet(zone.person_ids).replace(zone.snapshot, "SNAPSHOT")
    digests["person_ids"] = hashlib.sha256(register.to_csv().encode()).hexdigest()
    return digests


def _without_provenance(document: dict, snapshot: str | None = None) -> dict:
    """The document without the run's provenance; its snapshot id (also inside secure-zone
    paths) replaced by a placeholder."""
    kept = {k: v for k, v in document.items() if k not in RUN_PROVENANCE}
    snapshot = snapshot or document.get("snapshot")
    text = json.dumps(kept)
    return json.loads(text.replace(snapshot, "SNAPSHOT") if snapshot else text)


def _report_without_provenance(html: str, quality: dict, snapshot: str) -> str:
    """The report without its run, time and snapshot (in the secure paths it names)."""
    return (
        html.replace(quality["run_id"], "RUN")
        .replace(quality["written_at"], "WHEN")
        .replace(snapshot, "SNAPSHOT")
    )


def _dg(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "dg"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_cli_and_dagster_runs_publish_identical_outputs(
    small_data: GeneratedData, tmp_path: Path
) -> None:
    cli_out, dagster_out, home = tmp_path / "cli", tmp_path / "dagster", tmp_path / "dagster_home"
    done = subprocess.run(
        [str(BIN / "joinedup"), "run", str(DEMO_CONFIG), "--data-dir", str(small_data.out_dir)]
        + ["--out", str(cli_out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **SECRET},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    # Dagster: the deliveries the sensors would register, then each ingest job and the
    # relink job, launched by Dagster's command line in processes of their own.
    home.mkdir()
    project = load_project(DEMO_CONFIG, data_dir=small_data.out_dir, output_dir=dagster_out)
    instance = dg.DagsterInstance.from_config(str(home))
    deliveries = {s.name: discover_deliveries(project, s) for s in project.spec.sources}
    for source, found in deliveries.items():
        instance.add_dynamic_partitions(f"{source}_deliveries", [d.key for d in found])
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(BIN.parent),
        "DAGSTER_HOME": str(home),
        "JOINEDUP_PROJECT": str(DEMO_CONFIG),
        "JOINEDUP_DATA_DIR": str(small_data.out_dir),
        "JOINEDUP_OUTPUT_DIR": str(dagster_out),
        **SECRET,
    }
    for source, found in deliveries.items():
        for d in found:
            _dg(["launch", "--job", f"ingest_{source}", "--partition", d.key], env)
    # As `joinedup run` does for a project's first linkage: it may train (and approve) the
    # first model. The schedule launches the job without this, and never trains.
    first_model = {"ops": {MODEL_STEP: {"config": {"train_if_none_approved": True}}}}
    _dg(["launch", "--job", "relink", "--config-json", json.dumps(first_model)], env)

    # The linked dataset, quarantine and data-owner reports: byte for byte.
    cli_files, dagster_files = _digests(cli_out), _digests(dagster_out)
    assert cli_files and cli_files == dagster_files
    # The manifest and the linkage report: the same but for the run's own provenance.
    cli_manifest = json.loads((published(cli_out).manifest).read_text())
    dagster_manifest = json.loads((published(dagster_out).manifest).read_text())
    assert cli_manifest["run_id"] != dagster_manifest["run_id"]
    assert cli_manifest["person_id_key"] == "environment variable JOINEDUP_PERSON_ID_KEY"
    assert _without_provenance(cli_manifest) == _without_provenance(dagster_manifest)
    cli_quality = json.loads((published(cli_out).linkage_quality).read_text())
    dagster_quality = json.loads((published(dagster_out).linkage_quality).read_text())
    assert _without_provenance(cli_quality, cli_manifest["snapshot"]) == _without_provenance(
        dagster_quality, dagster_manifest["snapshot"]
    )
    assert _report_without_provenance(
        (published(cli_out).linkage_report).read_text(), cli_quality, cli_manifest["snapshot"]
    ) == _report_without_provenance(
        (published(dagster_out).linkage_report).read_text(),
        dagster_quality,
        dagster_manifest["snapshot"],
    )
    # Dagster recorded its runs: one per delivery, and the relink.
    runs = instance.get_runs()
    assert len(runs) == sum(len(f) for f in deliveries.values()) + 1
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

"""The command line a platform engineer uses: clear errors, no stack traces."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


def test_invalid_config_exits_with_the_key_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: x\nsources: []\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "sources" in result.output
    assert "Traceback" not in result.output


def test_missing_source_file_is_named(tmp_path: Path) -> None:
    from .conftest import DEMO_CONFIG

    result = runner.invoke(
        app, ["run", str(DEMO_CONFIG), "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "source 'magistrates_courts': no file found" in result.output


def test_generate_writes_extracts_and_ground_truth(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", str(tmp_path), "--people", "200"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ground_truth.parquet").exists()
    assert (tmp_path / "magistrates_courts.csv").exists()


def test_malformed_delivery_fails_its_ingest_with_the_file_named(
    small_data, tmp_path: Path
) -> None:
    import shutil

    import yaml

    from .conftest import DEMO_CONFIG

    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["sources"] = [s for s in raw["sources"] if s["name"] in ("probation", "benefits")]
    for s in raw["sources"]:
        shutil.copy(small_data.files[s["name"]], tmp_path / s["path"])
    broken = tmp_path / "probation.csv"
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join([lines[0].replace("birth_date", "dob")] + lines[1:]) + "\n")
    raw["data_dir"] = str(tmp_path)
    config = tmp_path / "project.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "probation__delivery" in flat and "probation.csv is missing column(s)" in flat
    assert "['birth_date']" in flat and "Traceback" not in result.output


def test_unknown_engine_is_refused_before_outputs_are_touched(tmp_path: Path) -> None:
    from .conftest import DEMO_CONFIG

    out = tmp_path / "out"
    (out / "linked").mkdir(parents=True)
    marker = out / "linked" / "person_lookup.parquet"
    marker.write_text("previous run")
    result = runner.invoke(app, ["run", str(DEMO_CONFIG), "--engine", "oracle", "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown engine 'oracle'" in result.output and "Traceback" not in result.output
    assert marker.read_text() == "previous run"

"""The linkage project YAML: valid files load, invalid ones name the file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from linkage_models.project import ConfigError, load_project

from .helpers import DEMO_CONFIG, demo_settings, write_project


def _write_variant(tmp_path: Path, mutate) -> Path:
    raw = demo_settings()
    mutate(raw)
    return write_project(raw, tmp_path / "project.yaml")


def test_demo_project_loads_with_paths_resolved_against_the_file() -> None:
    project = load_project(DEMO_CONFIG)
    assert [s.name for s in project.spec.sources] == [
        "magistrates_courts",
        "prisons",
        "probation",
        "pupils",
        "benefits",
    ]
    assert project.data_dir == (DEMO_CONFIG.parent / "../out/demo/data").resolve()
    assert len(project.config_hash) == 64


def test_config_hash_ignores_comments_but_not_settings(tmp_path: Path) -> None:
    commented = tmp_path / "a.yaml"
    commented.write_text("# a comment\n" + DEMO_CONFIG.read_text())
    assert load_project(commented).config_hash == load_project(DEMO_CONFIG).config_hash
    changed = _write_variant(tmp_path, lambda r: r["model"]["thresholds"].update(balanced=0.95))
    assert load_project(changed).config_hash != load_project(DEMO_CONFIG).config_hash


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: linkage project file not found"):
        load_project(tmp_path / "nope.yaml")


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_project(bad)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda r: r["model"]["thresholds"].update(balanced="best"),
            r"model\.thresholds\.balanced",
        ),
        (
            lambda r: r["sources"][1].update(format="xlsx"),
            r"sources\[1\]\(prisons\)\.format: Input should be 'csv' or 'parquet'",
        ),
        (
            lambda r: r["sources"][0]["identifiers"]["date_of_birth"].update(
                formats=["dd/mm/yyyy"]
            ),
            r"sources\[0\]\(magistrates_courts\)\.identifiers\.date_of_birth\.formats: "
            r"date format 'dd/mm/yyyy' is not a strptime pattern",
        ),
        (
            lambda r: r["model"]["comparisons"].update(shoe_size=None),
            r"model\.comparisons: unknown identifier\(s\) \['shoe_size'\]",
        ),
        (
            lambda r: r["model"]["blocking_rules"].append(["surname"]),
            r"blocking rule \['surname'\] uses unknown column\(s\) \['surname'\]",
        ),
        (
            lambda r: r["model"]["thresholds"].update(high_precision=0.5),
            r"model\.thresholds: expected high_precision >= balanced >= high_recall",
        ),
        (
            lambda r: r["sources"][2].update(colour="blue"),
            r"sources\[2\]\(probation\)\.colour: Extra inputs are not permitted",
        ),
        (
            lambda r: r["sources"].append(dict(r["sources"][0])),
            r"source names must be unique; repeated: \['magistrates_courts'\]",
        ),
        (
            lambda r: r["sources"][3].update(identifiers={"sex": "sex", "postcode": "postcode"}),
            r"sources\[3\]\(pupils\)\.identifiers: map at least two of",
        ),
        (
            lambda r: r["model"]["training"].update(em_blocking_rules=[["postcode"]]),
            r"model\.training\.em_blocking_rules: List should have at least 2 items",
        ),
    ],
)
def test_invalid_config_names_file_key_and_expectation(tmp_path: Path, mutate, expected) -> None:
    path = _write_variant(tmp_path, mutate)
    with pytest.raises(ConfigError, match=expected) as info:
        load_project(path)
    assert str(path) in str(info.value)


def test_an_identifier_column_cannot_be_published_as_an_attribute(tmp_path: Path) -> None:
    """Listing the home postcode under attributes would publish it in events.parquet."""

    def publish_postcode(raw: dict) -> None:
        raw["sources"][0]["attributes"] = ["offence_group", "home_postcode"]

    with pytest.raises(ConfigError) as refused:
        load_project(_write_variant(tmp_path, publish_postcode))
    message = str(refused.value)
    assert "project.yaml" in message and "attributes" in message
    assert "'magistrates_courts'" in message and "['home_postcode']" in message

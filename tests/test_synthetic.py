"""The synthetic extracts: deterministic, varied, with ground truth kept apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.ingest import file_sha256
from pipelines.synthetic import DEPARTMENTS, GeneratedData, generate_extracts


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = generate_extracts(tmp_path / "a", people=500, seed=3)
    b = generate_extracts(tmp_path / "b", people=500, seed=3)
    c = generate_extracts(tmp_path / "c", people=500, seed=4)
    for name in a.files:
        assert file_sha256(str(a.files[name])) == file_sha256(str(b.files[name]))
    assert file_sha256(str(a.ground_truth)) != file_sha256(str(c.ground_truth))


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    sep = ";" if path.name.startswith("benefits") else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def test_departments_have_their_own_schemas_and_formats(small_data: GeneratedData) -> None:
    assert len(small_data.files) == len(DEPARTMENTS) >= 4
    schemas = {name: tuple(_read(path).columns) for name, path in small_data.files.items()}
    assert len(set(schemas.values())) == len(schemas)
    assert {p.suffix for p in small_data.files.values()} == {".csv", ".parquet"}
    courts = _read(small_data.files["magistrates_courts"])
    assert courts.defendant_name.str.contains(", ").mean() > 0.95  # "SURNAME, Forename"


def test_ground_truth_is_separate_and_covers_every_record(small_data: GeneratedData) -> None:
    truth = pd.read_parquet(small_data.ground_truth)
    assert list(truth.columns) == ["source_dataset", "source_record_id", "true_person_id"]
    assert not truth.duplicated(["source_dataset", "source_record_id"]).any()
    for name, path in small_data.files.items():
        ids = set(_read(path).iloc[:, 0])
        assert ids == set(truth.loc[truth.source_dataset == name, "source_record_id"])
        assert "true_person_id" not in _read(path).columns
    # People appear more than once (within and across sources).
    assert truth.true_person_id.value_counts().max() > 2


def test_households_hold_brothers_and_sisters_as_well_as_twins(small_data: GeneratedData) -> None:
    """Two different pupils with one family name at one postcode are mostly siblings born
    years apart, and some are twins: sharing a home is not near-proof of being one person."""
    truth = pd.read_parquet(small_data.ground_truth)
    pupils = pd.read_parquet(small_data.files["pupils"]).merge(
        truth.rename(columns={"source_record_id": "pupil_matching_ref"}), on="pupil_matching_ref"
    )
    pairs = pupils.merge(pupils, on=["surname", "postcode"])
    others = pairs[pairs.true_person_id_x < pairs.true_person_id_y]
    born_apart = others.date_of_birth_x != others.date_of_birth_y
    assert born_apart.mean() > 0.8
    assert (~born_apart).sum() > 0

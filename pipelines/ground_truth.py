"""Ground truth for measuring a linkage: a Parquet or CSV file with one row per record,

    source_dataset     the source's name in the project (e.g. magistrates_courts)
    source_record_id   the record's id in that source, as delivered
    true_person_id     the same value for every record of the same real person

Other column names are mapped with `columns` (our name -> the file's). The file is checked
before a run touches anything, so a wrong file costs seconds, not a whole linkage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipelines.engines import Engine
from pipelines.sql import ident

TRUTH_COLUMNS = ("source_dataset", "source_record_id", "true_person_id")
TRUTH_VIEW = "__ground_truth"


class GroundTruthError(ValueError):
    """The ground-truth file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class GroundTruth:
    path: Path
    columns: dict[str, str] = field(default_factory=dict)  # our name -> the file's

    @property
    def file_format(self) -> str:
        return "csv" if self.path.suffix.lower() in (".csv", ".txt") else "parquet"

    def column(self, name: str) -> str:
        return self.columns.get(name, name)


def parse_columns(text: str | None) -> dict[str, str]:
    """'source_dataset=src,true_person_id=pid' -> {'source_dataset': 'src', ...}."""
    if not text:
        return {}
    mapping = {}
    for part in text.split(","):
        ours, sep, theirs = (p.strip() for p in part.partition("="))
        if not sep or ours not in TRUTH_COLUMNS or not theirs:
            raise GroundTruthError(
                f"ground-truth column mapping {part.strip()!r}: expected <ours>=<file's>, with "
                f"<ours> one of {', '.join(TRUTH_COLUMNS)}"
            )
        mapping[ours] = theirs
    return mapping


def _read(truth: GroundTruth, columns: list[str]) -> pa.Table:
    if truth.file_format == "csv":
        return pa_csv.read_csv(
            truth.path,
            convert_options=pa_csv.ConvertOptions(
                include_columns=columns,
                column_types=dict.fromkeys(columns, pa.string()),
            ),
        )
    return pq.read_table(truth.path, columns=columns)


def _file_columns(truth: GroundTruth) -> list[str]:
    if truth.file_format == "csv":
        with pa_csv.open_csv(truth.path) as reader:
            return list(reader.schema.names)
    return list(pq.read_schema(truth.path).names)


def check_ground_truth(truth: GroundTruth, sources: list[str]) -> int:
    """Raise GroundTruthError unless `truth` can measure a linkage of `sources`; returns its
    number of rows. Messages name the file and columns, never values."""
    where = f"ground truth {truth.path}"
    if not truth.path.is_file():
        raise GroundTruthError(f"{where}: no such file")
    try:
        present = _file_columns(truth)
    except (pa.ArrowException, OSError):
        raise GroundTruthError(
            f"{where}: not a readable {truth.file_format.upper()} file"
        ) from None
    wanted = [truth.column(c) for c in TRUTH_COLUMNS]
    missing = [
        f"{c} (as {truth.column(c)!r})" if c in truth.columns else c
        for c in TRUTH_COLUMNS
        if truth.column(c) not in present
    ]
    if missing:
        raise GroundTruthError(
            f"{where} is missing column(s) {', '.join(missing)}; it has {', '.join(present)}. "
            "Expected one row per record with source_dataset, source_record_id and "
            "true_person_id; map other names with --truth-columns "
            "source_dataset=<col>,source_record_id=<col>,true_person_id=<col>"
        )
    try:
        table = _read(truth, wanted)
    except (pa.ArrowException, OSError):
        raise GroundTruthError(f"{where}: its rows cannot be read") from None
    if table.num_rows == 0:
        raise GroundTruthError(f"{where} has no rows")
    named = {str(v) for v in table.column(truth.column("source_dataset")).unique().to_pylist()}
    if not named & set(sources):
        raise GroundTruthError(
            f"{where}: its {truth.column('source_dataset')!r} column names none of the "
            f"project's sources ({', '.join(sources)})"
        )
    return table.num_rows


def register_ground_truth(engine: Engine, truth: GroundTruth) -> str:
    """A view with the standard column names (as text) over the file; returns its name."""
    engine.register_file("__ground_truth_file", str(truth.path), truth.file_format)
    columns = ", ".join(f"CAST({ident(truth.column(c))} AS VARCHAR) AS {c}" for c in TRUTH_COLUMNS)
    engine.execute(
        f"CREATE OR REPLACE TEMP VIEW {TRUTH_VIEW} AS SELECT {columns} FROM __ground_truth_file "
        f"WHERE {ident(truth.column('true_person_id'))} IS NOT NULL"
    )
    return TRUTH_VIEW

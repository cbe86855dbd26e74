"""Ingest: read one delivery file of a source into a raw, all-text table.

Only the columns the project maps are read (data minimisation), as text, so that parsing is
ours and leading zeros survive. Structural problems stop with a message naming the file and
what was expected; nothing row-level is decided here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from linkage_models.project import SourceSpec
from pipelines.engine import Engine
from pipelines.standardise import ident, lit


class SourceError(ValueError):
    """A structural problem with a delivered file: names the file and what was expected."""


@dataclass(frozen=True)
class DeliveryFile:
    path: str
    rows: int
    sha256: str
    bytes: int


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reader_sql(source: SourceSpec, path: str) -> str:
    if source.format == "csv":
        opts = source.csv
        return (
            f"read_csv({lit(path)}, header=true, all_varchar=true, delim={lit(opts.delimiter)}, "
            f"quote={lit(opts.quote)}, escape={lit(opts.quote)}, encoding={lit(opts.encoding)})"
        )
    return f"read_parquet({lit(path)})"


def _check_columns(engine: Engine, source: SourceSpec, path: str) -> None:
    try:
        present = [
            row[0] for row in engine.fetch(f"DESCRIBE SELECT * FROM {_reader_sql(source, path)}")
        ]
    except Exception as exc:  # the engine's own error says what is wrong with the bytes
        first_line = str(exc).strip().splitlines()[0]
        raise SourceError(
            f"source '{source.name}': cannot read {path} as {source.format}: {first_line}"
        ) from None
    missing = [c for c in source.mapped_columns() if c not in present]
    if missing:
        raise SourceError(
            f"source '{source.name}': file {path} is missing column(s) {missing} declared in the "
            f"project; the file has columns {present}"
        )


def ingest_delivery(
    engine: Engine, source: SourceSpec, path: str, key: str, table: str
) -> DeliveryFile:
    """Load one delivery file into `table`: mapped columns as text, plus _delivery_file,
    _delivery and _row_number (its position in the file)."""
    _check_columns(engine, source, path)
    cols = ", ".join(f"CAST({ident(c)} AS VARCHAR) AS {ident(c)}" for c in source.mapped_columns())
    try:
        engine.create_table(
            table,
            f"SELECT {cols}, {lit(path)} AS _delivery_file, {lit(key)} AS _delivery, "
            f"row_number() OVER () AS _row_number FROM {_reader_sql(source, path)}",
        )
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise SourceError(f"source '{source.name}': failed to read {path}: {first_line}") from None
    return DeliveryFile(
        path=path,
        rows=engine.count(table),
        sha256=file_sha256(path),
        bytes=Path(path).stat().st_size,
    )

"""Ingest: read one delivery file of a source into a raw, all-text table.

Only the columns the project maps are read (data minimisation), as text, so that parsing is
ours and leading zeros survive. Structural problems stop with a message naming the file and
what was expected; nothing row-level is decided here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from linkage_models.project import SourceSpec
from pipelines.deliveries import Delivery, DeliveryFile, SourceError, set_status
from pipelines.engines import Engine, error_summary
from pipelines.sql import ident, lit


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


FILE_VIEW = "__delivery_file"


def _open_file(engine: Engine, source: SourceSpec, path: str) -> None:
    """The delivery as a view named FILE_VIEW, with each row's position in the file and, for
    a row that could not be read, why (`_malformed`)."""
    if Path(path).stat().st_size == 0:
        raise SourceError(f"source '{source.name}': file {path} is empty (0 bytes)")
    try:
        engine.register_delivery(FILE_VIEW, path, source.format, source.csv)
        present = [c for c in engine.columns(FILE_VIEW) if c not in ("_row_number", "_malformed")]
    except Exception as exc:  # the engine's own error says what is wrong with the bytes
        raise SourceError(
            f"source '{source.name}': cannot read {path} as {source.format}: {error_summary(exc)}"
        ) from None
    missing = [c for c in source.mapped_columns() if c not in present]
    if missing and len(missing) == len(source.mapped_columns()):
        # A header row may be missing, and then the "names" read are the first record's
        # values: they are not repeated here.
        raise SourceError(
            f"source '{source.name}': the first line of {path} names none of the columns the "
            f"project maps ({sorted(missing)}); is the header row missing? (the {len(present)}"
            " field(s) of that line are not shown: they may be a record)"
        )
    if missing:
        raise SourceError(
            f"source '{source.name}': file {path} is missing column(s) {missing} declared in the "
            f"project; the file has columns {present}"
        )


def ingest_delivery(
    engine: Engine, source: SourceSpec, path: str, key: str, table: str
) -> DeliveryFile:
    """Load one delivery file into `table`: mapped columns as text, plus _delivery_file,
    _delivery, _row_number (its position in the file) and _malformed (why the row could not
    be read as CSV, else NULL)."""
    _open_file(engine, source, path)
    cols = ", ".join(f"CAST({ident(c)} AS VARCHAR) AS {ident(c)}" for c in source.mapped_columns())
    try:
        engine.create_table(
            table,
            f"SELECT {cols}, {lit(path)} AS _delivery_file, {lit(key)} AS _delivery, "
            f"_row_number, _malformed FROM {FILE_VIEW}",
        )
    except Exception as exc:
        raise SourceError(
            f"source '{source.name}': failed to read {path}: {error_summary(exc)}"
        ) from None
    return DeliveryFile(
        path=path,
        rows=engine.count(table),
        sha256=file_sha256(path),
        bytes=Path(path).stat().st_size,
    )


def ingest(engine: Engine, source: SourceSpec, delivery: Delivery) -> DeliveryFile:
    """Load a delivery afresh: anything derived from an earlier version of it is dropped."""
    engine.drop_table(delivery.standardised_table)
    file = ingest_delivery(engine, source, delivery.path, delivery.key, delivery.raw_table)
    set_status(engine, delivery, "ingested", file)
    return file

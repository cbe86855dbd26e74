"""Quarantine: row-level problems leave the linkage with a reason; nothing is dropped.

A row is quarantined for the first of these reasons that applies (in this order):
the whole delivery was rejected by validation; the row could not be read as CSV (malformed
row: a wrong number of fields, bytes not valid in the declared encoding, a stray quote; its
columns are then empty in quarantine, and its row_number says where it is in the file);
missing record id; duplicate record id (the
first occurrence, in delivery then row order, is kept); insufficient identifiers (fewer than
two of given name, family name, date or year of birth, postcode, and any person identifier
or address the source maps).

A value that cannot be read (a date of birth or event date in no declared format, a
placeholder, an implausible date, an invalid postcode, an undeclared sex code, a name with
no letters left once put into Latin letters) becomes
missing and the row stays: it can still link on its other identifiers. Those values are
counted per identifier and reason (`cleaning`), and a row is quarantined only when too
little is left to link it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkage_models.project import LINKING_OTHER_TYPES, SourceSpec
from pipelines.contract import DeliveryTables, ReconciliationError, Tables
from pipelines.engines import Engine
from pipelines.sql import ident, lit

REJECTED_DELIVERY = "delivery rejected by validation"
MALFORMED_ROW = "malformed row"


def quarantine_reason_sql(source: SourceSpec) -> str:
    """The first reason a standardised row cannot be linked, or NULL."""
    linking = ["given_name", "family_name", "dob_year", "postcode"]
    linking += [n for n, o in source.identifiers.other.items() if o.type in LINKING_OTHER_TYPES]
    present = " + ".join(f"CAST({c} IS NOT NULL AS INTEGER)" for c in linking)
    return f"""
CASE
  WHEN _malformed IS NOT NULL THEN {lit(MALFORMED_ROW + ": ")} || _malformed
  WHEN record_id IS NULL THEN 'missing record id'
  WHEN row_number() OVER (PARTITION BY record_id ORDER BY _delivery_order, _row_number) > 1
    THEN 'duplicate record id'
  WHEN {present} < 2 THEN 'insufficient identifiers'
END
"""


def cleaning_counts(source: SourceSpec) -> dict[str, str]:
    """Count name -> flag column, for the values the source's standardisation set missing."""
    return {
        **CLEANING_COUNTS,
        **{f"{n}_unreadable_set_missing": f"{n}_set_missing" for n in source.identifiers.other},
    }


CLEANING_COUNTS = {
    "date_of_birth_unparseable_set_missing": "dob_unparseable",
    "date_of_birth_placeholder_set_missing": "dob_placeholder",
    "date_of_birth_implausible_set_missing": "dob_implausible",
    "postcode_invalid_set_missing": "postcode_invalid",
    "sex_code_unknown_set_missing": "sex_unknown",
    "event_date_unparseable_set_missing": "event_date_unparseable",
    "name_unreadable_set_missing": "name_unreadable",
}


@dataclass(frozen=True)
class QuarantineResult:
    source: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    by_reason: dict[str, int]
    path: Path
    accepted_table: str | None  # None when no delivery of the source was accepted
    # Counts of values set to missing during standardisation (rows kept).
    cleaning: dict[str, int] = field(default_factory=dict)
    # Rows with a name or address written outside ASCII, linked in Latin letters.
    names_transliterated: int = 0
    by_delivery: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.rows_accepted + self.rows_quarantined


def _union(selects: list[str]) -> str:
    return "\nUNION ALL\n".join(selects)


def combine_and_quarantine(
    engine: Engine,
    source: SourceSpec,
    deliveries: list[DeliveryTables],
    quarantine_file: Path,
) -> QuarantineResult:
    """Combine a source's deliveries, tag rows with reasons, write quarantine Parquet.

    Raises ReconciliationError if rows in differ from rows accepted + quarantined."""
    raw_cols = ", ".join(ident(c) for c in source.mapped_columns())
    accepted_deliveries = [d for d in deliveries if d.standardised_table]
    rejected = [d for d in deliveries if not d.standardised_table]
    accepted = Tables.accepted(source.name)
    checked = Tables.checked(source.name)
    raw = Tables.raw(source.name)
    quarantine_parts = []
    if accepted_deliveries:
        engine.create_table(
            checked,
            f"SELECT *, {quarantine_reason_sql(source)} AS quarantine_reason FROM ("
            + _union(
                [
                    f"SELECT *, {i} AS _delivery_order FROM {d.standardised_table}"
                    for i, d in enumerate(accepted_deliveries)
                ]
            )
            + ")",
        )
        bookkeeping = ("quarantine_reason", "_delivery_order", "_malformed")
        kept = ", ".join(ident(c) for c in engine.columns(checked) if c not in bookkeeping)
        engine.create_table(
            accepted, f"SELECT {kept} FROM {checked} WHERE quarantine_reason IS NULL"
        )
        engine.create_table(
            raw,
            _union([f"SELECT * FROM {d.raw_table}" for d in accepted_deliveries]),
        )
        quarantine_parts.append(
            f"""SELECT {", ".join("r." + ident(c) for c in source.mapped_columns())},
                   c.quarantine_reason, r._delivery AS delivery, r._delivery_file AS delivery_file,
                   r._row_number AS row_number
            FROM {checked} c JOIN {raw} r USING (_delivery, _row_number)
            WHERE c.quarantine_reason IS NOT NULL"""
        )
    for d in rejected:
        reason = lit(f"{REJECTED_DELIVERY}: {d.rejection}" if d.rejection else REJECTED_DELIVERY)
        quarantine_parts.append(
            f"SELECT {raw_cols}, {reason} AS quarantine_reason, _delivery AS delivery, "
            f"_delivery_file AS delivery_file, _row_number AS row_number FROM {d.raw_table}"
        )
    quarantine_table = Tables.quarantined(source.name)
    if quarantine_parts:
        engine.create_table(quarantine_table, _union(quarantine_parts))
    else:  # nothing delivered at all: an empty, well-typed file
        empty_cols = ", ".join(
            f"CAST(NULL AS VARCHAR) AS {ident(c)}" for c in source.mapped_columns()
        )
        engine.create_table(
            quarantine_table,
            f"SELECT {empty_cols}, "
            "CAST(NULL AS VARCHAR) AS quarantine_reason, CAST(NULL AS VARCHAR) AS delivery, "
            "CAST(NULL AS VARCHAR) AS delivery_file, CAST(NULL AS BIGINT) AS row_number LIMIT 0",
        )
    path = quarantine_file
    engine.write_parquet(f"SELECT * FROM {quarantine_table} ORDER BY delivery, row_number", path)

    by_delivery: dict[str, dict[str, Any]] = {}
    for d in deliveries:
        rows_in = engine.count(d.raw_table)
        by_delivery[d.key] = {
            "rows_in": rows_in,
            "rows_accepted": 0,
            "rows_quarantined": 0,
            "status": "accepted" if d.standardised_table else "rejected",
            "quarantined_by_reason": {},
        }
    for key, reason, n in engine.fetch(
        f"SELECT delivery, quarantine_reason, count(*) FROM {quarantine_table} GROUP BY 1, 2"
    ):
        entry = by_delivery[key]
        entry["quarantined_by_reason"][reason] = int(n)
        entry["rows_quarantined"] += int(n)
    counts = cleaning_counts(source)
    cleaning: dict[str, int] = dict.fromkeys(counts, 0)
    transliterated = 0
    if accepted_deliveries:
        for key, n in engine.fetch(f"SELECT _delivery, count(*) FROM {accepted} GROUP BY 1"):
            by_delivery[key]["rows_accepted"] = int(n)
        sums = ", ".join(f"count_if({flag})" for flag in [*counts.values(), "name_transliterated"])
        *row, transliterated = engine.fetch(f"SELECT {sums} FROM {accepted}")[0]
        cleaning = {k: int(v or 0) for k, v in zip(counts, row, strict=True)}
    by_reason: dict[str, int] = {}
    for entry in by_delivery.values():
        for reason, n in entry["quarantined_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    result = QuarantineResult(
        source=source.name,
        rows_in=sum(e["rows_in"] for e in by_delivery.values()),
        rows_accepted=sum(e["rows_accepted"] for e in by_delivery.values()),
        rows_quarantined=sum(e["rows_quarantined"] for e in by_delivery.values()),
        by_reason=dict(sorted(by_reason.items())),
        path=path,
        accepted_table=accepted if accepted_deliveries else None,
        cleaning=cleaning,
        names_transliterated=int(transliterated or 0),
        by_delivery=by_delivery,
    )
    if not result.reconciles:
        raise ReconciliationError(
            f"source '{source.name}': {result.rows_in} rows in but {result.rows_accepted}"
            f" accepted + {result.rows_quarantined} quarantined"
        )
    return result

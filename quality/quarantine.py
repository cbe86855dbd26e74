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


def quarantine_reason_sql(source: SourceSpec, earlier: str | None = None) -> str:
    """The first reason a standardised row cannot be linked, or NULL. `earlier`: a table of
    rows combined before these (their record ids come first for the duplicate rule)."""
    linking = ["given_name", "family_name", "dob_year", "postcode"]
    linking += [n for n, o in source.identifiers.other.items() if o.type in LINKING_OTHER_TYPES]
    present = " + ".join(f"CAST({c} IS NOT NULL AS INTEGER)" for c in linking)
    seen_earlier = (
        f" OR record_id IN (SELECT record_id FROM {earlier} WHERE record_id IS NOT NULL)"
        if earlier
        else ""
    )
    return f"""
CASE
  WHEN _malformed IS NOT NULL THEN {lit(MALFORMED_ROW + ": ")} || _malformed
  WHEN record_id IS NULL THEN 'missing record id'
  WHEN row_number() OVER (PARTITION BY record_id ORDER BY _delivery_order, _row_number) > 1
    {seen_earlier}
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
    # Per delivery, in the order combined.
    by_delivery: dict[str, dict[str, Any]] = field(default_factory=dict)
    # True when the deliveries were added to a previous combination's tables in place;
    # appended_rows then names a table of the accepted rows added (None: none).
    added_to_previous: bool = False
    appended_rows: str | None = None

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
    previous: dict[str, Any] | None = None,
) -> QuarantineResult:
    """Combine a source's deliveries, tag rows with reasons, write quarantine Parquet.

    `previous`: the result (as a dict) of the combination the engine's tables of this source
    still hold, whose deliveries are the first of `deliveries` (the caller checks that they
    are unchanged). Only the deliveries after them are then read; their rows are added in
    place, with reasons as a combination of all of them would give (a record id already
    combined makes a later row a duplicate). Otherwise every delivery is combined afresh.

    Raises ReconciliationError if rows in differ from rows accepted + quarantined."""
    held = previous["by_delivery"] if previous else {}
    if not held:
        previous = None
    if previous is not None and not previous["accepted_table"]:
        raise ValueError(f"source '{source.name}': no accepted table to add deliveries to")
    new = deliveries[len(held) :]
    accepted_new = [d for d in new if d.standardised_table]
    accepted = Tables.accepted(source.name)
    checked = Tables.checked(source.name)
    quarantine_table = Tables.quarantined(source.name)
    # The rows read now, with their reasons: a table of their own when added to a previous
    # combination, else the combination itself.
    checked_added, quarantined_added, accepted_added = (
        f"__{t}_new_{source.name}" for t in ("checked", "quarantined", "accepted")
    )
    for table in (checked_added, quarantined_added, accepted_added):
        engine.drop_table(table)  # an earlier addition's rows: stale now, whatever this does
    rows_now = checked_added if held else checked
    quarantined_now = quarantined_added if held else quarantine_table
    quarantine_parts = []
    if accepted_new:
        engine.create_table(
            rows_now,
            f"SELECT *, {quarantine_reason_sql(source, checked if held else None)} "
            "AS quarantine_reason FROM ("
            + _union(
                [
                    f"SELECT *, {len(held) + i} AS _delivery_order FROM {d.standardised_table}"
                    for i, d in enumerate(accepted_new)
                ]
            )
            + ")",
        )
        if held and engine.columns(rows_now) != engine.columns(checked):
            # Standardised another way than the rows combined before: combine afresh.
            return combine_and_quarantine(engine, source, deliveries, quarantine_file)
        raw = _union([f"SELECT * FROM {d.raw_table}" for d in accepted_new])
        quarantine_parts.append(
            f"""SELECT {", ".join("r." + ident(c) for c in source.mapped_columns())},
                   c.quarantine_reason, r._delivery AS delivery, r._delivery_file AS delivery_file,
                   r._row_number AS row_number
            FROM (SELECT _delivery, _row_number, quarantine_reason FROM {rows_now}
                  WHERE quarantine_reason IS NOT NULL) c
            JOIN ({raw}) r USING (_delivery, _row_number)"""
        )
    raw_cols = ", ".join(ident(c) for c in source.mapped_columns())
    for d in new:
        if d.standardised_table:
            continue
        reason = lit(f"{REJECTED_DELIVERY}: {d.rejection}" if d.rejection else REJECTED_DELIVERY)
        quarantine_parts.append(
            f"SELECT {raw_cols}, {reason} AS quarantine_reason, _delivery AS delivery, "
            f"_delivery_file AS delivery_file, _row_number AS row_number FROM {d.raw_table}"
        )
    empty_cols = ", ".join(f"CAST(NULL AS VARCHAR) AS {ident(c)}" for c in source.mapped_columns())
    engine.create_table(
        quarantined_now,
        _union(quarantine_parts)
        if quarantine_parts
        else f"SELECT {empty_cols}, "  # nothing to quarantine: an empty, well-typed table
        "CAST(NULL AS VARCHAR) AS quarantine_reason, CAST(NULL AS VARCHAR) AS delivery, "
        "CAST(NULL AS VARCHAR) AS delivery_file, CAST(NULL AS BIGINT) AS row_number LIMIT 0",
    )
    accepted_rows = f"SELECT {{columns}} FROM {rows_now} WHERE quarantine_reason IS NULL"
    appended_rows = None
    if accepted_new:
        bookkeeping = ("quarantine_reason", "_delivery_order", "_malformed")
        kept = ", ".join(ident(c) for c in engine.columns(rows_now) if c not in bookkeeping)
        if held:
            appended_rows = accepted_added
            # A table, not a view: the linkage's later steps read which records are new.
            engine.create_table(appended_rows, accepted_rows.format(columns=kept))
            engine.insert_rows(checked, f"SELECT * FROM {rows_now}")
            engine.insert_rows(accepted, f"SELECT * FROM {appended_rows}")
        else:
            engine.create_table(accepted, accepted_rows.format(columns=kept))
    if held:
        engine.insert_rows(quarantine_table, f"SELECT * FROM {quarantined_now}")
    engine.write_parquet(
        f"SELECT * FROM {quarantine_table} ORDER BY delivery, row_number", quarantine_file
    )

    by_delivery: dict[str, dict[str, Any]] = {k: dict(v) for k, v in held.items()}
    for d in new:
        by_delivery[d.key] = {
            "rows_in": engine.count(d.raw_table),
            "rows_accepted": 0,
            "rows_quarantined": 0,
            "status": "accepted" if d.standardised_table else "rejected",
            "quarantined_by_reason": {},
        }
    for key, reason, n in engine.fetch(
        f"SELECT delivery, quarantine_reason, count(*) FROM {quarantined_now} GROUP BY 1, 2"
    ):
        entry = by_delivery[key]
        entry["quarantined_by_reason"][reason] = int(n)
        entry["rows_quarantined"] += int(n)
    counts = cleaning_counts(source)
    cleaning: dict[str, int] = {
        k: int((previous or {}).get("cleaning", {}).get(k, 0)) for k in counts
    }
    transliterated = int((previous or {}).get("names_transliterated", 0))
    if accepted_new:
        for key, n in engine.fetch(
            accepted_rows.format(columns="_delivery, count(*)") + " GROUP BY 1"
        ):
            by_delivery[key]["rows_accepted"] = int(n)
        sums = ", ".join(f"count_if({flag})" for flag in [*counts.values(), "name_transliterated"])
        *row, names = engine.fetch(accepted_rows.format(columns=sums))[0]
        cleaning = {k: cleaning[k] + int(v or 0) for k, v in zip(counts, row, strict=True)}
        transliterated += int(names or 0)
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
        path=quarantine_file,
        accepted_table=accepted if accepted_new or held else None,
        cleaning=cleaning,
        names_transliterated=transliterated,
        by_delivery=by_delivery,
        added_to_previous=bool(held),
        appended_rows=appended_rows,
    )
    if not result.reconciles:
        raise ReconciliationError(
            f"source '{source.name}': {result.rows_in} rows in but {result.rows_accepted}"
            f" accepted + {result.rows_quarantined} quarantined"
        )
    return result

"""Quarantine: row-level problems leave the linkage with a reason; nothing is dropped.

A row is quarantined for the first of these reasons that applies (in this order):
missing record id, duplicate record id (the first occurrence in delivery order is kept),
unparseable date of birth, unparseable event date, insufficient identifiers (fewer than
two of given name, family name, date of birth and postcode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from linkage_models.project import SourceSpec
from pipelines.engine import Engine
from pipelines.standardise import ident

REASONS = (
    "missing record id",
    "duplicate record id",
    "unparseable date of birth",
    "unparseable event date",
    "insufficient identifiers",
)

QUARANTINE_REASON_SQL = """
CASE
  WHEN record_id IS NULL THEN 'missing record id'
  WHEN row_number() OVER (PARTITION BY record_id ORDER BY _row_number) > 1
    THEN 'duplicate record id'
  WHEN dob_unparseable THEN 'unparseable date of birth'
  WHEN event_date_unparseable THEN 'unparseable event date'
  WHEN CAST(given_name IS NOT NULL AS INTEGER) + CAST(family_name IS NOT NULL AS INTEGER)
     + CAST(date_of_birth IS NOT NULL AS INTEGER) + CAST(postcode IS NOT NULL AS INTEGER) < 2
    THEN 'insufficient identifiers'
END
"""


@dataclass(frozen=True)
class QuarantineResult:
    source: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    by_reason: dict[str, int]
    path: Path
    accepted_table: str
    # Counts of values that were set to missing during standardisation (not quarantined).
    cleaning: dict[str, int] = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.rows_accepted + self.rows_quarantined


def split_accepted_and_quarantined(
    engine: Engine,
    source: SourceSpec,
    raw_table: str,
    standardised_table: str,
    quarantine_dir: Path,
) -> QuarantineResult:
    """Tag each standardised row with a reason; write quarantined raw rows to Parquet."""
    checked = f"checked_{source.name}"
    engine.create_table(
        checked, f"SELECT *, {QUARANTINE_REASON_SQL} AS quarantine_reason FROM {standardised_table}"
    )
    accepted = f"accepted_{source.name}"
    engine.create_table(
        accepted,
        f"SELECT * EXCLUDE (quarantine_reason) FROM {checked} WHERE quarantine_reason IS NULL",
    )
    by_reason = dict(
        engine.fetch(
            f"SELECT quarantine_reason, count(*) FROM {checked} "
            "WHERE quarantine_reason IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
    )
    cleaning_row = engine.fetch(
        f"""SELECT count_if(dob_placeholder), count_if(dob_implausible), count_if(postcode_invalid),
                   count_if(sex_unknown) FROM {accepted}"""
    )[0]
    cleaning = dict(
        zip(
            [
                "date_of_birth_placeholder_set_missing",
                "date_of_birth_implausible_set_missing",
                "postcode_invalid_set_missing",
                "sex_code_unknown_set_missing",
            ],
            (int(v or 0) for v in cleaning_row),
            strict=True,
        )
    )
    rows_in = engine.count(raw_table)
    rows_accepted = engine.count(accepted)
    quarantined = sum(by_reason.values())
    raw_cols = ", ".join(f"r.{ident(c)}" for c in source.mapped_columns())
    path = quarantine_dir / f"{source.name}.parquet"
    engine.write_parquet(
        f"""SELECT {raw_cols}, c.quarantine_reason, r._delivery_file AS delivery_file,
                   r._row_number AS row_number
            FROM {checked} c JOIN {raw_table} r USING (_row_number)
            WHERE c.quarantine_reason IS NOT NULL ORDER BY r._row_number""",
        path,
    )
    return QuarantineResult(
        source=source.name,
        rows_in=rows_in,
        rows_accepted=rows_accepted,
        rows_quarantined=quarantined,
        by_reason={k: int(v) for k, v in by_reason.items()},
        path=path,
        accepted_table=accepted,
        cleaning=cleaning,
    )

"""The audit a build must pass before it is published (write-audit-publish).

- reconciliation: every row delivered is in the person lookup or in quarantine;
- output contract: the person lookup has its columns and one row per linked record; no
  published table has a column the project maps as an identifier;
- identifier scan: no full name (given and family name together, neither an initial), full
  postcode or person identifier of any input record appears in any file of the shareable
  zone, in text (reports, JSON) or in a published table's values. Identifiers of digits
  only are looked for where they are sparse among numbers of their length; where they are
  dense, any number would match one by chance (CHANCE_MATCH).

A failure names the check, the file and the column, never a value. Dates are not scanned
in text: a report's own dates (the snapshot date, when it was written) are not identifying
and would match someone's date of birth in any large population; a published column that
holds the record's own date of birth is caught by the identifier-echo check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds

from linkage_models.project import LinkageProject
from pipelines.contract import LOOKUP_COLUMNS, OutputLayout, Tables
from pipelines.disclosure_control import disclosive_counts
from pipelines.engines import Engine
from pipelines.sql import ident
from quality.shareable_text import name_pairs, without_library_code

TEXT_SUFFIXES = {".html", ".json", ".md", ".csv", ".txt", ".js", ".svg"}
POSTCODE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b")
# Long codes; never the digits after a decimal point (0.988969 is a rate, not an id).
IDENTIFIER_CODE = re.compile(r"(?<!\d\.)\b[A-Z0-9]{6,}\b")
# A code of digits only is scanned for when the project's identifiers of its length are
# sparse among all numbers of that length: where they are dense (a pseudonymised key
# numbered 100000-999999), any count in a report or record id in the lookup would match
# one by chance and the audit could never pass.
CHANCE_MATCH = 1e-4
DIGITS_ONLY = "translate(token, '0123456789', '') = ''"


class AuditFailure(RuntimeError):
    """The build breaks a promise of what is published; it is not published."""


def _text_tokens(files: list[Path]) -> pd.DataFrame:
    """Candidate identifier values in the shareable zone's text: adjacent word pairs
    (a full name; see `shareable_text`), postcode-shaped strings and long codes, by file.
    The text is the size of the reports, not of the data."""
    rows: list[tuple[str, str, str]] = []
    for path in files:
        text = without_library_code(path.read_text(errors="replace"))
        rows += [(path.name, "name", pair) for pair in name_pairs(text, path.suffix)]
        upper = text.upper()
        rows += [(path.name, "postcode", p.replace(" ", "")) for p in POSTCODE.findall(upper)]
        rows += [(path.name, "code", c) for c in IDENTIFIER_CODE.findall(upper)]
    frame = pd.DataFrame(rows, columns=["file", "kind", "token"]).drop_duplicates()
    return frame


def _identifier_values_sql(project: LinkageProject, sources: list[str]) -> str:
    """Every input record's full name, postcode and person identifiers, in the forms the
    scan compares (lower-case "given family"; upper case without spaces)."""
    person_ids = [n for n, o in project.other_identifiers().items() if o.type == "person_id"]
    parts = []
    for source in sources:
        table = Tables.linkage_input(source)
        # An initial is not a name: "B B" would match a colour code (#1b1b1b) in any page.
        parts.append(
            f"SELECT 'name' AS kind, lower(given_name || ' ' || family_name) AS token "
            f"FROM {table} WHERE length(given_name) > 1 AND length(family_name) > 1"
        )
        parts.append(
            f"SELECT 'postcode', upper(replace(postcode, ' ', '')) FROM {table} "
            "WHERE postcode IS NOT NULL"
        )
        parts += [
            f"SELECT 'code', upper(CAST({ident(c)} AS VARCHAR)) FROM {table} "
            f"WHERE length(CAST({ident(c)} AS VARCHAR)) >= 6"
            for c in person_ids
        ]
    return " UNION ".join(parts)


def _dense_code_lengths(engine: Engine) -> list[int]:
    """Lengths at which the identifiers made of digits are too dense to tell from numbers
    (more than CHANCE_MATCH of all numbers of that length)."""
    found = engine.fetch(
        "SELECT length(token), count(DISTINCT token) FROM __audit_identifiers "
        f"WHERE kind = 'code' AND {DIGITS_ONLY} GROUP BY length(token)"
    )
    return sorted(int(n) for n, distinct in found if distinct > CHANCE_MATCH * 10 ** int(n))


def _published_tables(layout: OutputLayout) -> list[Path]:
    """Every Parquet table of the shareable zone (a file, or Spark's folder of parts)."""
    found = layout.shareable_dir.rglob("*.parquet")
    return sorted(p for p in found if not any(q.suffix == ".parquet" for q in p.parents))


def audit_build(
    engine: Engine, project: LinkageProject, layout: OutputLayout, sources: list[str]
) -> dict[str, Any]:
    """Audit the build under `layout` (staging); raises AuditFailure naming what failed.
    `sources` are those with linkage input tables. Returns what was checked (counts)."""
    problems: list[str] = []
    for needed in (layout.manifest, layout.exact_manifest):
        if not needed.exists():
            raise AuditFailure(f"{layout.relative(needed)}: the build has no such manifest")
    rec = json.loads(layout.exact_manifest.read_text())["reconciliation"]
    # Counts that leave must have gone through the disclosure control policy.
    for document in (layout.manifest, layout.linkage_quality):
        if document.exists():
            unprotected = disclosive_counts(json.loads(document.read_text()))
            if unprotected:
                problems.append(
                    f"{layout.relative(document)}: {len(unprotected)} count(s) not protected "
                    f"against disclosure, e.g. {unprotected[:3]}"
                )
    if not rec["reconciles"]:
        problems.append(
            f"reconciliation: {rec['rows_in']} rows in, {rec['rows_linked']} linked, "
            f"{rec['rows_quarantined']} quarantined"
        )

    lookup = ds.dataset(layout.person_lookup, format="parquet")
    if tuple(lookup.schema.names) != LOOKUP_COLUMNS:
        problems.append(
            f"{layout.person_lookup.name}: columns {lookup.schema.names}, "
            f"expected {list(LOOKUP_COLUMNS)}"
        )
    if lookup.count_rows() != rec["rows_linked"]:
        problems.append(
            f"{layout.person_lookup.name}: {lookup.count_rows()} rows, manifest says "
            f"{rec['rows_linked']} linked"
        )

    mapped = {c.lower() for s in project.sources for c in s.identifiers.source_columns()}
    tables = _published_tables(layout)
    for table in tables:
        schema = ds.dataset(table, format="parquet").schema
        exposed = sorted(c for c in schema.names if c.lower() in mapped)
        if exposed:
            problems.append(f"{table.name}: has column(s) mapped as identifiers {exposed}")

    files = [p for p in layout.shareable_dir.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES]
    values = _identifier_values_sql(project, sources)
    engine.create_table("__audit_identifiers", values)
    dense = _dense_code_lengths(engine)
    if dense:  # made again without them (no engine needs to rewrite a table from itself)
        lengths = ", ".join(map(str, dense))
        engine.create_table(
            "__audit_identifiers",
            f"SELECT * FROM ({values}) AS v "
            f"WHERE NOT (kind = 'code' AND {DIGITS_ONLY} AND length(token) IN ({lengths}))",
        )
    tokens = _text_tokens(files)
    if len(tokens):
        engine.load_frame("__audit_tokens", tokens)
        found = engine.fetch(
            "SELECT t.file, t.kind, count(*) FROM __audit_tokens t "
            "JOIN __audit_identifiers i ON t.kind = i.kind AND t.token = i.token "
            "GROUP BY t.file, t.kind ORDER BY t.file, t.kind"
        )
        problems += [f"{file}: {n} {kind} value(s) of input records" for file, kind, n in found]
        engine.drop_table("__audit_tokens")

    for table in tables:
        schema = ds.dataset(table, format="parquet").schema
        strings = [f.name for f in schema if str(f.type) in ("string", "large_string")]
        engine.register_file("__audit_table", str(table), "parquet")
        for column in strings:
            # Two equality joins (each a hash join), not one join on an OR.
            values = f"(SELECT DISTINCT {ident(column)} AS v FROM __audit_table)"
            hits = engine.fetch(
                f"SELECT count(DISTINCT v) FROM ("
                f"SELECT p.v FROM {values} p JOIN __audit_identifiers i "
                "ON lower(p.v) = i.token UNION ALL "
                f"SELECT p.v FROM {values} p JOIN __audit_identifiers i "
                "ON upper(replace(p.v, ' ', '')) = i.token)"
            )[0][0]
            if hits:
                problems.append(f"{table.name}: column {column} holds {hits} identifier value(s)")
    engine.drop_table("__audit_identifiers")
    if problems:
        raise AuditFailure("the build failed its audit: " + "; ".join(problems))
    return {
        "reconciles": True,
        "published_tables": len(tables),
        "text_files_scanned": len(files),
        "identifier_values_found": 0,
        # Person identifiers of these many digits were too dense to scan for (see
        # CHANCE_MATCH): the column-name check still keeps them out of published tables.
        "digit_codes_not_scanned_lengths": dense,
    }

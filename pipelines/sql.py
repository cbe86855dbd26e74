"""SQL helpers every package shares: quoting, and the expressions that read identifier values
the same way wherever they are read (standardisation, and the delivery contract's checks).

All SQL in joinedup is written once, in DuckDB's dialect; the Spark engine transpiles it.
"""

from __future__ import annotations

from linkage_models.project import DEFAULT_PLACEHOLDERS, PostcodeMapping

# A UK postcode without spaces, upper case: outward code (area, district) + inward code.
VALID_POSTCODE = "^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$"
# Dates of birth (and event dates) before this are implausible and treated as missing.
EARLIEST_PLAUSIBLE_DATE = "1890-01-01"


def lit(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier (source column names can be anything)."""
    return '"' + name.replace('"', '""') + '"'


def record_key(record: str = "record_id", source: str = "source_dataset") -> str:
    """A record's key, source|record id: how pairs, clusters, the lookup and the estimates
    name one record across sources."""
    return f"{source} || '|' || {record}"


def in_list(values: list[str]) -> str:
    """A parenthesised list of string literals, for IN."""
    return "(" + ", ".join(lit(v) for v in values) + ")"


def date_text_sql(column: str) -> str:
    """Trimmed text of a date column; placeholders ('UNKNOWN', 'N/A'...) become NULL."""
    text = f"nullif(trim(CAST({ident(column)} AS VARCHAR)), '')"
    return f"CASE WHEN upper({text}) IN {in_list(DEFAULT_PLACEHOLDERS)} THEN NULL ELSE {text} END"


def parse_date_sql(text_expr: str, formats: list[str]) -> str:
    """First declared format that parses, as a DATE; NULL when none does."""
    attempts = ", ".join(f"try_strptime({text_expr}, {lit(fmt)})" for fmt in formats)
    return f"CAST(coalesce({attempts}) AS DATE)"


def postcode_compact_sql(column: str) -> str:
    """A postcode column as upper-case letters and digits only; NULL when empty."""
    alphanumeric = f"regexp_replace(CAST({ident(column)} AS VARCHAR), '[^A-Za-z0-9]', '', 'g')"
    return f"nullif(upper({alphanumeric}), '')"


def postcode_pattern(mapping: PostcodeMapping) -> str | None:
    """The pattern a compact postcode must match: UK's for GB, the declared one otherwise
    (None: any letters and digits are kept)."""
    return VALID_POSTCODE if mapping.country == "GB" else mapping.pattern

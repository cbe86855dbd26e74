"""Standardise identifying fields into the common data primitives, as SQL the engine runs.

Every expression here is written once, in DuckDB's dialect, using only functions that have a
direct Spark SQL counterpart (regexp_replace/regexp_extract, translate, try_strptime,
string_split, list literals), so the Spark engine can transpile the same SQL with sqlglot
(`pipelines/dialect.py` fills the one gap, try_strptime).

Output columns of `standardise_sql` (one row per input row):
  _row_number, _delivery, _delivery_file, source_dataset, record_id,
  given_name, middle_names, family_name, date_of_birth, sex, postcode,
  given_name_aliases, given_name_soundex, family_name_soundex, family_name_tokens,
  dob_year, dob_month, dob_day, postcode_sector, postcode_district, postcode_area,
  event_date, event_type, <declared attributes>,
  dob_unparseable, dob_placeholder, dob_implausible, event_date_unparseable,
  postcode_invalid, sex_unknown
"""

from __future__ import annotations

import re
from importlib import resources

import pandas as pd

from linkage_models.project import (
    DEFAULT_PLACEHOLDERS,
    LINKAGE_COLUMNS,
    DateMapping,
    SourceSpec,
)
from pipelines.contract import Tables
from pipelines.deliveries import Delivery, set_status
from pipelines.engines import Engine
from pipelines.sql import (
    EARLIEST_PLAUSIBLE_DATE,
    VALID_POSTCODE,
    date_text_sql,
    ident,
    in_list,
    lit,
    parse_date_sql,
    postcode_compact_sql,
)

ACCENTED = "àáâãäåçèéêëìíîïñòóôõöøùúûüýÿÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝ"
PLAIN = "aaaaaaceeeeiiiinoooooouuuuyyAAAAAACEEEEIIIINOOOOOOUUUUY"
NICKNAME_TABLE = Tables.NICKNAMES


def _clean_placeholder(value: str) -> str:
    """How `clean_name_sql` would render a placeholder: used to spot it after cleaning."""
    v = re.sub(r"['’`]", "", value.lower())
    v = re.sub(r"[^a-z\- ]", " ", v)
    return re.sub(r"\s+", " ", v).strip(" -")


NAME_PLACEHOLDERS = sorted({p for p in map(_clean_placeholder, DEFAULT_PLACEHOLDERS) if p})


def clean_name_sql(expr: str, keep_comma: bool = False) -> str:
    """Lower-case ASCII letters, single spaces, hyphens kept (joined), apostrophes dropped.

    A whole field that is a placeholder ("N/A", "UNKNOWN") is missing before any splitting.
    """
    allowed = "a-z\\- ," if keep_comma else "a-z\\- "
    placeholder = f"upper(trim({expr})) IN {in_list(DEFAULT_PLACEHOLDERS)}"
    whole = f"CASE WHEN {placeholder} THEN NULL ELSE {expr} END"
    e = f"lower(translate({whole}, {lit(ACCENTED)}, {lit(PLAIN)}))"
    e = f"regexp_replace({e}, '[''’`]', '', 'g')"
    e = f"regexp_replace({e}, '[^{allowed}]', ' ', 'g')"
    e = f"regexp_replace({e}, '\\s*-\\s*', '-', 'g')"
    e = f"regexp_replace({e}, '\\s+', ' ', 'g')"
    return f"nullif(trim({e}, ' -'), '')"


def name_part_sql(expr: str) -> str:
    """A split name part: placeholders become NULL; hyphens become spaces for matching."""
    part = f"nullif(trim({expr}, ' -'), '')"
    return (
        f"CASE WHEN {part} IN {in_list(NAME_PLACEHOLDERS)} THEN NULL "
        f"ELSE nullif(replace({part}, '-', ' '), '') END"
    )


def first_word_sql(expr: str) -> str:
    return f"nullif(regexp_extract({expr}, '^(\\S+)', 1), '')"


def after_first_word_sql(expr: str) -> str:
    return f"nullif(regexp_extract({expr}, '^\\S+\\s+(.*)$', 1), '')"


def last_word_sql(expr: str) -> str:
    return f"nullif(regexp_extract({expr}, '(\\S+)$', 1), '')"


def between_first_and_last_sql(expr: str) -> str:
    return f"nullif(regexp_extract({expr}, '^\\S+\\s+(.*)\\s+\\S+$', 1), '')"


def sex_sql(column: str, male: list[str], female: list[str]) -> str:
    code = f"upper(trim(CAST({ident(column)} AS VARCHAR)))"
    return (
        f"CASE WHEN {code} IN {in_list([c.upper() for c in male])} THEN 'M' "
        f"WHEN {code} IN {in_list([c.upper() for c in female])} THEN 'F' END"
    )


def soundex_sql(name_expr: str) -> str:
    """American Soundex of a cleaned name, as pure SQL (H/W do not separate equal codes)."""
    s = f"upper(regexp_replace({name_expr}, '[^a-zA-Z]', '', 'g'))"
    coded = f"translate({s}, 'AEIOUYBFPVCGJKQSXZDTLMNRHW', '000000111122222222334556')"
    for digit in "123456":
        coded = f"regexp_replace({coded}, '{digit}+', '{digit}', 'g')"
    first = f"left({s}, 1)"
    tail = f"CASE WHEN {first} IN ('H', 'W') THEN {coded} ELSE substr({coded}, 2) END"
    return (
        f"CASE WHEN {s} = '' OR {s} IS NULL THEN NULL "
        f"ELSE {first} || rpad(replace({tail}, '0', ''), 3, '0') END"
    )


def reference_frame(name: str) -> pd.DataFrame:
    """A CSV shipped in pipelines/reference_data/, every column as text."""
    path = resources.files("pipelines").joinpath("reference_data", name)
    with path.open("rb") as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False)


def nickname_pairs() -> pd.DataFrame:
    """Given-name variants (variant, canonical): the `nicknames` package's hand-curated list
    of English names (about 2,700 pairs, maintained upstream), plus the UK spellings and
    transliterations it lacks (reference_data/nicknames.csv: Kate/Catherine, Liam/William,
    Mohamed/Mohammed...)."""
    from nicknames import NickNamer

    maintained = [
        (nick, canonical)
        for canonical, nicks in NickNamer().nickname_lookup.items()
        for nick in nicks
    ]
    frame = pd.concat(
        [
            pd.DataFrame(maintained, columns=["variant", "canonical"]),
            reference_frame("nicknames.csv"),
        ]
    )
    return frame.drop_duplicates().sort_values(["variant", "canonical"], ignore_index=True)


def load_reference_tables(engine: Engine) -> None:
    """The nickname table the standardisation joins to, and postcode areas by region (for
    the bias tables). Reference data travels from the package as frames, so a cluster's
    executors need no copy of the package files."""
    engine.load_frame(Tables.POSTCODE_REGIONS, reference_frame("postcode_areas.csv"))
    engine.load_frame(f"{NICKNAME_TABLE}_pairs", nickname_pairs())
    engine.create_table(
        NICKNAME_TABLE,
        f"SELECT variant, list_sort(list(canonical)) AS canonicals "
        f"FROM {NICKNAME_TABLE}_pairs GROUP BY variant",
    )


def _name_parts(source: SourceSpec) -> tuple[str, str, str]:
    """SQL for (given, middle, family) cleaned text, before placeholder handling."""
    ids = source.identifiers
    if ids.full_name is not None:
        full = clean_name_sql(ident(ids.full_name.column), keep_comma=True)
        rest = f"trim(regexp_extract({full}, ',(.*)$', 1))"
        surname_first = (
            first_word_sql(rest),
            after_first_word_sql(rest),
            f"nullif(trim(regexp_extract({full}, '^([^,]*),', 1)), '')",
        )
        plain = f"replace({full}, ',', ' ')"
        forename_first = (
            f"CASE WHEN {plain} LIKE '% %' THEN {first_word_sql(plain)} END",
            between_first_and_last_sql(plain),
            last_word_sql(plain),
        )
        if ids.full_name.order == "surname_first":
            return surname_first
        if ids.full_name.order == "forename_first":
            return forename_first
        has_comma = f"strpos({full}, ',') > 0"
        return tuple(  # type: ignore[return-value]
            f"CASE WHEN {has_comma} THEN {a} ELSE {b} END"
            for a, b in zip(surname_first, forename_first, strict=True)
        )
    given = middle = family = "CAST(NULL AS VARCHAR)"
    if ids.given_name is not None:
        g = clean_name_sql(ident(ids.given_name.column))
        if ids.given_name.includes_middle_names:
            given, middle = first_word_sql(g), after_first_word_sql(g)
        else:
            given = g
    if ids.middle_names is not None:
        middle = clean_name_sql(ident(ids.middle_names.column))
    if ids.family_name is not None:
        family = clean_name_sql(ident(ids.family_name.column))
    return given, middle, family


def _date_columns(prefix: str, mapping: DateMapping | None) -> dict[str, str]:
    """text, parsed, and flags for one date column, as name -> SQL (within `base`)."""
    if mapping is None:
        return {f"{prefix}_text": "CAST(NULL AS VARCHAR)", f"{prefix}_parsed": "CAST(NULL AS DATE)"}
    text = date_text_sql(mapping.column)
    return {f"{prefix}_text": text, f"{prefix}_parsed": parse_date_sql(text, mapping.formats)}


def standardise_sql(source: SourceSpec, raw_table: str) -> str:
    """SELECT that turns a raw (all-text) extract into the standardised primitives."""
    ids = source.identifiers
    given, middle, family = _name_parts(source)
    dob = _date_columns("dob", ids.date_of_birth)
    event = _date_columns("event", source.event.date if source.event else None)
    placeholder_dates = ids.date_of_birth.placeholder_dates if ids.date_of_birth else []
    placeholder_list = ", ".join(f"DATE {lit(d)}" for d in placeholder_dates) or "NULL"
    sex = (
        sex_sql(ids.sex.column, ids.sex.male_codes, ids.sex.female_codes)
        if ids.sex
        else "CAST(NULL AS VARCHAR)"
    )
    sex_present = (
        f"nullif(trim(CAST({ident(ids.sex.column)} AS VARCHAR)), '') IS NOT NULL"
        if ids.sex
        else "false"
    )
    postcode = (
        postcode_compact_sql(ids.postcode.column) if ids.postcode else "CAST(NULL AS VARCHAR)"
    )
    attributes = "".join(
        f",\n    CAST({ident(a)} AS VARCHAR) AS {ident(a)}" for a in source.attributes
    )
    attribute_refs = "".join(f",\n  c.{ident(a)}" for a in source.attributes)
    event_type = lit(source.event.type) if source.event else "CAST(NULL AS VARCHAR)"

    return f"""
WITH base AS (
  SELECT
    _row_number,
    _delivery,
    _delivery_file,
    {lit(source.name)} AS source_dataset,
    nullif(trim(CAST({ident(source.record_id)} AS VARCHAR)), '') AS record_id,
    {given} AS given_text,
    {middle} AS middle_text,
    {family} AS family_text,
    {dob["dob_text"]} AS dob_text,
    {dob["dob_parsed"]} AS dob_parsed,
    {event["event_text"]} AS event_text,
    {event["event_parsed"]} AS event_parsed,
    {sex} AS sex,
    {sex_present} AS sex_present,
    {postcode} AS postcode_compact{attributes}
  FROM {raw_table}
),
cleaned AS (
  SELECT
    *,
    {name_part_sql("given_text")} AS given_name,
    {name_part_sql("middle_text")} AS middle_names,
    {name_part_sql("family_text")} AS family_name,
    CASE
      WHEN dob_parsed IN ({placeholder_list}) THEN NULL
      WHEN dob_parsed < DATE '{EARLIEST_PLAUSIBLE_DATE}' OR dob_parsed > current_date THEN NULL
      ELSE dob_parsed
    END AS date_of_birth,
    CASE WHEN regexp_matches(postcode_compact, '{VALID_POSTCODE}')
      THEN left(postcode_compact, length(postcode_compact) - 3) || ' ' || right(postcode_compact, 3)
    END AS postcode
  FROM base
)
SELECT
  c._row_number,
  c._delivery,
  c._delivery_file,
  c.source_dataset,
  c.record_id,
  c.given_name,
  c.middle_names,
  c.family_name,
  c.date_of_birth,
  c.sex,
  c.postcode,
  CASE WHEN c.given_name IS NOT NULL
    THEN list_distinct(list_concat([c.given_name], coalesce(n.canonicals, [])))
  END AS given_name_aliases,
  {soundex_sql("c.given_name")} AS given_name_soundex,
  {soundex_sql("c.family_name")} AS family_name_soundex,
  CASE WHEN c.family_name IS NOT NULL THEN string_split(c.family_name, ' ') END
    AS family_name_tokens,
  year(c.date_of_birth) AS dob_year,
  month(c.date_of_birth) AS dob_month,
  day(c.date_of_birth) AS dob_day,
  left(c.postcode, length(c.postcode) - 2) AS postcode_sector,
  CASE WHEN c.postcode IS NOT NULL THEN left(c.postcode_compact, length(c.postcode_compact) - 3)
    END AS postcode_district,
  CASE WHEN c.postcode IS NOT NULL THEN regexp_extract(c.postcode_compact, '^([A-Z]{{1,2}})', 1)
    END AS postcode_area,
  c.event_parsed AS event_date,
  {event_type} AS event_type{attribute_refs},
  (c.dob_text IS NOT NULL AND c.dob_parsed IS NULL) AS dob_unparseable,
  (c.dob_parsed IN ({placeholder_list})) IS TRUE AS dob_placeholder,
  (c.dob_parsed IS NOT NULL AND c.date_of_birth IS NULL
    AND NOT (c.dob_parsed IN ({placeholder_list})) IS TRUE) AS dob_implausible,
  (c.event_text IS NOT NULL AND c.event_parsed IS NULL) AS event_date_unparseable,
  (c.postcode_compact IS NOT NULL AND c.postcode IS NULL) AS postcode_invalid,
  (c.sex_present AND c.sex IS NULL) AS sex_unknown
FROM cleaned c
LEFT JOIN {NICKNAME_TABLE} n ON n.variant = c.given_name
"""


def linkage_input_sql(accepted_table: str) -> str:
    """The accepted rows projected onto the columns every source shares for linkage."""
    return f"SELECT {', '.join(LINKAGE_COLUMNS)} FROM {accepted_table}"


def standardise_delivery(engine: Engine, source: SourceSpec, delivery: Delivery) -> int:
    """Standardise one accepted delivery; returns its rows."""
    load_reference_tables(engine)
    engine.create_table(delivery.standardised_table, standardise_sql(source, delivery.raw_table))
    set_status(engine, delivery, "standardised")
    return engine.count(delivery.standardised_table)


def build_linkage_input(engine: Engine, source: str, accepted_table: str | None) -> str | None:
    """The source's Splink input table, or none when no delivery of it was accepted."""
    table = Tables.linkage_input(source)
    if accepted_table is None:
        engine.drop_table(table)
        return None
    engine.create_table(table, linkage_input_sql(accepted_table))
    return table

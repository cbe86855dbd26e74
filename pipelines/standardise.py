"""Standardise identifying fields into the common data primitives, as SQL the engine runs.

Every expression here is written once, in DuckDB's dialect, using only functions that have a
direct Spark SQL counterpart (regexp_replace/regexp_extract, translate, try_strptime,
string_split, list literals), so the Spark engine can transpile the same SQL with sqlglot
(`pipelines/dialect.py` fills the one gap, try_strptime).

Output columns of `standardise_sql` (one row per input row):
  _row_number, _delivery, _delivery_file, _malformed, source_dataset, record_id,
  given_name, middle_names, family_name, date_of_birth, sex, postcode,
  given_name_aliases, given_name_soundex, family_name_soundex, family_name_tokens,
  dob_year, dob_month, dob_day, postcode_sector, postcode_district, postcode_area,
  <the source's other identifiers and their derived columns>,
  event_date, event_type, <declared attributes>,
  dob_unparseable, dob_placeholder, dob_implausible, event_date_unparseable,
  postcode_invalid, sex_unknown, name_unreadable, name_transliterated,
  <other identifier>_set_missing...

Names and addresses in any script are first put into Latin letters (anyascii, through the
TRANSLITERATIONS table that `build_transliterations` makes for the delivery), so that
"Łukasz Wałęsa" is "lukasz walesa" and "Иван" is "ivan" rather than nothing.

dob_year is the year of the date of birth, or, where a source has none, its declared year
of birth or the year its age on a known date points to (birth_year_from_age).
"""

from __future__ import annotations

import re
from importlib import resources

import pandas as pd

from linkage_models.project import (
    DEFAULT_PLACEHOLDERS,
    STANDARD_COLUMNS,
    DateMapping,
    LinkageProject,
    OtherIdentifier,
    SourceSpec,
)
from pipelines.contract import Tables
from pipelines.deliveries import Delivery, set_status
from pipelines.engines import Engine
from pipelines.sql import (
    EARLIEST_PLAUSIBLE_DATE,
    date_text_sql,
    ident,
    in_list,
    lit,
    parse_date_sql,
    postcode_compact_sql,
    postcode_pattern,
)

NICKNAME_TABLE = Tables.NICKNAMES
TRANSLITERATIONS = "__transliterations"


def person_name_columns(source: SourceSpec) -> list[str]:
    """The source columns of the person's name (full, given, middle, family)."""
    ids = source.identifiers
    return [
        m.column
        for m in (ids.full_name, ids.given_name, ids.middle_names, ids.family_name)
        if m is not None
    ]


def name_columns(source: SourceSpec) -> list[str]:
    """The source columns holding names or addresses: written in any script, compared in
    Latin letters."""
    columns = person_name_columns(source)
    for identifier in source.identifiers.other.values():
        if identifier.type in ("name", "address"):
            columns += identifier.source_columns()
    return list(dict.fromkeys(columns))


def build_transliterations(engine: Engine, source: SourceSpec, raw_table: str) -> None:
    """Table TRANSLITERATIONS (original, latin): each distinct name or address value of the
    delivery with a character outside ASCII, in Latin letters (anyascii: "Łukasz" -> "Lukasz",
    "王小明" -> "WangXiaoMing", "Иван" -> "Ivan"). Only distinct values travel to Python, so the
    cost follows the variety of names, not the rows; the rows are joined to it in SQL."""
    from anyascii import anyascii

    columns = name_columns(source)
    values: list[str] = []
    if columns:
        union = " UNION ".join(
            f"SELECT {ident(c)} AS v FROM {raw_table} WHERE regexp_matches({ident(c)}, "
            "'[^\\x01-\\x7f]')"
            for c in columns
        )
        values = [v for (v,) in engine.fetch(f"SELECT DISTINCT v FROM ({union}) ORDER BY v")]
    frame = pd.DataFrame(
        {"original": values, "latin": [anyascii(v) for v in values]}, dtype="object"
    )
    if frame.empty:  # typed, so the joins below work on every engine
        frame = pd.DataFrame({"original": ["\x01"], "latin": ["\x01"]})
    engine.load_frame(TRANSLITERATIONS, frame)


def transliterated_sql(source: SourceSpec, raw_table: str) -> str:
    """The raw rows with their name and address columns in Latin letters, and
    `_transliterated`: whether any of them was not already."""
    columns = name_columns(source)
    items = [f"r.{c}" for c in ("_row_number", "_delivery", "_delivery_file", "_malformed")]
    joins, flags = [], []
    for i, column in enumerate(source.mapped_columns()):
        if column in columns:
            items.append(f"coalesce(t{i}.latin, r.{ident(column)}) AS {ident(column)}")
            joins.append(f"LEFT JOIN {TRANSLITERATIONS} t{i} ON t{i}.original = r.{ident(column)}")
            flags.append(f"t{i}.original IS NOT NULL")
        else:
            items.append(f"r.{ident(column)}")
    items.append(f"({' OR '.join(flags) or 'false'}) AS _transliterated")
    return f"SELECT {', '.join(items)} FROM {raw_table} r {' '.join(joins)}"


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
    e = f"lower({whole})"
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


# Common abbreviations in addresses, expanded so "12 High St" and "12 High Street" agree.
ADDRESS_ABBREVIATIONS = {
    "ST": "STREET",
    "RD": "ROAD",
    "AVE": "AVENUE",
    "AV": "AVENUE",
    "DR": "DRIVE",
    "LN": "LANE",
    "CT": "COURT",
    "PL": "PLACE",
    "CRES": "CRESCENT",
    "TCE": "TERRACE",
    "CL": "CLOSE",
    "GDNS": "GARDENS",
    "SQ": "SQUARE",
    "HWY": "HIGHWAY",
    "PDE": "PARADE",
    "APT": "FLAT",
    "APARTMENT": "FLAT",
    "NTH": "NORTH",
    "STH": "SOUTH",
}


def text_sql(column: str, placeholders: list[str]) -> str:
    """Trimmed text; empty and placeholder values (the defaults and any declared) NULL."""
    text = f"nullif(trim(CAST({ident(column)} AS VARCHAR)), '')"
    values = [*DEFAULT_PLACEHOLDERS, *(p.upper() for p in placeholders)]
    return f"CASE WHEN upper({text}) IN {in_list(values)} THEN NULL ELSE {text} END"


def address_sql(columns: list[str], placeholders: list[str]) -> str:
    """Lines joined, upper-case ASCII letters and digits in single spaces, abbreviations
    expanded."""
    lines = ", ".join(text_sql(c, placeholders) for c in columns)
    e = f"upper(concat_ws(' ', {lines}))"
    e = f"regexp_replace({e}, '[''’`]', '', 'g')"
    e = f"regexp_replace({e}, '[^A-Z0-9]+', ' ', 'g')"
    e = f"' ' || trim({e}) || ' '"
    for short, full in ADDRESS_ABBREVIATIONS.items():
        e = f"replace({e}, ' {short} ', ' {full} ')"
    return f"nullif(trim({e}), '')"


def other_identifier_sql(identifier: OtherIdentifier) -> tuple[str, str]:
    """(standardised value, raw text) SQL for one other identifier, within `base`."""
    columns = identifier.source_columns()
    placeholders = identifier.placeholder_values
    # What was delivered (the usual "not known" words are missing as delivered; a declared
    # placeholder, or a value that cannot be read, counts as set missing).
    raw = f"coalesce({', '.join(text_sql(c, []) for c in columns)})"
    text = text_sql(columns[0], placeholders)
    kind = identifier.type
    if kind == "person_id":
        value = f"nullif(regexp_replace(upper({text}), '[^A-Z0-9]', '', 'g'), '')"
    elif kind == "address":
        value = address_sql(columns, placeholders)
    elif kind == "exact":
        value = f"upper({text})"
    elif kind == "name":
        value = f"CASE WHEN {text} IS NOT NULL THEN {clean_name_sql(ident(columns[0]))} END"
    elif kind == "date":
        value = parse_date_sql(text, identifier.formats)
    else:
        value = f"TRY_CAST({text} AS DOUBLE)"
    return value, raw


def other_identifier_columns(name: str, identifier: OtherIdentifier) -> list[str]:
    """The SELECT items an other identifier adds to the standardised table (over `c`)."""
    items = [f"c.{name}"]
    if identifier.type == "address":
        street = (
            f"nullif(trim(regexp_replace(regexp_replace(c.{name}, '\\S*[0-9]\\S*', '', 'g'), "
            "'\\s+', ' ', 'g')), '')"
        )
        number = f"regexp_extract(c.{name}, '([0-9]+[A-Z]?)', 1)"  # the first house/flat no.
        items += [
            f"CASE WHEN {street} IS NOT NULL THEN string_split({street}, ' ') END AS {name}_tokens",
            f"nullif({number}, '') AS {name}_number",
            f"{street} AS {name}_street",
            f"nullif(concat_ws(' ', {number}, {street}), '') AS {name}_house",
        ]
    items.append(f"(c.{name}_raw IS NOT NULL AND c.{name} IS NULL) AS {name}_set_missing")
    return items


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
    others = ""
    for name, identifier in ids.other.items():
        value, raw = other_identifier_sql(identifier)
        others += f",\n    {value} AS {name},\n    {raw} AS {name}_raw"
    other_refs = "".join(
        ",\n  " + ",\n  ".join(other_identifier_columns(n, o)) for n, o in ids.other.items()
    )
    year_text = "CAST(NULL AS INTEGER)"
    if ids.year_of_birth is not None:
        year_text = f"TRY_CAST({text_sql(ids.year_of_birth.column, [])} AS INTEGER)"
    elif ids.age is not None:
        age = f"TRY_CAST({text_sql(ids.age.column, [])} AS INTEGER)"
        year_text = f"{ids.age.as_at.year} - {age}"
    plausible_year = (
        f"CASE WHEN year_declared BETWEEN {EARLIEST_PLAUSIBLE_DATE[:4]} "
        "AND year(current_date) THEN year_declared END"
    )
    from_age = "true" if ids.age is not None else "false"
    pattern = postcode_pattern(ids.postcode) if ids.postcode else None
    postcode_ok = f"regexp_matches(postcode_compact, '{pattern}')" if pattern else "true"
    gb = ids.postcode is None or ids.postcode.country == "GB"
    postcode_value = (
        "left(postcode_compact, length(postcode_compact) - 3) || ' ' || right(postcode_compact, 3)"
        if gb
        else "postcode_compact"
    )
    if gb:
        postcode_parts = """left(c.postcode, length(c.postcode) - 2) AS postcode_sector,
  CASE WHEN c.postcode IS NOT NULL THEN left(c.postcode_compact, length(c.postcode_compact) - 3)
    END AS postcode_district,
  CASE WHEN c.postcode IS NOT NULL THEN regexp_extract(c.postcode_compact, '^([A-Z]{1,2})', 1)
    END AS postcode_area"""
    else:
        lengths = [*ids.postcode.prefix_lengths, None, None]  # type: ignore[union-attr]
        prefix = [f"left(c.postcode, {n})" if n else "CAST(NULL AS VARCHAR)" for n in lengths[:2]]
        postcode_parts = (
            f"CAST(NULL AS VARCHAR) AS postcode_sector,\n  {prefix[0]} AS postcode_district,"
            f"\n  {prefix[1]} AS postcode_area"
        )
    attribute_refs = "".join(f",\n  c.{ident(a)}" for a in source.attributes)
    # A delivered name (not a placeholder) that cleaning left empty: counted, not silent.
    unreadable = " OR ".join(
        f"({text_sql(c, [])} IS NOT NULL AND {clean_name_sql(ident(c))} IS NULL)"
        for c in person_name_columns(source)
    )
    event_type = lit(source.event.type) if source.event else "CAST(NULL AS VARCHAR)"

    return f"""
WITH base AS (
  SELECT
    _row_number,
    _delivery,
    _delivery_file,
    _malformed,
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
    {year_text} AS year_declared,
    _transliterated,
    ({unreadable or "false"}) AS name_unreadable,
    {postcode} AS postcode_compact{others}{attributes}
  FROM ({transliterated_sql(source, raw_table)}) raw
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
    {plausible_year} AS year_of_birth,
    CASE WHEN {postcode_ok} THEN {postcode_value} END AS postcode
  FROM base
)
SELECT
  c._row_number,
  c._delivery,
  c._delivery_file,
  c._malformed,
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
  coalesce(year(c.date_of_birth), c.year_of_birth) AS dob_year,
  month(c.date_of_birth) AS dob_month,
  day(c.date_of_birth) AS dob_day,
  {postcode_parts}{other_refs},
  (c.year_of_birth IS NOT NULL AND {from_age}) AS birth_year_from_age,
  c.event_parsed AS event_date,
  {event_type} AS event_type{attribute_refs},
  (c.dob_text IS NOT NULL AND c.dob_parsed IS NULL) AS dob_unparseable,
  (c.dob_parsed IN ({placeholder_list})) IS TRUE AS dob_placeholder,
  (c.dob_parsed IS NOT NULL AND c.date_of_birth IS NULL
    AND NOT (c.dob_parsed IN ({placeholder_list})) IS TRUE) AS dob_implausible,
  (c.event_text IS NOT NULL AND c.event_parsed IS NULL) AS event_date_unparseable,
  (c.postcode_compact IS NOT NULL AND c.postcode IS NULL) AS postcode_invalid,
  (c.sex_present AND c.sex IS NULL) AS sex_unknown,
  c.name_unreadable,
  c._transliterated AS name_transliterated
FROM cleaned c
LEFT JOIN {NICKNAME_TABLE} n ON n.variant = c.given_name
"""


# Types of the columns other identifiers add, for sources that do not map them.
OTHER_COLUMN_TYPES = {
    "person_id": "VARCHAR",
    "address": "VARCHAR",
    "exact": "VARCHAR",
    "name": "VARCHAR",
    "date": "DATE",
    "numeric": "DOUBLE",
}


def linkage_input_sql(project: LinkageProject, source: SourceSpec, accepted_table: str) -> str:
    """The accepted rows projected onto the columns every source shares for linkage; an
    other identifier the source does not map is a typed NULL."""
    items = ["record_id", "source_dataset", *STANDARD_COLUMNS]
    for name, identifier in project.other_identifiers().items():
        mapped = name in source.identifiers.other
        kind = OTHER_COLUMN_TYPES[identifier.type]
        for column in identifier.standard_columns(name):
            column_type = "VARCHAR[]" if column == f"{name}_tokens" else kind
            if column in (f"{name}_number", f"{name}_street", f"{name}_house"):
                column_type = "VARCHAR"
            items.append(column if mapped else f"CAST(NULL AS {column_type}) AS {column}")
    return f"SELECT {', '.join(items)} FROM {accepted_table}"


def standardise_table(engine: Engine, source: SourceSpec, raw_table: str, table: str) -> None:
    """`table`: the standardised rows of a raw (all-text) table of the source."""
    build_transliterations(engine, source, raw_table)
    engine.create_table(table, standardise_sql(source, raw_table))


def standardise_delivery(engine: Engine, source: SourceSpec, delivery: Delivery) -> int:
    """Standardise one accepted delivery; returns its rows."""
    load_reference_tables(engine)
    standardise_table(engine, source, delivery.raw_table, delivery.standardised_table)
    set_status(engine, delivery, "standardised")
    return engine.count(delivery.standardised_table)


def build_linkage_input(
    engine: Engine, project: LinkageProject, source: str, accepted_table: str | None
) -> str | None:
    """The source's Splink input table, or none when no delivery of it was accepted."""
    table = Tables.linkage_input(source)
    if accepted_table is None:
        engine.drop_table(table)
        return None
    engine.create_table(table, linkage_input_sql(project, project.source(source), accepted_table))
    return table


def extend_linkage_input(
    engine: Engine, project: LinkageProject, source: str, table: str, added_rows: str | None
) -> str:
    """In place: the source's Splink input table with the accepted rows a combination added
    to the one it was built from (`added_rows`; None: nothing was added)."""
    if added_rows:
        engine.insert_rows(table, linkage_input_sql(project, project.source(source), added_rows))
    return table

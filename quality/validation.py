"""Great Expectations 1.x validation of a delivery against its source's contract.

`dagster-ge` supports only GX < 1.0, so this is a thin adapter: `build_expectations` is a
pure function from the source spec to a list of expectations; `validate_delivery` runs them
through a GX checkpoint (pandas datasource, in batches for large deliveries), writes the
Data Docs site, and returns counts only. Results use the SUMMARY format with no partial
unexpected lists, so row values never reach metadata, logs or reports.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from linkage_models.project import DateMapping, SourceSpec
from pipelines.engines import Engine
from pipelines.sql import (
    EARLIEST_PLAUSIBLE_DATE,
    date_text_sql,
    ident,
    parse_date_sql,
    postcode_compact_sql,
    postcode_pattern,
)
from quality.data_docs import make_offline

BATCH_ROWS = 1_000_000
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0}


@dataclass(frozen=True)
class ExpectationSpec:
    """One expectation: a GX type and kwargs, with a plain-words description and severity."""

    key: str
    description: str
    severity: str  # critical | warning
    gx_type: str
    kwargs: dict[str, Any]


@dataclass
class ExpectationOutcome:
    key: str
    description: str
    severity: str
    success: bool
    element_count: int = 0
    unexpected_count: int = 0
    missing_count: int = 0

    @property
    def unexpected_rate(self) -> float:
        checked = self.element_count - self.missing_count
        return self.unexpected_count / checked if checked else 0.0


@dataclass
class ValidationOutcome:
    source: str
    delivery: str
    rows: int
    expectations: list[ExpectationOutcome] = field(default_factory=list)
    data_docs_index: str | None = None  # relative to the validation folder (gx_root)

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if e.severity == "critical" and not e.success]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if e.severity == "warning" and not e.success]

    @property
    def success(self) -> bool:
        return not self.critical_failures

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "delivery": self.delivery,
            "rows": self.rows,
            "success": self.success,
            "data_docs_index": self.data_docs_index,
            "expectations": [
                {**asdict(e), "unexpected_rate": round(e.unexpected_rate, 6)}
                for e in self.expectations
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidationOutcome:
        outcomes = [
            ExpectationOutcome(**{k: v for k, v in e.items() if k != "unexpected_rate"})
            for e in data["expectations"]
        ]
        return cls(
            data["source"], data["delivery"], data["rows"], outcomes, data.get("data_docs_index")
        )


def _dates(source: SourceSpec) -> dict[str, DateMapping]:
    """The date columns a delivery is checked on: date of birth and event date."""
    dates = {}
    if source.identifiers.date_of_birth is not None:
        dates["date_of_birth"] = source.identifiers.date_of_birth
    if source.event is not None:
        dates["event_date"] = source.event.date
    return dates


def validation_frame_sql(source: SourceSpec, raw_table: str) -> str:
    """The columns the expectations look at, derived in SQL from the raw delivery."""
    ids = source.identifiers
    cols = [
        f"nullif(trim({ident(source.record_id)}), '') AS record_id",
        f"CASE WHEN nullif(trim({ident(source.record_id)}), '') IS NOT NULL THEN "
        f"row_number() OVER (PARTITION BY trim({ident(source.record_id)}) ORDER BY _row_number) > 1"
        " END AS record_id_repeated",
    ]
    for key, column in ids.columns().items():
        if key in ("date_of_birth",):
            continue
        lines = ids.other[key].source_columns() if key in ids.other else [column]
        present = ", ".join(f"nullif(trim({ident(c)}), '')" for c in lines)
        cols.append(f"coalesce({present}) AS {ident('present_' + key)}")
    for key, mapping in _dates(source).items():
        text = date_text_sql(mapping.column)
        parsed = parse_date_sql(text, mapping.formats)
        cols.append(f"{text} AS {ident('present_' + key)}")
        cols.append(
            f"CASE WHEN {text} IS NOT NULL THEN {parsed} IS NOT NULL END "
            f"AS {ident(key + '_parseable')}"
        )
        # As a yyyymmdd integer: GX turns date strings into nanosecond timestamps, which
        # overflow for the very dates this check exists to catch (e.g. 2999-01-01).
        cols.append(f"CAST(strftime({parsed}, '%Y%m%d') AS INTEGER) AS {ident(key + '_yyyymmdd')}")
    if ids.sex:
        cols.append(f"nullif(upper(trim({ident(ids.sex.column)})), '') AS sex_code")
    if ids.postcode:
        cols.append(f"{postcode_compact_sql(ids.postcode.column)} AS postcode_compact")
    for extra_col in {e.kwargs.get("column") for e in source.validation.expectations} - {None}:
        cols.append(f"{ident(extra_col)}")
    # A malformed row (not readable as CSV) has no values to check: it goes to quarantine.
    return (
        f"SELECT {', '.join(cols)} FROM {raw_table} WHERE _malformed IS NULL ORDER BY _row_number"
    )


# strptime directives as a person writes a date layout.
_READABLE = {
    "%Y": "yyyy",
    "%y": "yy",
    "%m": "mm",
    "%d": "dd",
    "%b": "Mon",
    "%B": "Month",
    "%H": "hh",
    "%M": "mi",
    "%S": "ss",
    "%-m": "m",
    "%-d": "d",
}


def readable_date_format(strptime_format: str) -> str:
    """'%d/%m/%Y' as 'dd/mm/yyyy': how a data owner would describe the layout."""
    text = strptime_format
    for directive in sorted(_READABLE, key=len, reverse=True):
        text = text.replace(directive, _READABLE[directive])
    return text


def build_expectations(source: SourceSpec, today: date | None = None) -> list[ExpectationSpec]:
    """The delivery contract for `source`, from its config (pure: no data, no GX objects)."""
    v = source.validation
    today = today or date.today()
    ids = source.identifiers
    specs = [
        ExpectationSpec(
            "record_id_present",
            f"Every row has a record id ({source.record_id})",
            "critical",
            "expect_column_values_to_not_be_null",
            {"column": "record_id", "mostly": 0.999},
        ),
        ExpectationSpec(
            "record_id_unique",
            f"Record ids are unique (at most {v.max_duplicate_id_rate:.0%} repeats)",
            "critical",
            "expect_column_values_to_be_in_set",
            {
                "column": "record_id_repeated",
                "value_set": [False],
                "mostly": 1 - v.max_duplicate_id_rate,
            },
        ),
    ]
    for key, column in ids.columns().items():
        limit = v.max_missing_rate.get(key, v.default_max_missing_rate)
        specs.append(
            ExpectationSpec(
                f"{key}_completeness",
                f"{key.replace('_', ' ').capitalize()} ({column}) is filled in for at least "
                f"{1 - limit:.0%} of rows",
                "critical",
                "expect_column_values_to_not_be_null",
                {"column": f"present_{key}", "mostly": round(1 - limit, 6)},
            )
        )
    for key, mapping in _dates(source).items():
        label = key.replace("_", " ")
        formats = " or ".join(readable_date_format(f) for f in mapping.formats)
        for suffix, severity, rate in (
            ("parseable", "critical", v.max_unparseable_date_rate),
            ("mostly_readable", "warning", v.warn_unparseable_date_rate),
        ):
            specs.append(
                ExpectationSpec(
                    f"{key}_{suffix}",
                    f"Dates in {mapping.column} read as {formats} (at most {rate:.0%} unreadable)",
                    severity,
                    "expect_column_values_to_be_in_set",
                    {"column": f"{key}_parseable", "value_set": [True], "mostly": 1 - rate},
                )
            )
        specs.append(
            ExpectationSpec(
                f"{key}_plausible",
                f"The {label} is between {EARLIEST_PLAUSIBLE_DATE} and today",
                "warning",
                "expect_column_values_to_be_between",
                {
                    "column": f"{key}_yyyymmdd",
                    "min_value": int(EARLIEST_PLAUSIBLE_DATE.replace("-", "")),
                    "max_value": int(today.strftime("%Y%m%d")),
                    "mostly": 0.999,
                },
            )
        )
    if ids.sex:
        codes = sorted(
            {c.upper() for c in [*ids.sex.male_codes, *ids.sex.female_codes, *v.unknown_sex_codes]}
        )
        specs.append(
            ExpectationSpec(
                "sex_codes_declared",
                f"Sex ({ids.sex.column}) uses only the declared codes {', '.join(codes)}",
                "critical",
                "expect_column_values_to_be_in_set",
                {
                    "column": "sex_code",
                    "value_set": codes,
                    "mostly": 1 - v.max_unknown_sex_code_rate,
                },
            )
        )
    pattern = postcode_pattern(ids.postcode) if ids.postcode else None
    if ids.postcode and pattern:
        shape = (
            "well-formed UK postcodes"
            if ids.postcode.country == "GB"
            else f"postal codes of the declared pattern ({ids.postcode.country})"
        )
        specs.append(
            ExpectationSpec(
                "postcode_well_formed",
                f"Postcodes ({ids.postcode.column}) are {shape}",
                "warning",
                "expect_column_values_to_match_regex",
                {
                    "column": "postcode_compact",
                    "regex": pattern,
                    "mostly": 1 - v.max_malformed_postcode_rate,
                },
            )
        )
    bounds = {"min_value": v.row_count.min}
    if v.row_count.max is not None:
        bounds["max_value"] = v.row_count.max
    count_text = (
        f"at least {v.row_count.min:,} row(s)"
        if v.row_count.max is None
        else f"between {v.row_count.min:,} and {v.row_count.max:,} rows"
    )
    specs.append(
        ExpectationSpec(
            "row_count",
            f"The delivery has {count_text}",
            "critical",
            "expect_table_row_count_to_be_between",
            bounds,
        )
    )
    for i, extra in enumerate(v.expectations):
        specs.append(
            ExpectationSpec(
                f"extra_{i}_{extra.type}",
                extra.description or extra.type.replace("_", " "),
                extra.severity,
                extra.type,
                dict(extra.kwargs),
            )
        )
    return specs


def _gx_expectation(spec: ExpectationSpec) -> Any:
    import great_expectations as gx

    class_name = "".join(part.capitalize() for part in spec.gx_type.split("_"))
    cls = getattr(gx.expectations, class_name, None)
    if cls is None:
        raise ValueError(f"unknown Great Expectations expectation type {spec.gx_type!r}")
    return cls(
        **spec.kwargs,
        meta={"key": spec.key, "severity": spec.severity},
        description=spec.description,
    )


def _context(gx_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="file", project_root_dir=str(gx_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate_delivery(
    engine: Engine,
    source: SourceSpec,
    delivery: str,
    raw_table: str,
    gx_root: Path,
    batch_rows: int = BATCH_ROWS,
) -> ValidationOutcome:
    """Run the source's contract over one delivery; builds the GX Data Docs site too (under
    gx_root/gx/)."""
    import great_expectations as gx

    specs = build_expectations(source)
    context = _context(gx_root)
    datasource = engine.gx_datasource(context)
    asset_name = f"{source.name}__{delivery}"
    try:
        asset = datasource.get_asset(asset_name)
    except LookupError:
        asset = datasource.add_dataframe_asset(asset_name)
    try:
        batch_definition = asset.get_batch_definition("whole_delivery")
    except (KeyError, LookupError):
        batch_definition = asset.add_batch_definition_whole_dataframe("whole_delivery")
    # Built whole, then stored once: adding expectations one by one to a suite the store
    # already holds writes the store at each (40 ms apiece).
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=source.name, expectations=[_gx_expectation(s) for s in specs])
    )
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=asset_name, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=asset_name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format=RESULT_FORMAT,
        )
    )
    rows = engine.count(raw_table)
    frame_sql = validation_frame_sql(source, raw_table)
    outcomes = {s.key: ExpectationOutcome(s.key, s.description, s.severity, True) for s in specs}
    for frame in engine.validation_frames(frame_sql, batch_rows):
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for validation in result.run_results.values():
            for r in validation.results:
                outcome = outcomes[r.expectation_config.meta["key"]]
                stats = r.result or {}
                outcome.element_count += int(stats.get("element_count", 0) or 0)
                outcome.unexpected_count += int(stats.get("unexpected_count", 0) or 0)
                outcome.missing_count += int(stats.get("missing_count", 0) or 0)
                outcome.success = outcome.success and bool(r.success)
    # Rate-based expectations judged over the whole delivery, not batch by batch.
    for spec in specs:
        outcome = outcomes[spec.key]
        if "mostly" in spec.kwargs and outcome.element_count:
            outcome.success = outcome.unexpected_rate <= 1 - spec.kwargs["mostly"] + 1e-12
        if spec.gx_type == "expect_table_row_count_to_be_between":
            outcome.element_count = rows
            high = spec.kwargs.get("max_value")
            outcome.success = rows >= spec.kwargs["min_value"] and (high is None or rows <= high)
    docs = context.get_docs_sites_urls()
    docs_index = Path(url2pathname(urlparse(docs[0]["site_url"]).path)) if docs else None
    if docs_index:
        make_offline(docs_index.parent)
    return ValidationOutcome(
        source=source.name,
        delivery=delivery,
        rows=rows,
        expectations=[outcomes[s.key] for s in specs],
        data_docs_index=str(docs_index.relative_to(gx_root)) if docs_index else None,
    )


def save_outcome(outcome: ValidationOutcome, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outcome.to_json(), indent=2))


def load_outcome(path: Path) -> ValidationOutcome:
    return ValidationOutcome.from_json(json.loads(path.read_text()))

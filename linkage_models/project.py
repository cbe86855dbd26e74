"""The linkage project: one YAML file that declares sources, model, thresholds and outputs.

This is the public contract a platform engineer edits. It is validated on load and every
error names the file, the key path and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRIMITIVES = ("given_name", "middle_names", "family_name", "date_of_birth", "sex", "postcode")

# Columns every standardised table carries, usable in blocking rules. Derived ones are
# built by pipelines.standardise from the primitives.
STANDARD_COLUMNS = (
    *PRIMITIVES,
    "given_name_aliases",
    "given_name_soundex",
    "family_name_soundex",
    "family_name_tokens",
    "dob_year",
    "dob_month",
    "dob_day",
    "postcode_sector",
    "postcode_district",
    "postcode_area",
)

# The columns Splink sees, identical across sources (attributes and flags stay behind).
LINKAGE_COLUMNS = ("record_id", "source_dataset", *STANDARD_COLUMNS)

DEFAULT_PLACEHOLDERS = [
    "UNKNOWN",
    "UNK",
    "NOT KNOWN",
    "NOT STATED",
    "NOT GIVEN",
    "N/A",
    "NA",
    "N.A.",
    "NONE",
    "NULL",
    "NIL",
    "-",
    "?",
    "XXX",
    "ZZZ",
    "TBC",
    "REFUSED",
    "NO NAME",
    "NFA",
    "NO FIXED ABODE",
]
DEFAULT_PLACEHOLDER_DATES = ["1900-01-01", "1901-01-01", "1800-01-01", "1899-12-31", "1753-01-01"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class ConfigError(ValueError):
    """A structural problem with a linkage project: names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _column_shorthand(value: Any) -> Any:
    """Allow `given_name: forename` as shorthand for `given_name: {column: forename}`."""
    return {"column": value} if isinstance(value, str) else value


class ColumnMapping(_Strict):
    column: str = Field(min_length=1)


class NameMapping(ColumnMapping):
    # True when the column holds "Forename Middle" together: the first word is the given
    # name and the rest are middle names.
    includes_middle_names: bool = False


class FullNameMapping(ColumnMapping):
    # auto: "SURNAME, Forename Middle" when a comma is present, else "Forename Middle Surname".
    order: Literal["auto", "forename_first", "surname_first"] = "auto"


class DateMapping(ColumnMapping):
    formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"], min_length=1)
    placeholder_dates: list[str] = Field(default_factory=lambda: list(DEFAULT_PLACEHOLDER_DATES))

    @field_validator("formats")
    @classmethod
    def _formats_are_strptime(cls, formats: list[str]) -> list[str]:
        for fmt in formats:
            if "%" not in fmt:
                raise ValueError(
                    f"date format {fmt!r} is not a strptime pattern (expected e.g. '%d/%m/%Y')"
                )
        return formats


class SexMapping(ColumnMapping):
    male_codes: list[str] = Field(default_factory=lambda: ["M", "MALE", "1"])
    female_codes: list[str] = Field(default_factory=lambda: ["F", "FEMALE", "2"])


class Identifiers(_Strict):
    """How a source's columns map onto the common data primitives."""

    full_name: FullNameMapping | None = None
    given_name: NameMapping | None = None
    middle_names: ColumnMapping | None = None
    family_name: ColumnMapping | None = None
    date_of_birth: DateMapping | None = None
    sex: SexMapping | None = None
    postcode: ColumnMapping | None = None

    _shorthand = field_validator(
        "full_name",
        "given_name",
        "middle_names",
        "family_name",
        "date_of_birth",
        "sex",
        "postcode",
        mode="before",
    )(_column_shorthand)

    @model_validator(mode="after")
    def _names_declared_once(self) -> Identifiers:
        if self.full_name and (self.given_name or self.family_name or self.middle_names):
            raise ValueError(
                "declare either full_name or given_name/middle_names/family_name, not both"
            )
        usable = [
            p
            for p in ("full_name", "given_name", "family_name", "date_of_birth", "postcode")
            if getattr(self, p) is not None
        ]
        if len(usable) < 2:
            raise ValueError(
                "map at least two of full_name/given_name/family_name/date_of_birth/postcode "
                "so that records can be linked"
            )
        return self

    def columns(self) -> dict[str, str]:
        """Mapped primitive (or full_name) -> source column."""
        return {
            key: mapping.column
            for key in ("full_name", *PRIMITIVES)
            if (mapping := getattr(self, key)) is not None
        }


class EventMapping(_Strict):
    date: DateMapping
    type: str = Field(min_length=1)

    _shorthand = field_validator("date", mode="before")(_column_shorthand)


class CsvOptions(_Strict):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    # Declared, never sniffed: an apostrophe in O'Brien must not be taken for a quote.
    quote: str = Field(default='"', min_length=1, max_length=1)
    encoding: Literal["utf-8", "latin-1", "utf-16"] = "utf-8"


class RowCountBounds(_Strict):
    min: int = Field(default=1, ge=0)
    max: int | None = Field(default=None, ge=1)


class ExtraExpectation(_Strict):
    """Any Great Expectations 1.x expectation, by its snake_case type name."""

    type: str = Field(pattern=r"^expect_[a-z_]+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    severity: Literal["critical", "warning"] = "warning"
    description: str = ""


class ValidationSpec(_Strict):
    """The delivery contract checked before a delivery may be linked.

    Critical expectations block the delivery; warnings are reported only. Rates are the
    share of non-missing values allowed to fail.
    """

    max_missing_rate: dict[str, float] = Field(default_factory=dict)
    default_max_missing_rate: float = Field(default=0.5, ge=0, le=1)
    max_unparseable_date_rate: float = Field(default=0.01, ge=0, le=1)
    max_duplicate_id_rate: float = Field(default=0.01, ge=0, le=1)
    max_unknown_sex_code_rate: float = Field(default=0.01, ge=0, le=1)
    max_malformed_postcode_rate: float = Field(default=0.1, ge=0, le=1)
    unknown_sex_codes: list[str] = Field(
        default_factory=lambda: [
            "U",
            "9",
            "0",
            "N",
            "X",
            "UNKNOWN",
            "NOT KNOWN",
            "NOT STATED",
            "INDETERMINATE",
        ]
    )
    row_count: RowCountBounds = RowCountBounds()
    expectations: list[ExtraExpectation] = Field(default_factory=list)


class SourceSpec(_Strict):
    name: str
    department: str
    description: str = ""
    path: str = Field(min_length=1, description="file path or glob, relative to data_dir")
    format: Literal["csv", "parquet"]
    csv: CsvOptions = CsvOptions()
    record_id: str = Field(min_length=1)
    identifiers: Identifiers
    event: EventMapping | None = None
    attributes: list[str] = Field(default_factory=list)
    validation: ValidationSpec = ValidationSpec()

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(
                f"source name {name!r} must be lower-case letters, digits and underscores, "
                "starting with a letter"
            )
        return name

    def mapped_columns(self) -> list[str]:
        """Every source column the project reads, in a stable order."""
        cols = [self.record_id, *self.identifiers.columns().values()]
        if self.event:
            cols.append(self.event.date.column)
        cols.extend(self.attributes)
        return list(dict.fromkeys(cols))


class ComparisonSpec(_Strict):
    term_frequency_adjustments: bool = False
    jaro_winkler_thresholds: list[float] = Field(default_factory=lambda: [0.92, 0.88])


BlockingRule = list[str] | str


class TrainingSpec(_Strict):
    deterministic_rules: list[BlockingRule] = Field(min_length=1)
    deterministic_rules_recall: float = Field(default=0.7, gt=0, le=1)
    u_max_pairs: float = Field(default=1e7, gt=0)
    em_blocking_rules: list[BlockingRule] = Field(min_length=2)
    # Cap on blocked pairs per EM session (sampled deterministically); None = all pairs.
    em_max_pairs: float | None = Field(default=5e6, gt=0)
    seed: int = 42


class Thresholds(_Strict):
    """Match probabilities at which pairs are accepted when clustering."""

    high_precision: float = Field(gt=0, lt=1)
    balanced: float = Field(gt=0, lt=1)
    high_recall: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.high_precision >= self.balanced >= self.high_recall:
            raise ValueError("expected high_precision >= balanced >= high_recall")
        return self

    def as_dict(self) -> dict[str, float]:
        return {
            "high_precision": self.high_precision,
            "balanced": self.balanced,
            "high_recall": self.high_recall,
        }


class ModelSpec(_Strict):
    link_type: Literal["link_and_dedupe", "link_only", "dedupe_only"] = "link_and_dedupe"
    comparisons: dict[str, ComparisonSpec]
    blocking_rules: list[BlockingRule] = Field(min_length=1)
    training: TrainingSpec
    thresholds: Thresholds
    # "off" (the default): trust the match weights alone. "exclude" (opt in): pairs with the
    # same date of birth and different given names (at most sharing an initial) are not
    # linked, as probable twins. It costs recall wherever given names vary in ways the name
    # comparison does not know; the linkage report prints what it removed.
    probable_twins_rule: Literal["exclude", "off"] = "off"

    @field_validator("comparisons", mode="before")
    @classmethod
    def _none_means_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("comparisons")
    @classmethod
    def _known_primitives(cls, value: dict[str, ComparisonSpec]) -> dict[str, ComparisonSpec]:
        unknown = sorted(set(value) - set(PRIMITIVES))
        if unknown:
            raise ValueError(f"unknown primitive(s) {unknown}; expected some of {list(PRIMITIVES)}")
        return value


class OutputSpec(_Strict):
    path: str = "out"
    duckdb_memory_limit: str = "8GB"


class ChecksSpec(_Strict):
    """Checks on what a run publishes (reported as Dagster asset checks and in the run)."""

    # Estimated pairwise precision and recall of the balanced person ids below these warn.
    min_estimated_precision: float = Field(default=0.99, ge=0, le=1)
    min_estimated_recall: float = Field(default=0.95, ge=0, le=1)
    # A published attribute whose value equals the record's own name, date of birth,
    # postcode (or its district or area) in more than this share of rows is flagged.
    max_identifier_echo_rate: float = Field(default=0.01, ge=0, le=1)


class OrchestrationSpec(_Strict):
    """How the Dagster code location watches for deliveries and relinks."""

    relink_cron: str = "0 2 * * *"
    sensor_interval_seconds: int = Field(default=60, ge=5)


class LinkageProject(_Strict):
    project: str
    description: str = ""
    data_dir: str = "."
    sources: list[SourceSpec] = Field(min_length=1)
    model: ModelSpec
    output: OutputSpec = OutputSpec()
    checks: ChecksSpec = ChecksSpec()
    orchestration: OrchestrationSpec = OrchestrationSpec()

    @model_validator(mode="after")
    def _consistent(self) -> LinkageProject:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        for rule in [
            *self.model.blocking_rules,
            *self.model.training.deterministic_rules,
            *self.model.training.em_blocking_rules,
        ]:
            if isinstance(rule, list):
                bad = [c for c in rule if c not in STANDARD_COLUMNS]
                if bad:
                    raise ValueError(
                        f"blocking rule {rule} uses unknown column(s) {bad}; expected columns "
                        f"of the standardised table: {list(STANDARD_COLUMNS)}"
                    )
        return self

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)


class LoadedProject(BaseModel):
    """A validated project plus where it came from (paths resolve against it)."""

    model_config = ConfigDict(frozen=True)

    spec: LinkageProject
    config_path: Path
    data_dir: Path
    output_dir: Path
    config_hash: str

    def source_path(self, source: SourceSpec) -> str:
        return str(self.data_dir / source.path)


def _format_location(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """Render pydantic's location as `sources[1](courts).identifiers.date_of_birth`."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and "name" in node:
                    label += f"({node['name']})"
            parts.append(label)
        else:
            if item in ("function-after", "function-before") or str(item).startswith(
                ("function-", "str", "list[", "json-or-python")
            ):
                continue
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def parse_project(raw: Any, origin: str) -> LinkageProject:
    """Validate a parsed YAML document; errors name `origin`, the key path and the fix."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return LinkageProject.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{origin}: invalid linkage project ({exc.error_count()} problem(s)):"]
        for err in exc.errors():
            where = _format_location(tuple(err["loc"]), raw)
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {where}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_project(
    config_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
) -> LoadedProject:
    """Read and validate a linkage project YAML; relative paths resolve against the file."""
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"{path}: linkage project file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    spec = parse_project(raw, str(path))
    base = path.resolve().parent
    resolved_data = Path(data_dir) if data_dir is not None else base / spec.data_dir
    resolved_out = Path(output_dir) if output_dir is not None else base / spec.output.path
    return LoadedProject(
        spec=spec,
        config_path=path,
        data_dir=resolved_data.resolve(),
        output_dir=resolved_out.resolve(),
        config_hash=project_hash(spec),
    )


def project_hash(spec: LinkageProject) -> str:
    """Hash of the validated config (not the file's bytes), so comments don't change it."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()

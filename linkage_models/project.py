"""The linkage project: one YAML file that declares sources, model, thresholds and outputs.

This is the public contract a platform engineer edits. It is validated on load and every
error names the file, the key path and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from linkage_models.defaults import HOUSEHOLD, derive_model, household_place, identifier_counts

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

# Names other identifiers may not take: the standardised table's own bookkeeping.
RESERVED_COLUMNS = (
    "record_id",
    "source_dataset",
    "event_date",
    "event_type",
    "birth_year_from_age",
)
# Other identifier types that can link a record on their own (count towards "enough").
LINKING_OTHER_TYPES = ("person_id", "address")

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


class PostcodeMapping(ColumnMapping):
    """A postal code. GB (the default): UK postcodes, compared by sector, district and area;
    a value that is not UK-shaped becomes missing (counted). Any other country: letters and
    digits as delivered (upper case), compared exactly and by the prefixes declared; with a
    `pattern`, a value that does not match it becomes missing (counted), never silently."""

    country: str = Field(default="GB", pattern=r"^[A-Z]{2}$")
    pattern: str | None = None
    prefix_lengths: list[int] = Field(default_factory=lambda: [3], max_length=2)

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                message = f"pattern {pattern!r} is not a regular expression: {exc}"
                raise ValueError(message) from None
        return pattern

    def comparison_key(self) -> tuple[str, tuple[int, ...]]:
        """What the comparison depends on: every source must agree on it."""
        return (self.country, () if self.country == "GB" else tuple(self.prefix_lengths))


class AgeMapping(ColumnMapping):
    """Age in whole years on a known date: the year of birth is that year less the age (or
    one less), so years derived from ages compare as 'one apart' too."""

    as_at: date


OtherType = Literal["person_id", "address", "exact", "name", "date", "numeric"]


class OtherIdentifier(_Strict):
    """An identifier beyond the primitives, with a standard comparison for its type:

    - person_id: a national or pseudonymised person identifier (NI, NHS, SSN-like):
      letters and digits only, upper case; exact, one typo or transposition, or both
      present and different (strong evidence against).
    - address: free text in one column or several lines (`columns`), normalised to
      upper-case words; exact (weighted by frequency), same house number and street
      (weighted by the street's frequency), similar text, shared words.
    - exact: any code compared exactly (trimmed, upper case).
    - name: any name-like text (cleaned like names): exact, then Jaro-Winkler.
    - date: a date in the declared formats: exact, one character apart, same year.
    - numeric: a number: exact, then within each tolerance.
    A value that cannot be read (or is in `placeholder_values`) becomes missing, counted.
    """

    type: OtherType
    column: str | None = Field(default=None, min_length=1)
    columns: list[str] | None = Field(default=None, min_length=1)
    formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"], min_length=1)
    placeholder_values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way_to_name_columns(self) -> OtherIdentifier:
        if (self.column is None) == (self.columns is None):
            raise ValueError("give either column or columns (several lines, address only)")
        if self.columns is not None and self.type != "address":
            raise ValueError(f"columns (several lines) is for addresses, not type {self.type}")
        return self

    def source_columns(self) -> list[str]:
        return list(self.columns) if self.columns is not None else [str(self.column)]

    def standard_columns(self, name: str) -> list[str]:
        """The columns this identifier adds to the standardised table."""
        if self.type == "address":
            return [name, f"{name}_tokens", f"{name}_number", f"{name}_street", f"{name}_house"]
        return [name]


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
    postcode: PostcodeMapping | None = None
    # Where no full date of birth exists: a year of birth, or an age on a known date.
    year_of_birth: ColumnMapping | None = None
    age: AgeMapping | None = None
    # Identifiers beyond the primitives, by the name the model compares them under.
    other: dict[str, OtherIdentifier] = Field(default_factory=dict)

    _shorthand = field_validator(
        "full_name",
        "given_name",
        "middle_names",
        "family_name",
        "date_of_birth",
        "sex",
        "postcode",
        "year_of_birth",
        mode="before",
    )(_column_shorthand)

    @field_validator("other")
    @classmethod
    def _other_names(cls, value: dict[str, OtherIdentifier]) -> dict[str, OtherIdentifier]:
        for name, identifier in value.items():
            if not _NAME_RE.match(name):
                raise ValueError(
                    f"identifier name {name!r} must be lower-case letters, digits and "
                    "underscores, starting with a letter"
                )
            taken = set(STANDARD_COLUMNS) | set(RESERVED_COLUMNS)
            clash = [c for c in identifier.standard_columns(name) if c in taken]
            if clash:
                raise ValueError(
                    f"identifier name {name!r} would make column(s) {clash} that joinedup "
                    "already uses; choose another name"
                )
        return value

    @model_validator(mode="after")
    def _names_declared_once(self) -> Identifiers:
        if self.full_name and (self.given_name or self.family_name or self.middle_names):
            raise ValueError(
                "declare either full_name or given_name/middle_names/family_name, not both"
            )
        if self.date_of_birth and (self.year_of_birth or self.age):
            raise ValueError(
                "declare date_of_birth, or year_of_birth/age where no full date exists, not both"
            )
        if self.year_of_birth and self.age:
            raise ValueError("declare year_of_birth or age, not both")
        usable = [
            p
            for p in (
                "full_name",
                "given_name",
                "family_name",
                "date_of_birth",
                "year_of_birth",
                "age",
                "postcode",
            )
            if getattr(self, p) is not None
        ]
        usable += [n for n, o in self.other.items() if o.type in LINKING_OTHER_TYPES]
        if len(usable) < 2:
            raise ValueError(
                "map at least two of full_name/given_name/family_name/date_of_birth (or "
                "year_of_birth/age)/postcode or a person_id or address under other, so "
                "that records can be linked"
            )
        return self

    def columns(self) -> dict[str, str]:
        """Mapped primitive (or full_name, year_of_birth, age) and other identifier -> its
        source column (an address in several lines: the columns, comma-separated)."""
        mapped = {
            key: mapping.column
            for key in ("full_name", *PRIMITIVES, "year_of_birth", "age")
            if (mapping := getattr(self, key)) is not None
        }
        for name, identifier in self.other.items():
            mapped[name] = ", ".join(identifier.source_columns())
        return mapped

    def source_columns(self) -> list[str]:
        """Every source column the identifiers read."""
        columns = [
            mapping.column
            for key in ("full_name", *PRIMITIVES, "year_of_birth", "age")
            if (mapping := getattr(self, key)) is not None
        ]
        for identifier in self.other.values():
            columns += identifier.source_columns()
        return columns


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
    # Unreadable dates become missing and their rows still link: more than the warning
    # rate is reported; more than the critical rate (most likely a wrongly declared
    # format) rejects the delivery.
    warn_unparseable_date_rate: float = Field(default=0.01, ge=0, le=1)
    max_unparseable_date_rate: float = Field(default=0.2, ge=0, le=1)
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

    @model_validator(mode="after")
    def _attributes_are_not_identifiers(self) -> SourceSpec:
        """An attribute is published as it is: a column mapped as an identifier cannot be
        one (nor the record id, which is published pseudonymised as source_record_id)."""
        identifying = {c.lower() for c in self.identifiers.source_columns()}
        identifying.add(self.record_id.lower())
        clash = [a for a in self.attributes if a.lower() in identifying]
        if clash:
            raise ValueError(
                f"attributes of source {self.name!r}: {clash} mapped as identifier(s) or "
                "record id; attributes are published, so they must be non-identifying"
            )
        return self

    def mapped_columns(self) -> list[str]:
        """Every source column the project reads, in a stable order."""
        cols = [self.record_id, *self.identifiers.source_columns()]
        if self.event:
            cols.append(self.event.date.column)
        cols.extend(self.attributes)
        return list(dict.fromkeys(cols))


class ComparisonSpec(_Strict):
    term_frequency_adjustments: bool = False
    jaro_winkler_thresholds: list[float] = Field(default_factory=lambda: [0.92, 0.88])
    # Numeric identifiers: levels for values within each of these absolute differences.
    numeric_tolerances: list[float] = Field(default_factory=lambda: [1.0])


BlockingRule = list[str] | str


class TrainingSpec(_Strict):
    deterministic_rules: list[BlockingRule] = Field(min_length=1)
    deterministic_rules_recall: float = Field(default=0.7, gt=0, le=1)
    # Rebuild the prior on the rules recall the first model's scores imply, and estimate m
    # again with the match rate of each EM block the prior can give fixed from it
    # (pipelines.linking.refit_on_implied_prior); false: the declared recall stands and EM
    # runs once (training takes about half as long).
    prior_from_scored_pairs: bool = True
    u_max_pairs: float = Field(default=1e7, gt=0)
    em_blocking_rules: list[BlockingRule] = Field(min_length=2)
    # Cap on blocked pairs per EM session (sampled deterministically); None = all pairs.
    em_max_pairs: float | None = Field(default=5e6, gt=0)
    seed: int = 42


class Thresholds(_Strict):
    """Match probabilities at which pairs are accepted when clustering. `balanced: auto` (the
    default) has it chosen with the model, from the model's own estimates, and frozen with
    it (quality.threshold_choice): the lowest candidate whose estimated precision reaches
    `balanced_precision_target` at the low end of its 95% interval, unless that costs more
    than `balanced_max_f1_loss` of estimated F1; else the one of highest estimated F1. A
    number fixes it. A fixed 0.99 linked
    every data set measured below its best F1 (docs/benchmarks.md, "The balanced
    threshold")."""

    high_precision: float = Field(gt=0, lt=1)
    balanced: float | Literal["auto"] = Field(default="auto")
    high_recall: float = Field(gt=0, lt=1)
    balanced_precision_target: float = Field(default=0.999, gt=0, le=1)
    balanced_max_f1_loss: float = Field(default=0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        balanced = self.high_recall if self.balanced == "auto" else self.balanced
        if not 0 < balanced < 1 or not self.high_precision >= balanced >= self.high_recall:
            raise ValueError("expected high_precision >= balanced >= high_recall")
        return self

    @property
    def chosen_with_model(self) -> bool:
        return self.balanced == "auto"

    def with_balanced(self, balanced: float) -> Thresholds:
        """These thresholds with the balanced one the model chose."""
        return Thresholds(**{**self.model_dump(), "balanced": balanced})

    def as_dict(self) -> dict[str, float]:
        if self.balanced == "auto":
            raise BalancedThresholdNotChosen(
                "the balanced threshold (balanced: auto) is chosen with the model, at its "
                "first linkage: the thresholds are not known before the model step"
            )
        return {
            "high_precision": self.high_precision,
            "balanced": self.balanced,
            "high_recall": self.high_recall,
        }


class BalancedThresholdNotChosen(RuntimeError):
    """Thresholds were read before the model they are chosen with was picked."""


class ModelSpec(_Strict):
    """The linkage model. Any of comparisons, blocking_rules and training left out is derived
    from the identifiers the sources map (linkage_models/defaults.py) and listed in
    `derived`, so the model fits the data it is given."""

    link_type: Literal["link_and_dedupe", "link_only", "dedupe_only"] = "link_and_dedupe"
    comparisons: dict[str, ComparisonSpec]
    blocking_rules: list[BlockingRule] = Field(min_length=1)
    training: TrainingSpec
    thresholds: Thresholds = Thresholds(high_precision=0.999, high_recall=0.9)
    # "off" (the default): trust the match weights alone. "exclude" (opt in): pairs with the
    # same date of birth and different given names (at most sharing an initial) are not
    # linked, as probable twins. It costs recall wherever given names vary in ways the name
    # comparison does not know; the linkage report prints what it removed.
    probable_twins_rule: Literal["exclude", "off"] = "off"
    # "off" (the default): a birth date shared within one household weighs as one shared by
    # strangers. "learnt" (opt in, with a household comparison): it gets a level of its own,
    # where the given names are unrelated, whose u is learnt among household members; the
    # estimates at the top then hold on data with twins, and recall at a 0.999 precision
    # target can fall (settings.within_household_level, docs/benchmarks.md).
    household_dependence: Literal["learnt", "off"] = "off"
    # Splink's blocking analysis counts the pairs each rule makes before training. A derived
    # rule making more than this is dropped; a rule you wrote is kept and reported.
    max_comparisons_per_blocking_rule: float = Field(default=5e7, gt=0)
    # Which parts joinedup derived (set by joinedup, not by hand).
    derived: list[Literal["comparisons", "blocking_rules", "training"]] = Field(
        default_factory=list
    )

    @field_validator("comparisons", mode="before")
    @classmethod
    def _none_means_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value


class OutputSpec(_Strict):
    path: str = "out"
    duckdb_memory_limit: str = "8GB"
    # One run writes into an output folder at a time. A second run waits this long for
    # the first to finish, then stops with a message (0: stops at once).
    wait_for_running_seconds: float = Field(default=0, ge=0)


class ChecksSpec(_Strict):
    """Checks on what a run publishes (reported as Dagster asset checks and in the run)."""

    # Estimated pairwise precision and recall of the balanced person ids below these warn.
    min_estimated_precision: float = Field(default=0.99, ge=0, le=1)
    min_estimated_recall: float = Field(default=0.95, ge=0, le=1)
    # A published attribute whose value equals the record's own name, date of birth,
    # postcode (or its district or area) in more than this share of rows is flagged.
    max_identifier_echo_rate: float = Field(default=0.01, ge=0, le=1)
    # A relink with the same model version and thresholds as the previous publication may
    # move at most this share of the previously linked records (still present) to another
    # balanced person id; more stops the publication. A change of model or thresholds is
    # reported, not bounded.
    max_records_moved_share: float = Field(default=0.01, ge=0, le=1)


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

    @model_validator(mode="before")
    @classmethod
    def _derive_missing_model_parts(cls, raw: Any) -> Any:
        """Fill comparisons, blocking rules and training the project leaves out from the
        identifiers its sources map. Sources that do not parse are left for the field
        validators to report."""
        if not isinstance(raw, dict):
            return raw
        model = raw.get("model") or {}
        if not isinstance(model, dict):
            return raw
        missing = [k for k in ("comparisons", "blocking_rules", "training") if k not in model]
        if not missing:
            return raw
        try:
            sources = [SourceSpec.model_validate(s) for s in raw.get("sources") or []]
        except (ValidationError, TypeError):
            return raw
        link_type = model.get("link_type", "link_and_dedupe")
        if link_type == "link_only" and len(sources) < 2:
            raise ValueError("model.link_type link_only links across sources: declare two or more")
        derived = derive_model(identifiers_per_source(sources), other_types(sources), link_type)
        if not derived["blocking_rules"]:
            raise ValueError(
                "no identifier is mapped by enough sources to derive a model from (link_only "
                "compares across sources: map the same identifiers in at least two)"
            )
        filled = {k: derived[k] for k in missing}
        return {**raw, "model": {**filled, **model, "derived": missing}}

    @model_validator(mode="after")
    def _consistent(self) -> LinkageProject:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        kinds: dict[str, set[Any]] = {}
        for source in self.sources:
            for name, identifier in source.identifiers.other.items():
                kinds.setdefault(name, set()).add(identifier.type)
            if source.identifiers.postcode is not None:
                kinds.setdefault("postcode", set()).add(
                    source.identifiers.postcode.comparison_key()
                )
        mixed = sorted(k for k, v in kinds.items() if len(v) > 1)
        if mixed:
            raise ValueError(
                f"identifier(s) {mixed} are declared differently by different sources; "
                "every source must give an identifier the same type (and a postcode the "
                "same country and prefix_lengths)"
            )
        comparable = {*PRIMITIVES, *self.other_identifiers()}
        if self.household_place():
            comparable.add(HOUSEHOLD)
        unknown = sorted(set(self.model.comparisons) - comparable)
        if unknown:
            raise ValueError(
                f"model.comparisons: unknown identifier(s) {unknown}; expected some of "
                f"{sorted(comparable)} (primitives, names declared under identifiers.other, "
                f"or {HOUSEHOLD!r}: family name with an address or postcode)"
            )
        columns = self.standard_columns()
        for rule in [
            *self.model.blocking_rules,
            *self.model.training.deterministic_rules,
            *self.model.training.em_blocking_rules,
        ]:
            if isinstance(rule, list):
                bad = [c for c in rule if c not in columns]
                if bad:
                    raise ValueError(
                        f"blocking rule {rule} uses unknown column(s) {bad}; expected columns "
                        f"of the standardised table: {list(columns)}"
                    )
        return self

    def other_identifiers(self) -> dict[str, OtherIdentifier]:
        """Every identifier declared under `other` by any source, by name (first source's
        declaration; all sources agree on the type)."""
        found: dict[str, OtherIdentifier] = {}
        for source in self.sources:
            for name, identifier in source.identifiers.other.items():
                found.setdefault(name, identifier)
        return found

    def standard_columns(self) -> tuple[str, ...]:
        """Columns of every standardised table, usable in blocking rules."""
        extra = [c for n, o in self.other_identifiers().items() for c in o.standard_columns(n)]
        return (*STANDARD_COLUMNS, *extra)

    def linkage_columns(self) -> tuple[str, ...]:
        """The columns Splink sees, identical across sources."""
        return ("record_id", "source_dataset", *self.standard_columns())

    def household_place(self) -> list[str]:
        """The addresses the household comparison compares with the family name, or
        ["postcode"]; [] when there is no household to compare (defaults.household_place)."""
        return household_place(
            mapped_identifiers(self.sources), other_types(self.sources), self.model.link_type
        )

    def postcode_mapping(self) -> PostcodeMapping | None:
        """How postcodes are read (all sources agree on the comparison); None if unmapped."""
        for source in self.sources:
            if source.identifiers.postcode is not None:
                return source.identifiers.postcode
        return None

    def maps_age(self) -> bool:
        return any(s.identifiers.age is not None for s in self.sources)

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

    def with_balanced_threshold(self, balanced: float | None) -> LoadedProject:
        """The project as a linkage with a model runs it: a balanced threshold chosen with
        the model (`balanced: auto`) put in place (unchanged when one is set, or None)."""
        thresholds = self.spec.model.thresholds
        if balanced is None or not thresholds.chosen_with_model:
            return self
        model = self.spec.model.model_copy(
            update={"thresholds": thresholds.with_balanced(balanced)}
        )
        spec = self.spec.model_copy(update={"model": model})
        return self.model_copy(update={"spec": spec})


def identifiers_per_source(sources: list[SourceSpec]) -> list[frozenset[str]]:
    """The identifiers each source maps: primitives (full_name counts as the three name
    parts; a year of birth or age counts as dob_year) and other identifiers, by name."""
    per_source = []
    for source in sources:
        ids = source.identifiers
        present = {k for k in PRIMITIVES if getattr(ids, k) is not None}
        if ids.full_name is not None:
            present |= {"given_name", "middle_names", "family_name"}
        if ids.given_name is not None and ids.given_name.includes_middle_names:
            present.add("middle_names")
        if "date_of_birth" in present or ids.year_of_birth or ids.age:
            present.add("dob_year")
        per_source.append(frozenset(present | set(ids.other)))
    return per_source


def mapped_identifiers(sources: list[SourceSpec]) -> dict[str, int]:
    """How many sources map each identifier (as identifiers_per_source names them)."""
    return identifier_counts(identifiers_per_source(sources))


def other_types(sources: list[SourceSpec]) -> dict[str, str]:
    return {n: o.type for s in sources for n, o in s.identifiers.other.items()}


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

"""Splink settings built from the linkage project: one standard comparison per identifier.

The comparisons are designed for the error processes of administrative data: nicknames
(alias arrays), people known by a middle name, swapped given/family names, hyphenated and
partial surnames (token overlap), day/month swaps and typed-in digits in dates of birth,
dates imputed as 1 January, and address moves (postcode sector/district/area levels).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import splink.comparison_level_library as cll
import splink.comparison_library as cl
from splink import SettingsCreator, block_on
from splink.internals.blocking_rule_creator import BlockingRuleCreator
from splink.internals.comparison_creator import ComparisonCreator
from splink.internals.comparison_level_creator import ComparisonLevelCreator
from splink.internals.dialects import SplinkDialect

from linkage_models.project import (
    HOUSEHOLD,
    BlockingRule,
    ComparisonSpec,
    LinkageProject,
    OtherIdentifier,
    PostcodeMapping,
)

# The label of a within-household level ends so (see within_household_level).
WITHIN_HOUSEHOLD = "within one household"

# Columns Splink must carry through so outputs and diagnostics can use them.
RETAINED_COLUMNS = ["given_name_aliases", "family_name_tokens", "dob_year", "dob_month", "dob_day"]

# Splink's settings module warns of a comparison without a null level (its only warning):
# middle_names has none on purpose (see middle_names_comparison), and the warning would
# tell every user otherwise. (A logging.Filter subclass defined here, matching that one
# message, made DuckDB report leaked objects at every exit; this does not.)
logging.getLogger("splink.internals.settings").setLevel(logging.ERROR)


class NamesSwappedLevel(ComparisonLevelCreator):
    """Two name columns similar crosswise (given name on one record is the family name on
    the other). Written per dialect: the Jaro-Winkler function is named differently on each
    engine (DuckDB's built-in, Splink's UDF jar on Spark)."""

    def __init__(self, first: str, second: str, threshold: float):
        self.first, self.second, self.threshold = first, second, threshold

    def create_sql(self, sql_dialect: SplinkDialect) -> str:
        jw = sql_dialect.jaro_winkler_function_name
        a, b, t = self.first, self.second, self.threshold
        return f"{jw}({a}_l, {b}_r) >= {t} AND {jw}({b}_l, {a}_r) >= {t}"

    def create_label_for_charts(self) -> str:
        return "Given and family names swapped"


class HouseholdLevel(ComparisonLevelCreator):
    """One cell of family name x place: `family` is "same", "similar", "missing" (on one
    record only) or None (differs or missing); `place` is a key of `places` (SQL per
    tier), "unknown" (no place on both records) or None (on both, and different). Written
    per dialect for the Jaro-Winkler function's name."""

    FAMILY_LABELS = {
        "same": "Same family name",
        "similar": "Similar family name",
        "missing": "Family name not known",
        None: "Family name differs or missing",
    }
    PLACE_LABELS = {
        "address": "same address",
        "similar": "similar address",
        "postcode": "same postcode",
        "area": "same postcode district",
        "unknown": "place not known",
        None: "different place",
    }

    def __init__(self, family: str | None, place: str | None, places: dict[str, str]):
        self.family, self.place, self.places = family, place, places

    def create_sql(self, sql_dialect: SplinkDialect) -> str:
        jw = sql_dialect.jaro_winkler_function_name
        family = {
            "same": "family_name_l = family_name_r",
            "similar": (
                f"{jw}(family_name_l, family_name_r) >= 0.88 "
                "OR family_name_soundex_l = family_name_soundex_r"
            ),
            "missing": "family_name_l IS NULL OR family_name_r IS NULL",
        }
        parts = []
        if self.family:
            parts.append(f"({family[self.family]})")
        if self.place:
            parts.append(f"({self.places[self.place].format(jw=jw)})")
        return " AND ".join(parts)

    def create_label_for_charts(self) -> str:
        return f"{self.FAMILY_LABELS[self.family]}, {self.PLACE_LABELS[self.place]}"


def household_places(project: LinkageProject) -> dict[str, str]:
    """SQL (over _l/_r columns; `{jw}` stands for the Jaro-Winkler function) for each tier
    of the household's place, best first, and for "unknown": the addresses (same, then
    similar text) or, where no address is mapped, the postcode (same, then its district)."""
    place = project.household_place()
    if place == ["postcode"]:
        tiers = {
            "postcode": ["postcode_l = postcode_r"],
            "area": ["postcode_district_l = postcode_district_r"],
        }
    else:
        tiers = {
            "address": [f"{a}_l = {a}_r OR {a}_house_l = {a}_house_r" for a in place],
            "similar": [f"{{jw}}({a}_l, {a}_r) >= 0.9" for a in place],
        }
    places = {k: " OR ".join(v) for k, v in tiers.items()}
    recorded = " OR ".join(
        f"({c}_l IS NOT NULL AND {c}_r IS NOT NULL)" for c in household_columns(project)[1:]
    )
    places["unknown"] = f"NOT ({recorded})"
    return places


def household_condition(project: LinkageProject) -> str | None:
    """SQL over a pair for "two records of one household": the same family name at the same
    place (the household comparison's first tier); None where the model has no household
    comparison."""
    if HOUSEHOLD not in project.model.comparisons:
        return None
    places = household_places(project)
    return f"family_name_l = family_name_r AND ({next(iter(places.values()))})"


def within_household_level(project: LinkageProject) -> Any | None:
    """The same date of birth on two records of one household whose given names are both
    present and unrelated (the given-name comparison's "same initial" or "all other"):
    a level of its own, because among such pairs of different people, twins are common.
    Its u is learnt among the members of households (linkage.learn_household_dependence);
    None where the model has no household comparison or the project did not opt in
    (`model.household_dependence: learnt`).

    The given names are part of it because twins have different ones, while one person's
    records usually have the same or a related name; among different people with the same
    name (a father and son) a shared birth date is as rare as anywhere. It is the
    probable-twins rule's pattern, weighed by the model instead of cut.

    Opt in, measured on data with households (docs/benchmarks.md, session 39): at 1M
    generated records the precision estimate at 0.9 went from 0.51 points high to 0.06,
    but at the 0.999 precision target the balanced threshold (0.97) kept recall 0.9761
    where the default keeps 0.9834 at 0.98 (F1 0.9874 against 0.9911, and below the
    hand-written script's 0.9896). On pseudopeople's households data the precision
    estimate at balanced went from 1.11 points high to 0.91, F1 0.9720 to 0.9726; on its
    sample data the recall estimate at 0.999 went from 0.93 points high to 1.01. Taken for
    every pair of one household, whatever the given names, the level cost more (at 1M,
    recall 0.9613 at balanced).

    Only the date of birth has such a level. A person identifier shared within a household
    is a copying error of particular sources: on pseudopeople's households data the SSN's
    u there was 0.012, but on its sample data such a level moved the recall estimate at
    high precision to 1.11 points high."""
    household = household_condition(project)
    if household is None or project.model.household_dependence != "learnt":
        return None
    parts: list[Any] = [cll.ExactMatchLevel("date_of_birth"), cll.CustomLevel(household)]
    given = project.model.comparisons.get("given_name")
    if given is not None:
        parts += [
            cll.CustomLevel("given_name_l IS NOT NULL AND given_name_r IS NOT NULL"),
            cll.Not(cll.Or(*related_given_name_levels(given))),
        ]
    return cll.And(*parts).configure(
        label_for_charts=f"Exact match on date_of_birth, unrelated given names, {WITHIN_HOUSEHOLD}"
    )


def household_columns(project: LinkageProject) -> list[str]:
    """The family name, then the household's place: its addresses, or else the postcode."""
    return ["family_name", *project.household_place()]


def household_comparison(project: LinkageProject) -> ComparisonCreator:
    """Family name and where a person lives as one comparison, so that the agreements
    members of one household share are weighed together (their u-probability is how often
    two different people share both), not added up as if independent. Levels run from
    same name at the same address down to the place alone; EM learns each weight.

    Beside an address the postcode is compared on its own: its errors are mostly its own
    (a typo in one is not a typo in the other), and merged into one comparison that
    independent evidence would be lost."""
    places = household_places(project)
    null = " AND ".join(f"({c}_l IS NULL OR {c}_r IS NULL)" for c in household_columns(project))
    tiers = [p for p in places if p != "unknown"]
    levels: list[Any] = [
        cll.CustomLevel(null, label_for_charts="Family name and place missing").configure(
            is_null_level=True
        ),
        *(HouseholdLevel(f, p, places) for f in ("same", "similar") for p in tiers),
        HouseholdLevel("same", "unknown", places),
        HouseholdLevel("similar", "unknown", places),
        HouseholdLevel("same", None, places),
        HouseholdLevel("similar", None, places),
        *(HouseholdLevel(None, p, places) for p in tiers),
        # A family name missing on one record is no evidence; only the place differs.
        HouseholdLevel("missing", None, places),
        cll.ElseLevel(),
    ]
    return cl.CustomComparison(
        output_column_name=HOUSEHOLD,
        comparison_description="Family name and where the person lives, together",
        comparison_levels=levels,
    )


def _jaro_winkler_levels(column: str, thresholds: list[float]) -> list[Any]:
    return [cll.JaroWinklerLevel(column, t) for t in sorted(thresholds, reverse=True)]


def related_given_name_levels(spec: ComparisonSpec) -> list[Any]:
    """The given-name levels of one name written in two ways: the same, swapped with the
    family name, nicknames, a middle name used, similar, one edit apart."""
    return [
        cll.ExactMatchLevel("given_name", spec.term_frequency_adjustments),
        NamesSwappedLevel("given_name", "family_name", 0.9),
        cll.ArrayIntersectLevel("given_name_aliases", 1).configure(
            label_for_charts="Nickname of the same name"
        ),
        cll.CustomLevel(
            "list_contains(string_split(coalesce(middle_names_r, ''), ' '), given_name_l) "
            "OR list_contains(string_split(coalesce(middle_names_l, ''), ' '), given_name_r)",
            label_for_charts="Known by a middle name",
            base_dialect_str="duckdb",
        ),
        *_jaro_winkler_levels("given_name", spec.jaro_winkler_thresholds),
        cll.DamerauLevenshteinLevel("given_name", 1).configure(
            label_for_charts="One edit or transposition apart"
        ),
    ]


def given_name_comparison(spec: ComparisonSpec) -> ComparisonCreator:
    return cl.CustomComparison(
        output_column_name="given_name",
        comparison_description="Given name, with nicknames and swapped names",
        comparison_levels=[
            cll.NullLevel("given_name"),
            *related_given_name_levels(spec),
            cll.CustomLevel(
                "substr(given_name_l, 1, 1) = substr(given_name_r, 1, 1)",
                label_for_charts="Same initial",
                base_dialect_str="duckdb",
            ),
            cll.ElseLevel(),
        ],
    )


def middle_names_comparison(spec: ComparisonSpec) -> ComparisonCreator:
    """Middle names, where a missing one is evidence the model learns, not a null level.

    Having middle names is a trait of the person, so two records of one person lack them
    together more often than two records of different people, and a source that never
    records them (a school census) sits mostly among non-matches. Scored as no evidence,
    the missing pairs of an EM block took the block's match rate: at 1M generated records
    the block on given name and birth date was 0.90 matches but only 0.87 where middle
    names were missing, and EM, which there tells strangers from matches by little else,
    learnt "family name and place both differ" 1.7 times too common among matches."""
    return cl.CustomComparison(
        output_column_name="middle_names",
        comparison_description="Middle names",
        comparison_levels=[
            cll.CustomLevel(
                "middle_names_l IS NULL OR middle_names_r IS NULL",
                label_for_charts="Middle names missing on either record",
            ),
            cll.ExactMatchLevel("middle_names", spec.term_frequency_adjustments),
            cll.CustomLevel(
                "substr(middle_names_l, 1, 1) = substr(middle_names_r, 1, 1)",
                label_for_charts="Same initial",
                base_dialect_str="duckdb",
            ),
            cll.ElseLevel(),
        ],
    )


def family_name_comparison(spec: ComparisonSpec) -> ComparisonCreator:
    return cl.CustomComparison(
        output_column_name="family_name",
        comparison_description="Family name, with hyphenated/partial names and sound-alikes",
        comparison_levels=[
            cll.NullLevel("family_name"),
            cll.ExactMatchLevel("family_name", spec.term_frequency_adjustments),
            *_jaro_winkler_levels("family_name", spec.jaro_winkler_thresholds[:1]),
            cll.ArrayIntersectLevel("family_name_tokens", 1).configure(
                label_for_charts="Shares a part of a multi-part name"
            ),
            *_jaro_winkler_levels("family_name", spec.jaro_winkler_thresholds[1:]),
            cll.ExactMatchLevel("family_name_soundex").configure(
                label_for_charts="Same Soundex code"
            ),
            cll.ElseLevel(),
        ],
    )


def date_of_birth_comparison(
    spec: ComparisonSpec, ages: bool = False, within_household: Any | None = None
) -> ComparisonCreator:
    """Full dates where both records have one; the year alone where one record has only a
    year of birth (or an age); with ages, years one apart too (an age on a date does not
    fix the year)."""
    one_apart = (
        [
            cll.CustomLevel(
                "abs(dob_year_l - dob_year_r) = 1",
                label_for_charts="Birth years one apart",
                base_dialect_str="duckdb",
            )
        ]
        if ages
        else []
    )
    return cl.CustomComparison(
        output_column_name="date_of_birth",
        comparison_description="Date of birth, with day/month swaps and typos",
        comparison_levels=[
            cll.NullLevel("dob_year").configure(label_for_charts="Date of birth missing"),
            *([within_household] if within_household is not None else []),
            cll.ExactMatchLevel("date_of_birth", spec.term_frequency_adjustments),
            cll.CustomLevel(
                "dob_year_l = dob_year_r AND dob_month_l = dob_day_r AND dob_day_l = dob_month_r",
                label_for_charts="Day and month swapped",
                base_dialect_str="duckdb",
            ),
            cll.CustomLevel(
                "levenshtein(CAST(date_of_birth_l AS VARCHAR), "
                "CAST(date_of_birth_r AS VARCHAR)) <= 1",
                label_for_charts="One character different",
                base_dialect_str="duckdb",
            ),
            cll.CustomLevel(
                "dob_year_l = dob_year_r AND ((dob_month_l = 1 AND dob_day_l = 1) "
                "OR (dob_month_r = 1 AND dob_day_r = 1))",
                label_for_charts="Same year, one date imputed as 1 January",
                base_dialect_str="duckdb",
            ),
            cll.CustomLevel(
                "dob_year_l = dob_year_r AND dob_month_l = dob_month_r",
                label_for_charts="Same year and month",
                base_dialect_str="duckdb",
            ),
            cll.CustomLevel(
                "dob_year_l = dob_year_r",
                label_for_charts="Same year",
                base_dialect_str="duckdb",
            ),
            *one_apart,
            cll.ElseLevel(),
        ],
    )


def sex_comparison(spec: ComparisonSpec) -> ComparisonCreator:
    """Disagreement on sex is evidence against a match; agreement is not counted, because
    given names already carry it (counting both double-counts: among non-matches with the
    same given name, the same sex is near certain, not a coin toss)."""
    return cl.CustomComparison(
        output_column_name="sex",
        comparison_description="Sex: disagreement only",
        comparison_levels=[
            cll.NullLevel("sex"),
            cll.ExactMatchLevel("sex").configure(
                m_probability=0.5,
                u_probability=0.5,
                fix_m_probability=True,
                fix_u_probability=True,
                label_for_charts="Same sex (not counted as evidence)",
            ),
            cll.ElseLevel().configure(label_for_charts="Different sex"),
        ],
    )


def postcode_comparison(
    spec: ComparisonSpec, mapping: PostcodeMapping | None = None
) -> ComparisonCreator:
    if mapping is not None and mapping.country != "GB":
        prefixes = zip(("postcode_district", "postcode_area"), mapping.prefix_lengths, strict=False)
        return cl.CustomComparison(
            output_column_name="postcode",
            comparison_description=f"Postal code ({mapping.country}), exact and by prefix",
            comparison_levels=[
                cll.NullLevel("postcode"),
                cll.ExactMatchLevel("postcode", spec.term_frequency_adjustments),
                *(
                    cll.ExactMatchLevel(column).configure(
                        label_for_charts=f"Same first {n} characters"
                    )
                    for column, n in prefixes
                ),
                cll.ElseLevel(),
            ],
        )
    return cl.CustomComparison(
        output_column_name="postcode",
        comparison_description="Postcode, with sector, district and area",
        comparison_levels=[
            cll.NullLevel("postcode"),
            cll.ExactMatchLevel("postcode", spec.term_frequency_adjustments),
            cll.ExactMatchLevel("postcode_sector").configure(label_for_charts="Same sector"),
            cll.ExactMatchLevel("postcode_district").configure(label_for_charts="Same district"),
            cll.ExactMatchLevel("postcode_area").configure(label_for_charts="Same area"),
            cll.ElseLevel(),
        ],
    )


def person_id_comparison(name: str, spec: ComparisonSpec) -> ComparisonCreator:
    """A national or pseudonymised person identifier: exact is near-conclusive, one typo or
    transposition is likely a keying error, and both present but different is strong
    evidence against (the Else level, whose weight EM learns)."""
    return cl.CustomComparison(
        output_column_name=name,
        comparison_description=f"{name}: person identifier",
        comparison_levels=[
            cll.NullLevel(name),
            cll.ExactMatchLevel(name, spec.term_frequency_adjustments),
            cll.DamerauLevenshteinLevel(name, 1).configure(
                label_for_charts="One typo or transposition"
            ),
            cll.ElseLevel().configure(label_for_charts="Both present and different"),
        ],
    )


def address_comparison(name: str, spec: ComparisonSpec) -> ComparisonCreator:
    """A normalised address: exact (weighted by how common the address is), same house
    number and street (weighted by how common that is), similar text, shared words."""
    tokens, house = f"{name}_tokens", f"{name}_house"
    tf = spec.term_frequency_adjustments
    return cl.CustomComparison(
        output_column_name=name,
        comparison_description=f"{name}: address",
        comparison_levels=[
            cll.NullLevel(name),
            cll.ExactMatchLevel(name, tf),
            cll.ExactMatchLevel(house, tf).configure(
                label_for_charts="Same house number and street"
            ),
            cll.JaroWinklerLevel(name, 0.9).configure(label_for_charts="Similar text"),
            cll.ArrayIntersectLevel(tokens, 2).configure(
                label_for_charts="Two or more words shared"
            ),
            cll.ArrayIntersectLevel(tokens, 1).configure(label_for_charts="One word shared"),
            cll.ElseLevel(),
        ],
    )


def typed_comparison(name: str, kind: str, spec: ComparisonSpec) -> ComparisonCreator:
    """exact, name, date and numeric identifiers."""
    tf = spec.term_frequency_adjustments
    levels: list[Any] = [cll.NullLevel(name), cll.ExactMatchLevel(name, tf)]
    if kind == "name":
        levels += _jaro_winkler_levels(name, spec.jaro_winkler_thresholds)
    elif kind == "date":
        levels += [
            cll.CustomLevel(
                f"levenshtein(CAST({name}_l AS VARCHAR), CAST({name}_r AS VARCHAR)) <= 1",
                label_for_charts="One character different",
                base_dialect_str="duckdb",
            ),
            cll.CustomLevel(
                f"year({name}_l) = year({name}_r)",
                label_for_charts="Same year",
                base_dialect_str="duckdb",
            ),
        ]
    elif kind == "numeric":
        levels += [
            cll.AbsoluteDifferenceLevel(name, t).configure(label_for_charts=f"Within {t:g}")
            for t in sorted(spec.numeric_tolerances)
        ]
    return cl.CustomComparison(
        output_column_name=name,
        comparison_description=f"{name}: {kind}",
        comparison_levels=[*levels, cll.ElseLevel()],
    )


def other_comparison(name: str, identifier: OtherIdentifier, spec: ComparisonSpec) -> Any:
    if identifier.type == "person_id":
        return person_id_comparison(name, spec)
    if identifier.type == "address":
        return address_comparison(name, spec)
    return typed_comparison(name, identifier.type, spec)


COMPARISON_BUILDERS = {
    "given_name": given_name_comparison,
    "middle_names": middle_names_comparison,
    "family_name": family_name_comparison,
    "date_of_birth": date_of_birth_comparison,
    "sex": sex_comparison,
    "postcode": postcode_comparison,
}


def exact_match_gammas(project: LinkageProject, name: str) -> list[int]:
    """Splink's gamma values for a comparison's exact-match levels: the first after null,
    and the one after it too where the first is the within-household level."""
    levels = comparison(project, name, project.model.comparisons[name]).create_comparison_levels()
    scored = len(levels) - 1  # after the null level; the first has the highest gamma
    within = name == "date_of_birth" and within_household_level(project) is not None
    return [scored - 1 - i for i in range(2 if within else 1)]


def blocking_rule(rule: BlockingRule) -> BlockingRuleCreator | str:
    """A list of columns is an equi-join; a string is a SQL condition over l. and r."""
    if isinstance(rule, list):
        return block_on(*rule)
    return rule


_SIDE_COLUMN = re.compile(r'\b([lr])\."?(\w+)"?')


def pair_condition(rule: BlockingRule) -> tuple[str, set[str]]:
    """A rule as SQL over a scored pair's row (`x_l`, `x_r` columns), with the columns it
    reads there."""
    if isinstance(rule, list):
        return " AND ".join(f"{c}_l = {c}_r" for c in rule), {
            f"{c}_{side}" for c in rule for side in "lr"
        }
    read = {f"{column}_{side}" for side, column in _SIDE_COLUMN.findall(rule)}
    return _SIDE_COLUMN.sub(r"\2_\1", rule), read


def comparison(
    project: LinkageProject, name: str, spec: ComparisonSpec, household_levels: bool = True
) -> ComparisonCreator:
    """The standard comparison for one identifier of the project; `household_levels`: with
    the within-household levels (see within_household_level) where there is a household."""
    if name == HOUSEHOLD:
        return household_comparison(project)
    if name == "postcode":
        return postcode_comparison(spec, project.postcode_mapping())
    if name == "date_of_birth":
        within = within_household_level(project) if household_levels else None
        return date_of_birth_comparison(spec, ages=project.maps_age(), within_household=within)
    if name in COMPARISON_BUILDERS:
        return COMPARISON_BUILDERS[name](spec)
    return other_comparison(name, project.other_identifiers()[name], spec)


def build_settings(
    project: LinkageProject,
    blocking_rules: list[BlockingRule] | None = None,
    household_levels: bool = True,
) -> SettingsCreator:
    """Splink settings for the project; `blocking_rules` (the ones the blocking analysis
    kept) replace the project's when given. Training runs without the within-household
    levels (`household_levels` False): they are added once it is done, with their own u."""
    model = project.model
    comparisons = [
        comparison(project, name, spec, household_levels)
        for name, spec in model.comparisons.items()
    ]
    rules = model.blocking_rules if blocking_rules is None else blocking_rules
    return SettingsCreator(
        link_type=model.link_type,
        unique_id_column_name="record_id",
        source_dataset_column_name="source_dataset",
        comparisons=comparisons,
        blocking_rules_to_generate_predictions=[blocking_rule(r) for r in rules],
        retain_matching_columns=True,
        retain_intermediate_calculation_columns=False,
        # Splink names each record by (source_dataset, record_id) only when linking sources;
        # deduplicating one source keeps the source column too, so every pair table has
        # the same shape whatever the link type.
        additional_columns_to_retain=(
            [*RETAINED_COLUMNS, "source_dataset"]
            if model.link_type == "dedupe_only"
            else RETAINED_COLUMNS
        ),
        max_iterations=25,
        em_convergence=0.0001,
    )

"""Train, predict and cluster with Splink on whichever engine holds the standardised tables.

Training follows the usual unsupervised recipe: the prior from deterministic rules, u by
random sampling, m by expectation maximisation over several blocking rules so that every
comparison is estimated at least once. Prediction keeps pairs above a low floor (for
diagnostics and error-rate estimates); clustering runs at each of the three thresholds.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from splink import Linker

from linkage_models.project import BlockingRule, LinkageProject, TrainingSpec
from linkage_models.settings import (
    WITHIN_HOUSEHOLD,
    blocking_rule,
    build_settings,
    exact_match_gammas,
    pair_condition,
)

# Pairs below this probability are not kept: they can never be accepted and only cost disk.
PREDICTION_FLOOR = 0.01
# EM can drive m for a level it never sees among matches to ~0 (a match weight of -60 or
# worse), which would veto true links wherever the level does occur. m is floored here.
M_PROBABILITY_FLOOR = 1e-5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictions:
    """Physical table name (in the engine) of the kept predictions."""

    table: str


def make_linker(
    db_api: Any,
    input_tables: dict[str, str],
    project: LinkageProject,
    trained_model: dict[str, Any] | None = None,
    blocking_rules: list[BlockingRule] | None = None,
    household_levels: bool = True,
) -> Linker:
    """Register each source's linkage input table with Splink and build a Linker.

    With `trained_model` (a saved Splink model), its trained parameters and blocking rules
    are used as they are, on whichever engine `db_api` belongs to. Without one, the
    project's settings, with `blocking_rules` (those the blocking analysis kept) if given,
    and without the within-household levels for training (`household_levels` False).
    """
    frames = [
        db_api.register(table, table_name=f"splink_input_{source}")
        for source, table in input_tables.items()
    ]
    settings: Any = (
        build_settings(project, blocking_rules, household_levels)
        if trained_model is None
        else model_for_dialect(trained_model, project, db_api.sql_dialect.sql_dialect_str)
    )
    # Splink's logging is the application's to set (log_level None: each linker would
    # otherwise reset it, and the command line could not quiet its warnings).
    return Linker(frames, settings, log_level=None)


class ModelMismatchError(ValueError):
    """A saved model whose comparisons no longer match the project's (names the level)."""


def model_for_dialect(
    trained: dict[str, Any], project: LinkageProject, dialect: str
) -> dict[str, Any]:
    """A saved model for an engine of another SQL dialect.

    Splink saves SQL in the dialect it trained on (DuckDB's "a" = "b" is a string comparison
    on Spark), so the comparisons are rebuilt for `dialect` from the project and the trained
    parameters copied across level by level. The saved blocking rules keep their dialect
    tag, from which Splink transpiles them.
    """
    if trained.get("sql_dialect") == dialect:
        return trained
    within = any(name.endswith(WITHIN_HOUSEHOLD) for name, _ in _named_levels(trained))
    fresh = build_settings(project, household_levels=within).create_settings_dict(dialect)
    for new, old in zip(fresh["comparisons"], trained["comparisons"], strict=False):
        new_levels, old_levels = new["comparison_levels"], old["comparison_levels"]
        labels = [lv.get("label_for_charts") for lv in old_levels]
        if new["output_column_name"] != old["output_column_name"] or labels != [
            lv.get("label_for_charts") for lv in new_levels
        ]:
            raise ModelMismatchError(
                f"the saved model's comparison '{old['output_column_name']}' does not match the "
                f"project's '{new['output_column_name']}' level for level: train a new model "
                "instead of reusing this version"
            )
        for new_level, old_level in zip(new_levels, old_levels, strict=True):
            for key in _TRAINED_LEVEL_KEYS:
                if key in old_level:
                    new_level[key] = old_level[key]
    if len(fresh["comparisons"]) != len(trained["comparisons"]):
        raise ModelMismatchError(
            "the saved model compares different primitives from the project: train a new model"
        )
    rules = [
        rule
        if isinstance(rule, dict)
        else {"blocking_rule": rule, "sql_dialect": trained["sql_dialect"]}
        for rule in trained["blocking_rules_to_generate_predictions"]
    ]
    return {
        **trained,
        "sql_dialect": dialect,
        "comparisons": fresh["comparisons"],
        "blocking_rules_to_generate_predictions": rules,
    }


_TRAINED_LEVEL_KEYS = (
    "m_probability",
    "u_probability",
    "fix_m_probability",
    "fix_u_probability",
    "tf_adjustment_weight",
    "tf_minimum_u_value",
)


def train(
    linker: Linker, training: TrainingSpec, relink: Callable[[dict[str, Any]], Linker]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Estimate the prior, u and m; returns the model and a summary for the model card.
    `relink` builds a fresh linker over a saved model (see _estimate_m_held_above_zero)."""
    linker.training.estimate_probability_two_random_records_match(
        [blocking_rule(r) for r in training.deterministic_rules],
        recall=training.deterministic_rules_recall,
    )
    # Every sampled pair counts (Splink's early stop off): stopped once each level had 100
    # pairs, u rested on a probe of 1% of the sample, which each engine draws by its own
    # hash, and u moved between DuckDB and Spark by up to 0.56 bits on the same records.
    linker.training.estimate_u_using_random_sampling(
        max_pairs=training.u_max_pairs, seed=training.seed, min_count_per_level=None
    )
    trained, sessions, held = _estimate_m_held_above_zero(
        linker, relink, training, fix=lambda _: False
    )
    return trained, {
        "probability_two_random_records_match": trained["probability_two_random_records_match"],
        "em_sessions": sessions,
        "m_held_at_floor": held,
    }


def refit_m(
    model: dict[str, Any], training: TrainingSpec, relink: Callable[[dict[str, Any]], Linker]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Estimate m again over `model` (u kept), fixing each EM block's match rate where the
    prior can give it (Splink's `fix_probability_two_random_records_match`; see
    block_rate_derivable); returns the model, the sessions and any level whose m was held
    at the floor.

    Left free, EM picks the block's match rate that best explains its pairs, and where a
    block holds coincidences that nothing the block leaves free tells from matches, it
    counts some among the matches. At 1M generated records the block on given name and
    birth date held 143,706 strangers without middle names beside 994,519 matches; EM
    learnt "family name and place both differ" 2.7 times too common among matches
    (0.026, true 0.0099), and every such stranger scored about three times too likely.
    Each pass runs on a fresh linker: Splink takes the median of a level's estimates over
    a linker's sessions, so sessions run on the first linker would be mixed with the free
    ones."""
    return _estimate_m_held_above_zero(
        relink(model), relink, training, fix=lambda rule: block_rate_derivable(model, rule)
    )


def block_rate_derivable(model: dict[str, Any], rule: BlockingRule) -> bool:
    """Whether the prior gives an EM block's match rate: Splink multiplies it by the Bayes
    factor of an exact-match level for each column the rule reads, and silently leaves out
    a column no comparison compares on its own (a postcode compared only within the
    household), which fixed the rate of the block on postcode and birth date at 0.05 where
    most of its pairs are one person: EM then learnt different given names five times too
    common among matches, and twins linked."""
    exact = set()
    for _, level in _named_levels(model):
        found = _EXACT_LEVEL.match(level.get("sql_condition", ""))
        if found and found.group(1) == found.group(2):
            exact.add(found.group(1))
    _, read = pair_condition(rule)
    return {column.removesuffix("_l").removesuffix("_r") for column in read} <= exact


# `"c_l" = "c_r"`, quoted as the dialect quotes: DuckDB with double quotes, Spark with
# backticks. (Read with double quotes only, no block was ever fixed on Spark.)
_EXACT_LEVEL = re.compile(r'^\s*["`]?(\w+)_l["`]?\s*=\s*["`]?(\w+)_r["`]?\s*$')


# Fewer pairs of different people within one household than this, and a within-household
# level keeps the population's u (what is learnt from a handful of pairs is noise).
MIN_HOUSEHOLD_STRANGERS = 200


def with_household_levels(trained: dict[str, Any], project: LinkageProject) -> dict[str, Any]:
    """A model trained without the within-household levels, with them added (the project's
    comparisons, its trained parameters copied level by level): each starts as its exact
    level, so it weighs nothing different until learn_household_dependence sets its u."""
    fresh = build_settings(project).create_settings_dict(trained["sql_dialect"])
    for new, old in zip(fresh["comparisons"], trained["comparisons"], strict=True):
        old_levels = {lv.get("label_for_charts"): lv for lv in old["comparison_levels"]}
        levels = new["comparison_levels"]
        for i, level in enumerate(levels):
            source = old_levels.get(level.get("label_for_charts"))
            if source is None and level.get("label_for_charts", "").endswith(WITHIN_HOUSEHOLD):
                source = old_levels.get(levels[i + 1].get("label_for_charts"))
                keys: tuple[str, ...] = ("m_probability", "u_probability")
            else:
                keys = _TRAINED_LEVEL_KEYS
            for key in keys:
                if source is not None and key in source:
                    level[key] = source[key]
    return {**trained, "comparisons": fresh["comparisons"]}


def learn_household_dependence(
    trained: dict[str, Any],
    project: LinkageProject,
    relink: Callable[[dict[str, Any]], Linker],
    pairs_in_households: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained model with its within-household levels, each with u learnt among pairs
    of one household; returns the model and what was learnt.

    Fellegi-Sunter multiplies the evidence of each comparison as if independent among
    different people; in one household they are not. In pseudopeople's households data
    1.7% of pairs of different people of one household share a birth date (twins, and
    forms that copy a relative's), against 0.02% of strangers; scored with the strangers'
    rate, twins with different given names and sex linked at 0.97.

    u is learnt by EM over the pairs of one household (see household_block),
    m held at the trained model's and u left free, on its own linker so that nothing else
    of the model changes: the exact level's u there is how often different members of one
    household agree. m stays the exact level's (agreement among records of one person does
    not depend on where they live). A level keeps the population's u where the block holds
    fewer than MIN_HOUSEHOLD_STRANGERS pairs of different people, and never gets a smaller
    u than it (never more weight inside a household than outside one)."""
    model = with_household_levels(trained, project)
    within = [
        (comparison, i)
        for comparison in model["comparisons"]
        for i, level in enumerate(comparison["comparison_levels"])
        if level.get("label_for_charts", "").endswith(WITHIN_HOUSEHOLD)
    ]
    if not within:
        return trained, {}
    rule = household_block(project)
    learnt, match_rate, held = _household_session(trained, project, relink, rule)
    strangers = pairs_in_households * (1.0 - match_rate)
    found: dict[str, Any] = {
        "blocking_rule": rule,
        "pairs": pairs_in_households,
        "match_rate": match_rate,
        "strangers": round(strangers),
        "learnt": strangers >= MIN_HOUSEHOLD_STRANGERS,
        "u_held_at_floor": held,
        "u": {},
    }
    for comparison, i in within:
        level, exact = comparison["comparison_levels"][i], comparison["comparison_levels"][i + 1]
        name = f"{comparison['output_column_name']}: {exact['label_for_charts']}"
        population = exact.get("u_probability")
        u = learnt[name].get("u_probability") if found["learnt"] else None
        u = population if u is None or (population is not None and u < population) else u
        for key, value in (("m_probability", exact.get("m_probability")), ("u_probability", u)):
            if value is not None:
                level[key] = value
                level[f"fix_{key}"] = True
        found["u"][name] = {"within_household": u, "population": population}
    return model, found


def _household_session(
    trained: dict[str, Any],
    project: LinkageProject,
    relink: Callable[[dict[str, Any]], Linker],
    rule: BlockingRule,
) -> tuple[dict[str, dict[str, Any]], float, list[str]]:
    """EM over the pairs of one household, m held and u free: the levels as learnt there,
    the block's match rate, and the levels whose u was held at the floor.

    A level no pair of different people in the block falls into has its u driven below what
    a float holds, and Splink stops: at 1M generated records one did, and in FEBRL, whose
    records are duplicates of people living alone, nearly all do. Such a level's u is held
    at the floor, fixed, and the session run again on a fresh linker."""
    model = copy.deepcopy(trained)
    held: list[str] = []
    while True:
        linker = relink(model)
        try:
            session = linker.training.estimate_parameters_using_expectation_maximisation(
                blocking_rule(rule),
                estimate_without_term_frequencies=True,
                fix_u_probabilities=False,
                fix_m_probabilities=True,
                max_pairs=project.model.training.em_max_pairs,
            )
        except ValueError as exc:
            level = level_driven_to_zero(exc, "u")
            if level is None or f"{level[0]}: {level[1]}" in held:
                raise
            held.append(hold_at_floor(model, *level, parameter="u"))
            continue
        match_rate = float(session.core_model_settings.probability_two_random_records_match)
        return dict(_named_levels(linker.misc.save_model_to_json())), match_rate, held


def household_block(project: LinkageProject) -> BlockingRule:
    """The pairs of one household: the same family name (compared as its tokens) and the
    same first place column. Splink leaves out of an EM session every comparison that reads
    a column the session blocks on; blocked on the family name itself it would leave out
    the given name (its swapped-names level reads the family name), the evidence that best
    tells one person's records from the other members of a household. Without it, on 3,000
    generated people EM put u at 0.30 where the truth was 0.096."""
    return ["family_name_tokens", project.household_place()[0]]


def _estimate_m(
    linker: Linker, training: TrainingSpec, fix: Callable[[BlockingRule], bool]
) -> list[dict[str, Any]]:
    sessions = []
    for rule in training.em_blocking_rules:
        fixed = fix(rule)
        linker.training.estimate_parameters_using_expectation_maximisation(
            blocking_rule(rule),
            estimate_without_term_frequencies=True,
            fix_probability_two_random_records_match=fixed,
            max_pairs=training.em_max_pairs,
        )
        sessions.append({"blocking_rule": rule, "match_rate_fixed": fixed})
    return sessions


def _estimate_m_held_above_zero(
    linker: Linker,
    relink: Callable[[dict[str, Any]], Linker],
    training: TrainingSpec,
    fix: Callable[[BlockingRule], bool],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Run the EM sessions; where Splink stops because EM drove a level's m to zero (below
    what a float holds), hold that level's m at the floor, as finish_model would have set
    it, and run the sessions again on a fresh linker. Returns the model, the sessions and
    the levels held, as 'comparison: level'.

    A level that never occurs among a block's matches has m shrink by a factor each
    iteration: on 28,582 generated records, whose extracts never disagree on sex,
    "Different sex" went 3e-233, 7e-292, then 0.0, and training stopped with Splink's
    error for the whole project."""
    model = linker.misc.save_model_to_json()
    held: list[str] = []
    while True:
        try:
            sessions = _estimate_m(linker, training, fix)
            return linker.misc.save_model_to_json(), sessions, held
        except ValueError as exc:
            level = level_driven_to_zero(exc)
            if level is None or f"{level[0]}: {level[1]}" in held:
                raise
        held.append(hold_at_floor(model, *level))
        log.warning(
            "EM drove m for %s to zero; held at %s and trained again", held[-1], M_PROBABILITY_FLOOR
        )
        linker = relink(model)


def level_driven_to_zero(exc: ValueError, parameter: str = "m") -> tuple[str, str] | None:
    """(comparison, level label) of the level whose m (or u) Splink refused as below what a
    float holds, read from where it refused it (its EM step has the level in hand), or None
    for any other error."""
    if f"{parameter}_probability value" not in str(exc) or "below the minimum" not in str(exc):
        return None
    trace = exc.__traceback__
    found = None
    while trace is not None:
        local = trace.tb_frame.f_locals
        level, comparison = local.get("cl"), local.get("output_column_name")
        if isinstance(comparison, str) and hasattr(level, "label_for_charts"):
            found = (comparison, level.label_for_charts)
        trace = trace.tb_next
    return found


def hold_at_floor(model: dict[str, Any], comparison: str, label: str, parameter: str = "m") -> str:
    """Fix one level's m (or u) at the floor (in place); returns it as 'comparison: level'."""
    for name, level in _named_levels(model):
        if name == f"{comparison}: {label}":
            level[f"{parameter}_probability"] = M_PROBABILITY_FLOOR
            level[f"fix_{parameter}_probability"] = True
            return name
    raise ValueError(f"no level {label!r} in comparison {comparison!r}")


def _named_levels(model: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each level of a saved model but the null ones (which carry no parameters), with its
    name as 'comparison: level'."""
    for comparison in model.get("comparisons", []):
        for level in comparison.get("comparison_levels", []):
            if not level.get("is_null_level"):
                name = f"{comparison.get('output_column_name')}: {level.get('label_for_charts')}"
                yield name, level


def floor_m_probabilities(model: dict[str, Any]) -> list[str]:
    """Raise any trained m probability below the floor to it (in place); returns the levels
    changed, as 'comparison: level'."""
    changed = []
    for name, level in _named_levels(model):
        m = level.get("m_probability")
        if m is not None and not level.get("fix_m_probability") and m < M_PROBABILITY_FLOOR:
            level["m_probability"] = M_PROBABILITY_FLOOR
            changed.append(name)
    return changed


def neutralise_unobserved_levels(model: dict[str, Any], pairs_sampled: float) -> list[str]:
    """Score as no evidence (m = u, in place) each level that neither EM nor the random
    sample saw: returns them, as 'comparison: level'.

    Splink would score such a level with its default m over whatever u it gets; over the
    sampled bound (see bound_unobserved_u_probabilities) a level no data ever reached, such
    as a family name missing beside a different place in extracts that always carry one,
    weighed +13.9 bits: a link on its own, the first time a delivery held such a pair."""
    changed = []
    for name, level in _named_levels(model):
        if level.get("m_probability") is None and level.get("u_probability") is None:
            level["m_probability"] = level["u_probability"] = 3.0 / pairs_sampled
            changed.append(name)
    return changed


def bound_unobserved_u_probabilities(model: dict[str, Any], pairs_sampled: float) -> list[str]:
    """Give each level that no randomly sampled pair fell into (in place) the u that the
    sample still allows, 3 / pairs sampled (a level never seen in n pairs occurs at most
    that often, at 95% confidence); returns the levels changed, as 'comparison: level'.

    Splink leaves such a level's u unset and saves no value for it, so a rare level of
    strong agreement (a similar family name at the same postcode) was scored with a
    default and weighed less than weaker levels. The bound is conservative: the true u is
    smaller, so the level's weight is if anything understated."""
    changed = []
    for name, level in _named_levels(model):
        if level.get("u_probability") is None and not level.get("fix_u_probability"):
            level["u_probability"] = 3.0 / pairs_sampled
            changed.append(name)
    return changed


def untrained_levels(model: dict[str, Any]) -> dict[str, list[str]]:
    """Levels Splink could not estimate, as 'comparison: level' under "m" and "u" (the ones
    behind its "m values not fully trained" warning): a saved model leaves out a parameter it
    never estimated, and such a level is scored with Splink's default instead."""
    missing: dict[str, list[str]] = {"m": [], "u": []}
    for name, level in _named_levels(model):
        for parameter in ("m", "u"):
            if f"{parameter}_probability" not in level:
                missing[parameter].append(name)
    return missing


def predict(linker: Linker, floor: float | None = PREDICTION_FLOOR) -> Predictions:
    """Score every blocked pair; keep those with match probability >= floor (all: None)."""
    predictions = linker.inference.predict(threshold_match_probability=floor)
    return Predictions(table=predictions.physical_name)


def probable_twins_condition(project: LinkageProject) -> str | None:
    """SQL over a predictions row: same date of birth, both given names present and different
    (not equal, not a nickname or middle name, not similar, at most sharing an initial).

    Fellegi-Sunter assumes agreements are independent among non-matches; twins born the
    same day break that (same surname, birth date and address), so such pairs score as
    strong links. With an identical date of birth, different given names are far more often
    twins than typing errors, so these pairs are not linked. Measured on 1M synthetic
    records: removing the "same initial" level too traded 0.03 points of recall for 0.06
    points of precision (docs/benchmarks.md).
    """
    model = project.model
    if model.probable_twins_rule != "exclude":
        return None
    if "given_name" not in model.comparisons or "date_of_birth" not in model.comparisons:
        return None
    dob_exact = ", ".join(str(g) for g in exact_match_gammas(project, "date_of_birth"))
    return f"(gamma_given_name IN (0, 1) AND gamma_date_of_birth IN ({dob_exact}))"


def tf_columns(trained: dict[str, Any]) -> list[str]:
    """The columns a trained model adjusts for term frequency (their tables must be
    computed, or registered, before scoring records apart from the linker's inputs)."""
    return sorted(
        {
            level["tf_adjustment_column"]
            for comparison in trained["comparisons"]
            for level in comparison["comparison_levels"]
            if level.get("tf_adjustment_column")
        }
    )


def cluster_at_thresholds(
    linker: Linker, db_api: Any, predictions_table: str, thresholds: dict[str, float]
) -> dict[str, str]:
    """Connected components at each threshold (name -> match probability); returns
    name -> cluster table."""
    predictions = db_api.table_to_splink_dataframe("__joinedup_predictions", predictions_table)
    tables = {}
    for name, probability in thresholds.items():
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=probability
        )
        tables[name] = clusters.physical_name
    return tables

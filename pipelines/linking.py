"""The linkage steps on an engine: the model to link with (the approved one; training only
when asked), score pairs, cluster. The model itself is linkage_models'; this module gives
its results the contract's table names."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from linkage_models import linkage, settings
from linkage_models.blocking import choose_blocking_rules, count_pairs
from linkage_models.model_card import model_card_markdown
from linkage_models.project import LinkageProject, LoadedProject
from linkage_models.registry import ModelRegistry, ModelVersion
from pipelines import incremental
from pipelines.blocking_reach import (
    BlockingRules,
    expected_unblocked_matches,
    pairs_never_blocked_in_persons,
)
from pipelines.contract import THRESHOLDS, OutputLayout, Tables, clusters_lookup_sql
from pipelines.deliveries import delivery_statuses
from pipelines.engines import Engine
from pipelines.engines.dialect import to_duckdb


def training_data_fingerprint(engine: Engine) -> str:
    """Which deliveries (by content hash and status) a model was trained on."""
    digest = hashlib.sha256()
    for row in delivery_statuses(engine):
        digest.update(f"{row['source']}:{row['delivery']}:{row['sha256']}:{row['status']}".encode())
    return digest.hexdigest()


class LinkageInputError(ValueError):
    """The accepted data cannot be linked the way the project asks (names the sources)."""


def check_linkage_inputs(project: LoadedProject, input_tables: dict[str, str]) -> None:
    """link_only compares records of different sources: it needs two sources with accepted
    deliveries. Said plainly, before Splink says it its own way."""
    spec = project.spec
    if spec.model.link_type == "link_only" and len(input_tables) < 2:
        have = ", ".join(input_tables) or "none"
        waiting = [s.name for s in spec.sources if s.name not in input_tables]
        raise LinkageInputError(
            f"link_type link_only needs accepted deliveries from at least two sources; "
            f"accepted: {have}; none accepted from: {', '.join(waiting)} (see their quality "
            "reports), or use link_and_dedupe / dedupe_only"
        )
    if not input_tables:
        raise LinkageInputError("no source has an accepted delivery: nothing to link")


class NoApprovedModel(LookupError):
    """A linkage that may not train has no approved model to link with."""


def train_model(
    engine: Engine, project: LoadedProject, input_tables: dict[str, str]
) -> tuple[ModelVersion, dict[str, Any], dict[str, Any]]:
    """Train on the accepted data and register the result as a candidate version; returns
    its registry entry, the model and what training found (blocking analysis, floors)."""
    check_linkage_inputs(project, input_tables)
    spec = project.spec
    with engine.scratch():  # Splink's many working tables; training stores none of its own
        db_api = engine.splink_api()
        blocking = choose_blocking_rules(db_api, input_tables, spec)
        linker = linkage.make_linker(
            db_api, input_tables, spec, blocking_rules=blocking["rules"], household_levels=False
        )
        trained, summary = linkage.train(
            linker, spec.model.training, _relinker(engine, input_tables, spec)
        )
        summary["blocking"] = blocking
        # Splink samples about u_max_pairs random pairs, or every pair when there are fewer.
        sampled = min(spec.model.training.u_max_pairs, blocking["total_possible_pairs"] or math.inf)
        if spec.model.training.prior_from_scored_pairs:
            trained, summary["prior_refit"] = refit_on_implied_prior(
                engine, spec, input_tables, trained, sampled
            )
        trained, summary["household_dependence"] = learn_household_dependence(
            engine, spec, input_tables, trained
        )
    summary.update(finish_model(trained, sampled))
    refit = summary.get("prior_refit") or {}
    entry = ModelRegistry(OutputLayout(project.output_dir).model_dir).register(
        trained,
        config_hash=project.config_hash,
        training_data_fingerprint=training_data_fingerprint(engine),
        deterministic_rules_recall=refit.get("implied_recall")
        or spec.model.training.deterministic_rules_recall,
    )
    return entry, trained, summary


def learn_household_dependence(
    engine: Engine, spec: LinkageProject, input_tables: dict[str, str], trained: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained model with its within-household levels learnt (see
    linkage.learn_household_dependence); unchanged where the model has no household."""
    if settings.within_household_level(spec) is None:
        return trained, {}
    pairs = count_pairs(
        engine.splink_api(), input_tables, linkage.household_block(spec), spec.model.link_type
    )
    if not pairs:
        return linkage.with_household_levels(trained, spec), {"pairs": 0, "learnt": False}
    return linkage.learn_household_dependence(
        trained, spec, _relinker(engine, input_tables, spec), pairs
    )


def finish_model(trained: dict[str, Any], sampled: float) -> dict[str, Any]:
    """Make a trained model safe to score with (in place): m floored, levels nothing saw
    made no evidence, unseen u bounded; returns what changed and what is still untrained."""
    return {
        "m_probabilities_floored": linkage.floor_m_probabilities(trained),
        "levels_never_seen": linkage.neutralise_unobserved_levels(trained, sampled),
        "u_probabilities_bounded": linkage.bound_unobserved_u_probabilities(trained, sampled),
        "untrained": linkage.untrained_levels(trained),
    }


def refit_on_implied_prior(
    engine: Engine,
    spec: LinkageProject,
    input_tables: dict[str, str],
    first: dict[str, Any],
    sampled: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A second pass of training: the first model scores the blocked pairs; the prior is
    rebuilt on the share of their expected matches its deterministic rules accept (their
    recall by the model's own account) instead of the declared recall; and m is estimated
    again, the match rate of each EM block the prior can give fixed from it
    (linkage.refit_m). Returns the second model (not yet finished) and what the pass found.

    The declared recall is a guess, and a prior built on it is as wrong as the guess: at
    1M generated records the rules found 0.84 of all matches where 0.7 was declared, so
    the prior was 1.2 times too high, and the implied recall read 0.83. Fixing the block
    rates on a prior that wrong would fix them wrong too. Costs one more scoring of the
    blocked pairs and one more round of EM sessions."""
    training = spec.model.training
    scoring = copy.deepcopy(first)
    finish_model(scoring, sampled)
    relink = _relinker(engine, input_tables, spec)
    linker = relink(scoring)
    scored = linker.inference.predict(threshold_match_probability=linkage.PREDICTION_FLOOR)
    implied = implied_rules_recall(engine, training.deterministic_rules, scored.physical_name)
    scored.drop_table_from_database_and_remove_from_cache()
    prior = float(first["probability_two_random_records_match"])
    found: dict[str, Any] = {
        "declared_recall": training.deterministic_rules_recall,
        "implied_recall": implied,
        "first_prior": prior,
    }
    if not implied:  # the pairs lack a column the rules read: the declared recall stands
        return first, found
    second = {
        **first,
        "probability_two_random_records_match": prior
        * training.deterministic_rules_recall
        / implied,
    }
    trained, found["em_sessions"], found["m_held_at_floor"] = linkage.refit_m(
        second, training, relink
    )
    return trained, found


def _relinker(
    engine: Engine, input_tables: dict[str, str], spec: LinkageProject
) -> Callable[[dict[str, Any]], linkage.Linker]:
    """Builds a linker over a saved model, on a fresh database API each time: Splink
    registers each input table once per API."""
    return lambda model: linkage.make_linker(engine.splink_api(), input_tables, spec, model)


def model_for_linkage(
    engine: Engine,
    project: LoadedProject,
    input_tables: dict[str, str],
    model_version: str | None = None,
    train_if_none_approved: bool = False,
) -> tuple[ModelVersion, dict[str, Any], dict[str, Any] | None]:
    """The model a linkage runs with: the approved version (or `model_version`, when one is
    named), its trained settings, and what training found when it was trained here.
    Training happens here only for a project that has never approved a model, and only
    when the caller allows it (`joinedup run` does; the schedule does not): that first
    model is approved as it is registered."""
    check_linkage_inputs(project, input_tables)
    registry = ModelRegistry(OutputLayout(project.output_dir).model_dir)
    if model_version is not None:
        return (*registry.load(model_version), None)
    if registry.approved() is not None:
        return (*registry.load("approved"), None)
    if train_if_none_approved:
        entry, trained, summary = train_model(engine, project, input_tables)
        registry.approve(entry.version)
        return entry, trained, summary
    raise NoApprovedModel(
        f"{registry.index_path}: no approved model to link with, and this run may not "
        "train one. Train and approve one first: `joinedup train` (the first model of a "
        "project is approved when trained), or `joinedup promote <version>`"
    )


def model_record(
    project: LoadedProject,
    entry: ModelVersion,
    trained: dict[str, Any],
    summary: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a linkage records of its model, with the thresholds it links at (a balanced
    threshold chosen with the model put in place); writes the model card."""
    chosen = project.spec.model.thresholds.chosen_with_model
    spec = project.with_balanced_threshold(entry.balanced_threshold).spec
    layout = OutputLayout(project.output_dir)
    approved = ModelRegistry(layout.model_dir).approved()
    thresholds = spec.model.thresholds.as_dict()
    layout.model_card.write_text(
        model_card_markdown(
            spec.project,
            entry,
            trained,
            thresholds,
            summary,
            spec.model.probable_twins_rule,
            entry.balanced_threshold_choice if chosen else None,
        )
    )
    return {
        **asdict(entry),
        "path": str(layout.model_dir / entry.path),
        "thresholds": thresholds,
        "balanced_chosen_with_model": chosen,
        "trained_in_this_run": summary is not None,
        "approved": approved is not None and approved.version == entry.version,
        "config_changed_since_training": entry.config_hash != project.config_hash,
        "comparisons": list(spec.model.comparisons),
        "derived_from_identifiers": list(spec.model.derived),
        "blocking_rules": prediction_rules_sql(trained),
        "blocking_analysis": summary["blocking"] if summary else None,
    }


def trained_linker(
    engine: Engine,
    project: LoadedProject,
    model_path: str,
    input_tables: dict[str, str],
    detailed: bool = False,
) -> tuple[Any, Any]:
    """Splink's database API over the engine and a linker with the trained model;
    `detailed`: its predictions keep Splink's intermediate columns (for the diagnostics)."""
    db_api = engine.splink_api()
    trained = json.loads(Path(model_path).read_text())
    if detailed:
        trained["retain_intermediate_calculation_columns"] = True
    return db_api, linkage.make_linker(db_api, input_tables, project.spec, trained)


def predict(
    engine: Engine, project: LoadedProject, model_path: str, input_tables: dict[str, str]
) -> dict[str, Any]:
    """Score blocked pairs into PAIRWISE_PREDICTIONS; the pairs clustering may use, where
    the probable-twins rule removes some, into PAIRS_FOR_CLUSTERING (clustering_pairs)."""
    incremental.drop_working_tables(engine, list(input_tables))
    _, linker = trained_linker(engine, project, model_path, input_tables)
    # Every blocked pair is scored; those below the floor are only summed (the matches the
    # model expects among them are missed matches), not kept. Splink's tables are scratch.
    with engine.scratch():
        predictions = linkage.predict(linker, floor=None)
    floor = linkage.PREDICTION_FLOOR
    below = f"match_probability < {floor}"
    engine.create_table(  # one scan: what is below the floor, and what all scored pairs hold
        Tables.PAIRS_BELOW_FLOOR,
        f"SELECT count(*) FILTER (WHERE {below}) AS pairs, "
        f"coalesce(sum(match_probability) FILTER (WHERE {below}), 0) AS expected_matches, "
        "count(*) AS scored_pairs, "
        "coalesce(sum(match_probability), 0) AS expected_matches_scored "
        f"FROM {predictions.table}",
    )
    engine.create_table(
        Tables.PAIRWISE_PREDICTIONS,
        f"SELECT * FROM {predictions.table} WHERE match_probability >= {floor}",
    )
    below_pairs, below_expected, scored, _ = engine.fetch(
        f"SELECT * FROM {Tables.PAIRS_BELOW_FLOOR}"
    )[0]
    removed = apply_pair_rules(
        engine, project.spec, Tables.PAIRWISE_PREDICTIONS, Tables.PAIRS_FOR_CLUSTERING
    )
    return {
        "scored": int(scored),
        "kept_above_floor": engine.count(Tables.PAIRWISE_PREDICTIONS),
        "prediction_floor": floor,
        "below_floor": {
            "pairs": int(below_pairs),
            "expected_matches": round(float(below_expected), 1),
        },
        "removed_by_probable_twins_rule": removed,
    }


def predict_incremental(
    engine: Engine,
    project: LoadedProject,
    model_path: str,
    input_tables: dict[str, str],
    state: dict[str, Any] | None,
    conditions: dict[str, Any],
    added: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Score only what changed since the latest publication (pipelines.incremental): the
    new records against the kept ones and among themselves; the stored pairs of removed
    records dropped. `state` is the stored linkage's (None: there is none to extend);
    `added`, when every source's new rows were added to the publication's combination, the
    table of them per source. The same tables and summary as `predict`, with what changed."""
    published = OutputLayout(project.output_dir).published
    state = incremental.check_state(published, state, conditions)
    changes = incremental.find_changes(engine, input_tables, added)
    # Scored with Splink's intermediate columns: the new pairs are what the diagnostics
    # show after an incremental linkage, and they are not scored a second time for them.
    db_api, linker = trained_linker(engine, project, model_path, input_tables, detailed=True)
    trained = json.loads(Path(model_path).read_text())
    scored = incremental.score_new_records(engine, linker, db_api, trained, input_tables)
    pairs = incremental.extend_pairs(
        engine, state, scored["new_below_floor"], linkage.probable_twins_condition(project.spec)
    )
    below_pairs, below_expected, scored_pairs, _ = engine.fetch(
        f"SELECT * FROM {Tables.PAIRS_BELOW_FLOOR}"
    )[0]
    return {
        "scored": int(scored_pairs),
        "kept_above_floor": engine.count(Tables.PAIRWISE_PREDICTIONS),
        "prediction_floor": linkage.PREDICTION_FLOOR,
        "below_floor": {
            "pairs": int(below_pairs),
            "expected_matches": round(float(below_expected), 1),
        },
        "removed_by_probable_twins_rule": engine.count(Tables.PAIRWISE_PREDICTIONS)
        - engine.count(clustering_pairs(project.spec)),
        "incremental": {
            "previous_snapshot": state["snapshot"],
            **changes,
            "new_pairs_scored": scored["new_pairs_scored"],
            **pairs,
        },
        "detailed_pairs": scored["detailed_pairs"],
    }


def prediction_rules_sql(trained: dict[str, Any]) -> list[str]:
    """The SQL of a trained model's prediction blocking rules, in DuckDB's dialect."""
    dialect = trained.get("sql_dialect", "duckdb")
    return [
        to_duckdb(r["blocking_rule"], r.get("sql_dialect", dialect))
        if isinstance(r, dict)
        else to_duckdb(r, dialect)
        for r in trained["blocking_rules_to_generate_predictions"]
    ]


def blocking_rules(
    project: LoadedProject, model_path: str, input_tables: dict[str, str]
) -> BlockingRules:
    """The approved model's prediction rules over this linkage's inputs (the error-rate
    estimates tell the pairs they never compared from those scored below the floor)."""
    trained = json.loads(Path(model_path).read_text())
    return BlockingRules(
        prediction_rules_sql(trained),
        input_tables,
        link_only=project.spec.model.link_type == "link_only",
    )


def blocking_check(
    engine: Engine, project: LoadedProject, model_path: str, input_tables: dict[str, str]
) -> dict[str, Any]:
    """How many matches the blocked pairs hold (sum of their probabilities), and how many
    blocking never reached by the model's account of how identifiers agree among matches
    (pipelines.blocking_reach; table MATCHES_NOT_BLOCKED). Beside them, the matches the
    model's prior expects among all pairs: the prior is built from the same scores, so it
    cannot show what blocking missed; it is kept to compare. An input of the error-rate
    estimates, run with them after the linkage (it reads every record, so an incremental
    linkage would otherwise cost in proportion to the population)."""
    reached = float(
        engine.fetch(f"SELECT expected_matches_scored FROM {Tables.PAIRS_BELOW_FLOOR}")[0][0]
    )
    trained = json.loads(Path(model_path).read_text())
    prior = float(trained["probability_two_random_records_match"])
    reach = expected_unblocked_matches(
        engine, input_tables, prediction_rules_sql(trained), Tables.PAIRWISE_PREDICTIONS
    )
    missing = reach["expected_matches_not_blocked"]
    engine.create_table(
        Tables.MATCHES_NOT_BLOCKED,
        f"SELECT CAST({'NULL' if missing is None else missing} AS DOUBLE) AS expected_matches",
    )
    sizes = [engine.count(t) for t in input_tables.values()]
    total = sum(sizes)
    if project.spec.model.link_type == "link_only":
        all_pairs = (total * total - sum(n * n for n in sizes)) // 2
    else:
        all_pairs = total * (total - 1) // 2
    expected = prior * all_pairs
    training = project.spec.model.training
    entry = ModelRegistry(Path(model_path).parent).entry_for(Path(model_path))
    used = entry.deterministic_rules_recall if entry else None
    return {
        "all_pairs": all_pairs,
        "expected_matches_from_prior": round(expected, 1),
        "expected_matches_in_blocked_pairs": round(reached, 1),
        "expected_matches_not_blocked": missing,
        "share_of_matches_blocked": round(reached / (reached + missing), 4)
        if missing is not None and reached + missing
        else None,
        "by_source_pair": reach["by_source_pair"],
        "deterministic_rules_recall": {
            "declared": training.deterministic_rules_recall,
            "prior_built_on": used or training.deterministic_rules_recall,
            "implied_by_scored_pairs": implied_rules_recall(
                engine, training.deterministic_rules, Tables.PAIRWISE_PREDICTIONS
            ),
        },
    }


def implied_rules_recall(engine: Engine, rules: list[Any], pairs_table: str) -> float | None:
    """The share of the matches the scored pairs hold (sum of p) that the prior's
    deterministic rules accept: their recall by the model's own account (None when the
    pairs do not carry a column the rules read).

    The prior is the pairs the rules accept over their declared recall, so taken at its
    word the implied recall makes the prior implied / declared times too high. At 1M
    generated records: declared 0.7, implied 0.83, true 0.84 (the prior was 1.2 times too
    high); on pseudopeople the implied 0.83 is low (0.96 true), the scores of its false
    links counted among the matches."""
    conditions = [settings.pair_condition(rule) for rule in rules]
    if not conditions or not set().union(*(read for _, read in conditions)) <= set(
        engine.columns(pairs_table)
    ):
        return None
    accepted = " OR ".join(f"({sql})" for sql, _ in conditions)
    in_rules, everything = engine.fetch(
        f"SELECT coalesce(sum(match_probability) FILTER (WHERE {accepted}), 0), "
        f"coalesce(sum(match_probability), 0) FROM {pairs_table}"
    )[0]
    return round(float(in_rules) / float(everything), 4) if everything else None


def clustering_pairs(project: LinkageProject) -> str:
    """The table of the pairs clustering may use: the scored pairs themselves unless the
    probable-twins rule removes some (then a copy without them: at 1M, 1.9M rows and 3.4 s
    that a project without the rule does not pay)."""
    if linkage.probable_twins_condition(project) is None:
        return Tables.PAIRWISE_PREDICTIONS
    return Tables.PAIRS_FOR_CLUSTERING


def apply_pair_rules(engine: Engine, project: LinkageProject, scored: str, kept: str) -> int:
    """The scored pairs clustering may use, as table `kept` when the probable-twins rule is
    on (off, clustering reads `scored`); returns how many the rule removed."""
    condition = linkage.probable_twins_condition(project)
    if condition is None:
        engine.drop_table(kept)  # one left by a linkage with the rule on
        return 0
    engine.create_table(kept, f"SELECT * FROM {scored} WHERE NOT {condition}")
    return engine.count(scored) - engine.count(kept)


def pair_rule_cost(
    engine: Engine, project: LinkageProject, scored: str
) -> dict[str, dict[str, float]]:
    """Per threshold, the pairs the model scored at or above it that the probable-twins rule
    removed, and how many of them the model itself expects to be the same person (the sum
    of their match probabilities: an estimate of the links the rule gave up)."""
    condition = linkage.probable_twins_condition(project)
    thresholds = project.model.thresholds.as_dict()
    if condition is None:
        return {name: {"pairs_removed": 0, "expected_same_person": 0.0} for name in thresholds}
    columns = ", ".join(
        f"count(*) FILTER (WHERE match_probability >= {p}), "
        f"coalesce(sum(match_probability) FILTER (WHERE match_probability >= {p}), 0)"
        for p in thresholds.values()
    )
    row = engine.fetch(f"SELECT {columns} FROM {scored} WHERE {condition}")[0]
    return {
        name: {
            "pairs_removed": int(row[2 * i]),
            "expected_same_person": round(float(row[2 * i + 1]), 1),
        }
        for i, name in enumerate(thresholds)
    }


def cluster_at(
    engine: Engine,
    project: LoadedProject,
    model_path: str,
    input_tables: dict[str, str],
    thresholds: dict[str, float],
) -> None:
    """Connected components of the pairs clustering may use at each threshold (table name ->
    match probability), each as a table (source_dataset, record_id, cluster_id)."""
    db_api, linker = trained_linker(engine, project, model_path, input_tables)
    with engine.scratch():  # Splink's many tables: at 1M, 33-40 s written to the file, 13-17 s not
        tables = linkage.cluster_at_thresholds(
            linker, db_api, clustering_pairs(project.spec), thresholds
        )
    for name, table in tables.items():
        engine.create_table(name, f"SELECT source_dataset, record_id, cluster_id FROM {table}")


# The person lookup with a cluster column per candidate threshold, and the pairs inside
# its persons no rule blocked (cluster_at_candidates).
CANDIDATES_LOOKUP = "__candidates_lookup"
CANDIDATES_NEVER_BLOCKED = "__candidates_never_blocked"


def candidate_column(threshold: float) -> str:
    return "at_" + f"{threshold}".replace(".", "_")


def _candidate_clusters(column: str) -> str:
    return f"__{column}"


def cluster_at_candidates(
    engine: Engine,
    project: LoadedProject,
    model_path: str,
    input_tables: dict[str, str],
    thresholds: list[float],
) -> dict[str, float]:
    """The scored pairs clustered at each of `thresholds`, with what the error-rate
    estimates read beside them: CANDIDATES_LOOKUP (a column per threshold),
    CANDIDATES_NEVER_BLOCKED and the blocking check; each threshold's clusters stay until
    `settle_candidate_clusters`. Returns column -> threshold."""
    columns = {candidate_column(t): t for t in thresholds}
    tables = {c: _candidate_clusters(c) for c in columns}
    cluster_at(
        engine, project, model_path, input_tables, {tables[c]: t for c, t in columns.items()}
    )
    engine.create_table(CANDIDATES_LOOKUP, clusters_lookup_sql(tables))
    blocking_check(engine, project, model_path, input_tables)
    pairs_never_blocked_in_persons(
        engine,
        blocking_rules(project, model_path, input_tables),
        list(columns),
        lookup_table=CANDIDATES_LOOKUP,
        out=CANDIDATES_NEVER_BLOCKED,
    )
    return columns


def settle_candidate_clusters(
    engine: Engine, columns: dict[str, float], thresholds: dict[str, float]
) -> bool:
    """After the choice: the candidates' clusters at the linkage's `thresholds` (name ->
    match probability) become its cluster tables, as `cluster` would make them from the
    same pairs, and the others go. False (and none kept) when a threshold was no
    candidate."""
    at = {t: c for c, t in columns.items()}
    kept = all(t in at for t in thresholds.values())
    if kept:
        for name, threshold in thresholds.items():
            engine.create_table(
                Tables.clusters(name), f"SELECT * FROM {_candidate_clusters(at[threshold])}"
            )
    for column in columns:
        engine.drop_table(_candidate_clusters(column))
    return kept


def cluster(
    engine: Engine, project: LoadedProject, model_path: str, input_tables: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Connected components at each threshold, as the contract's cluster tables."""
    thresholds = project.spec.model.thresholds.as_dict()
    cluster_at(
        engine,
        project,
        model_path,
        input_tables,
        {Tables.clusters(name): thresholds[name] for name in THRESHOLDS},
    )
    return cluster_summary(engine, project)


def cluster_incremental(engine: Engine, project: LoadedProject) -> dict[str, dict[str, int]]:
    """The clusters an incremental linkage touched, recomputed at each threshold; the rest
    carried from the latest publication (after `predict_incremental`)."""
    db_api = engine.splink_api()
    thresholds = project.spec.model.thresholds.as_dict()
    reclustered = incremental.recluster_touched(
        engine, db_api, thresholds, clustering_pairs(project.spec)
    )
    summary = cluster_summary(engine, project)
    for name in THRESHOLDS:
        summary[name].update(reclustered[name])
    return summary


def cluster_summary(engine: Engine, project: LoadedProject) -> dict[str, dict[str, int]]:
    """Links, persons and the largest cluster at each threshold."""
    thresholds = project.spec.model.thresholds.as_dict()
    counts = ", ".join(
        f"count(*) FILTER (WHERE match_probability >= {thresholds[name]})" for name in THRESHOLDS
    )
    links = engine.fetch(f"SELECT {counts} FROM {clustering_pairs(project.spec)}")[0]
    summary: dict[str, dict[str, int]] = {}
    for name, linked in zip(THRESHOLDS, links, strict=True):
        persons, largest = engine.fetch(
            f"SELECT count(*), max(n) FROM (SELECT count(*) AS n FROM {Tables.clusters(name)} "
            "GROUP BY cluster_id)"
        )[0]
        summary[name] = {
            "links": int(linked),
            "persons": int(persons),
            "largest_cluster": int(largest or 0),
        }
    return summary


def link_for_comparison(
    engine: Engine,
    project: LoadedProject,
    model_path: str,
    input_tables: dict[str, str],
    label: str,
    linked: bool = False,
) -> dict[str, str]:
    """Score and cluster the accepted data with one model, kept under `label` (so that two
    models can be compared on the same data): the pairs clustering may use, and a lookup
    whose id columns are the clusters at each threshold. `linked`: the linkage tables hold
    this model's pairs and clusters already (its balanced threshold was just chosen)."""
    if not linked:
        predict(engine, project, model_path, input_tables)
        cluster(engine, project, model_path, input_tables)
    pairs, lookup = f"__{label}_pairs", f"__{label}_lookup"
    engine.create_table(pairs, f"SELECT * FROM {clustering_pairs(project.spec)}")
    engine.create_table(lookup, clusters_lookup_sql())
    return {"pairs": pairs, "lookup": lookup}

"""Linkage: combine every source's accepted deliveries (bad rows to quarantine), take the
approved model, score pairs and cluster at the three thresholds. The `relink` job runs this
and everything downstream of it; a schedule runs it periodically.

    linkage/linkage_inputs -> linkage/model -> linkage/pairwise_predictions
    -> linkage/person_clusters
"""

import logging
import time
from dataclasses import asdict
from typing import Any

import dagster as dg

from dagster_project.resources import EngineResource, LinkageProjectResource
from dagster_project.steps import step
from linkage_models.linkage import PREDICTION_FLOOR
from linkage_models.project import LoadedProject
from linkage_models.registry import ModelRegistry, ModelVersion
from pipelines import incremental, linking
from pipelines.blocking_reach import rule_records
from pipelines.contract import OutputLayout, Tables, forget_record, load_record
from pipelines.deliveries import deliveries_for_linkage, withdrawn_deliveries
from pipelines.engines import Engine
from pipelines.incremental import IncrementalUnavailable
from pipelines.publication import begin_staging
from pipelines.standardise import build_linkage_input, extend_linkage_input
from quality.error_rates import ComparedPairs
from quality.model_comparison import incremental_drift
from quality.quarantine import combine_and_quarantine
from quality.threshold_choice import candidate_thresholds, choose_balanced_threshold

log = logging.getLogger("joinedup.linkage")

LINKAGE_INPUTS = dg.AssetKey(["linkage", "linkage_inputs"])
MODEL = dg.AssetKey(["linkage", "model"])
PAIRWISE_PREDICTIONS = dg.AssetKey(["linkage", "pairwise_predictions"])
PERSON_CLUSTERS = dg.AssetKey(["linkage", "person_clusters"])
CANDIDATES_RULE_RECORDS = "__candidates_rule_records"


def input_tables(layout: OutputLayout) -> dict[str, str]:
    """Sources with accepted rows -> their Splink input table (from the inputs' record)."""
    sources = load_record(layout, "linkage_inputs")["sources"]
    return {name: s["linkage_input"] for name, s in sources.items() if s["linkage_input"]}


def model_path(layout: OutputLayout) -> str:
    return load_record(layout, "train")["path"]


class LinkageConfig(dg.Config):
    """incremental links only what changed since the latest publication (new, changed and
    withdrawn records: pipelines.incremental), with its model and thresholds; off, every
    accepted record is linked afresh."""

    incremental: bool = False


def rows_added(layout: OutputLayout) -> dict[str, str | None] | None:
    """When every source's new deliveries were added to the publication's combination, the
    table of the rows added per source (None: some source was combined afresh)."""
    sources = load_record(layout, "linkage_inputs")["sources"]
    if not all(s.get("added_to_previous") for s in sources.values()):
        return None
    return {name: s["appended_rows"] for name, s in sources.items()}


def linked_incrementally(layout: OutputLayout) -> bool:
    return bool(load_record(layout, "linkage_inputs").get("incremental"))


def linkage_conditions(layout: OutputLayout, project: Any, engine_name: str) -> dict[str, Any]:
    """The model, thresholds, pair rule and engine this linkage runs under."""
    spec = project.spec
    return incremental.linkage_conditions(
        engine_name,
        load_record(layout, "train")["version"],
        spec.model.thresholds.as_dict(),
        spec.model.probable_twins_rule,
    )


def with_balanced_threshold(
    engine: Engine,
    project: LoadedProject,
    version: ModelVersion,
    inputs: dict[str, str],
    incremental_linkage: bool,
) -> tuple[ModelVersion, dict[str, Any] | None]:
    """The model version with its balanced threshold, chosen now (and frozen with it) if
    the project leaves it to the model (`balanced: auto`) and the model has none yet; with
    the summary of the pairs the choice scored (None when it did not choose), which the
    predict step then takes as they are. The choice scores every record, so an incremental
    linkage cannot make it."""
    if not project.spec.model.thresholds.chosen_with_model or version.balanced_threshold:
        return version, None
    layout = OutputLayout(project.output_dir)
    if incremental_linkage:
        # Nothing published to extend says so first (what a full relink would do anyway).
        stored = load_record(layout, "linkage_inputs")["stored_linkage"]
        incremental.check_state(layout.published, stored, {})
        raise IncrementalUnavailable(
            f"model v{version.version} has no balanced threshold chosen yet (balanced: "
            f"auto): {incremental.FULL_RELINK}"
        )
    model = str(layout.model_dir / version.path)
    thresholds = project.spec.model.thresholds
    # Scored here, into the linkage's own tables: the predict step takes them (at 1M,
    # about 20 s it would otherwise spend scoring the same pairs again).
    scored = linking.predict(engine, project, model, inputs)
    columns = linking.cluster_at_candidates(
        engine, project, model, inputs, candidate_thresholds(thresholds)
    )
    rules = linking.blocking_rules(project, model, inputs)
    with engine.scratch():
        engine.drop_table(CANDIDATES_RULE_RECORDS)  # a stored one would hide it
        compared = ComparedPairs(
            CANDIDATES_RULE_RECORDS,
            rule_records(engine, CANDIDATES_RULE_RECORDS, rules),
            PREDICTION_FLOOR,
        )
    choice = choose_balanced_threshold(
        engine,
        thresholds,
        columns,
        linking.CANDIDATES_LOOKUP,
        linking.CANDIDATES_NEVER_BLOCKED,
        compared,
    )
    with engine.scratch():
        engine.drop_table(CANDIDATES_RULE_RECORDS)
    for table in (linking.CANDIDATES_LOOKUP, linking.CANDIDATES_NEVER_BLOCKED):
        engine.drop_table(table)
    chosen = ModelRegistry(layout.model_dir).record_balanced_threshold(
        version.version, choice["threshold"], choice
    )
    # The clusters at the linkage's thresholds are among the candidates': the cluster
    # step takes them too (about 11 s at 1M).
    linked = project.with_balanced_threshold(chosen.balanced_threshold)
    at = linked.spec.model.thresholds.as_dict()
    clustered = linking.settle_candidate_clusters(engine, columns, at)
    return chosen, {**scored, "model": model, "clustered_at": at if clustered else None}


def clustered_by_model_step(layout: OutputLayout, project: LoadedProject) -> bool:
    """Whether the cluster tables are the model step's, made from the pairs the predict step
    took from it, at this linkage's thresholds."""
    chosen = load_record(layout, "train").get("pairs_scored_for_choice") or {}
    return bool(
        load_record(layout, "predict").get("scored_in_model_step")
        and chosen.get("clustered_at") == project.spec.model.thresholds.as_dict()
    )


def scored_by_model_step(engine: Engine, model: str, chosen: dict[str, Any] | None) -> bool:
    """Whether the linkage tables hold the pairs the model step scored with `model` for its
    balanced threshold choice (`chosen`: its summary of them): nothing has replaced them
    since (a run re-executed from its predict step after another linkage would see other
    counts)."""
    if not chosen or chosen["model"] != model:
        return False
    if not engine.table_exists(Tables.PAIRWISE_PREDICTIONS):
        return False
    scored = engine.fetch(f"SELECT scored_pairs FROM {Tables.PAIRS_BELOW_FLOOR}")[0][0]
    return (
        int(scored) == chosen["scored"]
        and engine.count(Tables.PAIRWISE_PREDICTIONS) == chosen["kept_above_floor"]
    )


class ModelConfig(dg.Config):
    """Leave model_version empty to link with the approved model; set it to use another
    registered version. train_if_none_approved lets a project's first run train (and
    approve) its first model; the schedule leaves it off, so it never trains."""

    model_version: str | None = None
    train_if_none_approved: bool = False


def linkage_assets(upstream: list[dg.AssetKey], engine: str) -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=LINKAGE_INPUTS,
        deps=upstream,
        group_name="linkage",
        kinds={engine},
        description="Each source's accepted deliveries combined; bad rows and rejected "
        "deliveries quarantined with reasons; Splink input tables.",
    )
    def linkage_inputs(
        context: dg.AssetExecutionContext,
        config: LinkageConfig,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        # A new build: what this run writes goes to staging until it is audited and published.
        begin_staging(project.layout, context.run_id)
        with step(project, engine, "linkage_inputs") as s:
            # A new linkage starts: an evaluation of the previous one no longer applies, and
            # the linkage tables stop being the publication's (what they were is kept in
            # this record, for an incremental linkage to extend).
            forget_record(s.layout, "evaluate")
            stored = s.record["stored_linkage"] = incremental.forget_state(s.layout)
            # Asked to link incrementally where there is no publication's linkage to
            # extend (nothing published yet, or its tables rebuilt since, as `train` does),
            # every record is linked afresh, and the record and manifest say why.
            unavailable = (
                incremental.not_extendable(s.layout.published, stored)
                if config.incremental
                else None
            )
            if unavailable:
                log.warning("linking in full, not incrementally: %s", unavailable)
            linking_incrementally = config.incremental and unavailable is None
            # An incremental linkage adds new deliveries to what the publication combined,
            # for each source whose combined deliveries are all still there as they were.
            combined = (stored or {}).get("combined", {}) if linking_incrementally else {}
            sources: dict[str, Any] = {}
            pending: list[dict[str, Any]] = []
            withdrawn = withdrawn_deliveries(s.layout)
            for source in s.project.spec.sources:
                tables, waiting = deliveries_for_linkage(s.engine, source.name, withdrawn)
                pending += waiting
                held = incremental.combination_to_extend(
                    s.engine, combined.get(source.name), source.name, tables
                )
                result = combine_and_quarantine(
                    s.engine, source, tables, s.layout.quarantine_file(source.name), held
                )
                if held and result.added_to_previous:
                    table = extend_linkage_input(
                        s.engine,
                        s.project.spec,
                        source.name,
                        held["linkage_input"],
                        result.appended_rows,
                    )
                else:
                    table = build_linkage_input(
                        s.engine, s.project.spec, source.name, result.accepted_table
                    )
                sources[source.name] = {
                    **asdict(result),
                    "path": str(result.path),
                    "linkage_input": table,
                    "deliveries": [d.fingerprint() for d in tables],
                }
            s.record.update(
                {
                    "incremental": linking_incrementally,
                    "incremental_unavailable": unavailable,
                    "pending_deliveries": pending,
                    "withdrawn_deliveries": list(withdrawn.values()),
                    "sources": sources,
                }
            )
        metadata: dict[str, object] = {
            "dagster/row_count": sum(r["rows_accepted"] for r in sources.values()),
            "rows_in": sum(r["rows_in"] for r in sources.values()),
            "rows_quarantined": sum(r["rows_quarantined"] for r in sources.values()),
        }
        for name, r in sources.items():
            metadata[f"{name}_accepted"] = r["rows_accepted"]
            metadata[f"{name}_quarantined"] = r["rows_quarantined"]
            metadata[f"{name}_quarantine_file"] = dg.MetadataValue.path(r["path"])
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=MODEL,
        deps=[LINKAGE_INPUTS],
        group_name="linkage",
        kinds={"splink"},
        description="The Splink model this linkage runs with: the approved version (trained "
        "here only for a project's first run), with its model card.",
    )
    def model(
        config: ModelConfig, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "train", model_chosen=False) as s:
            inputs = input_tables(s.layout)
            version, trained, summary = linking.model_for_linkage(
                s.engine, s.project, inputs, config.model_version, config.train_if_none_approved
            )
            started = time.perf_counter()
            version, scored = with_balanced_threshold(
                s.engine, s.project, version, inputs, linked_incrementally(s.layout)
            )
            if scored:
                s.record["balanced_threshold_chosen_in_seconds"] = round(
                    time.perf_counter() - started, 1
                )
                s.record["pairs_scored_for_choice"] = scored
            entry = linking.model_record(s.project, version, trained, summary)
            s.record.update(entry)
        return dg.MaterializeResult(
            metadata={
                "version": entry["version"],
                "trained_in_this_run": entry["trained_in_this_run"],
                "approved": entry["approved"],
                # Chosen with the model (balanced: auto) or the project's own.
                "balanced_threshold": entry["thresholds"]["balanced"],
                "probability_two_random_records_match": entry[
                    "probability_two_random_records_match"
                ],
                "model": dg.MetadataValue.path(entry["path"]),
                "model_card": dg.MetadataValue.path(str(s.layout.model_card)),
            }
        )

    @dg.asset(
        key=PAIRWISE_PREDICTIONS,
        deps=[MODEL],
        group_name="linkage",
        kinds={"splink", engine},
        description="Scored record pairs (blocked by the project's rules), with the "
        "probable-twins rule applied.",
    )
    def pairwise_predictions(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "predict") as s:
            if linked_incrementally(s.layout):
                pairs = linking.predict_incremental(
                    s.engine,
                    s.project,
                    model_path(s.layout),
                    input_tables(s.layout),
                    load_record(s.layout, "linkage_inputs")["stored_linkage"],
                    linkage_conditions(s.layout, s.project, engine.engine),
                    rows_added(s.layout),
                )
            elif scored_by_model_step(
                s.engine,
                model_path(s.layout),
                chosen := load_record(s.layout, "train").get("pairs_scored_for_choice"),
            ):
                pairs = {k: v for k, v in chosen.items() if k not in ("model", "clustered_at")}
                pairs["scored_in_model_step"] = True
            else:
                pairs = linking.predict(
                    s.engine, s.project, model_path(s.layout), input_tables(s.layout)
                )
            pairs["probable_twins_rule_cost"] = linking.pair_rule_cost(
                s.engine, s.project.spec, Tables.PAIRWISE_PREDICTIONS
            )
            s.record.update(pairs)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": pairs["kept_above_floor"],
                "pairs_scored": pairs["scored"],
                "removed_by_probable_twins_rule": pairs["removed_by_probable_twins_rule"],
            }
        )

    @dg.asset(
        key=PERSON_CLUSTERS,
        deps=[PAIRWISE_PREDICTIONS],
        group_name="linkage",
        kinds={"splink", engine},
        description="Connected components at the high-precision, balanced and "
        "high-recall thresholds.",
    )
    def person_clusters(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "cluster") as s:
            inputs = input_tables(s.layout)
            combined = load_record(s.layout, "linkage_inputs")
            changed = load_record(s.layout, "predict").get("incremental")
            taken = False
            if changed:
                summary = linking.cluster_incremental(s.engine, s.project)
            elif taken := clustered_by_model_step(s.layout, s.project):
                summary = linking.cluster_summary(s.engine, s.project)
            else:
                summary = linking.cluster(s.engine, s.project, model_path(s.layout), inputs)
            s.record["links"] = summary
            s.record["linkage"] = {
                "linked": "incremental" if changed else "full",
                "incremental": changed,
                # Asked for incrementally, linked in full: why (pipelines.incremental).
                "incremental_unavailable": combined.get("incremental_unavailable"),
                # A model's first linkage: the clusters its balanced threshold choice made.
                "clusters_made_in_model_step": taken,
                # A full relink after incremental ones: how far their clusters had drifted.
                "drift_from_incremental": None
                if changed
                else incremental_drift(s.engine, s.layout.published, s.project),
            }
            incremental.stage_state(
                s.engine,
                s.layout,
                None if changed else inputs,
                linkage_conditions(s.layout, s.project, engine.engine),
                changed,
                combined["sources"],
            )
        metadata: dict[str, object] = {}
        for name, counts in summary.items():
            metadata[f"{name}_persons"] = counts["persons"]
            metadata[f"{name}_links"] = counts["links"]
            metadata[f"{name}_largest_cluster"] = counts["largest_cluster"]
        return dg.MaterializeResult(metadata=metadata)

    return [linkage_inputs, model, pairwise_predictions, person_clusters]

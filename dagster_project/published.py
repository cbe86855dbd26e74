"""Published: the linked longitudinal dataset (person lookup and event timeline), its
error rates (estimated without labels; measured when ground truth is given) and the
manifest that describes and reconciles it, with checks on what is published.

    published/person_lookup + published/events
        -> published/estimated_error_rates, published/measured_accuracy
        -> published/manifest
"""

import json
from datetime import date
from pathlib import Path

import dagster as dg

from dagster_project.linkage import PERSON_CLUSTERS, input_tables, model_path
from dagster_project.resources import EngineResource, LinkageProjectResource
from dagster_project.steps import step
from linkage_models.linkage import PREDICTION_FLOOR
from pipelines.blocking_reach import pairs_never_blocked_in_persons, rule_records
from pipelines.contract import (
    PERSON_ID_COLUMNS,
    OutputLayout,
    Tables,
    forget_record,
    load_record,
)
from pipelines.ground_truth import GroundTruth, check_ground_truth, register_ground_truth
from pipelines.incremental import RECLUSTERED_RECORDS
from pipelines.linking import blocking_check, blocking_rules
from pipelines.manifest import build_manifest, write_manifest
from pipelines.publish import publish_linked_dataset
from quality.accuracy import pairwise_cluster_metrics
from quality.disclosure_checks import identifier_echo_rates, identifying_names
from quality.error_rates import ComparedPairs, estimate_error_rates, kept_pairs_of

PERSON_LOOKUP = dg.AssetKey(["published", "person_lookup"])
EVENTS = dg.AssetKey(["published", "events"])
MANIFEST = dg.AssetKey(["published", "manifest"])
ESTIMATED_ERROR_RATES = dg.AssetKey(["published", "estimated_error_rates"])
MEASURED_ACCURACY = dg.AssetKey(["published", "measured_accuracy"])
# The records with the columns the rules read, for the estimates to tell compared pairs.
RULE_RECORDS = "__estimates_rule_records"


def error_rate_table(manifest: dict) -> str:
    """Pairwise precision and recall per threshold as a Markdown table: estimated (95%
    interval), and measured where ground truth was given."""
    measured = manifest.get("measured_accuracy") or {}
    lines = [
        "| threshold | precision (est.) | recall (est.) | precision (meas.) | recall (meas.) |",
        "|---|---|---|---|---|",
    ]
    for name, e in manifest["estimated_error_rates"].items():
        m = measured.get(name)
        lines.append(
            f"| {name} | {e['precision']:.4f} ({e['precision_95ci'][0]:.4f}–"
            f"{e['precision_95ci'][1]:.4f}) | {e['recall']:.4f} ({e['recall_95ci'][0]:.4f}–"
            f"{e['recall_95ci'][1]:.4f}) | "
            + (f"{m['precision']:.4f} | {m['recall']:.4f} |" if m else "— | — |")
        )
    return "\n".join(lines)


def _extended_publication(layout: OutputLayout) -> str | None:
    """The publication whose linkage this build's extended (None: it linked everything)."""
    if load_record(layout, "cluster")["linkage"]["linked"] != "incremental":
        return None
    return (load_record(layout, "linkage_inputs").get("stored_linkage") or {}).get("snapshot")


CHURN_COLUMNS = (
    "ids_kept",
    "ids_created_for_new_records",
    "ids_created_by_splits",
    "merges",
    "ids_retired_by_merges",
    "ids_retired_withdrawn",
    "records_added",
    "records_moved",
    "records_withdrawn",
    "share_of_previous_records_moved",
)


def churn_table(churn: dict) -> str:
    """The churn ledger per threshold as a Markdown table."""
    lines = [
        "| id column | " + " | ".join(c.replace("_", " ") for c in CHURN_COLUMNS) + " |",
        "|---" * (len(CHURN_COLUMNS) + 1) + "|",
    ]
    for c in churn.values():
        lines.append(f"| {c['id_column']} | " + " | ".join(str(c[k]) for k in CHURN_COLUMNS) + " |")
    return "\n".join(lines)


class GroundTruthConfig(dg.Config):
    """A ground-truth Parquet file (source_dataset, source_record_id, true_person_id) to
    measure the clusters against; leave empty when there is none."""

    ground_truth: str | None = None
    # Other column names in the file: our name (source_dataset, source_record_id,
    # true_person_id) -> the file's.
    columns: dict[str, str] = {}


def published_assets() -> list[dg.AssetsDefinition]:
    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                PERSON_LOOKUP,
                deps=[PERSON_CLUSTERS],
                group_name="published",
                kinds={"parquet"},
                description="One row per accepted record with pseudonymous person "
                "ids at the three thresholds.",
            ),
            dg.AssetSpec(
                EVENTS,
                deps=[PERSON_CLUSTERS],
                group_name="published",
                kinds={"parquet"},
                description="The longitudinal event timeline with declared attributes.",
            ),
        ],
    )
    def published(project: LinkageProjectResource, engine: EngineResource):
        with step(project, engine, "publish") as s:
            sources = load_record(s.layout, "linkage_inputs")["sources"]
            result = publish_linked_dataset(
                s.engine,
                s.project.spec,
                s.layout,
                {n: Tables.accepted(n) for n, r in sources.items() if r["accepted_table"]},
                sum(r["rows_accepted"] for r in sources.values()),
                date.today(),
                load_record(s.layout, "train")["version"],
                RECLUSTERED_RECORDS
                if load_record(s.layout, "cluster")["linkage"]["linked"] == "incremental"
                else None,
            )
            s.record.update(result)
        churn = result["identity"]["churn"]
        yield dg.MaterializeResult(
            asset_key=PERSON_LOOKUP,
            metadata={
                "dagster/row_count": result["rows"],
                "persons": result["persons"],
                "share_of_records_linked_across_sources": result["share_linked_across_sources"],
                "path": dg.MetadataValue.path(result["outputs"]["person_lookup"]),
                "person_ids": dg.MetadataValue.path(result["outputs"]["person_ids"]),
                "generation": result["identity"]["generation"],
                "churn": dg.MetadataValue.md(churn_table(churn)),
                **{
                    f"{name}_{k}": c[k]
                    for name, c in churn.items()
                    for k in ("ids_created", "ids_kept", "records_moved")
                },
                "share_of_previous_records_moved": churn["balanced"][
                    "share_of_previous_records_moved"
                ],
            },
        )
        yield dg.MaterializeResult(
            asset_key=EVENTS,
            metadata={
                "dagster/row_count": result["rows"],
                "path": dg.MetadataValue.path(result["outputs"]["events"]),
            },
        )

    @dg.asset(
        key=MANIFEST,
        deps=[PERSON_LOOKUP, EVENTS, ESTIMATED_ERROR_RATES, MEASURED_ACCURACY],
        group_name="published",
        kinds={"json"},
        description="Linkage metadata: inputs with sha256, reconciliation, model, "
        "thresholds, pairs, links, error rates, timings.",
    )
    def manifest(
        context: dg.AssetExecutionContext, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        p = project.project
        with engine.open(p) as e:
            document = build_manifest(e, p, run_id=context.run_id)
        write_manifest(project.layout, document)
        rec = document["reconciliation"]
        balanced = document["estimated_error_rates"]["balanced"]
        return dg.MaterializeResult(
            metadata={
                "error_rates": dg.MetadataValue.md(error_rate_table(document)),
                "estimated_precision_balanced": balanced["precision"],
                "estimated_recall_balanced": balanced["recall"],
                "reconciles": rec["reconciles"],
                "rows_in": rec["rows_in"],
                "rows_linked": rec["rows_linked"],
                "rows_quarantined": rec["rows_quarantined"],
                "path": dg.MetadataValue.path(str(project.layout.manifest)),
            }
        )

    @dg.asset(
        key=ESTIMATED_ERROR_RATES,
        deps=[PERSON_LOOKUP],
        group_name="published",
        kinds={"json"},
        description="Label-free estimates of pairwise precision and recall at each "
        "threshold, from the model's match probabilities and its estimate of the matches "
        "no blocking rule reached.",
    )
    def estimated_error_rates(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "estimate_errors") as s:
            inputs, model = input_tables(s.layout), model_path(s.layout)
            # After an incremental linkage, what the estimates of the publication it extended
            # counted is extended too: only the pairs of the records it reclustered or removed
            # are counted again.
            kept_from = kept_pairs_of(s.engine)
            extends = kept_from is not None and kept_from == _extended_publication(s.layout)
            changed = RECLUSTERED_RECORDS if extends else None
            s.record["counted"] = {
                "pairs_of": "records reclustered or removed" if extends else "all records",
                "kept_from": kept_from if extends else None,
            }
            s.record["blocking_check"] = blocking_check(s.engine, s.project, model, inputs)
            rules = blocking_rules(s.project, model, inputs)
            pairs_never_blocked_in_persons(
                s.engine, rules, list(PERSON_ID_COLUMNS.values()), changed=changed
            )
            with s.engine.scratch():
                s.engine.drop_table(RULE_RECORDS)  # a stored one would hide it
                compared = ComparedPairs(
                    RULE_RECORDS, rule_records(s.engine, RULE_RECORDS, rules), PREDICTION_FLOOR
                )
            estimates = estimate_error_rates(
                s.engine, changed=changed, snapshot=s.layout.snapshot, compared=compared
            )
            with s.engine.scratch():
                s.engine.drop_table(RULE_RECORDS)
            s.record["estimated"] = estimates
        balanced = estimates["balanced"]
        return dg.MaterializeResult(
            metadata={
                "estimated_precision_balanced": balanced["precision"],
                "estimated_recall_balanced": balanced["recall"],
            }
        )

    @dg.asset(
        key=MEASURED_ACCURACY,
        deps=[PERSON_LOOKUP],
        group_name="published",
        kinds={"json"},
        description="Pairwise precision, recall and F1 of each threshold's clusters against "
        "ground truth, when a ground-truth file is given (synthetic or clerically linked).",
    )
    def measured_accuracy(
        config: GroundTruthConfig, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        if config.ground_truth is None:
            forget_record(project.layout, "evaluate")
            return dg.MaterializeResult(metadata={"measured": "no ground truth given"})
        truth = GroundTruth(Path(config.ground_truth), dict(config.columns))
        with step(project, engine, "evaluate") as s:
            check_ground_truth(truth, [src.name for src in s.project.spec.sources])
            truth_view = register_ground_truth(s.engine, truth)
            measured = {
                name: pairwise_cluster_metrics(
                    s.engine, Tables.PERSON_LOOKUP, column, truth_view, name
                ).as_dict()
                for name, column in PERSON_ID_COLUMNS.items()
            }
            s.record.update({"ground_truth": str(truth), "measured": measured})
        balanced = measured["balanced"]
        return dg.MaterializeResult(
            metadata={
                "measured_precision_balanced": balanced["precision"],
                "measured_recall_balanced": balanced["recall"],
                "measured_f1_balanced": balanced["f1"],
            }
        )

    return [published, estimated_error_rates, measured_accuracy, manifest]


@dg.asset_check(
    asset=MANIFEST,
    name="reconciliation",
    blocking=True,
    description="Every row delivered is in the person lookup or in quarantine, per source.",
)
def reconciliation(project: LinkageProjectResource) -> dg.AssetCheckResult:
    rec = json.loads(project.layout.exact_manifest.read_text())["reconciliation"]
    off = [
        name
        for name, s in rec["by_source"].items()
        if s["rows_in"] != s["rows_accepted"] + s["rows_quarantined"]
    ]
    return dg.AssetCheckResult(
        passed=rec["reconciles"] and not off,
        metadata={
            "rows_in": rec["rows_in"],
            "rows_linked": rec["rows_linked"],
            "rows_quarantined": rec["rows_quarantined"],
            "sources_not_reconciled": ", ".join(off) or "none",
        },
    )


@dg.asset_check(
    asset=MANIFEST,
    name="identity_churn",
    blocking=True,
    description="With the model and thresholds unchanged since the previous publication, "
    "at most checks.max_records_moved_share of the previously linked records (still "
    "present) moved to another balanced person id; a change of model or thresholds is "
    "reported, not bounded.",
)
def identity_churn(project: LinkageProjectResource) -> dg.AssetCheckResult:
    identity = json.loads(project.layout.exact_manifest.read_text())["identity"]
    balanced = identity["churn"]["balanced"]
    moved = balanced["share_of_previous_records_moved"]
    bound = project.project.spec.checks.max_records_moved_share
    previous, now = identity["previous_model_version"], identity["model_version"]
    if previous is None:
        verdict, passed = "first publication of this identity store: nothing to compare", True
    elif previous != now or identity["previous_thresholds"] != identity["thresholds"]:
        changed = f"model v{previous} -> v{now}" if previous != now else "thresholds"
        verdict = f"{changed} changed: churn of {moved:.4%} reported, not bounded"
        passed = True
    else:
        passed = moved <= bound
        verdict = (
            f"{moved:.4%} of previously linked records moved to another person "
            f"({'within' if passed else 'above'} the bound {bound:.2%}; model v{now} and "
            "thresholds unchanged)"
        )
    return dg.AssetCheckResult(
        passed=passed,
        description=verdict,
        metadata={
            "share_of_previous_records_moved": moved,
            "records_moved": balanced["records_moved"],
            "bound": bound,
            "model_version": now,
            "previous_model_version": previous if previous is not None else "none",
        },
    )


@dg.asset_check(
    asset=MANIFEST,
    name="estimated_error_rates",
    description="Estimated pairwise precision and recall of the balanced person ids are at "
    "least the project's floors (checks.min_estimated_precision / min_estimated_recall).",
)
def estimated_error_rates(project: LinkageProjectResource) -> dg.AssetCheckResult:
    checks = project.project.spec.checks
    balanced = json.loads(project.layout.manifest.read_text())["estimated_error_rates"]["balanced"]
    low = [
        f"{name} {balanced[name]:.4f} < {floor}"
        for name, floor in (
            ("precision", checks.min_estimated_precision),
            ("recall", checks.min_estimated_recall),
        )
        if balanced[name] < floor
    ]
    return dg.AssetCheckResult(
        passed=not low,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(low) or "within the floors",
        metadata={
            "estimated_precision": balanced["precision"],
            "estimated_recall": balanced["recall"],
        },
    )


@dg.asset_check(
    asset=EVENTS,
    name="identifier_echoes",
    description="No published attribute repeats the record's own name, date of birth or "
    "postcode (or its district or area) in more than checks.max_identifier_echo_rate of rows, "
    "nor has a name that looks identifying.",
)
def identifier_echoes(
    project: LinkageProjectResource, engine: EngineResource
) -> dg.AssetCheckResult:
    p = project.project
    accepted = [
        n
        for n, r in load_record(project.layout, "linkage_inputs")["sources"].items()
        if r["accepted_table"]
    ]
    with engine.open(p) as e:
        rates = identifier_echo_rates(e, p.spec, accepted)
    limit = p.spec.checks.max_identifier_echo_rate
    flagged = {column: rate for column, rate in rates.items() if rate > limit}
    named = identifying_names(p.spec)
    problems = []
    if flagged:
        problems.append(
            "attributes that repeat identifiers: "
            + ", ".join(f"{c} ({r:.0%} of rows)" for c, r in flagged.items())
        )
    if named:
        problems.append("attributes whose name looks identifying: " + ", ".join(named))
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or "no published attribute repeats an identifier",
        metadata={column: rate for column, rate in rates.items()},
    )

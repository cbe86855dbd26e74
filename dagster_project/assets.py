"""Assets generated from a linkage project: wiring only, the work is in pipelines.stages.

Per source (partitioned by delivery file):
    <source>/delivery      the raw delivery, loaded as text
      check delivery_contract (blocking): the Great Expectations suite for the source
    <source>/standardised  identifying fields as common data primitives
Across sources (unpartitioned):
    linkage/linkage_inputs -> linkage/model -> linkage/pairwise_predictions
    -> linkage/person_clusters -> published/person_lookup + published/events
    -> published/manifest, quality/quality_reports
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from dagster_project.resources import EngineResource, LinkageProjectResource
from linkage_models.project import LoadedProject, SourceSpec
from pipelines import stages
from pipelines.deliveries import Delivery, discover_deliveries
from pipelines.ingest import SourceError
from quality import reports


@dataclass(frozen=True)
class SourceAssets:
    source: str
    partitions: dg.DynamicPartitionsDefinition
    delivery: dg.AssetsDefinition
    contract: dg.AssetChecksDefinition
    standardised: dg.AssetsDefinition


def partitions_name(source: str) -> str:
    return f"{source}_deliveries"


def _delivery(project: LoadedProject, source: SourceSpec, key: str) -> Delivery:
    for d in discover_deliveries(project, source):
        if d.key == key:
            return d
    raise SourceError(
        f"source '{source.name}': delivery {key!r} is not in the landing folder "
        f"{project.source_path(source)}"
    )


def _run_stage(
    project: LinkageProjectResource, engine: EngineResource, stage: Any, *args: Any
) -> tuple[LoadedProject, Any]:
    """Load the project, open its engine, run one stage function: every asset's body."""
    p = project.load()
    with engine.open(p) as e:
        return p, stage(e, p, *args)


def _schema(columns: list[str]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])


def source_assets(spec: SourceSpec, engine: str = "duckdb") -> SourceAssets:
    name = spec.name
    partitions = dg.DynamicPartitionsDefinition(name=partitions_name(name))
    delivery_key = dg.AssetKey([name, "delivery"])

    @dg.asset(
        key=delivery_key,
        partitions_def=partitions,
        group_name="deliveries",
        kinds={engine, spec.format},
        description=f"A delivery of {spec.description or name} from {spec.department}, "
        "loaded as text (only the mapped columns).",
    )
    def delivery(
        context: dg.AssetExecutionContext,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        p = project.load()
        d = _delivery(p, p.spec.source(name), context.partition_key)
        with engine.open(p) as e:
            file = stages.ingest(e, p, p.spec.source(name), d)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": file.rows,
                "dagster/column_schema": _schema(spec.mapped_columns()),
                "path": dg.MetadataValue.path(file.path),
                "sha256": file.sha256,
                "bytes": file.bytes,
            }
        )

    @dg.asset_check(
        asset=delivery_key,
        name="delivery_contract",
        blocking=True,
        description="Great Expectations suite generated from the source's contract; critical "
        "failures stop this delivery from being standardised and linked.",
    )
    def contract(
        context: dg.AssetCheckExecutionContext,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.AssetCheckResult:
        p = project.load()
        d = _delivery(p, p.spec.source(name), context.partition_key)
        with engine.open(p) as e:
            outcome = stages.validate(e, p, p.spec.source(name), d)
        metadata: dict[str, object] = {
            e.key: f"{'pass' if e.success else 'FAIL'} ({e.severity}): "
            f"{e.unexpected_count:,} of {e.element_count - e.missing_count:,} rows"
            for e in outcome.expectations
        }
        if outcome.data_docs_index:
            metadata["data_docs"] = dg.MetadataValue.url(outcome.data_docs_index)
        critical = outcome.critical_failures
        return dg.AssetCheckResult(
            passed=not critical and not outcome.warnings,
            severity=dg.AssetCheckSeverity.ERROR if critical else dg.AssetCheckSeverity.WARN,
            description=(
                "critical: " + ", ".join(e.key for e in critical)
                if critical
                else (
                    "warnings: " + ", ".join(e.key for e in outcome.warnings)
                    if outcome.warnings
                    else "all expectations met"
                )
            ),
            metadata=metadata,
        )

    @dg.asset(
        key=dg.AssetKey([name, "standardised"]),
        deps=[delivery_key],
        partitions_def=partitions,
        group_name="deliveries",
        kinds={engine},
        description="Identifying fields standardised into data primitives (names, date of "
        "birth, sex, postcode) plus derived matching keys.",
    )
    def standardised(
        context: dg.AssetExecutionContext,
        project: LinkageProjectResource,
        engine: EngineResource,
    ) -> dg.MaterializeResult:
        p = project.load()
        d = _delivery(p, p.spec.source(name), context.partition_key)
        with engine.open(p) as e:
            rows = stages.standardise(e, p, p.spec.source(name), d)
        return dg.MaterializeResult(metadata={"dagster/row_count": rows})

    return SourceAssets(name, partitions, delivery, contract, standardised)


class ModelConfig(dg.Config):
    """Leave model_version empty to train a new version; set it to reuse one."""

    model_version: str | None = None


def linkage_assets(
    sources: list[SourceAssets], engine: str = "duckdb"
) -> list[dg.AssetsDefinition]:
    upstream = [a for s in sources for a in (s.delivery.key, s.standardised.key)]

    @dg.asset(
        key=["linkage", "linkage_inputs"],
        deps=upstream,
        group_name="linkage",
        kinds={engine},
        description="Each source's accepted deliveries combined; bad rows and rejected "
        "deliveries quarantined with reasons; Splink input tables.",
    )
    def linkage_inputs(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        _, results = _run_stage(project, engine, stages.linkage_inputs)
        metadata: dict[str, object] = {
            "dagster/row_count": sum(r.rows_accepted for r in results.values()),
            "rows_in": sum(r.rows_in for r in results.values()),
            "rows_quarantined": sum(r.rows_quarantined for r in results.values()),
        }
        for name, r in results.items():
            metadata[f"{name}_accepted"] = r.rows_accepted
            metadata[f"{name}_quarantined"] = r.rows_quarantined
            metadata[f"{name}_quarantine_file"] = dg.MetadataValue.path(str(r.path))
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset(
        key=["linkage", "model"],
        deps=[linkage_inputs.key],
        group_name="linkage",
        kinds={"splink"},
        description="A trained Splink model, registered as a new version (or a reused "
        "version), with its model card.",
    )
    def model(
        config: ModelConfig, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        p, entry = _run_stage(project, engine, stages.train, config.model_version)
        return dg.MaterializeResult(
            metadata={
                "version": entry["version"],
                "trained_in_this_run": entry["trained_in_this_run"],
                "probability_two_random_records_match": entry[
                    "probability_two_random_records_match"
                ],
                "model": dg.MetadataValue.path(entry["path"]),
                "model_card": dg.MetadataValue.path(str(p.output_dir / "model" / "model_card.md")),
            }
        )

    @dg.asset(
        key=["linkage", "pairwise_predictions"],
        deps=[model.key],
        group_name="linkage",
        kinds={"splink", engine},
        description="Scored record pairs (blocked by the project's rules), with the "
        "probable-twins rule applied.",
    )
    def pairwise_predictions(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        _, pairs = _run_stage(project, engine, stages.predict)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": pairs["kept_above_floor"],
                "pairs_scored": pairs["scored"],
                "removed_by_probable_twins_rule": pairs["removed_by_probable_twins_rule"],
            }
        )

    @dg.asset(
        key=["linkage", "person_clusters"],
        deps=[pairwise_predictions.key],
        group_name="linkage",
        kinds={"splink", engine},
        description="Connected components at the high-precision, balanced and "
        "high-recall thresholds.",
    )
    def person_clusters(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        _, summary = _run_stage(project, engine, stages.cluster)
        metadata: dict[str, object] = {}
        for name, s in summary.items():
            metadata[f"{name}_persons"] = s["persons"]
            metadata[f"{name}_links"] = s["links"]
            metadata[f"{name}_largest_cluster"] = s["largest_cluster"]
        return dg.MaterializeResult(metadata=metadata)

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                ["published", "person_lookup"],
                deps=[person_clusters.key],
                group_name="published",
                kinds={"parquet"},
                description="One row per accepted record with pseudonymous person "
                "ids at the three thresholds.",
            ),
            dg.AssetSpec(
                ["published", "events"],
                deps=[person_clusters.key],
                group_name="published",
                kinds={"parquet"},
                description="The longitudinal event timeline with declared attributes.",
            ),
        ],
    )
    def published(project: LinkageProjectResource, engine: EngineResource):
        _, result = _run_stage(project, engine, stages.publish)
        yield dg.MaterializeResult(
            asset_key=["published", "person_lookup"],
            metadata={
                "dagster/row_count": result["rows"],
                "persons": result["persons"],
                "share_of_records_linked_across_sources": result["share_linked_across_sources"],
                "path": dg.MetadataValue.path(result["outputs"]["person_lookup"]),
            },
        )
        yield dg.MaterializeResult(
            asset_key=["published", "events"],
            metadata={
                "dagster/row_count": result["rows"],
                "path": dg.MetadataValue.path(result["outputs"]["events"]),
            },
        )

    @dg.asset(
        key=["published", "manifest"],
        deps=[dg.AssetKey(["published", "person_lookup"]), dg.AssetKey(["published", "events"])],
        group_name="published",
        kinds={"json"},
        description="Linkage metadata: inputs with sha256, reconciliation, model, "
        "thresholds, pairs, links, timings.",
    )
    def manifest(
        context: dg.AssetExecutionContext, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        p = project.load()
        with engine.open(p) as e:
            stages.estimate_errors(e, p)
            document = stages.manifest(e, p, run_id=context.run_id)
        rec = document["reconciliation"]
        balanced = document["estimated_error_rates"]["balanced"]
        return dg.MaterializeResult(
            metadata={
                "estimated_precision_balanced": balanced["precision"],
                "estimated_recall_balanced": balanced["recall"],
                "reconciles": rec["reconciles"],
                "rows_in": rec["rows_in"],
                "rows_linked": rec["rows_linked"],
                "rows_quarantined": rec["rows_quarantined"],
                "path": dg.MetadataValue.path(str(p.output_dir / "manifest.json")),
            }
        )

    @dg.asset(
        key=["quality", "quality_reports"],
        deps=[manifest.key],
        group_name="quality",
        kinds={"html"},
        description="A readable quality report per source and delivery for data "
        "owners (small counts suppressed).",
    )
    def quality_reports(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        p, written = _run_stage(project, engine, reports.write_quality_reports)
        return dg.MaterializeResult(
            metadata={
                "reports": len(written),
                "index": dg.MetadataValue.path(str(reports.index_path(p))),
            }
        )

    @dg.asset(
        key=["quality", "diagnostics"],
        deps=[person_clusters.key],
        group_name="quality",
        kinds={"splink", "html"},
        description="Splink's match-weight charts, waterfalls, comparison viewer and cluster "
        "studio, as offline HTML (those showing identifiers: secure setting only).",
    )
    def diagnostics(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        p, written = _run_stage(project, engine, stages.diagnostics)
        return dg.MaterializeResult(
            metadata={
                "charts": len(written),
                "folder": dg.MetadataValue.path(str(p.output_dir / "reports" / "diagnostics")),
            }
        )

    @dg.asset(
        key=["quality", "linkage_report"],
        deps=[manifest.key, diagnostics.key],
        group_name="quality",
        kinds={"html", "json"},
        description="The linkage report: data provided, method, estimated (and measured) "
        "error rates, linkage bias by group; with linkage_quality.json.",
    )
    def linkage_report(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        _, (html, data) = _run_stage(project, engine, stages.linkage_report)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.path(str(html)),
                "linkage_quality": dg.MetadataValue.path(str(data)),
            }
        )

    return [
        linkage_inputs,
        model,
        pairwise_predictions,
        person_clusters,
        published,
        manifest,
        quality_reports,
        diagnostics,
        linkage_report,
    ]


@dataclass(frozen=True)
class ProjectAssets:
    sources: list[SourceAssets]
    linkage: list[dg.AssetsDefinition]

    @property
    def all(self) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
        per_source = [a for s in self.sources for a in (s.delivery, s.contract, s.standardised)]
        return [*per_source, *self.linkage]


def build_assets(project: LoadedProject, engine: str = "duckdb") -> ProjectAssets:
    """The project's assets; `engine` (duckdb or spark) only labels them (their kinds)."""
    sources = [source_assets(s, engine) for s in project.spec.sources]
    return ProjectAssets(sources, linkage_assets(sources, engine))

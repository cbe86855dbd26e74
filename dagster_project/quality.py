"""Quality: reports for data owners, match-weight diagnostics and the linkage report for
analysts, all read from what was published.

    published/manifest -> quality/quality_reports, quality/linkage_report
    linkage/person_clusters -> quality/diagnostics
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from dagster_project.linkage import PERSON_CLUSTERS, input_tables, model_path
from dagster_project.published import MANIFEST
from dagster_project.resources import EngineResource, LinkageProjectResource
from dagster_project.steps import step
from linkage_models.diagnostics import (
    PAIRS_SAMPLE_RECORDS,
    completeness_columns,
    write_diagnostics,
    write_label_accuracy,
)
from pipelines.contract import Tables, load_record, records_of
from pipelines.deliveries import delivery_statuses
from pipelines.disclosure_control import rounded
from pipelines.engines import Engine
from pipelines.linking import clustering_pairs
from quality.linkage_report import write_linkage_report
from quality.reports import write_quality_reports

QUALITY_REPORTS = dg.AssetKey(["quality", "quality_reports"])
DIAGNOSTICS = dg.AssetKey(["quality", "diagnostics"])
LINKAGE_REPORT = dg.AssetKey(["quality", "linkage_report"])
CLERICAL_LABELS = dg.AssetKey(["review", "clerical_labels"])
SAMPLED_KEYS = "__persons_sampled_records"


def sample_of_persons(
    engine: Engine, inputs: dict[str, str], share: float
) -> tuple[dict[str, str], dict[str, str]] | None:
    """Per source, a table of the records of about `share` of the balanced persons (chosen
    by a hash of their cluster, so alike on every engine) and a view of the other records;
    None when the share is the whole. Dropped by drop_sample."""
    if share >= 1:
        return None
    chosen = f"substr(md5(CAST(cluster_id AS VARCHAR)), 1, 4) < '{int(share * 65536):04x}'"
    engine.create_table(
        SAMPLED_KEYS,
        f"SELECT source_dataset, record_id FROM {Tables.clusters('balanced')} WHERE {chosen}",
    )
    on = "k.source_dataset = i.source_dataset AND k.record_id = i.record_id"
    sampled, others = {}, {}
    for source, table in inputs.items():
        sampled[source], others[source] = f"__persons_sampled_{source}", f"__persons_not_{source}"
        engine.create_table(
            sampled[source], f"SELECT i.* FROM {table} i SEMI JOIN {SAMPLED_KEYS} k ON {on}"
        )
        engine.create_view(
            others[source], f"SELECT i.* FROM {table} i ANTI JOIN {SAMPLED_KEYS} k ON {on}"
        )
    return sampled, others


def drop_sample(engine: Engine, sample: tuple[dict[str, str], dict[str, str]] | None) -> None:
    if sample is None:
        return
    sampled, others = sample
    for view in others.values():
        engine.drop_view(view)
    for table in (*sampled.values(), SAMPLED_KEYS):
        engine.drop_table(table)


def quality_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=QUALITY_REPORTS,
        deps=[MANIFEST],
        group_name="quality",
        kinds={"html"},
        description="A readable quality report per source and delivery for data "
        "owners (small counts suppressed).",
    )
    def quality_reports(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "quality_reports") as s:
            written = write_quality_reports(
                s.engine,
                s.project,
                delivery_statuses(s.engine),
                load_record(s.layout, "linkage_inputs")["sources"],
            )
        return dg.MaterializeResult(
            metadata={
                "reports": len(written),
                "index": dg.MetadataValue.url(s.layout.data_owner_index.as_uri()),
            }
        )

    @dg.asset(
        key=DIAGNOSTICS,
        deps=[PERSON_CLUSTERS],
        group_name="quality",
        kinds={"splink", "html"},
        description="Splink's match-weight charts (beside the linkage report), waterfalls, "
        "comparison viewer and cluster studio (they show identifiers: secure zone only), as "
        "offline HTML.",
    )
    def diagnostics(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "diagnostics") as s:
            # After an incremental linkage: the pairs of the records it added, as its
            # predict step scored them ("" when it added none); else every pair, or above
            # PAIRS_SAMPLE_RECORDS the pairs of a sample of persons, scored again.
            predicted = load_record(s.layout, "predict")
            detailed = predicted.get("detailed_pairs") if predicted.get("incremental") else None
            inputs = input_tables(s.layout)
            columns = ", ".join(completeness_columns(s.project.spec))
            completeness = {source: f"__completeness_{source}" for source in inputs}
            for source, view in completeness.items():
                s.engine.create_view(view, f"SELECT {columns} FROM {inputs[source]}")
            records = sum(s.engine.count(t) for t in inputs.values())
            # Splink's tables in memory: at 1M, 16.9 s written to the file, 11.3-12.4 s not
            # (5.4-5.6 s with the pairs of a sample of persons).
            with s.engine.scratch():
                sampled = None
                if detailed is None:
                    sampled = sample_of_persons(
                        s.engine, inputs, PAIRS_SAMPLE_RECORDS / max(records, 1)
                    )
                written = write_diagnostics(
                    s.engine.splink_api(),
                    s.project.spec,
                    json.loads(Path(model_path(s.layout)).read_text()),
                    inputs,
                    clustering_pairs(s.project.spec),
                    Tables.clusters("balanced"),
                    s.layout.charts_dir,
                    s.layout.diagnostics_dir,
                    s.layout.relative(s.layout.diagnostics_dir),
                    completeness,
                    rounded,
                    detailed,
                    sampled,
                )
                drop_sample(s.engine, sampled)
            for view in completeness.values():
                s.engine.drop_view(view)
            s.record["of"] = (
                "new records' pairs"
                if detailed is not None
                else "pairs of a sample of persons"
                if sampled
                else "every pair"
            )
            s.record["written"] = written
        return dg.MaterializeResult(
            metadata={
                "charts": len(written),
                "shareable_charts": dg.MetadataValue.path(str(s.layout.charts_dir)),
                "identifying_diagnostics": dg.MetadataValue.path(str(s.layout.diagnostics_dir)),
            }
        )

    @dg.asset(
        key=LINKAGE_REPORT,
        deps=[MANIFEST, DIAGNOSTICS, CLERICAL_LABELS],
        group_name="quality",
        kinds={"html", "json"},
        description="The linkage report: data provided, method, estimated (and measured) "
        "error rates, linkage bias by group; with linkage_quality.json.",
    )
    def linkage_report(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "linkage_report") as s:
            written = [w for r in records_of(s.layout, "diagnostics") for w in r["written"]]
            truth_space: list[dict] = []
            if s.layout.review_labels.exists():
                charts, truth_space = write_label_accuracy(
                    s.engine.splink_api(),
                    s.project.spec,
                    json.loads(Path(model_path(s.layout)).read_text()),
                    input_tables(s.layout),
                    pd.read_parquet(s.layout.review_labels),
                    s.layout.charts_dir,
                )
                written = [*written, *charts]
            html, data = write_linkage_report(s.engine, s.project, written, truth_space)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.url(html.as_uri()),
                "linkage_quality": dg.MetadataValue.url(data.as_uri()),
            }
        )

    return [quality_reports, diagnostics, linkage_report]

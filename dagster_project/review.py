"""Clerical review, inside the secure setting: export a stratified sample of scored pairs
with identifiers for reviewers, and import their decisions as labels (stored without
identifiers), after which the linkage report shows reviewed error rates.

    review/clerical_sample   (job review_sample)
    review/clerical_labels -> quality/linkage_report -> published/snapshot   (job review_import)
"""

from pathlib import Path
from typing import Any

import dagster as dg

from dagster_project.linkage import PAIRWISE_PREDICTIONS
from dagster_project.publication import SNAPSHOT
from dagster_project.quality import CLERICAL_LABELS, LINKAGE_REPORT
from dagster_project.resources import EngineResource, LinkageProjectResource
from pipelines.contract import REVIEW_IMPORT_JOB, REVIEW_SAMPLE_JOB
from pipelines.publication import PublicationError, stage_from_current
from quality.clerical_review import read_decisions, sample_pairs, store_labels

CLERICAL_SAMPLE = dg.AssetKey(["review", "clerical_sample"])


class SampleConfig(dg.Config):
    """About `n` pairs, equally allocated across match-weight strata, written to `path`
    (default OUT/secure/review/sample_seed<seed>.csv)."""

    n: int = 300
    seed: int = 42
    path: str | None = None


class DecisionsConfig(dg.Config):
    """A reviewed sample: clerical_match filled with 1 (same person), 0 or blank."""

    path: str


def review_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=CLERICAL_SAMPLE,
        deps=[PAIRWISE_PREDICTIONS],
        group_name="review",
        kinds={"csv"},
        description="A stratified sample of scored pairs with identifiers, for clerical "
        "reviewers (secure setting only).",
    )
    def clerical_sample(
        config: SampleConfig, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with engine.open(project.project) as e:
            sample = sample_pairs(e, config.n, config.seed)
        layout = project.layout
        target = config.path or str(layout.review_sample(config.seed))
        layout.review_dir.mkdir(parents=True, exist_ok=True)
        sample.to_csv(target, index=False)
        return dg.MaterializeResult(
            metadata={
                "pairs": len(sample),
                "strata": int(sample.stratum.nunique()),
                "path": dg.MetadataValue.path(target),
            }
        )

    @dg.asset(
        key=CLERICAL_LABELS,
        group_name="review",
        kinds={"parquet"},
        description="Reviewers' decisions, stored as labels without identifiers; a later "
        "decision on a pair replaces an earlier one.",
    )
    def clerical_labels(
        context: dg.AssetExecutionContext, config: DecisionsConfig, project: LinkageProjectResource
    ) -> dg.MaterializeResult:
        # The report is revised in a new build that starts as a copy of the current
        # publication, and is published as a new snapshot once audited.
        try:
            stage_from_current(project.layout, context.run_id)
        except PublicationError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        stored = store_labels(read_decisions(Path(config.path)), project.layout)
        return dg.MaterializeResult(
            metadata={
                "labelled_pairs": len(stored),
                "path": dg.MetadataValue.path(str(project.layout.review_labels)),
            }
        )

    return [clerical_sample, clerical_labels]


def review_jobs() -> list[Any]:
    return [
        dg.define_asset_job(
            REVIEW_SAMPLE_JOB,
            selection=dg.AssetSelection.assets(CLERICAL_SAMPLE),
            description="Export a stratified sample of scored pairs for clerical review.",
        ),
        dg.define_asset_job(
            REVIEW_IMPORT_JOB,
            selection=dg.AssetSelection.assets(CLERICAL_LABELS, LINKAGE_REPORT, SNAPSHOT),
            description="Store reviewers' decisions and publish the linkage report with them.",
        ),
    ]

"""Models: training is an explicit job that registers a candidate and compares it with the
approved model on the same data; approving (promoting) a version is another. Linkage runs
only ever use the approved model, so the schedule never trains.

    linkage/linkage_inputs -> linkage/candidate_model   (job train_model)
    op promote_model_version                             (job promote_model)
"""

import json

import dagster as dg

from dagster_project.linkage import LINKAGE_INPUTS, input_tables, with_balanced_threshold
from dagster_project.resources import EngineResource, LinkageProjectResource
from dagster_project.steps import step
from linkage_models.registry import ModelRegistry
from pipelines import linking
from pipelines.contract import PROMOTE_JOB, PROMOTE_STEP, TRAIN_JOB
from quality.model_comparison import compare_linkages

CANDIDATE_MODEL = dg.AssetKey(["linkage", "candidate_model"])


def model_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=CANDIDATE_MODEL,
        deps=[LINKAGE_INPUTS],
        group_name="linkage",
        kinds={"splink"},
        description="A newly trained model registered as a candidate, with what promoting it "
        "would change against the approved model on the same data (links gained and lost, "
        "clusters changed, per threshold). A project's first model is approved as trained.",
    )
    def candidate_model(
        project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "train_candidate", model_chosen=False) as s:
            inputs = input_tables(s.layout)
            registry = ModelRegistry(s.layout.model_dir)
            approved = registry.approved()
            entry, _, _ = linking.train_model(s.engine, s.project, inputs)
            record = {"candidate": entry.version, "approved": approved and approved.version}
            if approved is None:
                registry.approve(entry.version)
                record.update(approved=entry.version, comparison=None, promoted=True)
            else:
                # Each model links at its own thresholds: a balanced one chosen with the
                # model is chosen for the candidate here, on the data it is compared on.
                tables, thresholds = {}, {}
                for label, v in (("approved", approved), ("candidate", entry)):
                    v, chose = with_balanced_threshold(s.engine, s.project, v, inputs, False)
                    linked = s.project.with_balanced_threshold(v.balanced_threshold)
                    thresholds[label] = linked.spec.model.thresholds.as_dict()
                    tables[label] = linking.link_for_comparison(
                        s.engine,
                        linked,
                        str(s.layout.model_dir / v.path),
                        inputs,
                        label,
                        # The choice scored and clustered with this model: not again.
                        linked=bool(chose and chose["clustered_at"]),
                    )
                comparison = {
                    "candidate": entry.version,
                    "approved": approved.version,
                    "thresholds": thresholds,
                    "by_threshold": compare_linkages(
                        s.engine,
                        thresholds["candidate"],
                        thresholds["approved"],
                        tables["candidate"],
                        tables["approved"],
                    ),
                }
                path = s.layout.model_comparison(entry.version, approved.version)
                path.write_text(json.dumps(comparison, indent=2))
                for made in tables.values():  # copies of each model's pairs: compared, done
                    for table in made.values():
                        s.engine.drop_table(table)
                record.update(comparison=str(path), promoted=False)
            s.record.update(record)
        metadata: dict[str, object] = {
            "candidate_version": record["candidate"],
            "approved_version": record["approved"],
            "promoted": record["promoted"],
        }
        if record["comparison"]:
            metadata["comparison"] = dg.MetadataValue.path(record["comparison"])
            for name, c in comparison["by_threshold"].items():
                metadata[f"{name}_links_gained"] = c["links_gained"]
                metadata[f"{name}_links_lost"] = c["links_lost"]
                metadata[f"{name}_pairwise_agreement"] = c["pairwise_agreement"]
        return dg.MaterializeResult(metadata=metadata)

    return [candidate_model]


class PromoteConfig(dg.Config):
    """The registered model version to approve: later linkages run with it."""

    version: int


@dg.op(name=PROMOTE_STEP)
def promote_model_version(
    context: dg.OpExecutionContext, config: PromoteConfig, project: LinkageProjectResource
) -> None:
    registry = ModelRegistry(project.layout.model_dir)
    previous = registry.approved()
    try:
        entry = registry.approve(config.version)
    except (KeyError, FileNotFoundError) as exc:
        raise dg.Failure(description=str(exc).strip("'\""), allow_retries=False) from None
    context.log.info(
        f"model v{entry.version} approved (was v{previous.version if previous else 'none'})"
    )


def model_jobs(train_selection: dg.AssetSelection) -> list[object]:
    @dg.job(
        name=PROMOTE_JOB,
        description="Approve a registered model version: later linkages run with it.",
    )
    def promote_model() -> None:
        promote_model_version()

    train = dg.define_asset_job(
        TRAIN_JOB,
        selection=train_selection,
        description="Train a candidate model on every accepted delivery and compare it with "
        "the approved model (promote it with the promote_model job).",
    )
    return [train, promote_model]

"""Publication: the last step of every job that changes what is published. The build in
staging is audited (reconciliation, output contract, identifier scan of the shareable zone)
and, only if it passes, published as a new snapshot that `current` points to.

    published/manifest, quality/* -> published/snapshot
"""

import dagster as dg

from dagster_project.published import MANIFEST
from dagster_project.quality import DIAGNOSTICS, LINKAGE_REPORT, QUALITY_REPORTS
from dagster_project.resources import EngineResource, LinkageProjectResource
from dagster_project.steps import step
from pipelines.contract import load_record
from pipelines.incremental import commit_state
from pipelines.publication import publish
from quality.publication_audit import audit_build

SNAPSHOT = dg.AssetKey(["published", "snapshot"])


def publication_assets() -> list[dg.AssetsDefinition]:
    @dg.asset(
        key=SNAPSHOT,
        deps=[MANIFEST, QUALITY_REPORTS, DIAGNOSTICS, LINKAGE_REPORT],
        group_name="published",
        kinds={"json"},
        description="The audited build, published as an immutable snapshot of the "
        "shareable and secure zones; `current` points to it. A build that fails its audit "
        "is not published and the previous publication stands.",
    )
    def snapshot(
        context: dg.AssetExecutionContext, project: LinkageProjectResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with step(project, engine, "audit") as s:
            inputs = load_record(s.layout, "linkage_inputs")["sources"]
            linked = [name for name, r in inputs.items() if r.get("linkage_input")]
            audit = audit_build(s.engine, s.project.spec, s.layout, linked)
            record = publish(s.layout, context.run_id, audit)
            # The linkage tables in the working database are now this publication's: the
            # next incremental linkage may extend them.
            record["linkage_state_committed"] = commit_state(s.layout, record["snapshot"])
            s.record.update(record)
        published = project.layout.published
        return dg.MaterializeResult(
            metadata={
                "snapshot": record["snapshot"],
                "previous_snapshot": record["previous_snapshot"] or "none",
                "text_files_scanned": audit["text_files_scanned"],
                "published_tables": audit["published_tables"],
                "digit_codes_not_scanned_lengths": str(audit["digit_codes_not_scanned_lengths"]),
                "shareable": dg.MetadataValue.path(str(published.shareable_dir)),
            }
        )

    return [snapshot]

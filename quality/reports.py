"""Quality reports for data owners: one self-contained HTML page per source and delivery.

These pages may leave the secure setting, so they hold counts and rates only, protected
by the one disclosure control policy (pipelines.disclosure_control): counts rounded to a
multiple of 5 with totals the sums of their rounded parts, "<10" below 10, rates of rounded
counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from linkage_models.project import LoadedProject, SourceSpec
from pipelines.contract import OutputLayout, Tables
from pipelines.disclosure_control import protected_delivery, shown_count, shown_rate
from pipelines.engines import Engine
from pipelines.sql import EARLIEST_PLAUSIBLE_DATE, lit
from quality.validation import load_outcome


def _link_rates(engine: Engine, source: str, delivery: str) -> dict[str, int]:
    """Counts for one delivery's accepted records: total, with another record in the same
    source (duplicates), and linked to at least one other source."""
    accepted = Tables.accepted(source)
    lookup = Tables.PERSON_LOOKUP
    if not engine.table_exists(accepted):
        return {"records": 0, "within_source_duplicates": 0, "linked_to_other_sources": 0}
    row = engine.fetch(f"""
        WITH mine AS (
            SELECT l.person_id FROM {lookup} l JOIN {accepted} a
              ON l.source_dataset = a.source_dataset AND l.source_record_id = a.record_id
            WHERE a._delivery = {lit(delivery)}),
        per_person AS (
            SELECT person_id,
                   count(*) FILTER (WHERE source_dataset = {lit(source)}) AS same_source,
                   count(*) FILTER (WHERE source_dataset <> {lit(source)}) AS other_sources
            FROM {lookup} WHERE person_id IN (SELECT person_id FROM mine) GROUP BY 1)
        SELECT count(*), count(*) FILTER (WHERE p.same_source > 1),
               count(*) FILTER (WHERE p.other_sources > 0)
        FROM mine m JOIN per_person p USING (person_id)""")[0]
    return dict(
        zip(
            ("records", "within_source_duplicates", "linked_to_other_sources"),
            (int(v) for v in row),
            strict=True,
        )
    )


def _values_set_missing(engine: Engine, source: SourceSpec, delivery: str) -> dict[str, int]:
    """Per identifier and reason, the delivery's values standardisation set missing (the row
    stays), and the names it put into Latin letters."""
    checked = Tables.checked(source.name)
    if not engine.table_exists(checked):
        return {}
    flags = {
        "dob_unparseable": "Date of birth in none of the declared formats",
        "dob_placeholder": "Date of birth was a placeholder (e.g. 01/01/1900)",
        "dob_implausible": (
            f"Date of birth was implausible (before {EARLIEST_PLAUSIBLE_DATE[:4]} or in the future)"
        ),
        "postcode_invalid": (
            "Postcode was not in the expected format (a UK postcode, or the declared pattern)"
        ),
        "sex_unknown": "Sex code meant 'unknown'",
        "name_unreadable": "A name had no letters left once put into Latin letters",
        "event_date_unparseable": "Event date in none of the declared formats",
        **{
            f"{name}_set_missing": f"{name.replace('_', ' ').capitalize()} could not be read "
            "or was a declared placeholder"
            for name in source.identifiers.other
        },
        "name_transliterated": (
            "(kept) A name or address was written outside ASCII and linked in Latin letters"
        ),
    }
    row = engine.fetch(
        f"SELECT {', '.join(f'count_if({flag})' for flag in flags)} "
        f"FROM {checked} WHERE _delivery = {lit(delivery)}"
    )[0]
    return dict(zip(flags.values(), (int(v or 0) for v in row), strict=True))


def write_quality_reports(
    engine: Engine,
    project: LoadedProject,
    deliveries: list[dict[str, Any]],
    linkage_inputs: dict[str, Any],
) -> list[Path]:
    """Write one report per delivery in the last linkage, plus an index page.

    `deliveries` are the delivery status rows (source, delivery, ...); `linkage_inputs`
    the per-source counts the linkage took them with."""
    layout = OutputLayout(project.output_dir)
    env = Environment(
        loader=PackageLoader("quality", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    page = env.get_template("data_owner_page.html.j2")
    index = env.get_template("data_owner_index.html.j2")
    # The linkage's snapshot date, not the clock: the same linkage gives the same pages.
    snapshot = json.loads(layout.manifest.read_text())["linking_snapshot_date"]
    written: list[Path] = []
    index_rows = []
    for row in deliveries:
        source = project.spec.source(row["source"])
        stats = linkage_inputs.get(source.name, {}).get("by_delivery", {}).get(row["delivery"])
        if stats is None:  # not part of the last linkage (pending)
            continue
        key = row["delivery"]
        outcome = load_outcome(layout.validation_result(source.name, key))
        stats = protected_delivery(stats)  # received = linked + quarantined, all rounded
        rows_in = stats["rows_in"]
        expectations = [
            {
                "description": e.description,
                "severity": e.severity,
                "success": e.success,
                "failing": shown_count(e.unexpected_count),
                "share": shown_rate(e.unexpected_count, e.element_count - e.missing_count),
            }
            for e in outcome.expectations
        ]
        completeness = [
            {
                "field": e.key.removesuffix("_completeness").replace("_", " "),
                "column": source.identifiers.columns()[e.key.removesuffix("_completeness")],
                "missing": shown_count(e.unexpected_count),
                "filled": shown_rate(e.element_count - e.unexpected_count, e.element_count),
            }
            for e in outcome.expectations
            if e.key.endswith("_completeness")
        ]
        link = _link_rates(engine, source.name, key)
        page_path = layout.data_owner_page(source.name, key)
        html = page.render(
            title=f"Quality report: {source.name}",
            department=source.department,
            delivery=key,
            snapshot=snapshot,
            rejected=stats["status"] == "rejected",
            critical=[e.description for e in outcome.critical_failures],
            rows=shown_count(rows_in),
            accepted=shown_count(stats["rows_accepted"]),
            quarantined=shown_count(stats["rows_quarantined"]),
            expectations=expectations,
            data_docs=layout.relative(layout.data_docs_index) if outcome.data_docs_index else None,
            completeness=completeness,
            set_missing=[
                (k, shown_count(v)) for k, v in _values_set_missing(engine, source, key).items()
            ],
            quarantine=[
                (reason, shown_count(n))
                for reason, n in sorted(stats["quarantined_by_reason"].items())
            ],
            link={
                "linked": shown_count(link["linked_to_other_sources"]),
                "linked_share": shown_rate(link["linked_to_other_sources"], link["records"]),
                "dupes": shown_count(link["within_source_duplicates"]),
                "dupes_share": shown_rate(link["within_source_duplicates"], link["records"]),
            },
        )
        page_path.parent.mkdir(parents=True, exist_ok=True)
        page_path.write_text(html)
        written.append(page_path)
        index_rows.append(
            {
                "source": source.name,
                "department": source.department,
                "delivery": key,
                "status": stats["status"],
                "href": f"{source.name}/{key}.html",
                "rows": shown_count(rows_in),
                "accepted": shown_count(stats["rows_accepted"]),
                "quarantined": shown_count(stats["rows_quarantined"]),
                "not_met": [e.description for e in outcome.critical_failures]
                + [f"{e.description} (warning)" for e in outcome.warnings],
            }
        )
    target = layout.data_owner_index
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        index.render(project=project.spec.project, rows=index_rows, snapshot=snapshot)
    )
    return written

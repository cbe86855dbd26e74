"""The linkage report (GUILD-style): what data was provided, how it was linked, how good the
links are and for whom they are worse. Self-contained HTML (no CDN, works offline) and a
machine-readable linkage_quality.json with the same figures.

The report and its JSON may leave the secure setting: they hold counts, rates and
pseudonymous person ids only, every count of records protected by the one disclosure
control policy (pipelines.disclosure_control: rounded to a multiple of 5, totals the sums of
their rounded parts; pages show "<10" below 10). The data provided come from the shareable
manifest, already protected. Diagnostics that show identifiers (waterfall charts, comparison
viewer, cluster studio) stay in the secure zone and are named, never linked or embedded.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from linkage_models.project import LoadedProject
from pipelines.contract import LARGEST_PERSON_PAIRED, OutputLayout, Tables
from pipelines.disclosure_control import rounded, shown_count, shown_rate
from pipelines.engines import Engine
from quality.bias import bias_tables
from quality.charts import report_charts
from quality.clerical_review import clerical_estimates, current_labels
from quality.validation import load_outcome

OVERSIZED_CLUSTER = 25  # records; larger balanced clusters are listed by person id

THRESHOLD_MEANING = {
    "high_precision": "for analyses where a false link does more harm than a missed one",
    "balanced": "the default person id: false and missed links in balance",
    "high_recall": "for analyses where missing someone's records does more harm",
}


def cluster_size_summary(engine: Engine) -> dict[str, Any]:
    sizes = engine.fetch(
        f"SELECT n, count(*) FROM (SELECT person_id, count(*) AS n FROM {Tables.PERSON_LOOKUP} "
        "GROUP BY 1) GROUP BY 1 ORDER BY 1"
    )
    oversized = engine.fetch(
        f"SELECT person_id, count(*) AS n FROM {Tables.PERSON_LOOKUP} GROUP BY 1 "
        f"HAVING count(*) > {OVERSIZED_CLUSTER} ORDER BY n DESC, person_id LIMIT 100"
    )
    return {
        "distribution": [
            {"records_per_person": int(n), "persons": rounded(int(c))} for n, c in sizes
        ],
        "oversized_threshold": OVERSIZED_CLUSTER,
        "oversized": [{"person_id": p, "records": rounded(int(n))} for p, n in oversized],
    }


def _completeness(project: LoadedProject, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for entry in manifest["inputs"]:
        for file in entry["files"]:
            path = OutputLayout(project.output_dir).validation_result(
                entry["source"], file["delivery"]
            )
            if not path.exists():
                continue
            outcome = load_outcome(path)
            for e in outcome.expectations:
                if e.key.endswith("_completeness"):
                    rows.append(
                        {
                            "source": entry["source"],
                            "delivery": file["delivery"],
                            "field": e.key.removesuffix("_completeness").replace("_", " "),
                            "missing": rounded(e.unexpected_count),
                            "rows": rounded(e.element_count),
                        }
                    )
    return rows


def _model_summary(model_path: Path) -> list[dict[str, Any]]:
    model = json.loads(model_path.read_text())
    comparisons = []
    for comp in model.get("comparisons", []):
        levels = [
            {
                "label": level.get("label_for_charts") or level.get("sql_condition"),
                "match_weight": (
                    round(math.log2(level["m_probability"] / level["u_probability"]), 2)
                    if level.get("m_probability") and level.get("u_probability")
                    else None
                ),
            }
            for level in comp.get("comparison_levels", [])
            if not level.get("is_null_level")
        ]
        comparisons.append({"name": comp.get("output_column_name"), "levels": levels})
    return comparisons


def linkage_quality(
    engine: Engine, project: LoadedProject, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Every figure in the report, as plain data, from the shareable (protected) manifest;
    counts of records computed here are protected the same way."""
    accepted = {
        name: Tables.accepted(name)
        for name, counts in manifest["reconciliation"]["by_source"].items()
        if counts["rows_accepted"]
    }
    kept = Tables.BALANCED_EXPECTED_PAIRS
    counted = kept if engine.table_exists(kept) else None
    spec = project.spec
    return {
        "project": spec.project,
        "run_id": manifest["run_id"],
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "linking_snapshot_date": manifest["linking_snapshot_date"],
        "data_provided": {
            "sources": [
                {
                    "source": s.name,
                    "department": s.department,
                    "description": s.description,
                    "deliveries": len(
                        manifest["reconciliation"]["by_source"][s.name]["by_delivery"]
                    ),
                    **{
                        k: manifest["reconciliation"]["by_source"][s.name][k]
                        for k in (
                            "rows_in",
                            "rows_accepted",
                            "rows_quarantined",
                            "quarantined_by_reason",
                        )
                    },
                }
                for s in spec.sources
            ],
            "completeness": _completeness(project, manifest),
            "reconciles": manifest["reconciliation"]["reconciles"],
        },
        "method": {
            "link_type": spec.model.link_type,
            "primitives_compared": list(spec.model.comparisons),
            "comparisons": _model_summary(project.output_dir / manifest["model"]["path"]),
            # The rules the model predicted with (after the blocking analysis).
            "blocking_rules": manifest["model"].get("blocking_rules")
            or [str(r) for r in spec.model.blocking_rules],
            "derived_from_identifiers": list(spec.model.derived),
            "training": {
                "deterministic_rules": [str(r) for r in spec.model.training.deterministic_rules],
                "deterministic_rules_recall": spec.model.training.deterministic_rules_recall,
                "em_blocking_rules": [str(r) for r in spec.model.training.em_blocking_rules],
                "u_max_pairs": spec.model.training.u_max_pairs,
            },
            "model_version": manifest["model"]["version"],
            "probability_two_random_records_match": manifest["model"][
                "probability_two_random_records_match"
            ],
            "thresholds": {
                name: {"match_probability": p, "use": THRESHOLD_MEANING[name]}
                for name, p in manifest["thresholds"].items()
            },
            # How the model chose the balanced threshold (None: the project fixed it).
            "balanced_threshold_choice": manifest.get("balanced_threshold_choice"),
            "probable_twins_rule": spec.model.probable_twins_rule,
            "pairs": manifest["pairs"],
        },
        "quality": {
            "estimated": manifest["estimated_error_rates"],
            "measured_against_ground_truth": manifest.get("measured_accuracy"),
            "links": manifest["links"],
            "clusters": cluster_size_summary(engine),
        },
        # Persistent ids: the churn ledger against the previous publication (exact: it
        # compares two published lookups; pipelines.disclosure_control).
        "identity": manifest["identity"],
        # Linked in full or incrementally, and a full relink's drift from incremental ones.
        "linkage": manifest.get("linkage") or {},
        # The balanced estimate's own pairs, as the estimate step kept them.
        "bias": _protected_bias(bias_tables(engine, accepted, counted_table=counted)),
        "clerical_review": _clerical(engine, project),
    }


def _protected_bias(bias: dict[str, Any]) -> dict[str, Any]:
    """Bias tables with their counts of records rounded (the estimates are rates)."""
    counts = ("records", "linked_to_other_sources", "within_source_duplicates")

    def protect(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, **{k: rounded(r[k]) for k in counts}} for r in rows]

    return {
        **bias,
        "overall": protect(bias["overall"]),
        "dimensions": {dim: protect(rows) for dim, rows in bias["dimensions"].items()},
    }


def _clerical(engine: Engine, project: LoadedProject) -> dict[str, Any] | None:
    labels = current_labels(engine, OutputLayout(project.output_dir))
    if labels is None:
        return None
    return clerical_estimates(labels, project.spec.model.thresholds.as_dict())


def _template() -> str:
    return resources.files("quality").joinpath("templates", "linkage_report.html.j2").read_text()


def render_linkage_report(q: dict[str, Any], diagnostics: list[dict[str, Any]]) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    sources = q["data_provided"]["sources"]
    measured = q["quality"]["measured_against_ground_truth"]
    flagged = [
        f"{dim.replace('_', ' ')} {row['group']}"
        for dim, rows in q["bias"]["dimensions"].items()
        for row in rows
        if row["flagged"]
    ]

    def small(records: int, value: float | None) -> str:
        return "—" if value is None or records < 10 else f"{value:.4f}"

    return env.from_string(_template()).render(
        q=q,
        measured=measured,
        bal=q["quality"]["estimated"]["balanced"],
        persons=shown_count(q["quality"]["links"]["balanced"]["persons"]),
        total_in=shown_count(sum(s["rows_in"] for s in sources)),
        total_linked=shown_count(sum(s["rows_accepted"] for s in sources)),
        total_quarantined=shown_count(sum(s["rows_quarantined"] for s in sources)),
        flagged=flagged,
        diagnostics=diagnostics,
        c=shown_count,
        rate=shown_rate,
        small=small,
        pct=lambda x: "—" if x is None else f"{x:.2%}",
        charts=report_charts(q),
        largest_person_paired=LARGEST_PERSON_PAIRED,
    )


def write_linkage_report(
    engine: Engine,
    project: LoadedProject,
    diagnostics: list[dict[str, Any]] | None = None,
    truth_space: list[dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    layout = OutputLayout(project.output_dir)
    manifest = json.loads(layout.manifest.read_text())
    q = linkage_quality(engine, project, manifest)
    if q["clerical_review"] is not None:
        # Counts of reviewed record pairs (the review's work, not people): exact, as the
        # model's pair counts are; the page rounds them like every count it shows.
        q["clerical_review"]["truth_space_unweighted"] = truth_space or []
    html_path, json_path = layout.linkage_report, layout.linkage_quality
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(q, indent=2, default=str))
    html_path.write_text(render_linkage_report(q, diagnostics or []))
    return html_path, json_path

"""The manifest: linkage metadata of one linkage (inputs with hashes, reconciliation,
model, thresholds, pairs, links, error rates, timings), built from the records the steps
left, so it says exactly what was done."""

from __future__ import annotations

import json
import platform
import uuid
from datetime import UTC, datetime
from typing import Any

import splink

from linkage_models.project import LoadedProject
from pipelines.contract import OutputLayout, load_record, records_of
from pipelines.deliveries import delivery_statuses
from pipelines.disclosure_control import protected_manifest
from pipelines.engines import Engine

# The steps whose timings the manifest reports, in the order a run takes them.
STEPS = (
    "ingest",
    "validate",
    "standardise",
    "linkage_inputs",
    "train",
    "predict",
    "cluster",
    "publish",
    "estimate_errors",
    "evaluate",
)

# Keys of the predict step's record that are not linkage metadata: its timings (reported
# under `stages`) and the working table the diagnostics read.
PAIRS_NOT_REPORTED = ("seconds", "peak_rss_mb", "finished_at", "detailed_pairs")


def build_manifest(
    engine: Engine, project: LoadedProject, run_id: str | None = None
) -> dict[str, Any]:
    """Linkage metadata for the last linkage, from the steps' records; reconciled."""
    spec = project.spec
    layout = OutputLayout(project.output_dir)
    inputs = load_record(layout, "linkage_inputs")
    model = load_record(layout, "train")
    pairs = load_record(layout, "predict")
    clusters = load_record(layout, "cluster")
    published = load_record(layout, "publish")
    estimate_step = load_record(layout, "estimate_errors")
    estimated = estimate_step["estimated"]
    evaluated = records_of(layout, "evaluate")
    measured = evaluated[0]["measured"] if evaluated else None
    sources = inputs["sources"]
    rows_in = sum(s["rows_in"] for s in sources.values())
    rows_quarantined = sum(s["rows_quarantined"] for s in sources.values())
    withdrawn = {f"{w['source']}/{w['delivery']}" for w in inputs.get("withdrawn_deliveries", [])}
    statuses = [
        r for r in delivery_statuses(engine) if f"{r['source']}/{r['delivery']}" not in withdrawn
    ]
    stages = stage_timings(layout)
    document = {
        "run_id": run_id or str(uuid.uuid4()),
        # The publication this manifest belongs to: <zone>/snapshots/<snapshot>.
        "snapshot": layout.snapshot,
        "project": spec.project,
        "config_path": str(project.config_path),
        "config_hash": project.config_hash,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "linking_snapshot_date": published["snapshot_date"],
        # Where the secret that keys the person ids is kept (never the secret).
        "person_id_key": published["person_id_key"],
        "engine": engine.name,
        "versions": {
            "python": platform.python_version(),
            "splink": splink.__version__,
            **engine.versions(),
        },
        "inputs": [
            {
                "source": s.name,
                "department": s.department,
                "files": [
                    {k: r[k] for k in ("delivery", "path", "rows", "sha256", "bytes", "status")}
                    | {"critical_failures": r["detail"]}
                    for r in statuses
                    if r["source"] == s.name
                ],
            }
            for s in spec.sources
        ],
        "pending_deliveries": inputs["pending_deliveries"],
        "withdrawn_deliveries": inputs.get("withdrawn_deliveries", []),
        "reconciliation": {
            "rows_in": rows_in,
            "rows_linked": published["rows"],
            "rows_quarantined": rows_quarantined,
            "reconciles": rows_in == published["rows"] + rows_quarantined,
            "by_source": {
                name: {
                    "rows_in": s["rows_in"],
                    "rows_accepted": s["rows_accepted"],
                    "rows_quarantined": s["rows_quarantined"],
                    "quarantined_by_reason": s["by_reason"],
                    "values_set_missing": s["cleaning"],
                    "names_transliterated": s["names_transliterated"],
                    "quarantine_file": layout.relative(s["path"]),
                    "by_delivery": s["by_delivery"],
                }
                for name, s in sources.items()
            },
        },
        "model": {
            "version": model["version"],
            "path": layout.relative(model["path"]),
            "trained_in_this_run": model["trained_in_this_run"],
            "approved": model["approved"],
            "config_changed_since_training": model["config_changed_since_training"],
            "training_data_fingerprint": model["training_data_fingerprint"],
            "config_hash_at_training": model["config_hash"],
            "probability_two_random_records_match": model["probability_two_random_records_match"],
            # The deterministic rules' recall the prior was built on (None: a model trained
            # before training rebuilt the prior, on the declared recall).
            "deterministic_rules_recall": model.get("deterministic_rules_recall"),
            # What the model compares and blocks on, and which of it joinedup derived from
            # the identifiers mapped (the blocking analysis when it trained in this run).
            "comparisons": model.get("comparisons"),
            "derived_from_identifiers": model.get("derived_from_identifiers"),
            "blocking_rules": model.get("blocking_rules"),
            "blocking_analysis": model.get("blocking_analysis"),
        },
        "thresholds": spec.model.thresholds.as_dict(),
        # How the balanced threshold was chosen with the model, from its estimates at each
        # candidate (quality.threshold_choice); None where the project fixed it.
        "balanced_threshold_choice": model.get("balanced_threshold_choice")
        if model.get("balanced_chosen_with_model")
        else None,
        # Persistent ids: this publication's generation, the one it carried ids forward
        # from, and the churn ledger per threshold (pipelines.identity).
        "identity": published["identity"],
        "pairs": {
            **{k: v for k, v in pairs.items() if k not in PAIRS_NOT_REPORTED},
            # The matches blocking reached and those it did not (run with the estimates).
            "blocking_check": estimate_step.get("blocking_check"),
        },
        "links": clusters["links"],
        # Linked in full or incrementally (what changed), and for a full relink after
        # incremental linkages how far their clusters had drifted from it.
        "linkage": clusters.get("linkage")
        and {
            **clusters["linkage"],
            # Per source: its deliveries combined afresh, or new ones added to what the
            # previous publication combined (incremental linkage).
            "deliveries_combined": {
                n: "added to the publication's" if s.get("added_to_previous") else "afresh"
                for n, s in sources.items()
            },
            # The error-rate estimates' pairs: all counted, or after an incremental linkage
            # those of the records it reclustered, the rest kept from the publication it
            # extended.
            "estimates_counted": estimate_step.get("counted"),
        },
        # Relative to the manifest's folder: the publication can move, and the manifest does
        # not describe the secure server's file system.
        "outputs": {
            **{name: layout.relative(path) for name, path in published["outputs"].items()},
            "linkage_report": layout.relative(layout.linkage_report),
            "linkage_quality": layout.relative(layout.linkage_quality),
        },
        "estimated_error_rates": estimated,
        "measured_accuracy": measured,
        "stages": stages,
    }
    return document


def stage_timings(layout: OutputLayout) -> dict[str, dict[str, float]]:
    """Seconds and peak memory of each step for this publication: the linkage steps of this
    run, and the per-delivery steps (ingest, validate, standardise; one record each) done
    since the previous publication, so an incremental run reports the deliveries it added,
    not every delivery ever ingested. `steps` counts the records summed."""
    since = _previous_publication_time(layout)
    stages: dict[str, dict[str, float]] = {}
    for name in STEPS:
        records = records_of(layout, name)
        if not records:
            continue
        entry = stages.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0, "steps": 0})
        for rec in records:
            if rec.get("finished_at", float("inf")) <= since:
                continue
            entry["seconds"] = round(entry["seconds"] + rec.get("seconds", 0.0), 3)
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rec.get("peak_rss_mb", 0.0))
            entry["steps"] += 1
    return stages


def _previous_publication_time(layout: OutputLayout) -> float:
    """When the latest publication's manifest was written (epoch seconds; -inf before the
    first publication)."""
    previous = layout.published.exact_manifest
    if not previous.exists():
        return float("-inf")
    written = json.loads(previous.read_text())["written_at"]
    return datetime.fromisoformat(written).timestamp()


def write_manifest(layout: OutputLayout, document: dict[str, Any]) -> None:
    """The exact manifest into the secure zone; its protected copy into the shareable zone."""
    layout.exact_manifest.parent.mkdir(parents=True, exist_ok=True)
    layout.exact_manifest.write_text(json.dumps(document, indent=2, default=str))
    layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    layout.manifest.write_text(json.dumps(protected_manifest(document), indent=2, default=str))

"""The stages of a linkage run, as plain functions of (engine, project, ...).

Dagster assets call these and nothing else does the work, so the CLI, tests and the UI run
the same code. Stages hand data to each other as tables in the engine and record a small
JSON summary (counts, timings, never row values) under OUT/work/stages/ for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import splink

from linkage_models import linkage
from linkage_models.project import LoadedProject, SourceSpec
from linkage_models.registry import ModelRegistry, model_card_markdown
from pipelines.deliveries import Delivery, delivery_statuses, set_status
from pipelines.engines import Engine
from pipelines.ingest import DeliveryFile, ingest_delivery
from pipelines.publish import publish_linked_dataset
from pipelines.standardise import linkage_input_sql, load_reference_tables, standardise_sql
from quality.accuracy import pairwise_cluster_metrics
from quality.clerical_review import labels_path
from quality.diagnostics import write_diagnostics, write_label_accuracy
from quality.error_rates import estimate_error_rates
from quality.linkage_report import report_paths, write_linkage_report
from quality.quarantine import DeliveryTables, QuarantineResult, combine_and_quarantine
from quality.validation import ValidationOutcome, save_outcome, validate_delivery

THRESHOLD_COLUMNS = {
    "high_precision": "person_id_high_precision",
    "balanced": "person_id",
    "high_recall": "person_id_high_recall",
}


class ReconciliationError(RuntimeError):
    """Rows in did not equal rows linked + rows quarantined: the run must not publish."""


# --- stage records -----------------------------------------------------------------------


def stage_dir(project: LoadedProject) -> Path:
    return project.output_dir / "work" / "stages"


def save_stage(project: LoadedProject, name: str, record: dict[str, Any]) -> None:
    path = stage_dir(project) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))


def load_stage(project: LoadedProject, name: str) -> dict[str, Any]:
    path = stage_dir(project) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage '{name}' has not run yet for this project")
    return json.loads(path.read_text())


@contextmanager
def timed(record: dict[str, Any]) -> Iterator[None]:
    """Adds seconds and the process's peak RSS so far to `record`."""
    start = time.perf_counter()
    yield
    record["seconds"] = round(time.perf_counter() - start, 3)
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- per delivery ------------------------------------------------------------------------


def ingest(
    engine: Engine, project: LoadedProject, source: SourceSpec, delivery: Delivery
) -> DeliveryFile:
    """Load a delivery; anything derived from an earlier version of it is dropped."""
    record: dict[str, Any] = {"source": source.name, "delivery": delivery.key}
    with timed(record):
        engine.execute(f"DROP TABLE IF EXISTS {delivery.standardised_table}")
        file = ingest_delivery(engine, source, delivery.path, delivery.key, delivery.raw_table)
        set_status(engine, delivery, "ingested", file)
    save_stage(project, f"ingest__{delivery.suffix}", {**record, **asdict(file)})
    return file


def validate(
    engine: Engine, project: LoadedProject, source: SourceSpec, delivery: Delivery
) -> ValidationOutcome:
    record: dict[str, Any] = {"source": source.name, "delivery": delivery.key}
    with timed(record):
        outcome = validate_delivery(
            engine, source, delivery.key, delivery.raw_table, project.output_dir / "quality"
        )
        save_outcome(outcome, validation_path(project, delivery))
        failed = ", ".join(e.key for e in outcome.critical_failures)
        set_status(engine, delivery, "accepted" if outcome.success else "rejected", detail=failed)
    save_stage(project, f"validate__{delivery.suffix}", {**record, "success": outcome.success})
    return outcome


def validation_path(project: LoadedProject, delivery: Delivery) -> Path:
    return project.output_dir / "quality" / delivery.source / f"{delivery.key}.validation.json"


def standardise(
    engine: Engine, project: LoadedProject, source: SourceSpec, delivery: Delivery
) -> int:
    record: dict[str, Any] = {"source": source.name, "delivery": delivery.key}
    with timed(record):
        load_reference_tables(engine)
        engine.create_table(
            delivery.standardised_table, standardise_sql(source, delivery.raw_table)
        )
        set_status(engine, delivery, "standardised")
        rows = engine.count(delivery.standardised_table)
    save_stage(project, f"standardise__{delivery.suffix}", {**record, "rows": rows})
    return rows


# --- across deliveries -------------------------------------------------------------------


def linkage_inputs(engine: Engine, project: LoadedProject) -> dict[str, QuarantineResult]:
    """Combine each source's deliveries, quarantine bad rows, build Splink's input tables.

    Deliveries rejected by validation are quarantined whole; deliveries not yet through
    validation and standardisation are left out of this linkage and listed as pending.
    """
    # A new linkage starts: an evaluation of the previous one no longer applies.
    (stage_dir(project) / "evaluate.json").unlink(missing_ok=True)
    record: dict[str, Any] = {}
    results: dict[str, QuarantineResult] = {}
    pending: list[dict[str, Any]] = []
    with timed(record):
        quarantine_dir = project.output_dir / "quarantine"
        for source in project.spec.sources:
            tables = []
            for row in delivery_statuses(engine, source.name):
                d = Delivery(source.name, row["delivery"], row["path"])
                if row["status"] == "standardised":
                    tables.append(DeliveryTables(d.key, d.raw_table, d.standardised_table))
                elif row["status"] == "rejected":
                    tables.append(DeliveryTables(d.key, d.raw_table, None, row["detail"]))
                else:
                    pending.append(
                        {"source": source.name, "delivery": d.key, "status": row["status"]}
                    )
            result = combine_and_quarantine(engine, source, tables, quarantine_dir)
            if not result.reconciles:
                raise ReconciliationError(
                    f"source '{source.name}': {result.rows_in} rows in but {result.rows_accepted}"
                    f" accepted + {result.rows_quarantined} quarantined"
                )
            if result.accepted_table:
                engine.create_table(
                    f"linkage_input_{source.name}", linkage_input_sql(result.accepted_table)
                )
            else:
                engine.execute(f"DROP TABLE IF EXISTS linkage_input_{source.name}")
            results[source.name] = result
    save_stage(
        project,
        "linkage_inputs",
        {
            **record,
            "pending_deliveries": pending,
            "sources": {name: {**asdict(r), "path": str(r.path)} for name, r in results.items()},
        },
    )
    return results


def linkage_input_tables(project: LoadedProject) -> dict[str, str]:
    """Sources with accepted rows -> their Splink input table (from the last inputs stage)."""
    sources = load_stage(project, "linkage_inputs")["sources"]
    return {name: f"linkage_input_{name}" for name, s in sources.items() if s["accepted_table"]}


def train(
    engine: Engine, project: LoadedProject, model_version: str | None = None
) -> dict[str, Any]:
    """Train and register a new model version, or reuse a registered one."""
    spec = project.spec
    out = project.output_dir
    registry = ModelRegistry(out / "model")
    inputs = linkage_input_tables(project)
    record: dict[str, Any] = {}
    summary: dict[str, Any] | None = None
    with timed(record):
        if model_version is not None:
            entry, trained = registry.load(model_version)
        else:
            linker = linkage.make_linker(engine.splink_api(), inputs, spec.model)
            summary = linkage.train(linker, spec.model.training)
            trained = linker.misc.save_model_to_json()
            summary["m_probabilities_floored"] = linkage.floor_m_probabilities(trained)
            entry = registry.register(
                trained,
                config_hash=project.config_hash,
                training_data_fingerprint=training_data_fingerprint(engine, project),
            )
        (out / "model" / "model_card.md").write_text(
            model_card_markdown(
                spec.project,
                entry,
                trained,
                spec.model.thresholds.as_dict(),
                summary,
                spec.model.probable_twins_rule,
            )
        )
    result = {
        **record,
        **asdict(entry),
        "path": str(out / "model" / entry.path),
        "trained_in_this_run": summary is not None,
    }
    save_stage(project, "train", result)
    return result


def training_data_fingerprint(engine: Engine, project: LoadedProject) -> str:
    """Which deliveries (by content hash and status) the model was trained on."""
    digest = hashlib.sha256()
    for row in delivery_statuses(engine):
        digest.update(f"{row['source']}:{row['delivery']}:{row['sha256']}:{row['status']}".encode())
    return digest.hexdigest()


def trained_linker(engine: Engine, project: LoadedProject) -> Any:
    model_path = Path(load_stage(project, "train")["path"])
    trained = json.loads(model_path.read_text())
    return linkage.make_linker(
        engine.splink_api(), linkage_input_tables(project), project.spec.model, trained
    )


def predict(engine: Engine, project: LoadedProject) -> dict[str, Any]:
    """Score blocked pairs; apply the probable-twins rule; keep stable table names."""
    record: dict[str, Any] = {}
    with timed(record):
        linker = trained_linker(engine, project)
        predictions = linkage.predict(linker)
        scored = engine.count(predictions.blocked_pairs_table)
        engine.create_table("pairwise_predictions", f"SELECT * FROM {predictions.table}")
        clustering_table, removed = linkage.apply_pair_rules(
            engine, "pairwise_predictions", project.spec.model
        )
        if clustering_table != "pairs_for_clustering":
            engine.create_table("pairs_for_clustering", f"SELECT * FROM {clustering_table}")
        result = {
            "scored": scored,
            "kept_above_floor": engine.count("pairwise_predictions"),
            "prediction_floor": linkage.PREDICTION_FLOOR,
            "removed_by_probable_twins_rule": removed,
        }
    save_stage(project, "predict", {**record, **result})
    return result


def cluster(engine: Engine, project: LoadedProject) -> dict[str, dict[str, int]]:
    """Connected components at the three thresholds, as clusters_<threshold> tables."""
    record: dict[str, Any] = {}
    thresholds = project.spec.model.thresholds.as_dict()
    summary: dict[str, dict[str, int]] = {}
    with timed(record):
        linker = trained_linker(engine, project)
        tables = linkage.cluster_at_thresholds(
            linker, "pairs_for_clustering", project.spec.model.thresholds
        )
        for name, table in tables.items():
            engine.create_table(
                f"clusters_{name}", f"SELECT source_dataset, record_id, cluster_id FROM {table}"
            )
            links = engine.fetch(
                "SELECT count(*) FROM pairs_for_clustering "
                f"WHERE match_probability >= {thresholds[name]}"
            )[0][0]
            persons, largest = engine.fetch(
                f"SELECT count(*), max(n) FROM (SELECT count(*) AS n FROM clusters_{name} "
                "GROUP BY cluster_id)"
            )[0]
            summary[name] = {
                "links": int(links),
                "persons": int(persons),
                "largest_cluster": int(largest or 0),
            }
    save_stage(project, "cluster", {**record, "links": summary})
    return summary


def publish(engine: Engine, project: LoadedProject) -> dict[str, Any]:
    record: dict[str, Any] = {}
    with timed(record):
        inputs = load_stage(project, "linkage_inputs")["sources"]
        accepted = {n: s["accepted_table"] for n, s in inputs.items() if s["accepted_table"]}
        snapshot = date.today()
        paths = publish_linked_dataset(
            engine,
            project.spec,
            {name: f"clusters_{name}" for name in THRESHOLD_COLUMNS},
            accepted,
            project.output_dir / "linked",
            snapshot,
        )
        lookup_rows = engine.count("person_lookup")
        persons, linked_share = engine.fetch(
            "SELECT count(*), sum(CASE WHEN sources > 1 THEN n ELSE 0 END) / sum(n) FROM "
            "(SELECT person_id, count(DISTINCT source_dataset) AS sources, count(*) AS n "
            "FROM person_lookup GROUP BY person_id)"
        )[0]
        expected = sum(s["rows_accepted"] for s in inputs.values())
        if lookup_rows != expected:
            raise ReconciliationError(
                f"person lookup has {lookup_rows} rows but {expected} records were accepted"
            )
    result = {
        **record,
        "rows": lookup_rows,
        "persons": int(persons),
        "share_linked_across_sources": round(float(linked_share or 0), 4),
        "snapshot_date": snapshot.isoformat(),
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    save_stage(project, "publish", result)
    return result


def estimate_errors(engine: Engine, project: LoadedProject) -> dict[str, Any]:
    """Label-free estimates of each threshold's pairwise precision and recall."""
    record: dict[str, Any] = {}
    with timed(record):
        estimates = estimate_error_rates(engine, THRESHOLD_COLUMNS)
    save_stage(project, "estimate_errors", {**record, "estimated": estimates})
    return estimates


def evaluate(engine: Engine, project: LoadedProject, ground_truth: Path) -> dict[str, Any]:
    """Pairwise precision/recall of each threshold's clusters against ground truth."""
    record: dict[str, Any] = {}
    with timed(record):
        measured = {
            name: pairwise_cluster_metrics(
                engine, "person_lookup", col, ground_truth, name
            ).as_dict()
            for name, col in THRESHOLD_COLUMNS.items()
        }
    save_stage(
        project, "evaluate", {**record, "ground_truth": str(ground_truth), "measured": measured}
    )
    return measured


def diagnostics(engine: Engine, project: LoadedProject) -> list[dict[str, Any]]:
    """Splink's charts and dashboards for analysts, as offline HTML."""
    record: dict[str, Any] = {}
    with timed(record):
        model = json.loads(Path(load_stage(project, "train")["path"]).read_text())
        written = write_diagnostics(engine, project, model, linkage_input_tables(project))
    save_stage(project, "diagnostics", {**record, "written": written})
    return written


def linkage_report(engine: Engine, project: LoadedProject) -> tuple[Path, Path]:
    """The GUILD-style linkage report and linkage_quality.json (after the manifest)."""
    record: dict[str, Any] = {}
    diagnostics_path = stage_dir(project) / "diagnostics.json"
    written = (
        json.loads(diagnostics_path.read_text())["written"] if diagnostics_path.exists() else []
    )
    with timed(record):
        truth_space: list[dict[str, Any]] = []
        labels = labels_path(project.output_dir)
        if labels.exists():
            model = json.loads(Path(load_stage(project, "train")["path"]).read_text())
            charts, truth_space = write_label_accuracy(
                engine, project, model, linkage_input_tables(project), labels
            )
            written = [*written, *charts]
        paths = write_linkage_report(engine, project, written, truth_space)
    save_stage(project, "linkage_report", {**record, "paths": [str(p) for p in paths]})
    return paths


# --- the manifest ------------------------------------------------------------------------


def manifest(engine: Engine, project: LoadedProject, run_id: str | None = None) -> dict[str, Any]:
    """Linkage metadata for the last linkage, reconciled; written to OUT/manifest.json."""
    spec = project.spec
    inputs = load_stage(project, "linkage_inputs")
    model = load_stage(project, "train")
    pairs = load_stage(project, "predict")
    clusters = load_stage(project, "cluster")
    published = load_stage(project, "publish")
    estimated = load_stage(project, "estimate_errors")["estimated"]
    sources = inputs["sources"]
    rows_in = sum(s["rows_in"] for s in sources.values())
    rows_quarantined = sum(s["rows_quarantined"] for s in sources.values())
    statuses = delivery_statuses(engine)
    evaluation_path = stage_dir(project) / "evaluate.json"
    measured = (
        json.loads(evaluation_path.read_text())["measured"] if evaluation_path.exists() else None
    )
    stage_names = (
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
    stages: dict[str, dict[str, float]] = {}
    for path in sorted(stage_dir(project).glob("*.json")):
        name = path.stem.split("__")[0]
        if name not in stage_names:
            continue
        rec = json.loads(path.read_text())
        entry = stages.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0})
        entry["seconds"] = round(entry["seconds"] + rec.get("seconds", 0.0), 3)
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rec.get("peak_rss_mb", 0.0))
    stages = {n: stages[n] for n in stage_names if n in stages}
    document = {
        "run_id": run_id or str(uuid.uuid4()),
        "project": spec.project,
        "config_path": str(project.config_path),
        "config_hash": project.config_hash,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "linking_snapshot_date": published["snapshot_date"],
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
                    "quarantine_file": s["path"],
                    "by_delivery": s["by_delivery"],
                }
                for name, s in sources.items()
            },
        },
        "model": {
            "version": model["version"],
            "path": model["path"],
            "trained_in_this_run": model["trained_in_this_run"],
            "training_data_fingerprint": model["training_data_fingerprint"],
            "config_hash_at_training": model["config_hash"],
            "probability_two_random_records_match": model["probability_two_random_records_match"],
        },
        "thresholds": spec.model.thresholds.as_dict(),
        "pairs": {k: v for k, v in pairs.items() if k not in ("seconds", "peak_rss_mb")},
        "links": clusters["links"],
        "outputs": {
            **published["outputs"],
            "linkage_report": str(report_paths(project)[0]),
            "linkage_quality": str(report_paths(project)[1]),
        },
        "estimated_error_rates": estimated,
        "measured_accuracy": measured,
        "stages": stages,
    }
    (project.output_dir / "manifest.json").write_text(json.dumps(document, indent=2, default=str))
    return document

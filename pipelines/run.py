"""Run a linkage project end to end: ingest -> standardise -> quarantine -> train -> predict
-> cluster -> publish -> manifest. Each stage is a plain function call; this module only
sequences them, times them and writes the manifest.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import splink

from linkage_models import linkage
from linkage_models.project import LoadedProject
from linkage_models.registry import ModelRegistry, model_card_markdown
from pipelines.engine import Engine, open_engine
from pipelines.ingest import IngestedSource, ingest_source
from pipelines.publish import publish_linked_dataset
from pipelines.standardise import linkage_input_sql, load_reference_tables_sql, standardise_sql
from quality.accuracy import pairwise_cluster_metrics
from quality.quarantine import QuarantineResult, split_accepted_and_quarantined

StageCallback = Callable[[str], None]


class ReconciliationError(RuntimeError):
    """Rows in did not equal rows linked + rows quarantined: the run must not publish."""


@dataclass
class StageTimer:
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    on_stage: StageCallback | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name)
        start = time.perf_counter()
        yield
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        entry = self.stages.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0})
        entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 3)
        entry["peak_rss_mb"] = round(max(entry["peak_rss_mb"], peak_mb), 1)


@dataclass(frozen=True)
class RunResult:
    output_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]


def training_data_fingerprint(ingested: list[IngestedSource], accepted: dict[str, int]) -> str:
    digest = hashlib.sha256()
    for src in sorted(ingested, key=lambda s: s.source):
        for f in src.files:
            digest.update(f"{src.source}:{f.sha256}:{f.rows}".encode())
        digest.update(f"{src.source}:accepted:{accepted[src.source]}".encode())
    return digest.hexdigest()


def _prepare_output(out: Path) -> None:
    """Fresh per-run outputs; the model registry accumulates versions across runs."""
    for sub in ("linked", "quarantine", "work"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("linked", "quarantine", "work", "model"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def run_project(
    project: LoadedProject,
    *,
    engine_name: str = "duckdb",
    model_version: str | None = None,
    ground_truth: Path | None = None,
    on_stage: StageCallback | None = None,
) -> RunResult:
    """Link every source of `project`; returns where the outputs and manifest are."""
    spec = project.spec
    out = project.output_dir
    _prepare_output(out)
    started = datetime.now(UTC)
    timer = StageTimer(on_stage=on_stage)
    engine = open_engine(engine_name, out / "work", memory_limit=spec.output.duckdb_memory_limit)
    try:
        manifest = _run(project, engine, timer, model_version, ground_truth, started)
    finally:
        engine.close()
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    return RunResult(output_dir=out, manifest_path=manifest_path, manifest=manifest)


def _run(
    project: LoadedProject,
    engine: Engine,
    timer: StageTimer,
    model_version: str | None,
    ground_truth: Path | None,
    started: datetime,
) -> dict[str, Any]:
    spec = project.spec
    out = project.output_dir
    for sql in load_reference_tables_sql():
        engine.execute(sql)

    ingested: list[IngestedSource] = []
    results: dict[str, QuarantineResult] = {}
    linkage_inputs: dict[str, str] = {}
    for source in spec.sources:
        with timer.stage("ingest"):
            ing = ingest_source(engine, source, project.source_path(source))
            ingested.append(ing)
        with timer.stage("standardise"):
            engine.create_table(f"std_{source.name}", standardise_sql(source, ing.table))
        with timer.stage("quarantine"):
            q = split_accepted_and_quarantined(
                engine, source, ing.table, f"std_{source.name}", out / "quarantine"
            )
            if not q.reconciles:
                raise ReconciliationError(
                    f"source '{source.name}': {q.rows_in} rows in but {q.rows_accepted} accepted "
                    f"+ {q.rows_quarantined} quarantined"
                )
            results[source.name] = q
            linkage_inputs[source.name] = f"linkage_input_{source.name}"
            engine.create_table(linkage_inputs[source.name], linkage_input_sql(q.accepted_table))

    accepted_counts = {name: r.rows_accepted for name, r in results.items()}
    fingerprint = training_data_fingerprint(ingested, accepted_counts)
    registry = ModelRegistry(out / "model")
    training_summary: dict[str, Any] | None = None
    with timer.stage("train"):
        if model_version is not None:
            entry, trained = registry.load(model_version)
            linker = linkage.make_linker(engine.splink_api(), linkage_inputs, spec.model, trained)
        else:
            linker = linkage.make_linker(engine.splink_api(), linkage_inputs, spec.model)
            training_summary = linkage.train(linker, spec.model.training)
            trained = linker.misc.save_model_to_json()
            entry = registry.register(
                trained, config_hash=project.config_hash, training_data_fingerprint=fingerprint
            )
        card = model_card_markdown(
            spec.project,
            entry,
            trained,
            spec.model.thresholds.as_dict(),
            training_summary,
            spec.model.probable_twins_rule,
        )
        (out / "model" / "model_card.md").write_text(card)

    with timer.stage("predict"):
        predictions = linkage.predict(linker)
        pairs_scored = engine.count(predictions.blocked_pairs_table)
        pairs_kept = engine.count(predictions.table)
        pairs_table, twins_removed = linkage.apply_pair_rules(engine, predictions.table, spec.model)
        # A stable name for diagnostics; Splink's own table name changes run to run.
        engine.execute(
            f"CREATE OR REPLACE VIEW pairwise_predictions AS SELECT * FROM {predictions.table}"
        )

    with timer.stage("cluster"):
        clusters = linkage.cluster_at_thresholds(linker, pairs_table, spec.model.thresholds)

    with timer.stage("publish"):
        accepted_tables = {name: r.accepted_table for name, r in results.items()}
        paths = publish_linked_dataset(
            engine, spec, clusters, accepted_tables, out / "linked", started.date()
        )
        lookup_rows = engine.count("person_lookup")
        if lookup_rows != sum(accepted_counts.values()):
            raise ReconciliationError(
                f"person lookup has {lookup_rows} rows but {sum(accepted_counts.values())} "
                "records were accepted"
            )
        links = _links_and_persons(engine, clusters, pairs_table, spec.model.thresholds.as_dict())

    measured = None
    if ground_truth is not None:
        with timer.stage("evaluate"):
            measured = {
                name: pairwise_cluster_metrics(
                    engine, "person_lookup", column, ground_truth, name
                ).as_dict()
                for name, column in (
                    ("high_precision", "person_id_high_precision"),
                    ("balanced", "person_id"),
                    ("high_recall", "person_id_high_recall"),
                )
            }

    rows_in = sum(r.rows_in for r in results.values())
    rows_quarantined = sum(r.rows_quarantined for r in results.values())
    return {
        "run_id": str(uuid.uuid4()),
        "project": spec.project,
        "config_path": str(project.config_path),
        "config_hash": project.config_hash,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "linking_snapshot_date": started.date().isoformat(),
        "engine": engine.name,
        "versions": {
            "python": platform.python_version(),
            "splink": splink.__version__,
            **engine.versions(),
        },
        "inputs": [
            {
                "source": ing.source,
                "department": spec.source(ing.source).department,
                "files": [asdict(f) for f in ing.files],
            }
            for ing in ingested
        ],
        "reconciliation": {
            "rows_in": rows_in,
            "rows_linked": lookup_rows,
            "rows_quarantined": rows_quarantined,
            "reconciles": rows_in == lookup_rows + rows_quarantined,
            "by_source": {
                name: {
                    "rows_in": r.rows_in,
                    "rows_accepted": r.rows_accepted,
                    "rows_quarantined": r.rows_quarantined,
                    "quarantined_by_reason": r.by_reason,
                    "values_set_missing": r.cleaning,
                    "quarantine_file": str(r.path),
                }
                for name, r in results.items()
            },
        },
        "model": {
            "version": entry.version,
            "path": str(out / "model" / entry.path),
            "trained_in_this_run": training_summary is not None,
            "training_data_fingerprint": entry.training_data_fingerprint,
            "config_hash_at_training": entry.config_hash,
            "probability_two_random_records_match": entry.probability_two_random_records_match,
        },
        "thresholds": spec.model.thresholds.as_dict(),
        "pairs": {
            "scored": pairs_scored,
            "kept_above_floor": pairs_kept,
            "prediction_floor": linkage.PREDICTION_FLOOR,
            "removed_by_probable_twins_rule": twins_removed,
        },
        "links": links,
        "outputs": {k: str(v) for k, v in paths.items()},
        "measured_accuracy": measured,
        "stages": timer.stages,
    }


def _links_and_persons(
    engine: Engine, clusters: dict[str, str], pairs_table: str, thresholds: dict[str, float]
) -> dict[str, dict[str, int]]:
    """Accepted pairwise links and resulting persons at each threshold (counts only)."""
    summary = {}
    for name, table in clusters.items():
        links = engine.fetch(
            f"SELECT count(*) FROM {pairs_table} WHERE match_probability >= {thresholds[name]}"
        )[0][0]
        persons, largest = engine.fetch(
            f"SELECT count(*), max(n) FROM (SELECT count(*) AS n FROM {table} GROUP BY cluster_id)"
        )[0]
        summary[name] = {
            "links": int(links),
            "persons": int(persons),
            "largest_cluster": int(largest or 0),
        }
    return summary

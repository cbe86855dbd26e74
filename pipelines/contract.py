"""The output contract: where every output of a run lives, what the engine's tables are
called, the columns of what is published, and the stage records a run leaves behind.

Every reader and writer takes these names from here, so the layout is spelt out once.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The three clustering thresholds, strictest first, and the person-id column of each.
THRESHOLDS = ("high_precision", "balanced", "high_recall")
PERSON_ID_COLUMNS = {
    "high_precision": "person_id_high_precision",
    "balanced": "person_id",
    "high_recall": "person_id_high_recall",
}

# Persons of more records than this have their pairs counted, not listed one by one: the
# error-rate estimates find no paths and no never-blocked pairs inside them (a cluster of n
# records holds n(n - 1) / 2 pairs; one a faulty identifier joined could hold billions).
LARGEST_PERSON_PAIRED = 1000

# Columns of the published person lookup.
LOOKUP_COLUMNS = (
    "source_dataset",
    "source_record_id",
    "person_id",
    "person_id_high_precision",
    "person_id_high_recall",
    "linking_snapshot_date",
)


class ReconciliationError(RuntimeError):
    """Rows in did not equal rows linked + rows quarantined: the run must not publish."""


class Tables:
    """Names of the tables runs keep in the engine (the working database)."""

    DELIVERY_STATUS = "joinedup_deliveries"
    NICKNAMES = "ref_nicknames"
    POSTCODE_REGIONS = "ref_postcode_regions"
    PAIRWISE_PREDICTIONS = "pairwise_predictions"  # every scored pair above the floor
    # One row: blocked pairs scored below the floor and the matches the model expects among
    # them (sum of their probabilities), for the error-rate estimates; and the same for all
    # scored pairs.
    PAIRS_BELOW_FLOOR = "pairs_below_floor"
    # One row: the matches no blocking rule brought together, by the model's account
    # (pipelines.blocking_reach; NULL when no rule could be read), for the same estimates.
    MATCHES_NOT_BLOCKED = "matches_not_blocked"
    # The pairs of records one person holds (at any threshold) that no blocking rule
    # brought together: source_a, record_a, source_b, record_b.
    PAIRS_NEVER_BLOCKED_IN_PERSONS = "pairs_never_blocked_in_persons"
    # The balanced estimate's counted pairs (expected_pairs), for quality.bias to take apart
    # by group.
    BALANCED_EXPECTED_PAIRS = "expected_pairs_balanced"  # = expected_pairs("balanced")
    # One row: the snapshot whose estimates the expected_pairs tables (and the never-blocked
    # pairs) hold; an incremental linkage's estimates extend them only when it is the
    # publication the linkage extended.
    EXPECTED_PAIRS_OF = "expected_pairs_of"
    PAIRS_FOR_CLUSTERING = "pairs_for_clustering"  # the pairs clustering may use
    PERSON_LOOKUP = "person_lookup"
    EVENTS = "events"

    @staticmethod
    def raw_delivery(delivery_suffix: str) -> str:
        return f"raw__{delivery_suffix}"

    @staticmethod
    def standardised_delivery(delivery_suffix: str) -> str:
        return f"std__{delivery_suffix}"

    @staticmethod
    def checked(source: str) -> str:
        """A source's standardised rows, each with its quarantine reason (or none)."""
        return f"checked_{source}"

    @staticmethod
    def accepted(source: str) -> str:
        return f"accepted_{source}"

    @staticmethod
    def quarantined(source: str) -> str:
        return f"quarantined_{source}"

    @staticmethod
    def linkage_input(source: str) -> str:
        return f"linkage_input_{source}"

    @staticmethod
    def clusters(threshold: str) -> str:
        return f"clusters_{threshold}"

    @staticmethod
    def expected_pairs(threshold: str) -> str:
        """The pairs one threshold's error-rate estimate counted, with their probability of
        being one person (a, b, q, kind), and one row of kind 'elsewhere' holding the misses
        it knows only as a total (quality.error_rates); kept between runs."""
        return f"expected_pairs_{threshold}"


def clusters_lookup_sql(columns: dict[str, str] | None = None) -> str:
    """A person lookup whose ids are clusters: `columns` maps each id column to a cluster
    table (source_dataset, record_id, cluster_id); by default the contract's id columns
    from the clusters at each threshold, the linkage's result before person ids are
    carried forward."""
    columns = columns or {PERSON_ID_COLUMNS[t]: Tables.clusters(t) for t in THRESHOLDS}
    aliases = {column: f"c{i}" for i, column in enumerate(columns)}
    ids = ", ".join(f"{a}.cluster_id AS {column}" for column, a in aliases.items())
    joins = " ".join(
        f"JOIN {columns[column]} {a} ON {a}.source_dataset = c0.source_dataset "
        f"AND {a}.record_id = c0.record_id"
        for column, a in aliases.items()
        if a != "c0"
    )
    first = next(iter(columns.values()))
    return (
        f"SELECT c0.source_dataset, c0.record_id AS source_record_id, {ids} FROM {first} c0 {joins}"
    )


def parquet_source(path: Path) -> str:
    """A Parquet output as either engine reads it: DuckDB writes one file, Spark a folder
    of part files."""
    return str(path / "*.parquet") if path.is_dir() else str(path)


@dataclass(frozen=True)
class DeliveryTables:
    """One delivery as the linkage sees it: its raw rows and, once accepted, its
    standardised rows (None when validation rejected it, with the failed checks)."""

    key: str
    raw_table: str
    standardised_table: str | None
    rejection: str = ""
    sha256: str = ""  # of the delivered file

    def fingerprint(self) -> list[str]:
        """What says this is the same delivery, read the same way, as when combined before."""
        return [self.key, self.sha256, "accepted" if self.standardised_table else "rejected"]


STAGING = "staging"
CURRENT = "current"
# The register of every person id issued, inside a publication (pipelines.identity).
PERSON_IDS_IN_PUBLICATION = Path("linked") / "person_ids.parquet"


@dataclass(frozen=True)
class OutputLayout:
    """Every path under a project's output folder, in two zones.

    The shareable zone (`shareable/`) is what may leave the secure setting: the linked
    dataset, the manifest and the reports. The secure zone (`secure/`) is what must not:
    the working database, the model registry, clerical review, validation results with Data
    Docs, quarantine and the diagnostics that show identifiers.

    A run writes its outputs into `staging/` (write), is audited there (audit) and is then
    published as an immutable snapshot of each zone, `<zone>/snapshots/<id>/`, with
    `<zone>/current` pointing at the latest (publish; see pipelines.publication). `build`
    says which of those this layout reads and writes: "staging" (a run being built, the
    default), "current" (the latest publication) or a snapshot id. State kept across runs
    (work, model, review, validation) is the same whatever the build.
    """

    root: Path
    build: str = STAGING

    def at(self, build: str) -> OutputLayout:
        """The same output folder seen at another build (CURRENT, STAGING or a snapshot)."""
        return OutputLayout(self.root, build)

    @property
    def published(self) -> OutputLayout:
        return self.at(CURRENT)

    def zone_dir(self, zone: str) -> Path:
        """The folder of one zone ("shareable" or "secure") of this build."""
        if self.build == STAGING:
            return self.root / STAGING / zone
        if self.build == CURRENT:
            return self.root / zone / CURRENT
        return self.root / zone / "snapshots" / self.build

    @property
    def shareable_dir(self) -> Path:
        return self.zone_dir("shareable")

    @property
    def secure_dir(self) -> Path:
        """The secure zone's state kept across runs."""
        return self.root / "secure"

    @property
    def staging_marker(self) -> Path:
        """Which run owns staging, and the snapshot id its build will be published as."""
        return self.root / STAGING / "run.json"

    @property
    def snapshot(self) -> str:
        """The snapshot id of this build (for staging: the one it will be published as)."""
        if self.build == STAGING:
            return json.loads(self.staging_marker.read_text())["snapshot"]
        if self.build == CURRENT:
            return Path(os.readlink(self.shareable_dir)).name  # the link's target
        return self.build

    def relative(self, path: str | Path) -> str:
        """A path as the manifest writes it: what is published, relative to the manifest's
        folder (the publication can move); what stays in the secure zone, relative to the
        output folder ("secure/...", as published: its snapshot, not staging)."""
        resolved = Path(path).resolve()
        if resolved.is_relative_to(self.shareable_dir.resolve()):
            return resolved.relative_to(self.shareable_dir.resolve()).as_posix()
        secure_build = self.zone_dir("secure").resolve()
        if resolved.is_relative_to(secure_build):
            inside = resolved.relative_to(secure_build).as_posix()
            return f"secure/snapshots/{self.snapshot}/{inside}"
        if resolved.is_relative_to(self.secure_dir.resolve()):
            return resolved.relative_to(self.root.resolve()).as_posix()
        raise ValueError(f"{path} is not under the output folder {self.root}")

    # --- shareable: published ------------------------------------------------------------
    @property
    def linked_dir(self) -> Path:
        return self.shareable_dir / "linked"

    @property
    def person_lookup(self) -> Path:
        return self.linked_dir / "person_lookup.parquet"

    @property
    def events(self) -> Path:
        return self.linked_dir / "events.parquet"

    @property
    def person_ids(self) -> Path:
        """Every person id ever issued: where it came from, and for a retired id the id
        that holds its records now (pipelines.identity)."""
        return self.shareable_dir / PERSON_IDS_IN_PUBLICATION

    @property
    def manifest(self) -> Path:
        return self.shareable_dir / "manifest.json"

    @property
    def reports_dir(self) -> Path:
        return self.shareable_dir / "reports"

    @property
    def linkage_report(self) -> Path:
        return self.reports_dir / "linkage_report.html"

    @property
    def linkage_quality(self) -> Path:
        return self.reports_dir / "linkage_quality.json"

    @property
    def charts_dir(self) -> Path:
        """Charts of the model and of counts, linked from the linkage report."""
        return self.reports_dir / "charts"

    @property
    def data_owner_dir(self) -> Path:
        return self.reports_dir / "quality"

    @property
    def data_owner_index(self) -> Path:
        return self.data_owner_dir / "index.html"

    def data_owner_page(self, source: str, delivery: str) -> Path:
        return self.data_owner_dir / source / f"{delivery}.html"

    # --- secure: per publication ---------------------------------------------------------
    @property
    def exact_manifest(self) -> Path:
        """The manifest with exact counts, for the secure setting; the shareable one has
        them protected (pipelines.disclosure_control)."""
        return self.zone_dir("secure") / "manifest.json"

    @property
    def quarantine_dir(self) -> Path:
        return self.zone_dir("secure") / "quarantine"

    def quarantine_file(self, source: str) -> Path:
        return self.quarantine_dir / f"{source}.parquet"

    @property
    def diagnostics_dir(self) -> Path:
        """Diagnostics that show identifiers: waterfalls, comparison viewer, cluster studio."""
        return self.zone_dir("secure") / "diagnostics"

    @property
    def identity_dir(self) -> Path:
        """The identity store of this build: every record's person ids and the register of
        ids (pipelines.identity.IdentityFiles names the files in it)."""
        return self.zone_dir("secure") / "identity"

    # --- secure: kept across runs --------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.secure_dir / "model"

    @property
    def model_card(self) -> Path:
        return self.model_dir / "model_card.md"

    def model_comparison(self, candidate: int, approved: int) -> Path:
        """What promoting `candidate` would change, against `approved`, on the same data."""
        return self.model_dir / f"comparison_v{candidate:04d}_vs_v{approved:04d}.json"

    @property
    def review_dir(self) -> Path:
        return self.secure_dir / "review"

    def review_sample(self, seed: int) -> Path:
        """Where a clerical review sample goes by default (it holds identifiers)."""
        return self.review_dir / f"sample_seed{seed}.csv"

    @property
    def review_labels(self) -> Path:
        return self.review_dir / "labels.parquet"

    @property
    def validation_dir(self) -> Path:
        """Validation results per delivery, and the Great Expectations project (gx/) whose
        Data Docs show sample values: secure."""
        return self.secure_dir / "validation"

    def validation_result(self, source: str, delivery: str) -> Path:
        return self.validation_dir / source / f"{delivery}.validation.json"

    @property
    def data_docs_index(self) -> Path:
        return (
            self.validation_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        )

    @property
    def work_dir(self) -> Path:
        return self.secure_dir / "work"

    @property
    def stage_dir(self) -> Path:
        return self.work_dir / "stages"

    def stage_record(self, name: str) -> Path:
        return self.stage_dir / f"{name}.json"

    @property
    def withdrawals(self) -> Path:
        """Deliveries withdrawn by their owners (`joinedup delivery withdraw`): no linkage
        takes them, whatever the landing folder holds."""
        return self.secure_dir / "withdrawn_deliveries.json"

    @property
    def person_id_key_file(self) -> Path:
        """The secret person ids are keyed with, when the environment gives none."""
        return self.secure_dir / "person_id.key"

    @property
    def lock_file(self) -> Path:
        """Held by the run writing into this output folder (one at a time)."""
        return self.secure_dir / "run.lock"


# --- the graph's public names ----------------------------------------------------------
#
# The code location (dagster_project) defines these jobs; the CLI runs them by name.

RELINK_JOB = "relink"  # linkage, publication and quality, from accepted deliveries
LINK_DELIVERIES_JOB = "link_deliveries"  # the same, linking only what changed
REVIEW_SAMPLE_JOB = "review_sample"
REVIEW_IMPORT_JOB = "review_import"
TRAIN_JOB = "train_model"  # a candidate model, compared with the approved one
PROMOTE_JOB = "promote_model"  # approve a registered model version
# Steps that take run configuration, by their step (op) names.
LINKAGE_INPUTS_STEP = "linkage__linkage_inputs"  # incremental
MODEL_STEP = "linkage__model"  # model_version, train_if_none_approved
PROMOTE_STEP = "promote_model_version"  # version
EVALUATION_STEP = "published__measured_accuracy"  # ground_truth: a Parquet file
SAMPLE_STEP = "review__clerical_sample"  # n, seed, path
DECISIONS_STEP = "review__clerical_labels"  # path


def ingest_job_name(source: str) -> str:
    """The partitioned job that ingests, checks and standardises a source's deliveries."""
    return f"ingest_{source}"


# --- stage records -----------------------------------------------------------------------
#
# Each step of a run leaves a small JSON record (counts, timings, never row values) that
# later steps and the manifest read. Names: the step, and for per-delivery steps
# "<step>__<delivery suffix>".


class StageNotRun(FileNotFoundError):
    """A step needs the record of one that has not run yet for this output folder."""


def save_record(layout: OutputLayout, name: str, record: dict[str, Any]) -> None:
    path = layout.stage_record(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))


def load_record(layout: OutputLayout, name: str) -> dict[str, Any]:
    path = layout.stage_record(name)
    if not path.exists():
        raise StageNotRun(f"{path}: stage '{name}' has not run yet for this output folder")
    return json.loads(path.read_text())


def forget_record(layout: OutputLayout, name: str) -> None:
    layout.stage_record(name).unlink(missing_ok=True)


def records_of(layout: OutputLayout, step: str) -> list[dict[str, Any]]:
    """Every record of one step (one per delivery for per-delivery steps)."""
    paths = sorted(layout.stage_dir.glob(f"{step}.json")) + sorted(
        layout.stage_dir.glob(f"{step}__*.json")
    )
    return [json.loads(p.read_text()) for p in paths]


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Seconds taken, when it finished (epoch seconds) and the process's peak memory so far,
    for a stage record."""
    figures: dict[str, float] = {}
    start = time.perf_counter()
    yield figures
    figures["seconds"] = round(time.perf_counter() - start, 3)
    figures["finished_at"] = round(time.time(), 3)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

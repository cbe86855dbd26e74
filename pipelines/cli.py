"""The joinedup command line: generate synthetic extracts, run a project, run the demo."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from rich.table import Column, Table

from linkage_models.project import ConfigError, load_project
from pipelines.contract import OutputLayout, ReconciliationError
from pipelines.deliveries import SourceError, withdraw_delivery
from pipelines.engines import error_summary, where_raised
from pipelines.ground_truth import GroundTruth, GroundTruthError, parse_columns
from pipelines.identity import find_person_id
from pipelines.progress import last_run_seconds, step_progress
from pipelines.publication import current_snapshot
from pipelines.publication import snapshots as list_snapshots
from pipelines.run import (
    RunError,
    RunResult,
    promote_model,
    review_import,
    review_sample,
    run_project,
    train_project,
    validate_deliveries,
)
from pipelines.synthetic import generate_extracts, label_from_ground_truth

# No pretty tracebacks: they print local variables, which can hold records.
app = typer.Typer(
    add_completion=False,
    help="Batch linkage of administrative data extracts.",
    pretty_exceptions_enable=False,
)
console = Console()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "examples" / "demo_project.yaml"
STRUCTURAL_ERRORS = (
    GroundTruthError,
    ConfigError,
    SourceError,
    ReconciliationError,
    RunError,
    FileNotFoundError,
    KeyError,
)


class EngineName(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


def _version(value: bool) -> None:
    if value:
        console.print(f"joinedup {version('joinedup')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Batch linkage of administrative data extracts."""


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def generate(
    out: Path = typer.Option(..., help="Folder to write the extracts and ground truth to."),
    people: int = typer.Option(10_000, min=10, help="Number of simulated people."),
    seed: int = typer.Option(42, help="Random seed: the same seed gives the same files."),
) -> None:
    """Write synthetic departmental extracts plus ground_truth.parquet (kept separate)."""
    with console.status(f"Generating extracts for {people:,} people"):
        data = generate_extracts(out, people=people, seed=seed)
    table = Table("source", "file", "rows")
    for name, path in data.files.items():
        table.add_row(name, str(path), f"{data.records[name]:,}")
    console.print(table)
    console.print(f"ground truth (for evaluation only): {data.ground_truth}")


def _quiet_splink() -> None:
    """Splink warns, for each EM session, of the levels that session cannot see, and at
    prediction of parameters no session trained; joinedup deals with both (levels never
    seen score as no evidence, and the model card lists them), so on the console they were
    only noise: a first `make demo` printed dozens. Its errors still show."""
    logging.getLogger("splink").setLevel(logging.ERROR)


def _run_with_progress(
    config: Path, data_dir: Path | None, output_dir: Path | None, **run_options: Any
) -> RunResult:
    _quiet_splink()
    project = load_project(config, data_dir=data_dir, output_dir=output_dir)
    previous = OutputLayout(project.output_dir).published.manifest
    last_run = last_run_seconds(json.loads(previous.read_text()) if previous.exists() else None)
    with step_progress(console, last_run) as progress:

        def on_stage(stage: str) -> None:
            progress.context = stage

        return run_project(project, on_stage=on_stage, **run_options)


def _print_summary(result: RunResult) -> None:
    m = result.manifest
    rec = m["reconciliation"]
    table = Table("source", "rows in", "linked", "quarantined", title="Reconciliation")
    for name, r in rec["by_source"].items():
        table.add_row(
            name, f"{r['rows_in']:,}", f"{r['rows_accepted']:,}", f"{r['rows_quarantined']:,}"
        )
    table.add_row(
        "[bold]all[/]",
        f"{rec['rows_in']:,}",
        f"{rec['rows_linked']:,}",
        f"{rec['rows_quarantined']:,}",
    )
    console.print(table)
    choice = m.get("balanced_threshold_choice")
    links = Table(
        "threshold",
        "match probability",
        "links",
        "persons",
        title="Links",
        caption=f"balanced chosen with model v{m['model']['version']}: {choice['rule']}"
        if choice
        else None,
    )
    for name, counts in m["links"].items():
        links.add_row(
            name, str(m["thresholds"][name]), f"{counts['links']:,}", f"{counts['persons']:,}"
        )
    console.print(links)
    identity = m["identity"]
    since = identity["previous_snapshot"] or "none: first publication"
    churn = Table(
        "threshold",
        "kept",
        "new",
        "split off",
        "retired (merged)",
        "retired (withdrawn)",
        "records moved",
        title=f"Person ids: generation {identity['generation']}, carried from {since}",
    )
    for name, c in identity["churn"].items():
        churn.add_row(
            name,
            f"{c['ids_kept']:,}",
            f"{c['ids_created_for_new_records']:,}",
            f"{c['ids_created_by_splits']:,}",
            f"{c['ids_retired_by_merges']:,}",
            f"{c['ids_retired_withdrawn']:,}",
            f"{c['records_moved']:,} ({c['share_of_previous_records_moved']:.2%})",
        )
    console.print(churn)
    linked = m.get("linkage") or {}
    if linked.get("linked") == "incremental":
        change = linked["incremental"]
        reclustered = m["links"]["balanced"]["records_reclustered"]
        console.print(
            f"linked incrementally from {change['previous_snapshot']}: "
            f"{change['records_new_or_changed']:,} new or changed records scored against "
            f"{change['records_kept']:,}, {change['records_removed_or_changed']:,} taken out; "
            f"{reclustered:,} records reclustered (balanced)"
        )
    if linked.get("incremental_unavailable"):
        console.print(f"linked in full, not incrementally: {linked['incremental_unavailable']}")
    if linked.get("drift_from_incremental"):
        drift = linked["drift_from_incremental"]["by_threshold"]["balanced"]
        console.print(
            "full relink after incremental linkages: balanced clusters agreed on "
            f"{drift['pairwise_agreement']:.4%} of pairs"
        )
    measured = m.get("measured_accuracy") or {}
    columns = ["threshold", "precision est.", "recall est."]
    if measured:
        columns += ["precision meas.", "recall meas."]
    acc = Table(*columns, title="Pairwise precision and recall of the clusters")
    for name, est in m["estimated_error_rates"].items():
        row = [name, f"{est['precision']:.4f}", f"{est['recall']:.4f}"]
        if measured:
            row += [f"{measured[name]['precision']:.4f}", f"{measured[name]['recall']:.4f}"]
        acc.add_row(*row)
    console.print(acc)
    console.print(
        "estimated: from the model's match probabilities, without labels"
        + ("; measured: against ground truth" if measured else ""),
        style="dim",
    )
    out = OutputLayout(result.output_dir).published
    console.print(f"published     : {out.shareable_dir} (shareable; snapshot {out.snapshot})")
    console.print(f"person lookup : {out.person_lookup}")
    console.print(f"events        : {out.events}")
    console.print(f"manifest      : {out.manifest}")
    console.print(f"linkage report: {out.linkage_report}")
    console.print(f"quality       : {out.data_owner_index} (data owners)")
    console.print(f"secure zone   : {out.secure_dir} (never leaves the secure setting)")
    console.print(f"quarantine    : {out.quarantine_dir}")
    console.print(f"diagnostics   : {out.diagnostics_dir} (show identifiers)")
    approved = "approved" if m["model"]["approved"] else "NOT the approved version"
    console.print(
        f"model         : v{m['model']['version']} ({approved}) "
        f"{out.root / m['model']['path']} (card: {out.model_card})"
    )
    console.print(f"person ids    : {out.person_ids} (every id issued, with redirects)")
    console.print(f"data docs     : {out.data_docs_index} (Great Expectations)")
    total = sum(s["seconds"] for s in m["stages"].values())
    console.print(f"finished in {total:.1f}s on {m['engine']}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    out: Path | None = typer.Option(None, help="Output folder (default: output.path in config)."),
    data_dir: Path | None = typer.Option(None, help="Where source paths resolve from."),
    engine: EngineName = typer.Option(
        EngineName.duckdb, help="duckdb (one machine) or spark (JOINEDUP_SPARK_* variables)."
    ),
    model_version: str | None = typer.Option(
        None,
        help="Link with this registered model version (a number or 'latest') instead of the "
        "approved one. Without an approved model, the first run trains and approves one.",
    ),
    ground_truth: Path | None = typer.Option(
        None,
        help="Ground truth (Parquet or CSV: source_dataset, source_record_id, true_person_id): "
        "adds measured precision/recall to the manifest.",
    ),
    truth_columns: str | None = typer.Option(
        None,
        help="The ground truth's own column names, e.g. "
        "'source_dataset=src,source_record_id=rec_id,true_person_id=person'.",
    ),
    incremental: bool = typer.Option(
        False,
        "--incremental",
        help="Link only what changed since the latest publication (new, replaced and "
        "withdrawn deliveries), with its model and thresholds, instead of everything.",
    ),
) -> None:
    """Validate, standardise, link and publish one linkage project."""
    try:
        truth = GroundTruth(ground_truth, parse_columns(truth_columns)) if ground_truth else None
        result = _run_with_progress(
            config,
            data_dir,
            out,
            engine_name=engine.value,
            model_version=model_version,
            ground_truth=truth,
            incremental=incremental,
        )
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    _print_summary(result)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    data_dir: Path | None = typer.Option(None, help="Where source paths resolve from."),
    engine: EngineName = typer.Option(EngineName.duckdb, help="duckdb or spark."),
) -> None:
    """Dry run: check the project file, find every delivery, and check each against its
    source's contract, without touching the project's outputs. Exit 1 if a delivery would
    be rejected, 2 on a structural problem."""
    try:
        project = load_project(config, data_dir=data_dir)
        with console.status("Checking deliveries"):
            checked = validate_deliveries(project, engine.value)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    table = Table("source", "delivery", "rows", "result", "not met", title="Deliveries")
    for c in checked:
        result = "[green]accepted[/]" if c.accepted else "[red]rejected[/]"
        not_met = ", ".join([*c.critical_failures, *(f"{w} (warning)" for w in c.warnings)])
        table.add_row(c.source, c.delivery, f"{c.rows:,}", result, not_met or "—")
    console.print(table)
    rejected = [c for c in checked if not c.accepted]
    console.print(
        f"{project.config_path}: valid; {len(checked)} deliveries, {len(rejected)} rejected"
    )
    if rejected:
        raise typer.Exit(code=1)


@app.command()
def demo(
    people: int = typer.Option(20_000, min=100, help="Number of simulated people."),
    out: Path = typer.Option(Path("out/demo"), help="Output folder."),
    seed: int = typer.Option(42, help="Random seed for the synthetic extracts."),
    engine: EngineName = typer.Option(EngineName.duckdb, help="duckdb or spark."),
) -> None:
    """Generate synthetic extracts, link them, and report accuracy against ground truth."""
    data_dir = out / "data"
    generate(out=data_dir, people=people, seed=seed)
    try:
        result = _run_with_progress(
            DEMO_CONFIG,
            data_dir,
            out,
            engine_name=engine.value,
            ground_truth=data_dir / "ground_truth.parquet",
        )
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    _simulated_review(result, data_dir / "ground_truth.parquet")
    _print_summary(result)


def _simulated_review(result: RunResult, truth: Path) -> None:
    """The demo's clerical review loop, with ground truth standing in for the reviewers."""
    project = load_project(DEMO_CONFIG, data_dir=truth.parent, output_dir=result.output_dir)
    sample_csv = review_sample(project, 600, 42, None)
    sample = pd.read_csv(sample_csv, dtype=str, keep_default_na=False)
    label_from_ground_truth(sample, truth).to_csv(sample_csv, index=False)
    review_import(project, sample_csv)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    out: Path | None = typer.Option(None, help="Output folder (default: output.path in config)."),
    data_dir: Path | None = typer.Option(None, help="Where source paths resolve from."),
    engine: EngineName = typer.Option(EngineName.duckdb, help="duckdb or spark."),
) -> None:
    """Train a candidate model on every accepted delivery and compare it with the approved
    model on the same data. Linkage keeps the approved model until `joinedup promote`."""
    _quiet_splink()
    try:
        project = load_project(config, data_dir=data_dir, output_dir=out)
        with console.status("Training a candidate model"):
            trained = train_project(project, engine_name=engine.value)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    if trained.promoted:
        console.print(
            f"model v{trained.candidate} trained and approved: the project had no approved "
            "model, so it is the one linkage runs with"
        )
        return
    table = Table(
        "threshold",
        "candidate / approved",
        "links gained",
        "links lost",
        "pairwise agreement",
        "clusters unchanged",
        title=f"Candidate v{trained.candidate} against approved v{trained.approved}, same data",
    )
    for name, c in trained.comparison["by_threshold"].items():
        table.add_row(
            name,
            f"{c['threshold']} / {c['approved_threshold']}",
            f"{c['links_gained']:,}",
            f"{c['links_lost']:,}",
            f"{c['pairwise_agreement']:.4f}",
            f"{c['clusters_unchanged']:,} of {c['clusters']:,}",
        )
    console.print(table)
    console.print(
        f"linkage still runs with v{trained.approved}; to switch: "
        f"joinedup promote {config} {trained.candidate}"
    )


@app.command()
def promote(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    version: int = typer.Argument(..., help="The registered model version to approve."),
    out: Path | None = typer.Option(None, help="Output folder (default: output.path in config)."),
) -> None:
    """Approve a registered model version: the next linkage runs with it, and its churn of
    person ids is reported against the previous publication."""
    try:
        project = load_project(config, output_dir=out)
        promote_model(project, version)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    console.print(f"model v{version} approved: the next linkage runs with it")


@app.command("person-id")
def person_id_command(
    person_id: str = typer.Argument(..., help="A person id from any published snapshot."),
    published: Path = typer.Option(
        ..., help="A publication: OUT/shareable/current or a snapshot folder."
    ),
) -> None:
    """Where a person id came from, and the id that holds its records now (a retired id's
    redirects followed to the end), from a publication's register of ids."""
    try:
        entry = find_person_id(published, person_id)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    if entry is None:
        console.print(f"{person_id}: not issued in this project (as of {published})")
        raise typer.Exit(code=1)
    console.print(
        f"{person_id} ({entry['id_column']}): issued in snapshot {entry['created_in_snapshot']}"
    )
    if entry["retired_in_snapshot"] is None:
        console.print("current: it holds its records in this publication")
    elif entry["current_person_id"] is None:
        console.print(
            f"retired in {entry['retired_in_snapshot']} ({entry['retired_reason']}): its "
            "records were withdrawn"
        )
    else:
        console.print(
            f"retired in {entry['retired_in_snapshot']} ({entry['retired_reason']} into "
            f"{entry['redirect_to']}); its records are now under {entry['current_person_id']}"
        )


delivery_app = typer.Typer(help="Deliveries of a project's sources.")
app.add_typer(delivery_app, name="delivery")


@delivery_app.command("withdraw")
def delivery_withdraw_command(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    source: str = typer.Argument(..., help="The source the delivery belongs to."),
    delivery: str = typer.Argument(..., help="The delivery (its file name)."),
    reason: str = typer.Option(..., help="Why it is withdrawn (kept with the withdrawal)."),
    out: Path | None = typer.Option(None, help="Output folder (default: output.path in config)."),
    data_dir: Path | None = typer.Option(None, help="Where source paths resolve from."),
) -> None:
    """Withdraw a delivery its owner retracted or replaced: no later linkage takes it, and
    the next publication holds none of its records (its persons' ids are retired or kept
    by the records that remain, and the churn ledger counts them)."""
    try:
        project = load_project(config, data_dir=data_dir, output_dir=out)
        entry = withdraw_delivery(project, source, delivery, reason)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    console.print(
        f"{source}/{delivery} withdrawn at {entry['withdrawn_at']} ({entry['reason']}); "
        f"run `joinedup run {config}` (or with --incremental) to publish without it"
    )


@app.command()
def snapshots(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    out: Path | None = typer.Option(None, help="Output folder (default: output.path in config)."),
) -> None:
    """Every publication of the project, oldest first: its snapshot id (cite it), linking
    date, model version and person-id generation; `current` marks the latest."""
    try:
        project = load_project(config, output_dir=out)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    layout = OutputLayout(project.output_dir)
    current = current_snapshot(layout)
    table = Table(
        Column("snapshot", overflow="fold"), "linking date", "model", "id generation", "records", ""
    )
    for snapshot in list_snapshots(layout):
        manifest = json.loads(layout.at(snapshot).manifest.read_text())
        identity = manifest.get("identity") or {}
        table.add_row(
            snapshot,
            manifest["linking_snapshot_date"],
            f"v{manifest['model']['version']}",
            str(identity.get("generation", "—")),
            f"{manifest['reconciliation']['rows_linked']:,}",
            "current" if snapshot == current else "",
        )
    console.print(table)
    console.print(f"each under {layout.root / 'shareable' / 'snapshots'}/<snapshot>", style="dim")


review_app = typer.Typer(help="Clerical review of scored pairs (inside the secure setting).")
app.add_typer(review_app, name="review")


@review_app.command("sample")
def review_sample_command(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    n: int = typer.Option(300, min=10, help="About how many pairs to sample."),
    out: Path | None = typer.Option(None, help="CSV to write (default OUT/secure/review/...)."),
    output_dir: Path | None = typer.Option(None, "--project-out", help="The run's output folder."),
    seed: int = typer.Option(42, help="Sampling seed."),
) -> None:
    """Export a stratified sample of scored pairs, with identifiers, for reviewers."""
    try:
        project = load_project(config, output_dir=output_dir)
        target = review_sample(project, n, seed, out)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    sample = pd.read_csv(target, dtype=str, keep_default_na=False)
    console.print(
        f"{len(sample):,} pairs in {sample.stratum.nunique()} match-weight strata "
        f"written to {target}"
    )
    console.print(
        "Fill clerical_match with 1 (same person) or 0 (different); leave blank to "
        "skip; then run `joinedup review import`. The file holds identifiers: keep it "
        "in the secure setting."
    )


@review_app.command("import")
def review_import_command(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    file: Path = typer.Argument(..., help="The reviewed CSV."),
    output_dir: Path | None = typer.Option(None, "--project-out", help="The run's output folder."),
) -> None:
    """Store reviewers' decisions as labels and publish the linkage report with them."""
    try:
        project = load_project(config, output_dir=output_dir)
        review_import(project, file)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    layout = OutputLayout(project.output_dir)
    stored = len(pd.read_parquet(layout.review_labels))
    console.print(
        f"{stored:,} labelled pairs stored in {layout.review_labels}; "
        f"report refreshed: {layout.linkage_report}"
    )


def entry_point() -> None:
    """The `joinedup` command. An error nobody foresaw is reported as its type, where it was
    raised and its message with quoted and date-like values withheld, never as a traceback
    (a library's message or a frame's variables can hold a record)."""
    try:
        app()
    except Exception as exc:
        console.print(
            f"[bold red]unexpected error:[/] {type(exc).__name__}: {error_summary(exc)} "
            f"(at {where_raised(exc)})",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    entry_point()

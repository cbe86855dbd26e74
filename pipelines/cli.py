"""The joinedup command line: generate synthetic extracts, run a project, run the demo."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from linkage_models.project import ConfigError, LoadedProject, load_project
from pipelines import stages
from pipelines.engines import Engine, open_engine
from pipelines.ingest import SourceError
from pipelines.run import RunError, RunResult, run_project
from pipelines.stages import ReconciliationError
from pipelines.synthetic import generate_extracts
from quality.clerical_review import (
    ReviewError,
    label_from_ground_truth,
    labels_path,
    read_decisions,
    read_decisions_frame,
    sample_pairs,
    store_labels,
)

app = typer.Typer(add_completion=False, help="Batch linkage of administrative data extracts.")
console = Console()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "examples" / "demo_project.yaml"
STRUCTURAL_ERRORS = (
    ConfigError,
    SourceError,
    ReconciliationError,
    RunError,
    FileNotFoundError,
    KeyError,
)


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


def _run_with_progress(
    config: Path, data_dir: Path | None, output_dir: Path | None, **run_options: Any
) -> RunResult:
    logging.getLogger("splink").setLevel(logging.WARNING)
    project = load_project(config, data_dir=data_dir, output_dir=output_dir)
    with console.status("Starting") as status:

        def on_stage(stage: str) -> None:
            status.update(f"[bold]{stage}[/]")

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
    links = Table("threshold", "match probability", "links", "persons", title="Links")
    for name, counts in m["links"].items():
        links.add_row(
            name, str(m["thresholds"][name]), f"{counts['links']:,}", f"{counts['persons']:,}"
        )
    console.print(links)
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
    out = result.output_dir
    console.print(f"person lookup : {out / 'linked' / 'person_lookup.parquet'}")
    console.print(f"events        : {out / 'linked' / 'events.parquet'}")
    console.print(f"quarantine    : {out / 'quarantine'}")
    console.print(f"model         : {m['model']['path']} (card: {out / 'model' / 'model_card.md'})")
    console.print(f"manifest      : {result.manifest_path}")
    console.print(f"linkage report: {m['outputs']['linkage_report']}")
    console.print(f"quality       : {out / 'reports' / 'quality' / 'index.html'} (data owners)")
    docs = out / "quality" / "gx" / "uncommitted" / "data_docs" / "local_site"
    console.print(f"data docs     : {docs / 'index.html'} (Great Expectations)")
    total = sum(s["seconds"] for s in m["stages"].values())
    console.print(f"finished in {total:.1f}s on {m['engine']}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    out: Path | None = typer.Option(None, help="Output folder (default: output.path in config)."),
    data_dir: Path | None = typer.Option(None, help="Where source paths resolve from."),
    engine: str = typer.Option(
        "duckdb", help="Execution engine: duckdb (one machine) or spark (JOINEDUP_SPARK_*)."
    ),
    model_version: str | None = typer.Option(
        None, help="Reuse a registered model version (a number or 'latest') instead of training."
    ),
    ground_truth: Path | None = typer.Option(
        None, help="Ground truth parquet: adds measured precision/recall to the manifest."
    ),
) -> None:
    """Validate, standardise, link and publish one linkage project."""
    try:
        result = _run_with_progress(
            config,
            data_dir,
            out,
            engine_name=engine,
            model_version=model_version,
            ground_truth=ground_truth,
        )
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    _print_summary(result)


@app.command()
def demo(
    people: int = typer.Option(20_000, min=100, help="Number of simulated people."),
    out: Path = typer.Option(Path("out/demo"), help="Output folder."),
    seed: int = typer.Option(42, help="Random seed for the synthetic extracts."),
    engine: str = typer.Option("duckdb", help="Execution engine: duckdb or spark."),
) -> None:
    """Generate synthetic extracts, link them, and report accuracy against ground truth."""
    data_dir = out / "data"
    generate(out=data_dir, people=people, seed=seed)
    try:
        result = _run_with_progress(
            DEMO_CONFIG,
            data_dir,
            out,
            engine_name=engine,
            ground_truth=data_dir / "ground_truth.parquet",
        )
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    _simulated_review(result, data_dir / "ground_truth.parquet")
    _print_summary(result)


def _simulated_review(result: RunResult, truth: Path) -> None:
    """The demo's clerical review loop, with ground truth standing in for the reviewers."""
    project = load_project(DEMO_CONFIG, data_dir=truth.parent, output_dir=result.output_dir)
    with _work_engine(project) as engine:
        sample = sample_pairs(engine, 600)
        store_labels(
            read_decisions_frame(label_from_ground_truth(sample, truth)), project.output_dir
        )
        stages.linkage_report(engine, project)


review_app = typer.Typer(help="Clerical review of scored pairs (inside the secure setting).")
app.add_typer(review_app, name="review")


def _work_engine(project: LoadedProject) -> Engine:
    """The engine the project's last linkage ran on (from its manifest)."""
    manifest = project.output_dir / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(
            f"{manifest}: no linkage has run for this project yet (run `joinedup run` first)"
        )
    return open_engine(
        json.loads(manifest.read_text())["engine"],
        project.output_dir / "work",
        memory_limit=project.spec.output.duckdb_memory_limit,
    )


@review_app.command("sample")
def review_sample(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    n: int = typer.Option(300, min=10, help="About how many pairs to sample."),
    out: Path | None = typer.Option(None, help="CSV to write (default OUT/review/...)."),
    output_dir: Path | None = typer.Option(None, "--project-out", help="The run's output folder."),
    seed: int = typer.Option(42, help="Sampling seed."),
) -> None:
    """Export a stratified sample of scored pairs, with identifiers, for reviewers."""
    try:
        project = load_project(config, output_dir=output_dir)
        with _work_engine(project) as engine:
            sample = sample_pairs(engine, n, seed)
    except STRUCTURAL_ERRORS as exc:
        _fail(exc)
    target = out or project.output_dir / "review" / f"sample_seed{seed}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    sample.to_csv(target, index=False)
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
def review_import(
    config: Path = typer.Argument(..., help="Linkage project YAML."),
    file: Path = typer.Argument(..., help="The reviewed CSV."),
    output_dir: Path | None = typer.Option(None, "--project-out", help="The run's output folder."),
) -> None:
    """Store reviewers' decisions as labels and refresh the linkage report."""
    try:
        project = load_project(config, output_dir=output_dir)
        stored = store_labels(read_decisions(file), project.output_dir)
        with _work_engine(project) as engine:
            html, _ = stages.linkage_report(engine, project)
    except (*STRUCTURAL_ERRORS, ReviewError) as exc:
        _fail(exc)
    console.print(
        f"{len(stored):,} labelled pairs stored in "
        f"{labels_path(project.output_dir)}; report refreshed: {html}"
    )


if __name__ == "__main__":  # pragma: no cover
    app()

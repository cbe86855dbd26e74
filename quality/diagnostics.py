"""Match-weight diagnostics for analysts: Splink's own charts and dashboards, saved as
self-contained HTML (JavaScript inlined, works offline) under OUT/reports/diagnostics/.

Charts of the model and of counts carry no identifiers; the waterfall charts, comparison
viewer and cluster studio show record values and are for the secure setting only — the
linkage report links to them and marks them so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import splink.exploratory as exploratory
from splink.blocking_analysis import chart_comparisons_from_blocking_rules

from linkage_models.linkage import PREDICTION_FLOOR, make_linker
from linkage_models.project import LoadedProject
from linkage_models.settings import blocking_rule
from pipelines.engines import Engine
from pipelines.sql import ident
from pipelines.standardise import LINKAGE_COLUMNS

WATERFALL_PAIRS_PER_THRESHOLD = 5
DASHBOARD_CLUSTERS = 10
BLOCKING_SAMPLE_RECORDS = 100_000


def diagnostics_dir(project: LoadedProject) -> Path:
    return project.output_dir / "reports" / "diagnostics"


def _save(chart: Any, path: Path) -> None:
    path.write_text(chart.to_html(inline=True))


def write_diagnostics(
    engine: Engine,
    project: LoadedProject,
    trained_model: dict[str, Any],
    input_tables: dict[str, str],
) -> list[dict[str, Any]]:
    """Write every diagnostic; returns [{title, href (relative to reports/), identifying}]."""
    # Waterfall charts need Splink's intermediate columns, which production scoring skips.
    model = {**trained_model, "retain_intermediate_calculation_columns": True}
    linker = make_linker(engine.splink_api(), input_tables, project.spec.model, model)
    out = diagnostics_dir(project)
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []

    def record(title: str, name: str, identifying: bool = False) -> None:
        written.append({"title": title, "href": f"diagnostics/{name}", "identifying": identifying})

    db_api = linker._db_api
    # Scored again with the intermediate columns the comparison viewer needs (diagnostics
    # only; the published clusters come from the production predictions).
    predictions = linker.inference.predict(threshold_match_probability=PREDICTION_FLOOR)
    frames = [db_api.table_to_splink_dataframe(f"__diag_{s}", t) for s, t in input_tables.items()]
    records = sum(engine.count(t) for t in input_tables.values())

    _save(linker.visualisations.match_weights_chart(), out / "match_weights.html")
    record("Match weights of every comparison level", "match_weights.html")
    _save(linker.visualisations.m_u_parameters_chart(), out / "m_u_parameters.html")
    record("m and u probabilities", "m_u_parameters.html")
    _save(
        linker.visualisations.match_weights_histogram(predictions),
        out / "match_weight_histogram.html",
    )
    record("Histogram of match weights of scored pairs", "match_weight_histogram.html")
    _save(linker.evaluation.unlinkables_chart(), out / "unlinkables.html")
    record("Unlinkable records (too little information to link)", "unlinkables.html")
    # Splink labels each table with its own source_dataset column: the inputs' column of that
    # name is left out (Spark rejects the ambiguity that DuckDB lets pass).
    compared = ", ".join(ident(c) for c in LINKAGE_COLUMNS if c != "source_dataset")
    for source, table in input_tables.items():
        engine.create_table(f"__completeness_{source}", f"SELECT {compared} FROM {table}")
    _save(
        exploratory.completeness_chart(
            [
                db_api.table_to_splink_dataframe(f"__completeness_{s}", f"__completeness_{s}")
                for s in input_tables
            ],
            table_names_for_chart=list(input_tables),
        ),
        out / "completeness.html",
    )
    for source in input_tables:
        engine.drop_table(f"__completeness_{source}")
    record("Completeness of linkage columns by source", "completeness.html")
    _save(
        chart_comparisons_from_blocking_rules(
            frames,
            blocking_rules=[blocking_rule(r) for r in project.spec.model.blocking_rules],
            link_type=project.spec.model.link_type,
            unique_id_column_name="record_id",
            source_dataset_column_name="source_dataset",
            # About 100k records sampled: exact for small data, stable and quick for large.
            record_sample_proportion=min(1.0, BLOCKING_SAMPLE_RECORDS / max(records, 1)),
        ),
        out / "blocking_rule_comparisons.html",
    )
    record("Comparisons generated per blocking rule", "blocking_rule_comparisons.html")

    for name, probability in project.spec.model.thresholds.as_dict().items():
        weight = math.log2(probability / (1 - probability))
        # The scored pairs nearest the threshold, with Splink's intermediate columns.
        keys = "source_dataset_l, record_id_l, source_dataset_r, record_id_r"
        engine.create_table(
            "__waterfall_pairs",
            f"SELECT p.* FROM {predictions.physical_name} p JOIN ("
            f"SELECT {keys}, abs(match_weight - {weight}) AS distance FROM pairs_for_clustering "
            f"ORDER BY distance, record_id_l LIMIT {WATERFALL_PAIRS_PER_THRESHOLD}) n "
            f"USING ({keys})",
        )
        scored = sorted(
            db_api.table_to_splink_dataframe("__waterfall", "__waterfall_pairs").as_record_list(),
            key=lambda r: (abs(r["match_weight"] - weight), str(r["record_id_l"])),
        )
        engine.drop_table("__waterfall_pairs")
        if scored:
            _save(linker.visualisations.waterfall_chart(scored), out / f"waterfall_{name}.html")
            record(
                f"Waterfall charts of pairs near the {name} threshold",
                f"waterfall_{name}.html",
                identifying=True,
            )

    linker.visualisations.comparison_viewer_dashboard(
        predictions, str(out / "comparison_viewer.html"), overwrite=True, num_example_rows=2
    )
    record("Comparison viewer dashboard", "comparison_viewer.html", identifying=True)

    union = " UNION ALL ".join(f"SELECT * FROM {t}" for t in input_tables.values())
    engine.create_table(
        "__diag_clusters",
        f"SELECT c.cluster_id, i.* FROM clusters_balanced c JOIN ({union}) i "
        "USING (source_dataset, record_id)",
    )
    clusters = db_api.table_to_splink_dataframe("__splink__df_clustered", "__diag_clusters")
    linker.visualisations.cluster_studio_dashboard(
        predictions,
        clusters,
        str(out / "cluster_studio.html"),
        sampling_method="by_cluster_size",
        sample_size=DASHBOARD_CLUSTERS,
        overwrite=True,
    )
    record(
        "Cluster studio dashboard (sample of clusters by size)",
        "cluster_studio.html",
        identifying=True,
    )
    return written


def write_label_accuracy(
    engine: Engine,
    project: LoadedProject,
    trained_model: dict[str, Any],
    input_tables: dict[str, str],
    labels_parquet: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splink's truth-space table and precision-recall chart from the clerical labels.

    Counts are over the labelled pairs themselves (unweighted): the stratified sample
    over-represents pairs near the thresholds, so read them as the model's behaviour on
    reviewed pairs; the report's weighted figures are the population estimates.
    """
    linker = make_linker(engine.splink_api(), input_tables, project.spec.model, trained_model)
    engine.register_file("__labels_file", str(labels_parquet), "parquet")
    source = "__labels_file"
    engine.create_table(
        "__labels_for_splink",
        "SELECT source_dataset_l, record_id_l, source_dataset_r, record_id_r, "
        f"CAST(clerical_match AS DOUBLE) AS clerical_match_score FROM {source}",
    )
    labels = linker._db_api.table_to_splink_dataframe("__labels", "__labels_for_splink")
    evaluation = linker.evaluation
    out = diagnostics_dir(project)
    out.mkdir(parents=True, exist_ok=True)
    _save(
        evaluation.accuracy_analysis_from_labels_table(labels, output_type="precision_recall"),
        out / "precision_recall.html",
    )
    table = evaluation.accuracy_analysis_from_labels_table(
        labels, output_type="table", add_metrics=["f1"]
    )
    columns = (
        "truth_threshold",
        "match_probability",
        "tp",
        "fp",
        "tn",
        "fn",
        "precision",
        "recall",
        "f1",
    )
    rows = []
    for name, probability in project.spec.model.thresholds.as_dict().items():
        weight = math.log2(probability / (1 - probability))
        found = engine.fetch(
            f"SELECT {', '.join(columns)} FROM {table.physical_name} "
            f"ORDER BY abs(truth_threshold - {weight}) LIMIT 1"
        )
        if found:
            rows.append({"threshold": name, **dict(zip(columns, found[0], strict=True))})
    engine.execute("DROP TABLE IF EXISTS __labels_for_splink")
    entry = {
        "title": "Precision-recall curve from the clerically reviewed pairs",
        "href": "diagnostics/precision_recall.html",
        "identifying": False,
    }
    return [entry], rows

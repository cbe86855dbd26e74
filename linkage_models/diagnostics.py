"""Match-weight diagnostics for analysts: Splink's own charts and dashboards, saved as
self-contained HTML (JavaScript inlined, works offline).

Charts of the model and of counts carry no identifiers; the waterfall charts, comparison
viewer and cluster studio show record values and are for the secure setting only — the
linkage report links to them and marks them so.

Everything runs through Splink's database API on whichever engine holds the tables; the
few helper queries here are plain SQL that every engine reads alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import splink.exploratory as exploratory
from splink.blocking_analysis import chart_comparisons_from_blocking_rules

from linkage_models.linkage import PREDICTION_FLOOR, make_linker
from linkage_models.project import LinkageProject

WATERFALL_PAIRS_PER_THRESHOLD = 5
COUNTS = ("tp", "fp", "tn", "fn")
DASHBOARD_CLUSTERS = 10
BLOCKING_SAMPLE_RECORDS = 100_000


def _save(chart: Any, path: Path) -> None:
    path.write_text(chart.to_html(inline=True))


def _count(db_api: Any, table: str) -> int:
    return int(db_api.query_sql(f"SELECT count(*) AS n FROM {table}", "pandas").n.iloc[0])


def write_diagnostics(
    db_api: Any,
    project: LinkageProject,
    trained_model: dict[str, Any],
    input_tables: dict[str, str],
    pairs_table: str,
    balanced_clusters_table: str,
    out: Path,
) -> list[dict[str, Any]]:
    """Write every diagnostic into `out`; returns [{title, href, identifying}] with hrefs
    relative to the folder above `out` (where the linkage report sits)."""
    # Waterfall charts need Splink's intermediate columns, which production scoring skips.
    model = {**trained_model, "retain_intermediate_calculation_columns": True}
    linker = make_linker(db_api, input_tables, project, model)
    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []

    def record(title: str, name: str, identifying: bool = False) -> None:
        written.append({"title": title, "href": f"{out.name}/{name}", "identifying": identifying})

    # Scored again with the intermediate columns the comparison viewer needs (diagnostics
    # only; the published clusters come from the production predictions).
    predictions = linker.inference.predict(threshold_match_probability=PREDICTION_FLOOR)
    frames = [db_api.table_to_splink_dataframe(f"__diag_{s}", t) for s, t in input_tables.items()]
    records = sum(_count(db_api, t) for t in input_tables.values())

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
    compared = ", ".join(c for c in project.linkage_columns() if c != "source_dataset")
    completeness = [
        db_api.query_sql(f"SELECT {compared} FROM {table}") for table in input_tables.values()
    ]
    _save(
        exploratory.completeness_chart(completeness, table_names_for_chart=list(input_tables)),
        out / "completeness.html",
    )
    for frame in completeness:
        frame.drop_table_from_database_and_remove_from_cache()
    record("Completeness of linkage columns by source", "completeness.html")
    _save(
        chart_comparisons_from_blocking_rules(
            frames,
            # The rules the model predicts with (after the blocking analysis), in the
            # dialect they were saved in; Splink transpiles them.
            blocking_rules=trained_model["blocking_rules_to_generate_predictions"],
            link_type=project.model.link_type,
            unique_id_column_name="record_id",
            source_dataset_column_name="source_dataset",
            # About 100k records sampled: exact for small data, stable and quick for large.
            record_sample_proportion=min(1.0, BLOCKING_SAMPLE_RECORDS / max(records, 1)),
        ),
        out / "blocking_rule_comparisons.html",
    )
    record("Comparisons generated per blocking rule", "blocking_rule_comparisons.html")

    for name, probability in project.model.thresholds.as_dict().items():
        weight = math.log2(probability / (1 - probability))
        # The scored pairs nearest the threshold, with Splink's intermediate columns.
        keys = "source_dataset_l, record_id_l, source_dataset_r, record_id_r"
        nearest = db_api.query_sql(
            f"SELECT p.* FROM {predictions.physical_name} p JOIN ("
            f"SELECT {keys}, abs(match_weight - {weight}) AS distance FROM {pairs_table} "
            f"ORDER BY distance, record_id_l LIMIT {WATERFALL_PAIRS_PER_THRESHOLD}) n "
            f"USING ({keys})"
        )
        scored = sorted(
            nearest.as_record_list(),
            key=lambda r: (abs(r["match_weight"] - weight), str(r["record_id_l"])),
        )
        nearest.drop_table_from_database_and_remove_from_cache()
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
    clusters = db_api.query_sql(
        f"SELECT c.cluster_id, i.* FROM {balanced_clusters_table} c JOIN ({union}) i "
        "USING (source_dataset, record_id)"
    )
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
    db_api: Any,
    project: LinkageProject,
    trained_model: dict[str, Any],
    input_tables: dict[str, str],
    labels: pd.DataFrame,
    out: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splink's truth-space table and precision-recall chart from the clerical labels.

    Counts are over the labelled pairs themselves (unweighted): the stratified sample
    over-represents pairs near the thresholds, so read them as the model's behaviour on
    reviewed pairs; the report's weighted figures are the population estimates.
    """
    linker = make_linker(db_api, input_tables, project, trained_model)
    frame = labels[["source_dataset_l", "record_id_l", "source_dataset_r", "record_id_r"]].copy()
    frame["clerical_match_score"] = labels["clerical_match"].astype(float)
    labels_table = db_api.register(frame, table_name="__joinedup_labels")
    evaluation = linker.evaluation
    out.mkdir(parents=True, exist_ok=True)
    _save(
        evaluation.accuracy_analysis_from_labels_table(
            labels_table, output_type="precision_recall"
        ),
        out / "precision_recall.html",
    )
    table = evaluation.accuracy_analysis_from_labels_table(
        labels_table, output_type="table", add_metrics=["f1"]
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
    truth_space = table.as_pandas_dataframe()
    rows = []
    for name, probability in project.model.thresholds.as_dict().items():
        weight = math.log2(probability / (1 - probability))
        if len(truth_space):
            nearest = truth_space.iloc[(truth_space.truth_threshold - weight).abs().argmin()]
            rows.append(
                {
                    "threshold": name,
                    **{c: int(nearest[c]) if c in COUNTS else float(nearest[c]) for c in columns},
                }
            )
    entry = {
        "title": "Precision-recall curve from the clerically reviewed pairs",
        "href": f"{out.name}/precision_recall.html",
        "identifying": False,
    }
    return [entry], rows

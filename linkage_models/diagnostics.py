"""Match-weight diagnostics for analysts: Splink's own charts and dashboards, saved as
self-contained HTML (JavaScript inlined, works offline).

Charts of the model and of counts carry no identifiers; the waterfall charts, comparison
viewer and cluster studio show record values and are written to the secure zone only — the
linkage report names where they are and does not link to them.

Everything runs through Splink's database API on whichever engine holds the tables; the
few helper queries here are plain SQL that every engine reads alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import splink.exploratory as exploratory
from splink.blocking_analysis import chart_comparisons_from_blocking_rules

from linkage_models.linkage import PREDICTION_FLOOR, make_linker, tf_columns
from linkage_models.project import LinkageProject

WATERFALL_PAIRS_PER_THRESHOLD = 5
COUNTS = ("tp", "fp", "tn", "fn")
DASHBOARD_CLUSTERS = 10
BLOCKING_SAMPLE_RECORDS = 100_000
# Above about this many records, the pair diagnostics show the pairs of a sample of persons
# holding about this many (score_sampled_persons): at 1M records, scoring every pair again
# took 7.4 of the step's 11-12 s.
PAIRS_SAMPLE_RECORDS = 100_000


def completeness_columns(project: LinkageProject) -> list[str]:
    """The columns whose completeness is charted: those the model compares."""
    return [c for c in project.linkage_columns() if c != "source_dataset"]


def _completeness_shown(
    records: list[dict[str, Any]], count_shown: Callable[[int], int]
) -> list[dict[str, Any]]:
    """Splink's completeness figures with the counts of records as a publication shows them."""
    shown = []
    for record in records:
        total = count_shown(int(record["total_rows_inc_nulls"]))
        missing = count_shown(int(record["total_null_rows"]))
        shown.append(
            {
                **record,
                "total_rows_inc_nulls": total,
                "total_null_rows": missing,
                "completeness": (total - missing) / total if total else 0.0,
            }
        )
    return shown


def _histogram_shown(
    records: list[dict[str, Any]], count_shown: Callable[[int], int]
) -> list[dict[str, Any]]:
    """The match-weight histogram with its counts of pairs as a publication shows counts."""
    return [{**r, "count_rows": count_shown(int(r["count_rows"]))} for r in records]


def _blocking_shown(
    records: list[dict[str, Any]], count_shown: Callable[[int], int], possible: int
) -> list[dict[str, Any]]:
    """The blocking chart with each rule's count of pairs shown as a publication shows
    counts, the running total the sum of those (nothing exact to subtract), and the
    possible pairs counted from the shown numbers of records (`possible`): the exact figure
    gives away the exact number of records."""
    shown, total = [], 0
    for record in sorted(records, key=lambda r: int(r["match_key"])):
        marginal = count_shown(int(round(float(record["marginal_comparison_count"]))))
        total += marginal
        shown.append(
            {
                **record,
                "marginal_comparison_count": marginal,
                "cumulative_comparison_count": total,
                "total_possible_comparison_count": possible,
            }
        )
    return shown


def _unlinkables_shown(
    records: list[dict[str, Any]], count_shown: Callable[[int], int], records_in: int
) -> list[dict[str, Any]]:
    """The unlinkables chart's shares of records from shown counts: each cumulative count
    as a publication shows counts, over the shown number of records (a share of 1 in 36,631
    gave away single records), each step the difference of two shown shares."""
    total = count_shown(records_in)
    shown, before = [], 0.0
    for record in sorted(records, key=lambda r: float(r["match_weight"])):
        below = count_shown(int(round(float(record["cum_prop"]) * records_in)))
        share = below / total if total else 0.0
        shown.append({**record, "prop": share - before, "cum_prop": share})
        before = share
    return shown


def _possible_pairs(link_type: str, records_by_source: list[int]) -> int:
    """Pairs the link type could compare among these numbers of records."""
    everyone = sum(records_by_source)
    across = (everyone * everyone - sum(n * n for n in records_by_source)) // 2
    if link_type == "link_only":
        return across
    if link_type == "dedupe_only":
        return sum(n * (n - 1) // 2 for n in records_by_source)
    return everyone * (everyone - 1) // 2


def _save(chart: Any, path: Path) -> None:
    path.write_text(chart.to_html(inline=True))


def _count(db_api: Any, table: str) -> int:
    return int(db_api.query_sql(f"SELECT count(*) AS n FROM {table}", "pandas").n.iloc[0])


def score_sampled_persons(
    db_api: Any,
    linker: Any,
    trained_model: dict[str, Any],
    sampled: dict[str, str],
    others: dict[str, str],
) -> Any:
    """Every pair above the prediction floor with a record of `sampled` (per source, the
    records of a sample of whole persons; `others`, the rest), scored with the linker's
    settings and the term frequencies of all its records: those between the sample and
    the rest, and those within the sample."""
    for column in tf_columns(trained_model):
        linker.table_management.compute_tf_table(column)

    def frames(role: str, tables: dict[str, str]) -> Any:
        registered = [
            db_api.register(t, table_name=f"__diag_{role}_{s}") for s, t in tables.items()
        ]
        return registered[0] if len(registered) == 1 else registered

    left, right = frames("sampled", sampled), frames("others", others)
    floor = {"threshold_match_probability": PREDICTION_FLOOR}
    parts = [
        linker.inference.predict_between(left, right, **floor),
        linker.inference.predict_within(left, **floor),
    ]
    columns = ", ".join(parts[0].columns_escaped)
    union = db_api.query_sql(
        " UNION ALL ".join(f"SELECT {columns} FROM {part.physical_name}" for part in parts)
    )
    # Splink's dashboards read their pairs under the name its own predict gives them.
    return db_api.table_to_splink_dataframe("__splink__df_predict", union.physical_name)


def write_diagnostics(
    db_api: Any,
    project: LinkageProject,
    trained_model: dict[str, Any],
    input_tables: dict[str, str],
    pairs_table: str,
    balanced_clusters_table: str,
    charts_dir: Path,
    secure_dir: Path,
    secure_dir_as_named: str,
    completeness_tables: dict[str, str],
    count_shown: Callable[[int], int],
    detailed_pairs_table: str | None = None,
    sampled_persons: tuple[dict[str, str], dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Write every diagnostic: charts of the model and of counts into `charts_dir` (beside
    the linkage report, shareable), those that show identifiers into `secure_dir`.
    `completeness_tables`: per source, a view of its `completeness_columns` (read where they
    are, not copied). Splink labels each table with a source_dataset column of its own, so
    the inputs' column of that name is left out (Spark rejects the ambiguity that DuckDB
    lets pass). Its counts of records are shown as `count_shown` gives them (the
    publication's disclosure control), its shares computed from those.
    `detailed_pairs_table`: after an incremental linkage, the pairs it scored (with Splink's
    intermediate columns), which the pair diagnostics show. `sampled_persons`: per source,
    the records of a sample of persons and the other records (made by
    dagster_project.quality.sample_of_persons); the pair diagnostics then show the pairs of
    the sampled records, scored again, not every pair (the histogram still shows every pair).
    Returns [{title, href, where, identifying}]: `href` relative to the report's folder for
    charts; for the others only `where` (their path in the secure zone, under
    `secure_dir_as_named`: how a reader finds `secure_dir` once published), so nothing that
    may leave links to them."""
    # Waterfall charts need Splink's intermediate columns, which production scoring skips.
    model = {**trained_model, "retain_intermediate_calculation_columns": True}
    linker = make_linker(db_api, input_tables, project, model)
    written: list[dict[str, Any]] = []
    for folder in (charts_dir, secure_dir):
        folder.mkdir(parents=True, exist_ok=True)

    def place(title: str, name: str, identifying: bool = False) -> Path:
        folder = secure_dir if identifying else charts_dir
        written.append(
            {
                "title": title,
                "href": None if identifying else f"{charts_dir.name}/{name}",
                "where": f"{secure_dir_as_named}/{name}" if identifying else None,
                "identifying": identifying,
            }
        )
        return folder / name

    # Scored again with the intermediate columns the comparison viewer needs (diagnostics
    # only; the published clusters come from the production predictions). An incremental
    # linkage passes the pairs of its new records, already scored so: its diagnostics are
    # those of what it linked. At scale, the pairs of a sample of persons.
    scope, histogram = "", None
    predictions = None
    if detailed_pairs_table is not None:
        scope = " (pairs of the records this linkage added)"
        if detailed_pairs_table and _count(db_api, detailed_pairs_table):  # "": none added
            predictions = db_api.table_to_splink_dataframe(
                "__splink__df_predict", detailed_pairs_table
            )
            pairs_table = detailed_pairs_table
    elif sampled_persons is not None:
        scope = " (pairs of the records of a sample of persons)"
        histogram = db_api.table_to_splink_dataframe("__splink__df_predict", pairs_table)
        predictions = score_sampled_persons(db_api, linker, model, *sampled_persons)
        pairs_table = predictions.physical_name
    else:
        predictions = linker.inference.predict(threshold_match_probability=PREDICTION_FLOOR)
    frames = [db_api.table_to_splink_dataframe(f"__diag_{s}", t) for s, t in input_tables.items()]
    by_source = [_count(db_api, t) for t in input_tables.values()]
    records = sum(by_source)

    _save(
        linker.visualisations.match_weights_chart(),
        place("Match weights of every comparison level", "match_weights.html"),
    )
    _save(
        linker.visualisations.m_u_parameters_chart(),
        place("m and u probabilities", "m_u_parameters.html"),
    )
    if histogram is not None or predictions is not None:
        chart = linker.visualisations.match_weights_histogram(
            histogram if histogram is not None else predictions
        )
        chart.raw_records = _histogram_shown(chart.raw_records, count_shown)
        title = "Histogram of match weights of scored pairs"
        _save(
            chart,
            place(title + ("" if histogram is not None else scope), "match_weight_histogram.html"),
        )
    unlinkables = linker.evaluation.unlinkables_chart()
    unlinkables.raw_records = _unlinkables_shown(unlinkables.raw_records, count_shown, records)
    _save(
        unlinkables,
        place("Unlinkable records (too little information to link)", "unlinkables.html"),
    )
    completeness = [
        db_api.table_to_splink_dataframe(f"__completeness_{s}", t)
        for s, t in completeness_tables.items()
    ]
    chart = exploratory.completeness_chart(
        completeness, table_names_for_chart=list(completeness_tables)
    )
    chart.raw_records = _completeness_shown(chart.raw_records, count_shown)
    _save(chart, place("Completeness of linkage columns by source", "completeness.html"))
    blocking = chart_comparisons_from_blocking_rules(
        frames,
        # The rules the model predicts with (after the blocking analysis), in the
        # dialect they were saved in; Splink transpiles them.
        blocking_rules=trained_model["blocking_rules_to_generate_predictions"],
        link_type=project.model.link_type,
        unique_id_column_name="record_id",
        source_dataset_column_name="source_dataset",
        # About 100k records sampled: exact for small data, stable and quick for large.
        record_sample_proportion=min(1.0, BLOCKING_SAMPLE_RECORDS / max(records, 1)),
    )
    possible = _possible_pairs(project.model.link_type, [count_shown(n) for n in by_source])
    blocking.raw_records = _blocking_shown(blocking.raw_records, count_shown, possible)
    _save(
        blocking,
        place("Comparisons generated per blocking rule", "blocking_rule_comparisons.html"),
    )

    if predictions is None:  # an incremental linkage that only took records out
        return written
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
            _save(
                linker.visualisations.waterfall_chart(scored),
                place(
                    f"Waterfall charts of pairs near the {name} threshold{scope}",
                    f"waterfall_{name}.html",
                    identifying=True,
                ),
            )

    viewer = place(
        "Comparison viewer dashboard" + scope, "comparison_viewer.html", identifying=True
    )
    linker.visualisations.comparison_viewer_dashboard(
        predictions, str(viewer), overwrite=True, num_example_rows=2
    )

    shown = sampled_persons[0] if sampled_persons is not None else input_tables
    union = " UNION ALL ".join(f"SELECT * FROM {t}" for t in shown.values())
    clustered = f"SELECT c.cluster_id, i.* FROM {balanced_clusters_table} c JOIN ({union}) i "
    if detailed_pairs_table is not None:  # the clusters holding a record of the pairs shown
        ends = " UNION ".join(
            f"SELECT source_dataset_{s} AS source_dataset, record_id_{s} AS record_id "
            f"FROM {detailed_pairs_table}"
            for s in ("l", "r")
        )
        clustered = (
            f"SELECT c.cluster_id, i.* FROM (SELECT * FROM {balanced_clusters_table} "
            f"WHERE cluster_id IN (SELECT cluster_id FROM {balanced_clusters_table} "
            f"JOIN ({ends}) e USING (source_dataset, record_id))) c JOIN ({union}) i "
        )
    clusters = db_api.query_sql(clustered + "USING (source_dataset, record_id)")
    studio = place(
        "Cluster studio dashboard (sample of clusters by size)" + scope,
        "cluster_studio.html",
        identifying=True,
    )
    linker.visualisations.cluster_studio_dashboard(
        predictions,
        clusters,
        str(studio),
        sampling_method="by_cluster_size",
        sample_size=DASHBOARD_CLUSTERS,
        overwrite=True,
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
        "where": None,
        "identifying": False,
    }
    return [entry], rows

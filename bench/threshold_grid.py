"""Benchmark: what a finished run would have given at other thresholds, measured against
ground truth and estimated without it.

joinedup's high-precision and high-recall thresholds are fixed match probabilities (0.999
and 0.9 unless a project says otherwise); its balanced one is chosen with the model from
the estimates (quality.threshold_choice). This reads a finished run's stored pairs,
clusters them again at each threshold of a grid (Splink's clustering, as the cluster step
does), and for each gives the pairwise precision, recall and F1 against the truth beside
the label-free estimates (quality.error_rates, with the caps the estimate step uses). It
answers two questions: at which threshold the data is linked best, and whether the
estimates (and so the choice) would have found it.

Works on a copy of the run's working database; the run is left as it was. The never-blocked
pairs inside persons are those the run listed (at its own thresholds): below its lowest
threshold the estimates count fewer of them than they would.

    .venv/bin/python bench/threshold_grid.py --run OUT --truth truth.csv [--grid 0.9 0.95 ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linkage_models.linkage import PREDICTION_FLOOR  # noqa: E402
from linkage_models.registry import ModelRegistry  # noqa: E402
from pipelines.blocking_reach import BlockingRules, rule_records  # noqa: E402
from pipelines.contract import OutputLayout, Tables  # noqa: E402
from pipelines.engines.duckdb_engine import DuckDBEngine  # noqa: E402
from pipelines.linking import prediction_rules_sql  # noqa: E402
from quality.error_rates import ComparedPairs, estimate_error_rates  # noqa: E402

GRID = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999]
LOOKUP = "__grid_lookup"


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def cluster_at(engine: DuckDBEngine, grid: list[float]) -> dict[str, str]:
    """LOOKUP: the person lookup with one cluster column per threshold (name -> column)."""
    from splink import DuckDBAPI
    from splink.clustering import cluster_pairwise_predictions_at_threshold

    key = "{0} || '-__-' || {1}"
    engine.create_table(
        "__grid_nodes",
        f"SELECT {key.format('source_dataset', 'source_record_id')} AS node_id, "
        f"source_dataset, source_record_id FROM {Tables.PERSON_LOOKUP}",
    )
    engine.create_table(
        "__grid_edges",
        f"SELECT {key.format('source_dataset_l', 'record_id_l')} AS node_l, "
        f"{key.format('source_dataset_r', 'record_id_r')} AS node_r, match_probability "
        f"FROM {Tables.PAIRS_FOR_CLUSTERING}",
    )
    engine.create_table(LOOKUP, f"SELECT * FROM {Tables.PERSON_LOOKUP}")
    api = DuckDBAPI(connection=engine.con)
    nodes = api.table_to_splink_dataframe("__grid_nodes", "__grid_nodes")
    edges = api.table_to_splink_dataframe("__grid_edges", "__grid_edges")
    columns = {}
    for threshold in grid:
        clusters = cluster_pairwise_predictions_at_threshold(
            nodes,
            edges,
            api,
            node_id_column_name="node_id",
            edge_id_column_name_left="node_l",
            edge_id_column_name_right="node_r",
            threshold_match_probability=threshold,
        )
        column = "at_" + f"{threshold}".replace(".", "_")
        engine.execute(f"ALTER TABLE {LOOKUP} ADD COLUMN {column} VARCHAR")
        engine.execute(
            f"UPDATE {LOOKUP} SET {column} = c.cluster_id FROM {clusters.physical_name} c "
            f"WHERE c.node_id = {LOOKUP}.source_dataset || '-__-' || {LOOKUP}.source_record_id"
        )
        columns[str(threshold)] = column
    return columns


def measure(engine: DuckDBEngine, truth: Path, column: str) -> dict[str, float]:
    """Pairwise precision, recall and F1 of one cluster column (every true pair counts)."""
    reader = "read_csv" if truth.suffix.lower() == ".csv" else "read_parquet"
    source = f"{reader}('{truth}'" + (", all_varchar = true)" if reader == "read_csv" else ")")
    pairs = "SELECT sum(n * (n - 1) / 2) FROM (SELECT count(*) AS n FROM {} GROUP BY {}) AS s"
    joined = (
        f"(SELECT l.{column} AS c, CAST(t.true_person_id AS VARCHAR) AS tp FROM {LOOKUP} l "
        f"JOIN {source} t ON t.source_dataset = l.source_dataset "
        "AND CAST(t.source_record_id AS VARCHAR) = l.source_record_id) AS j"
    )
    true_pairs = engine.fetch(pairs.format(source, "true_person_id"))[0][0]
    both = engine.fetch(pairs.format(joined, "c, tp"))[0][0] or 0
    linked = engine.fetch(pairs.format(LOOKUP, column))[0][0] or 0
    precision = both / linked if linked else 1.0
    recall = both / true_pairs
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the run's output folder")
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="csv or parquet: source_dataset, source_record_id, true_person_id",
    )
    parser.add_argument("--grid", type=float, nargs="+", default=GRID)
    args = parser.parse_args()
    layout = OutputLayout(args.run)
    approved = ModelRegistry(layout.model_dir).approved()
    if approved is None:
        raise SystemExit(f"{layout.model_dir}: no approved model")
    trained = json.loads((layout.model_dir / approved.path).read_text())
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "joinedup.duckdb"
        shutil.copy(layout.work_dir / "joinedup.duckdb", copy)
        engine = DuckDBEngine(copy)
        columns = cluster_at(engine, sorted(args.grid))
        inputs = {
            t[len("linkage_input_") :]: t
            for (t,) in engine.fetch(
                "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'linkage_input_%'"
            )
        }
        rules = BlockingRules(
            prediction_rules_sql(trained), inputs, link_only=trained["link_type"] == "link_only"
        )
        with engine.scratch():
            condition = rule_records(engine, "__grid_rule_records", rules)
        estimated = estimate_error_rates(
            engine,
            threshold_columns={c: c for c in columns.values()},
            lookup_table=LOOKUP,
            compared=ComparedPairs("__grid_rule_records", condition, PREDICTION_FLOOR),
        )
        results = {}
        for threshold, column in columns.items():
            e = estimated[column]
            results[threshold] = {
                "measured": measure(engine, args.truth.resolve(), column),
                "estimated": {
                    "precision": e["precision"],
                    "recall": e["recall"],
                    "f1": _f1(e["precision"], e["recall"]),
                },
            }
        engine.close()
    for threshold, r in results.items():
        m, e = r["measured"], r["estimated"]
        print(
            f"{threshold:>6}  measured P {m['precision']:.4f} R {m['recall']:.4f} "
            f"F1 {m['f1']:.4f}  estimated P {e['precision']:.4f} R {e['recall']:.4f} "
            f"F1 {e['f1']:.4f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

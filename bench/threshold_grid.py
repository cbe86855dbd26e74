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

Works on a copy of the run's working database (the run is left as it was), with the code
the model step's choice runs (pipelines.linking.cluster_at_candidates,
quality.threshold_choice), on the run's stored pairs; it prints what that rule would take
from this grid.

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
from linkage_models.project import load_project  # noqa: E402
from linkage_models.registry import ModelRegistry  # noqa: E402
from pipelines import linking  # noqa: E402
from pipelines.blocking_reach import rule_records  # noqa: E402
from pipelines.contract import OutputLayout  # noqa: E402
from pipelines.engines.duckdb_engine import DuckDBEngine  # noqa: E402
from quality.error_rates import ComparedPairs  # noqa: E402
from quality.threshold_choice import choose_balanced_threshold, f1  # noqa: E402

GRID = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999]
LOOKUP = linking.CANDIDATES_LOOKUP


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
    return {"precision": precision, "recall": recall, "f1": f1(precision, recall)}


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
    model = str(layout.model_dir / approved.path)
    manifest = json.loads(layout.published.exact_manifest.read_text())
    project = load_project(manifest["config_path"], output_dir=args.run)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "joinedup.duckdb"
        shutil.copy(layout.work_dir / "joinedup.duckdb", copy)
        engine = DuckDBEngine(copy)
        inputs = {
            t[len("linkage_input_") :]: t
            for (t,) in engine.fetch(
                "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'linkage_input_%'"
            )
        }
        # As the model step's choice does, on the run's stored pairs (not scored again).
        columns = linking.cluster_at_candidates(engine, project, model, inputs, sorted(args.grid))
        rules = linking.blocking_rules(project, model, inputs)
        with engine.scratch():
            compared = ComparedPairs(
                "__grid_rule_records",
                rule_records(engine, "__grid_rule_records", rules),
                PREDICTION_FLOOR,
            )
        choice = choose_balanced_threshold(
            engine,
            project.spec.model.thresholds,
            columns,
            LOOKUP,
            linking.CANDIDATES_NEVER_BLOCKED,
            compared,
        )
        estimated = {c["threshold"]: c for c in choice["candidates"]}
        results = {
            str(t): {
                "measured": measure(engine, args.truth.resolve(), column),
                "estimated": {
                    "precision": estimated[t]["estimated_precision"],
                    "precision_95ci_low": estimated[t]["estimated_precision_95ci_low"],
                    "recall": estimated[t]["estimated_recall"],
                    "f1": estimated[t]["estimated_f1"],
                },
            }
            for column, t in columns.items()
        }
        engine.close()
    for threshold, r in results.items():
        m, e = r["measured"], r["estimated"]
        print(
            f"{threshold:>6}  measured P {m['precision']:.4f} R {m['recall']:.4f} "
            f"F1 {m['f1']:.4f}  estimated P {e['precision']:.4f} R {e['recall']:.4f} "
            f"F1 {e['f1']:.4f}"
        )
    print(f"the rule over this grid: {choice['threshold']} ({choice['rule']})")
    print(json.dumps({"by_threshold": results, "rule_takes": choice["threshold"]}))


if __name__ == "__main__":
    main()

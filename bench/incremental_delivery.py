"""Benchmark: a new delivery linked incrementally, against a full relink of the same data.

The generator's extracts for N people, each source cut at random into a base (linked in
full first, training and approving the model) and a new delivery holding `--share` of its
rows. The new deliveries are then ingested and linked incrementally (`joinedup run
--incremental`), and the same accepted deliveries relinked in full (the Dagster job
`relink`, as the schedule runs it: no delivery ingested again). Reports wall time and the
steps of each, and from the full relink's manifest how far the incremental clusters were
from it (pairwise agreement on the records in both).

    .venv/bin/python bench/incremental_delivery.py --people 700000 --seed 99 --out /tmp/inc
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from delivery_sequence import cut_extracts  # bench/, beside this script

from linkage_models.project import load_project
from pipelines.contract import RELINK_JOB, OutputLayout
from pipelines.run import ProjectGraph, run_project


def base_and_new(people: int, share: float, folder: Path, seed: int) -> Path:
    """The extracts cut into a base and a new delivery per source (`share` of its rows at
    random); the landing folder holds the base."""

    def new_or_base(rng: np.random.Generator, rows: int) -> np.ndarray:
        return np.where(rng.random(rows) < share, "new", "base")

    config = cut_extracts(people, folder, seed, new_or_base)
    for file in (folder / "all").glob("*_base.*"):
        shutil.copy(file, folder / "data" / file.name)
    return config


def steps(manifest: dict) -> dict[str, float]:
    return {name: s["seconds"] for name, s in manifest["stages"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    project = load_project(base_and_new(args.people, args.share, args.out, args.seed))
    layout = OutputLayout(project.output_dir)
    results: dict[str, dict] = {}

    start = time.perf_counter()
    first = run_project(project)
    results["base_full_run"] = {
        "records": first.manifest["reconciliation"]["rows_linked"],
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps(first.manifest),
    }
    print(json.dumps(results), flush=True)

    for file in (args.out / "all").glob("*_new.*"):
        shutil.copy(file, args.out / "data" / file.name)
    start = time.perf_counter()
    added = run_project(project, incremental=True)
    results["incremental"] = {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps(added.manifest),
        "change": added.manifest["linkage"]["incremental"],
        "records_reclustered": {
            t: c["records_reclustered"] for t, c in added.manifest["links"].items()
        },
        "churn_balanced": {
            k: v
            for k, v in added.manifest["identity"]["churn"]["balanced"].items()
            if k != "by_source"
        },
    }
    print(json.dumps(results["incremental"]), flush=True)

    start = time.perf_counter()
    ProjectGraph(project).run_or_raise(RELINK_JOB)
    full = json.loads(layout.published.exact_manifest.read_text())
    results["full_relink"] = {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps(full),
        "drift_from_incremental": full["linkage"]["drift_from_incremental"],
        "records_moved": {t: c["records_moved"] for t, c in full["identity"]["churn"].items()},
    }
    print(json.dumps(results["full_relink"]), flush=True)
    linkage = ("linkage_inputs", "train", "predict", "cluster")
    results["ratio"] = {
        "wall": round(results["incremental"]["seconds"] / results["full_relink"]["seconds"], 3),
        "linkage_steps": round(
            sum(results["incremental"]["steps"].get(s, 0) for s in linkage)
            / sum(results["full_relink"]["steps"].get(s, 0) for s in linkage),
            3,
        ),
    }
    print(json.dumps(results["ratio"]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

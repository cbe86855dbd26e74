"""Benchmark: a new delivery linked incrementally, against a full relink of the same data.

The generator's extracts for N people, each source cut at random into a base (linked in
full first, training and approving the model) and a new delivery holding `--share` of its
rows. The new deliveries are then ingested and linked incrementally (`joinedup run
--incremental`), and the same accepted deliveries relinked in full (the Dagster job
`relink`, as the schedule runs it: no delivery ingested again). Reports wall time and the
steps of each, and from the full relink's manifest how far the incremental clusters were
from it (pairwise agreement on the records in both). Each run is a process of its own, as
`joinedup run` and Dagster's run launcher start them.

    .venv/bin/python bench/incremental_delivery.py --people 700000 --seed 99 --out /tmp/inc
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
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


def base_run(out: Path) -> dict:
    """The base deliveries linked in full (training and approving the model)."""
    project = load_project(out / "project.yaml")
    start = time.perf_counter()
    first = run_project(project)
    return {
        "records": first.manifest["reconciliation"]["rows_linked"],
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps(first.manifest),
    }


def incremental_run(out: Path) -> dict:
    """The new deliveries put in the landing folder and linked incrementally."""
    project = load_project(out / "project.yaml")
    for file in (out / "all").glob("*_new.*"):
        shutil.copy(file, out / "data" / file.name)
    start = time.perf_counter()
    added = run_project(project, incremental=True)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps(added.manifest),
        "change": added.manifest["linkage"]["incremental"],
        "deliveries_combined": added.manifest["linkage"]["deliveries_combined"],
        "records_reclustered": {
            t: c["records_reclustered"] for t, c in added.manifest["links"].items()
        },
        "churn_balanced": {
            k: v
            for k, v in added.manifest["identity"]["churn"]["balanced"].items()
            if k != "by_source"
        },
    }


def full_relink(out: Path) -> dict:
    """The same accepted deliveries relinked in full, as the schedule's `relink` job does."""
    project = load_project(out / "project.yaml")
    start = time.perf_counter()
    ProjectGraph(project).run_or_raise(RELINK_JOB)
    full = json.loads(OutputLayout(project.output_dir).published.exact_manifest.read_text())
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps(full),
        "drift_from_incremental": full["linkage"]["drift_from_incremental"],
        "records_moved": {t: c["records_moved"] for t, c in full["identity"]["churn"].items()},
    }


PHASES = {"base_full_run": base_run, "incremental": incremental_run, "full_relink": full_relink}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # one run, in a process of its own
        print(json.dumps(PHASES[args.phase](args.out)), flush=True)
        return
    shutil.rmtree(args.out, ignore_errors=True)
    base_and_new(args.people, args.share, args.out, args.seed)
    results: dict[str, dict] = {}
    # Each run in a fresh process, as `joinedup run` and Dagster's run launcher start them.
    for phase in PHASES:
        done = subprocess.run(
            [sys.executable, __file__, "--out", str(args.out), "--phase", phase],
            check=True,
            capture_output=True,
            text=True,
        )
        results[phase] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({phase: results[phase]}), flush=True)
    linkage = ("linkage_inputs", "train", "predict", "cluster")
    inc, full = results["incremental"]["steps"], results["full_relink"]["steps"]
    results["ratio"] = {
        "wall": round(results["incremental"]["seconds"] / results["full_relink"]["seconds"], 3),
        "linkage_steps": round(
            sum(inc.get(s, 0) for s in linkage) / sum(full.get(s, 0) for s in linkage), 3
        ),
        "predict_and_cluster": round(
            (inc["predict"] + inc["cluster"]) / (full["predict"] + full["cluster"]), 3
        ),
    }
    print(json.dumps(results["ratio"]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

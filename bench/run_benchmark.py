"""Benchmark: generate synthetic extracts and link them end to end, printing wall time and
peak memory per stage, plus accuracy against ground truth.

    python bench/run_benchmark.py --records 1000000            # DuckDB
    python bench/run_benchmark.py --people 400000 --out out/bench
    python bench/run_benchmark.py --records 1000000 --memory-limit 3GB   # a smaller machine

    JOINEDUP_SPARK_DRIVER_MEMORY=8g python bench/run_benchmark.py --records 1000000 \
        --engine spark --out out/bench-spark                  # local Spark (local[2])

Peak memory is the process's maximum resident set size so far (DuckDB runs in process, so
it is included), read after each stage. Spark's JVM is a separate process: its peak
resident set (VmHWM) is read from /proc at the end and reported as well. Results are also
written to OUT/benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linkage_models.project import LoadedProject, load_project, project_hash  # noqa: E402
from pipelines.run import run_project  # noqa: E402
from pipelines.synthetic import generate_extracts  # noqa: E402

# Measured: the generator yields about 1.5 records per simulated person (1,050,234 for
# 700,000 people, seed 99).
RECORDS_PER_PERSON = 1.5


def jvm_peak_rss_mb() -> float | None:
    """Peak resident memory of this process's Java children (local Spark's driver JVM)."""
    peaks = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        if (
            fields.get("Name", "").strip() == "java"
            and fields.get("PPid", "").strip() in {str(os.getpid())} | _child_pids()
        ):
            peaks.append(int(fields["VmHWM"].split()[0]) / 1024)
    return round(max(peaks), 1) if peaks else None


def _child_pids() -> set[str]:
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return set(children.read_text().split()) if children.exists() else set()


def with_memory_limit(project: LoadedProject, limit: str) -> LoadedProject:
    """The project with another DuckDB memory cap (and the hash of what it now says)."""
    output = project.spec.output.model_copy(update={"duckdb_memory_limit": limit})
    spec = project.spec.model_copy(update={"output": output})
    return project.model_copy(update={"spec": spec, "config_hash": project_hash(spec)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, help="approximate number of records")
    parser.add_argument("--people", type=int, help="number of simulated people")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engine", default="duckdb")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "demo_project.yaml")
    parser.add_argument(
        "--memory-limit",
        help="DuckDB's memory cap for this run (e.g. 3GB), in place of the project's "
        "output.duckdb_memory_limit: the process grows to about this plus 1 GB",
    )
    args = parser.parse_args()
    people = args.people or int((args.records or 1_000_000) / RECORDS_PER_PERSON)

    data_dir = args.out / "data"
    t0 = time.perf_counter()
    generated = generate_extracts(data_dir, people=people, seed=args.seed)
    gen_seconds = time.perf_counter() - t0
    gen_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    records = sum(generated.records.values())
    print(
        f"generate: {records:,} records for {people:,} people in {gen_seconds:.1f}s "
        f"(peak RSS {gen_peak:,.0f} MB)"
    )

    project = load_project(args.config, data_dir=data_dir, output_dir=args.out)
    if args.memory_limit:
        project = with_memory_limit(project, args.memory_limit)
    t1 = time.perf_counter()
    result = run_project(
        project, engine_name=args.engine, ground_truth=data_dir / "ground_truth.parquet"
    )
    total = time.perf_counter() - t1
    m = result.manifest

    print(f"\n{'stage':<12} {'seconds':>9} {'peak RSS MB':>12}")
    for stage, s in m["stages"].items():
        print(f"{stage:<12} {s['seconds']:>9.1f} {s['peak_rss_mb']:>12,.0f}")
    peak = max(s["peak_rss_mb"] for s in m["stages"].values())
    print(f"{'total':<12} {total:>9.1f} {peak:>12,.0f}")
    jvm_peak = jvm_peak_rss_mb() if args.engine == "spark" else None
    if jvm_peak is not None:
        print(f"Spark driver JVM peak RSS: {jvm_peak:,.0f} MB")
    print(
        f"\npairs scored: {m['pairs']['scored']:,}; "
        f"kept >= floor: {m['pairs']['kept_above_floor']:,}"
    )
    for name, a in (m["measured_accuracy"] or {}).items():
        print(
            f"{name:<15} precision {a['precision']:.4f}  recall {a['recall']:.4f}  F1 {a['f1']:.4f}"
        )

    summary = {
        "engine": args.engine,
        "people": people,
        "records": records,
        "generate_seconds": round(gen_seconds, 1),
        "run_seconds": round(total, 1),
        "peak_rss_mb": peak,
        "jvm_peak_rss_mb": jvm_peak,
        "stages": m["stages"],
        "pairs": m["pairs"],
        "links": m["links"],
        "measured_accuracy": m["measured_accuracy"],
        "reconciliation": {
            k: m["reconciliation"][k]
            for k in ("rows_in", "rows_linked", "rows_quarantined", "reconciles")
        },
    }
    (args.out / "benchmark.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

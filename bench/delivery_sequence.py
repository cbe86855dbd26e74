"""Benchmark: person ids across a sequence of monthly deliveries, and the identity step at
scale.

Sequence: the generator's extracts for N people, each source cut into M monthly deliveries
(rows assigned to months at random, so a person's records arrive over time), relinked in
full with the frozen model after each month. After each month it checks, from the
published lookups of consecutive snapshots, that every record whose cluster did not change
kept its person id, and that the churn ledger agrees with a direct comparison; it reports
the ledger and the time of each relink.

Identity at scale: carrying ids forward over R records (clusters of 1-4 records, then 1% of
records moved between clusters and 1% new), on DuckDB, without the rest of a run.

    .venv/bin/python bench/delivery_sequence.py --people 100000 --months 10 --out /tmp/seq
    .venv/bin/python bench/delivery_sequence.py --identity-records 1000000 --out /tmp/ids
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from linkage_models.project import load_project
from pipelines.contract import PERSON_ID_COLUMNS, THRESHOLDS, OutputLayout
from pipelines.engines import DuckDBEngine
from pipelines.identity import IdentityFiles, carry_forward, churn_ledger, write_store
from pipelines.run import run_project
from pipelines.synthetic import generate_extracts

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "examples" / "demo_project.yaml"
KEY = ["source_dataset", "source_record_id"]


def cut_extracts(
    people: int, folder: Path, seed: int, cut: Callable[[np.random.Generator, int], np.ndarray]
) -> Path:
    """The demo project over the generator's extracts, each source's rows cut into files by
    `cut(rng, rows)` (a label per row): `all/<stem>_<label>.<suffix>`. Returns the project
    file; its landing folder (`data/`) starts empty and each source's path matches
    `<stem>_*`, so files put there are its deliveries."""
    data = generate_extracts(folder / "generated", people=people, seed=seed)
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    rng = np.random.default_rng(seed)
    (folder / "all").mkdir(parents=True)
    for s in raw["sources"]:
        path = data.files[s["name"]]
        sep = s.get("csv", {}).get("delimiter", ",")
        frame = (
            pd.read_parquet(path)
            if path.suffix == ".parquet"
            else pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
        )
        labels = cut(rng, len(frame))
        stem, suffix = s["path"].rsplit(".", 1)
        for label in sorted(set(labels)):
            part = frame[labels == label]
            target = folder / "all" / f"{stem}_{label}.{suffix}"
            if suffix == "parquet":
                part.to_parquet(target, index=False)
            else:
                part.to_csv(target, index=False, sep=sep)
        s["path"] = f"{stem}_*.{suffix}"
    raw["data_dir"] = str(folder / "data")
    raw["output"]["path"] = str(folder / "out")
    (folder / "data").mkdir()
    config = folder / "project.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def monthly_deliveries(people: int, months: int, folder: Path, seed: int) -> Path:
    """The extracts cut into monthly files (rows assigned to months at random)."""

    def month_of(rng: np.random.Generator, rows: int) -> np.ndarray:
        return np.array([f"2026-{m:02d}" for m in rng.integers(1, months + 1, rows)])

    return cut_extracts(people, folder, seed, month_of)


def unchanged_cluster_retention(before: pd.DataFrame, after: pd.DataFrame, column: str) -> dict:
    """Records in clusters whose record set did not change, and how many kept their id."""
    sets = {}
    for name, frame in (("before", before), ("after", after)):
        keyed = frame.assign(k=frame.source_dataset + "|" + frame.source_record_id)
        sets[name] = keyed.groupby(column)["k"].agg(frozenset)
    id_before = {m: pid for pid, m in sets["before"].items()}
    id_after = {m: pid for pid, m in sets["after"].items()}
    unchanged = id_before.keys() & id_after.keys()
    records = sum(len(m) for m in unchanged)
    kept = sum(len(m) for m in unchanged if id_before[m] == id_after[m])
    return {"records_in_unchanged_clusters": records, "kept_their_id": kept}


def direct_comparison(before: pd.DataFrame, after: pd.DataFrame, column: str) -> dict:
    joined = before.merge(after, on=KEY, how="outer", suffixes=("_b", "_a"), indicator=True)
    both = joined[joined._merge == "both"]
    return {
        "records_added": int((joined._merge == "right_only").sum()),
        "records_withdrawn": int((joined._merge == "left_only").sum()),
        "records_moved": int((both[f"{column}_b"] != both[f"{column}_a"]).sum()),
        "ids_kept": len(set(before[column]) & set(after[column])),
    }


def run_sequence(args: argparse.Namespace) -> list[dict]:
    folder = args.out
    shutil.rmtree(folder, ignore_errors=True)
    config = monthly_deliveries(args.people, args.months, folder, args.seed)
    project = load_project(config)
    results, previous = [], None
    for month in range(1, args.months + 1):
        for file in (folder / "all").glob(f"*_2026-{month:02d}.*"):
            shutil.copy(file, folder / "data" / file.name)
        start = time.perf_counter()
        result = run_project(project, engine_name=args.engine)
        seconds = time.perf_counter() - start
        layout = OutputLayout(result.output_dir).at(result.snapshot)
        lookup = pd.read_parquet(layout.person_lookup)
        identity = result.manifest["identity"]
        row = {
            "month": month,
            "records": len(lookup),
            "run_seconds": round(seconds, 1),
            "publish_seconds": result.manifest["stages"]["publish"]["seconds"],
            "model_version": result.manifest["model"]["version"],
            "trained": result.manifest["model"]["trained_in_this_run"],
        }
        if previous is not None:
            for t in THRESHOLDS:
                column = PERSON_ID_COLUMNS[t]
                ledger = identity["churn"][t]
                direct = direct_comparison(previous, lookup, column)
                agrees = all(ledger[k] == v for k, v in direct.items())
                retention = unchanged_cluster_retention(previous, lookup, column)
                row[t] = {
                    **{k: ledger[k] for k in ("ids_kept", "ids_created", "ids_retired_by_merges")},
                    **{k: ledger[k] for k in ("records_added", "records_moved")},
                    "share_moved": ledger["share_of_previous_records_moved"],
                    "ledger_agrees_with_lookups": agrees,
                    **retention,
                }
        results.append(row)
        print(json.dumps(row), flush=True)
        previous = lookup
    return results


def identity_at_scale(records: int, folder: Path) -> dict:
    """carry_forward and the ledger over `records` records, twice: first, then after 1% of
    records moved to another cluster and 1% new records arrived."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    engine = DuckDBEngine(folder / "work.duckdb", memory_limit="8GB")
    timings = {}

    def clusters(moved_share: float, new_share: float) -> None:
        extra = int(records * new_share)
        engine.execute(
            f"""CREATE OR REPLACE TABLE base AS
SELECT 'src' || (i % 5) AS source_dataset, 'r' || i AS record_id,
       CASE WHEN hash(i) % 10000 < {int(moved_share * 10000)} THEN 'c' || ((i // 3) + 1)
            ELSE 'c' || (i // 3) END AS cluster_id
FROM range({records + extra}) t(i)"""
        )
        for t in THRESHOLDS:
            engine.execute(f"CREATE OR REPLACE TABLE clusters_{t} AS SELECT * FROM base")

    previous = None
    for label, moved, new in (("first", 0.0, 0.0), ("next", 0.01, 0.01)):
        clusters(moved, new)
        files = IdentityFiles(folder / label)
        start = time.perf_counter()
        generation = carry_forward(
            engine, {t: f"clusters_{t}" for t in THRESHOLDS}, previous, "k", label
        )
        carried = time.perf_counter() - start
        ledger = churn_ledger(engine, generation, label)
        ledgered = time.perf_counter() - start - carried
        write_store(engine, files, {"generation": generation, "snapshot": label})
        written = time.perf_counter() - start - carried - ledgered
        timings[label] = {
            "carry_forward_seconds": round(carried, 2),
            "ledger_seconds": round(ledgered, 2),
            "write_store_seconds": round(written, 2),
            "balanced": {k: v for k, v in ledger["balanced"].items() if k != "by_source"},
        }
        previous = files
        print(json.dumps({label: timings[label]}), flush=True)
    engine.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--engine", default="duckdb")
    parser.add_argument("--identity-records", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.identity_records:
        result = identity_at_scale(args.identity_records, args.out)
    else:
        result = run_sequence(args)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

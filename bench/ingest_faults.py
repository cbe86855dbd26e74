"""Benchmark: what reading a delivery with faults costs, at scale, on DuckDB.

Writes a CSV of N rows in which a share of names is written in other scripts (Polish,
Greek, Cyrillic, Chinese, Arabic) and a few rows are malformed (a missing field, latin-1
bytes), then times ingest (malformed rows kept with their reason) and standardisation
(names transliterated through the table of distinct non-ASCII values) against the same file
without faults.

    .venv/bin/python bench/ingest_faults.py --rows 1000000 --out /tmp/faults
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from linkage_models.project import SourceSpec
from pipelines.deliveries import Delivery
from pipelines.engines import DuckDBEngine
from pipelines.ingest import ingest_delivery
from pipelines.standardise import load_reference_tables, standardise_table

SOURCE = SourceSpec.model_validate(
    {
        "name": "bench",
        "department": "bench",
        "path": "*.csv",
        "format": "csv",
        "record_id": "id",
        "identifiers": {
            "given_name": "forename",
            "family_name": "surname",
            "date_of_birth": {"column": "dob", "formats": ["%Y-%m-%d"]},
            "postcode": "postcode",
        },
    }
)
LATIN = ["Ann", "Bob", "Cyril", "Dora", "Evan", "Fay", "Gus", "Hana", "Ivor", "Jude"]
OTHER = ["Łukasz", "Wałęsa", "Γιώργος", "Παπαδόπουλος", "Иван", "Петров", "小明", "王", "محمد"]


def write_csv(path: Path, rows: int, other_share: float, malformed: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = np.array(LATIN + [f"{o}{i}" for o in OTHER for i in range(2000)], dtype=object)
    latin = np.array(LATIN, dtype=object)

    def names() -> np.ndarray:
        pick_other = rng.random(rows) < other_share
        chosen = latin[rng.integers(0, len(latin), rows)]
        chosen[pick_other] = pool[rng.integers(len(LATIN), len(pool), pick_other.sum())]
        return chosen

    frame = pd.DataFrame(
        {
            "id": np.arange(rows).astype(str),
            "forename": names(),
            "surname": names(),
            "dob": pd.to_datetime(rng.integers(0, 20000, rows), unit="D").strftime("%Y-%m-%d"),
            "postcode": "LS1 4AP",
        }
    )
    frame.to_csv(path, index=False)
    if malformed:
        with path.open("ab") as fh:
            for i in range(malformed):
                fh.write(
                    b"x%d,too,few\n" % i if i % 2 else b"y%d,Br\xe9n,Smith,1980-01-01,LS1\n" % i
                )


def timed(rows: int, path: Path, work: Path) -> dict[str, float]:
    with DuckDBEngine(work / f"{path.stem}.duckdb", memory_limit="8GB") as engine:
        load_reference_tables(engine)
        d = Delivery(SOURCE.name, path.name, str(path))
        started = time.perf_counter()
        ingest_delivery(engine, SOURCE, d.path, d.key, d.raw_table)
        ingested = time.perf_counter()
        standardise_table(engine, SOURCE, d.raw_table, d.standardised_table)
        done = time.perf_counter()
        malformed = engine.fetch(f"SELECT count(*) FROM {d.raw_table} WHERE _malformed IS NOT NULL")
        translit = engine.fetch(f"SELECT count_if(name_transliterated) FROM {d.standardised_table}")
    return {
        "rows": rows,
        "ingest_s": round(ingested - started, 2),
        "standardise_s": round(done - ingested, 2),
        "malformed_rows": int(malformed[0][0]),
        "rows_transliterated": int(translit[0][0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/joinedup_ingest_faults"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clean, faulty = args.out / "clean.csv", args.out / "faulty.csv"
    write_csv(clean, args.rows, 0.0, 0, seed=1)
    write_csv(faulty, args.rows, 0.2, 1000, seed=1)
    for label, path in (
        ("clean, ASCII names", clean),
        ("20% other scripts, 1000 malformed", faulty),
    ):
        print(label, timed(args.rows, path, args.out))


if __name__ == "__main__":
    main()

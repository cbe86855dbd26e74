"""Persistent person ids on both engines: clusters of successive linkages carried forward
through merges, splits, withdrawals and redirects, by the documented rules."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.contract import THRESHOLDS
from pipelines.engines import Engine
from pipelines.identity import (
    ASSIGNMENTS,
    REGISTER,
    IdentityFiles,
    carry_forward,
    churn_ledger,
    write_store,
)

KEY = "test-secret"


@dataclass
class Generation:
    files: IdentityFiles
    ids: dict[str, str]  # record key ("src|rec") -> balanced person id
    register: pd.DataFrame  # balanced threshold's register, by person id
    ledger: dict[str, Any]  # balanced threshold's ledger
    recomputed: str  # whose ids were recomputed: "every record" or "reclustered records"


def link(
    engine: Engine,
    folder: Path,
    number: int,
    clusters: list[list[str]],
    previous: Generation | None,
    key: str = KEY,
    changed: list[str] | None = None,
) -> Generation:
    """One linkage whose clusters (lists of "src|rec" keys) are the same at every threshold,
    carried forward from `previous`; `changed`: the records an incremental linkage
    reclustered or removed (only their ids are recomputed)."""
    rows = [
        {"source_dataset": k.split("|")[0], "record_id": k.split("|")[1], "cluster_id": f"c{i}"}
        for i, members in enumerate(clusters)
        for k in members
    ]
    for t in THRESHOLDS:
        engine.load_frame(f"clusters_{t}", pd.DataFrame(rows))
    files = IdentityFiles(folder / f"generation{number}")
    snapshot = f"snapshot{number}"
    if changed is not None:
        engine.load_frame(
            "changed_records",
            pd.DataFrame([k.split("|") for k in changed], columns=["source_dataset", "record_id"]),
        )
    carried = carry_forward(
        engine,
        {t: f"clusters_{t}" for t in THRESHOLDS},
        previous.files if previous else None,
        key,
        snapshot,
        "changed_records" if changed is not None else None,
    )
    ledger = churn_ledger(engine, carried, snapshot)
    write_store(engine, files, {"generation": carried.generation, "snapshot": snapshot})
    assigned = engine.fetch(
        f"SELECT source_dataset || '|' || record_id, person_id FROM {ASSIGNMENTS} "
        "WHERE threshold = 'balanced'"
    )
    register = engine.fetch_df(f"SELECT * FROM {REGISTER} WHERE threshold = 'balanced'")
    return Generation(
        files,
        dict(assigned),
        register.set_index("person_id").sort_index(),
        ledger["balanced"],
        carried.recomputed,
    )


def new_id(threshold: str, generation: int, cluster_key: str, key: str = KEY) -> str:
    """The documented formula for a new id."""
    text = f"{key}:{threshold}:{generation}:{cluster_key}"
    return "P" + hashlib.sha256(text.encode()).hexdigest()[:16]


FIRST = [["a|1", "a|2"], ["b|1"], ["c|1", "c|2", "c|3"], ["d|1"]]
# A and B merge; C splits (c|3 leaves); D's only record is withdrawn; e|1 is new.
SECOND = [["a|1", "a|2", "b|1"], ["c|1", "c|2"], ["c|3"], ["e|1"]]
# The merged A+B and the larger part of C merge in turn.
THIRD = [["a|1", "a|2", "b|1", "c|1", "c|2"], ["c|3"], ["e|1"]]


def test_first_linkage_issues_keyed_ids_by_the_documented_formula(
    any_engine: Engine, tmp_path: Path
) -> None:
    first = link(any_engine, tmp_path, 1, FIRST, None)
    assert first.ids["a|2"] == first.ids["a|1"] == new_id("balanced", 1, "a|1")
    assert first.ids["c|3"] == new_id("balanced", 1, "c|1")
    assert len(set(first.ids.values())) == 4
    assert set(first.register.origin) == {"first"}
    assert first.ledger["ids_created"] == 4 and first.ledger["records_added"] == 7
    # Each threshold has its own ids, and without the secret they are different ids.
    thresholds = any_engine.fetch(f"SELECT count(DISTINCT person_id) FROM {ASSIGNMENTS}")
    assert thresholds[0][0] == 12
    other = link(any_engine, tmp_path / "other", 1, FIRST, None, key="another-secret")
    assert not set(other.ids.values()) & set(first.ids.values())


def test_merge_split_withdrawal_and_new_records(any_engine: Engine, tmp_path: Path) -> None:
    first = link(any_engine, tmp_path, 1, FIRST, None)
    second = link(any_engine, tmp_path, 2, SECOND, first)
    a, b, c, d = (first.ids[k] for k in ("a|1", "b|1", "c|1", "d|1"))
    # The merge: the person with more records there keeps the id; the other is redirected.
    assert second.ids["a|1"] == second.ids["b|1"] == a
    assert second.register.loc[
        b, ["retired_reason", "redirect_to", "current_person_id"]
    ].tolist() == [
        "merged",
        a,
        a,
    ]
    # The split: the larger part keeps the id, the rest gets a new one.
    assert second.ids["c|1"] == second.ids["c|2"] == c
    split_off = second.ids["c|3"]
    assert split_off not in first.ids.values()
    assert second.register.loc[split_off, "origin"] == "split"
    # Withdrawn: retired with nowhere to go.
    assert second.register.loc[d, "retired_reason"] == "withdrawn"
    assert pd.isna(second.register.loc[d, "current_person_id"])
    # A new record alone: a new id, by the formula, in this generation.
    assert second.ids["e|1"] == new_id("balanced", 2, "e|1")
    assert second.register.loc[second.ids["e|1"], "origin"] == "new"
    assert {
        k: second.ledger[k]
        for k in (
            "ids_kept",
            "ids_created_for_new_records",
            "ids_created_by_splits",
            "merges",
            "ids_retired_by_merges",
            "persons_split",
            "ids_retired_withdrawn",
            "records_added",
            "records_kept",
            "records_moved",
            "records_withdrawn",
        )
    } == {
        "ids_kept": 2,
        "ids_created_for_new_records": 1,
        "ids_created_by_splits": 1,
        "merges": 1,
        "ids_retired_by_merges": 1,
        "persons_split": 1,
        "ids_retired_withdrawn": 1,
        "records_added": 1,
        "records_kept": 4,
        "records_moved": 2,
        "records_withdrawn": 1,
    }
    assert second.ledger["share_of_previous_records_moved"] == pytest.approx(2 / 6, abs=1e-6)
    assert second.ledger["by_source"]["d"]["records_withdrawn"] == 1


def test_redirects_are_followed_to_the_id_that_holds_the_records_now(
    any_engine: Engine, tmp_path: Path
) -> None:
    first = link(any_engine, tmp_path, 1, FIRST, None)
    second = link(any_engine, tmp_path, 2, SECOND, first)
    third = link(any_engine, tmp_path, 3, THIRD, second)
    a, b, c = (first.ids[k] for k in ("a|1", "b|1", "c|1"))
    assert third.ids["c|1"] == a  # 3 records of A against 2 of C: A survives
    assert third.register.loc[c, ["retired_reason", "redirect_to"]].tolist() == ["merged", a]
    # B was retired earlier into A; it still leads to A, and keeps its own history.
    assert third.register.loc[b, "retired_snapshot"] == "snapshot2"
    assert third.register.loc[b, "current_person_id"] == a
    # Unchanged clusters keep their ids; every id ever issued is still in the register.
    assert third.ids["c|3"] == second.ids["c|3"] and third.ids["e|1"] == second.ids["e|1"]
    assert set(first.ids.values()) | set(second.ids.values()) <= set(third.register.index)
    # A merge of two ids of the same age and size: the smaller id survives.
    fourth = link(any_engine, tmp_path, 4, [THIRD[0], ["c|3", "e|1"]], third)
    pair = sorted([third.ids["c|3"], third.ids["e|1"]])
    assert fourth.ids["c|3"] == fourth.ids["e|1"] == pair[0]
    assert fourth.register.loc[pair[1], "current_person_id"] == pair[0]


def test_the_same_sequence_gives_the_same_ids_and_the_ledger_matches_the_lookups(
    any_engine: Engine, tmp_path: Path
) -> None:
    runs = []
    for attempt in ("one", "two"):
        previous = None
        sequence = []
        for number, clusters in enumerate((FIRST, SECOND, THIRD), start=1):
            previous = link(any_engine, tmp_path / attempt, number, clusters, previous)
            sequence.append(previous)
        runs.append(sequence)
    assert [g.ids for g in runs[0]] == [g.ids for g in runs[1]]
    for before, after in zip(runs[0], runs[0][1:], strict=False):
        common = before.ids.keys() & after.ids.keys()
        assert after.ledger["records_added"] == len(after.ids.keys() - before.ids.keys())
        assert after.ledger["records_withdrawn"] == len(before.ids.keys() - after.ids.keys())
        assert after.ledger["records_moved"] == sum(before.ids[k] != after.ids[k] for k in common)
        assert after.ledger["ids_kept"] == len(set(before.ids.values()) & set(after.ids.values()))


def changed_between(before: list[list[str]], after: list[list[str]]) -> list[str]:
    """What an incremental linkage would hand the identity step: the records of every
    cluster that is not exactly a previous one, and of every previous cluster gone."""
    old, new = {frozenset(c) for c in before}, {frozenset(c) for c in after}
    return sorted(set().union(*(old ^ new)))


# Ten clusters nobody touches, beside the merge, split, withdrawal and new record of SECOND.
UNTOUCHED = [[f"u|{i}", f"v|{i}"] for i in range(10)]


def test_recomputing_only_the_reclustered_records_gives_the_ids_of_recomputing_all(
    any_engine: Engine, tmp_path: Path
) -> None:
    """After an incremental linkage only the records it reclustered or removed are worked
    out again; ids, register and ledger are those of working out every record."""
    steps = (FIRST + UNTOUCHED, SECOND + UNTOUCHED, THIRD + UNTOUCHED)
    full, only = None, None
    for number, clusters in enumerate(steps, start=1):
        changed = changed_between(steps[number - 2], clusters) if number > 1 else None
        full = link(any_engine, tmp_path / "all", number, clusters, full)
        only = link(any_engine, tmp_path / "only", number, clusters, only, changed=changed)
        assert only.recomputed == ("reclustered records" if changed else "every record")
        assert only.ids == full.ids
        pd.testing.assert_frame_equal(only.register, full.register)
        assert only.ledger == full.ledger
    # THIRD: A and C merge (A survives), c|3 and e|1 stay; the ten untouched are kept.
    assert full.ledger["ids_kept"] == 10 + 3 and full.ledger["records_kept"] == 20 + 5
    assert full.ledger["records_moved"] == 2


def test_records_that_do_not_hold_whole_clusters_make_every_id_recomputed(
    any_engine: Engine, tmp_path: Path
) -> None:
    """Given changed records that split a cluster or a previous person (a linkage that
    reclustered more than it said), the identity step recomputes every record instead."""
    first = link(any_engine, tmp_path / "a", 1, FIRST + UNTOUCHED, None)
    right = link(any_engine, tmp_path / "a", 2, SECOND + UNTOUCHED, first)
    for partial in (["a|1", "b|1"], ["c|3"]):  # half of A+B; a part of previous C
        first = link(any_engine, tmp_path / "b", 1, FIRST + UNTOUCHED, None)
        second = link(any_engine, tmp_path / "b", 2, SECOND + UNTOUCHED, first, changed=partial)
        assert second.recomputed == "every record"
        assert second.ids == right.ids and second.ledger == right.ledger

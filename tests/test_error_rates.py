"""The label-free error-rate estimator on a hand-made cluster, where the answer is known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.blocking_reach import BlockingRules, pairs_never_blocked_in_persons, rule_records
from pipelines.contract import LARGEST_PERSON_PAIRED
from pipelines.engines import Engine
from pipelines.engines.duckdb_engine import DuckDBEngine
from pipelines.linking import implied_rules_recall
from quality.error_rates import ComparedPairs, estimate_error_rates


def _engine(tmp_path: Path, pairs: str, people: str) -> DuckDBEngine:
    """A database with scored pairs (rows of record, record, p) as table `scored` and a
    lookup (rows of record, person) as table `lookup`, all in one source."""
    engine = DuckDBEngine(tmp_path / "estimates.duckdb")
    engine.create_table(
        "scored",
        f"""SELECT 's' AS source_dataset_l, l AS record_id_l, 's' AS source_dataset_r,
                   r AS record_id_r, p AS match_probability
            FROM (VALUES {pairs}) AS t(l, r, p)""",
    )
    engine.create_table(
        "lookup",
        f"""SELECT 's' AS source_dataset, id AS source_record_id, person AS person_id
            FROM (VALUES {people}) AS t(id, person)""",
    )
    return engine


def _balanced(engine: DuckDBEngine, compared: ComparedPairs | None = None) -> dict:
    """The balanced estimates of _engine's pairs and lookup."""
    return estimate_error_rates(
        engine,
        threshold_columns={"balanced": "person_id"},
        pairs_table="scored",
        lookup_table="lookup",
        below_floor_table=None,
        compared=compared,
    )["balanced"]


def _estimate(tmp_path: Path, pairs: str, people: str) -> dict:
    """The balanced estimates for scored pairs and a lookup (_engine)."""
    return _balanced(_engine(tmp_path, pairs, people))


def test_a_pair_in_a_cluster_counts_the_path_that_put_it_there(tmp_path: Path) -> None:
    """Records a, b, c form one cluster through two strong links; a and c compared alone
    look unlike (0.2), yet if both links are true they are one person. d joined the cluster
    without ever being compared with a: nothing says that pair is one person."""
    estimates = _estimate(
        tmp_path,
        "('a', 'b', 0.99), ('b', 'c', 0.98), ('a', 'c', 0.2), ('c', 'd', 0.995), ('b', 'd', 0.5)",
        "('a', 'p1'), ('b', 'p1'), ('c', 'p1'), ('d', 'p1')",
    )
    # a-b, b-c, c-d as scored; a-c through b (0.99 * 0.98); b-d through c (0.98 * 0.995);
    # a-d never scored.
    expected = 0.99 + 0.98 + 0.99 * 0.98 + 0.995 + 0.98 * 0.995
    assert estimates["pairs_within_clusters"] == 6
    assert estimates["within_cluster_pairs_not_scored"] == 1
    assert estimates["precision"] == pytest.approx(expected / 6, abs=1e-6)
    # Every scored pair is in the cluster: nothing is expected to be missed.
    assert estimates["recall"] == pytest.approx(1.0)


def test_a_pair_across_clusters_is_capped_by_what_its_clustermates_say(tmp_path: Path) -> None:
    """a and b agree on a coincidence (0.5), but a is one person with a2 (0.99) and b
    scored 0.02 against a2: at most 0.02 + 0.01 of a-b is a missed match. c and d (0.4)
    have no such check: c's clustermate c2 was never compared with d."""
    estimates = _estimate(
        tmp_path,
        "('a', 'a2', 0.99), ('a', 'b', 0.5), ('a2', 'b', 0.02),"
        " ('c', 'c2', 0.995), ('c', 'd', 0.4)",
        "('a', 'p1'), ('a2', 'p1'), ('b', 'p2'), ('c', 'p3'), ('c2', 'p3'), ('d', 'p4')",
    )
    # Missed: a-b capped at 0.02 + 1 - 0.99; a2-b (0.02) is below its own caps; c-d as scored.
    missed = (0.02 + 1 - 0.99) + 0.02 + 0.4
    assert estimates["expected_missed_pairs"] == pytest.approx(missed, abs=0.05)
    assert estimates["recall"] == pytest.approx((0.99 + 0.995) / (0.99 + 0.995 + missed), abs=1e-6)


RULES = ['l."given_name" = r."given_name"', "l.date_of_birth = r.date_of_birth"]


def _load_cluster_of_four(any_engine: Engine) -> None:
    """Records a-b-c-d, one person through three scored links (a-b, b-c, c-d); the
    blocking check expects 3 matches were never blocked."""
    records = pd.DataFrame(
        {
            "source_dataset": "s",
            "record_id": ["a", "b", "c", "d"],
            "given_name": ["g1", "g1", "g2", "g2"],
            "date_of_birth": ["d1", "d1", "d1", "d2"],
        }
    )
    any_engine.load_frame("input_s", records)
    any_engine.load_frame(
        "scored",
        pd.DataFrame(
            {
                "source_dataset_l": "s",
                "record_id_l": ["a", "b", "c"],
                "source_dataset_r": "s",
                "record_id_r": ["b", "c", "d"],
                "match_probability": [0.99, 0.98, 0.995],
            }
        ),
    )
    any_engine.load_frame(
        "lookup",
        pd.DataFrame({"source_dataset": "s", "source_record_id": list("abcd"), "person_id": "p1"}),
    )
    any_engine.create_table("not_blocked", "SELECT CAST(3.0 AS DOUBLE) AS expected_matches")


def _never_blocked_and_estimate(
    any_engine: Engine, link_only: bool = False, largest_person: int = LARGEST_PERSON_PAIRED
) -> tuple[int, dict]:
    """The never-blocked pairs inside a-b-c-d's person, then the balanced estimate."""
    never_blocked = pairs_never_blocked_in_persons(
        any_engine,
        BlockingRules(RULES, {"s": "input_s"}, link_only=link_only),
        ["person_id"],
        lookup_table="lookup",
        pairs_table="scored",
        out="never_blocked",
        largest_person=largest_person,
    )
    estimates = estimate_error_rates(
        any_engine,
        threshold_columns={"balanced": "person_id"},
        pairs_table="scored",
        lookup_table="lookup",
        below_floor_table=None,
        not_blocked_table="not_blocked",
        never_blocked_pairs_table="never_blocked",
        largest_person=largest_person,
    )["balanced"]
    return never_blocked, estimates


@pytest.mark.parametrize("link_only", [False, True])
def test_matches_no_rule_blocked_are_found_in_clusters_or_missed(
    any_engine: Engine, link_only: bool
) -> None:
    """One cluster a-b-c-d through three scored links. Rules block on the same given name
    or the same date of birth: a-c was blocked (same birth date) yet not kept, so it scored
    below the floor and its own evidence is against; b-d and a-d share neither, so no rule
    ever compared them. The blocking check expects 3 matches were never blocked: b-d,
    through c (0.98 * 0.995), is about one of them found; the rest are missed. Under
    link_only (a project that declares each source free of duplicates) pairs of one source
    are never compared at all, so none of them counts as found."""
    _load_cluster_of_four(any_engine)
    never_blocked, estimates = _never_blocked_and_estimate(any_engine, link_only=link_only)
    assert never_blocked == (0 if link_only else 2)
    found = 0.0 if link_only else 0.98 * 0.995
    expected_tp = 0.99 + 0.98 + 0.995 + found
    assert estimates["within_cluster_pairs_not_scored"] == 3
    assert estimates["within_cluster_pairs_never_blocked"] == (0 if link_only else 2)
    assert estimates["precision"] == pytest.approx(expected_tp / 6, abs=1e-6)
    assert estimates["expected_missed_not_blocked"] == pytest.approx(3.0 - found, abs=0.05)
    assert estimates["recall"] == pytest.approx(expected_tp / (expected_tp + 3.0 - found), abs=1e-6)


def test_the_prior_rules_recall_the_scores_imply_is_reported(tmp_path: Path) -> None:
    """The prior rests on a declared recall of its deterministic rules; the scored pairs say
    what share of the matches they hold those rules accept, so a wrong declaration shows."""
    engine = DuckDBEngine(tmp_path / "rules.duckdb")
    engine.create_table(
        "scored",
        """SELECT * FROM (VALUES
               ('ann', 'lee', 'ann', 'lee', 0.99),   -- accepted by the name rule
               ('ann', 'lee', 'lee', 'ann', 0.9),    -- accepted by the swapped-names rule
               ('ann', 'lee', 'anne', 'lee', 0.6),   -- a match no rule accepts
               ('bob', NULL, 'bob', NULL, 0.5))      -- a missing name accepts nothing
           AS t(given_name_l, family_name_l, given_name_r, family_name_r, match_probability)""",
    )
    rules = [
        ["given_name", "family_name"],
        "l.given_name = r.family_name AND l.family_name = r.given_name",
    ]
    assert implied_rules_recall(engine, rules, "scored") == pytest.approx(1.89 / 2.99, abs=1e-4)
    # A rule reading a column the pairs do not carry cannot be checked: no figure.
    assert implied_rules_recall(engine, [["date_of_birth"]], "scored") is None


def test_a_person_too_large_to_pair_is_counted_not_listed(any_engine: Engine) -> None:
    """With persons of more than 3 records not paired, a-b-c-d's pairs are not listed: no
    path counts its unscored pairs as one person and none of the never-blocked matches is
    found in it; the estimate says so."""
    _load_cluster_of_four(any_engine)
    never_blocked, estimates = _never_blocked_and_estimate(any_engine, largest_person=3)
    assert never_blocked == 0
    scored = 0.99 + 0.98 + 0.995
    assert estimates["persons_too_large_to_pair"] == 1
    assert estimates["pairs_within_clusters"] == 6
    assert estimates["precision"] == pytest.approx(scored / 6, abs=1e-6)
    assert estimates["expected_missed_not_blocked"] == pytest.approx(3.0)
    assert estimates["recall"] == pytest.approx(scored / (scored + 3.0), abs=1e-6)


def test_the_stale_table_of_a_former_version_is_dropped(tmp_path: Path) -> None:
    """A working database from before the kept pairs were named per threshold holds the
    balanced ones under their old name, never updated again: the estimate drops them."""
    engine = _engine(tmp_path, "('a', 'b', 0.99)", "('a', 'p'), ('b', 'p')")
    engine.create_table("balanced_expected_pairs", "SELECT 'a' AS a, 'b' AS b, 0.9 AS q")
    _balanced(engine)
    assert not engine.table_exists("balanced_expected_pairs")
    assert engine.table_exists("expected_pairs_balanced")


@pytest.mark.parametrize(("key_of_b", "missed"), [("y", 0.11), ("z", 0.6)])
def test_a_clustermate_compared_and_scored_below_the_floor_caps_a_cross_pair(
    tmp_path: Path, key_of_b: str, missed: float
) -> None:
    """a and l are one person (0.9); b, another, scored 0.6 against a. The rules compare
    records with the same key: l and b, when they share one, were compared and not stored,
    so scored below the floor (0.01). Then if a and b were one person, l would be too,
    which its own comparison all but rules out: the pair is capped at 0.01 + 1 - 0.9. If
    the rules never compared l and b, nothing caps it."""
    engine = _engine(
        tmp_path, "('a', 'l', 0.9), ('a', 'b', 0.6)", "('a', 'p1'), ('l', 'p1'), ('b', 'p2')"
    )
    engine.create_table(
        "records",
        f"""SELECT 's' AS source_dataset, id AS record_id, k
            FROM (VALUES ('a', 'x'), ('l', 'y'), ('b', '{key_of_b}')) AS t(id, k)""",
    )
    rules = BlockingRules(["l.k = r.k"], {"s": "records"})
    condition = rule_records(engine, "rule_records", rules)
    estimates = _balanced(engine, ComparedPairs("rule_records", condition, 0.01))
    assert estimates["recall"] == pytest.approx(0.9 / (0.9 + missed), abs=1e-6)

"""How many true matches the blocking rules never brought together, by the model's account.

A match no rule blocks is never scored, so the pairs' probabilities cannot say how many
there are; and the prior is built from those same scores, so comparing it with them says
nothing either (it read 1.0 on pseudopeople with its noise raised, where 7.6% of the true
pairs were never blocked). Instead, per pair of sources:

- for each identifier the rules read (given name with its sound code, date of birth with
  its year, postcode with its district, an address's house, number and street...), how its
  columns agree among matches: the scored pairs weighted by their match probability, taken
  from pairs that a rule reading none of that identifier's columns blocked (so blocking did
  not force the agreement), where both records hold the identifier;
- how often each source holds it;
- identifiers taken as independent among matches, as the model itself takes them: the
  share of matches at least one rule catches, P. The matches the scored pairs hold, B, are
  then B (1 - P) / P short of all of them.

Measured against truth (the true pairs no rule catches): pseudopeople with four times its
default noise 2,261 expected where 2,433 were; pseudopeople 214 for 196; FEBRL3 36 for 36;
FEBRL4 7 for 1; the generator at 1M records 8,407 for 9,155. Rules that are not plain
equalities of columns (the swapped-names rule) are left out, so P leans low.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.contract import LARGEST_PERSON_PAIRED, Tables
from pipelines.engines import Engine
from pipelines.sql import ident, record_key

_RULE_COLUMN = re.compile(r"\b[lr]\.[`\"]?(\w+)")
_EQUALITY = re.compile(r"l\.[`\"]?(\w+)[`\"]?\s*=\s*r\.[`\"]?(\w+)[`\"]?")
_DERIVED_SUFFIXES = ("_soundex", "_house", "_number", "_street", "_tokens", "_aliases")


def equality_columns(rule_sql: str) -> list[str] | None:
    """The columns a rule requires equal, or None when it is more than such equalities."""
    columns = [a for a, b in _EQUALITY.findall(rule_sql) if a == b]
    rest = _EQUALITY.sub("", rule_sql).replace("AND", "").replace("(", "").replace(")", "")
    return columns if columns and not rest.strip() else None


def identifier_of(column: str) -> str:
    """The identifier a standardised column comes from (dob_year -> date_of_birth,
    postcode_district -> postcode, address_house -> address, ...)."""
    if column.startswith("dob_"):
        return "date_of_birth"
    if column.startswith("postcode"):
        return "postcode"
    for suffix in _DERIVED_SUFFIXES:
        if column.endswith(suffix):
            return column.removesuffix(suffix)
    return column


def _records_table(
    engine: Engine,
    name: str,
    input_tables: dict[str, str],
    columns: list[str],
    only: str | None = None,
) -> None:
    """Every source's linkage input records, keyed (id: source|record), with the columns the
    rules read (`only`: those a table (source_dataset, record_id) holds)."""
    key = f"{record_key('CAST(record_id AS VARCHAR)')} AS id"
    selected = ", ".join([key, "source_dataset", "record_id", *(ident(c) for c in columns)])
    where = ""
    if only:
        where = (
            f" WHERE {record_key('CAST(record_id AS VARCHAR)')} IN "
            f"(SELECT {record_key()} FROM {only})"
        )
    engine.create_table(
        name,
        " UNION ALL ".join(f"SELECT {selected} FROM {t}{where}" for t in input_tables.values()),
    )


def _share_caught(
    rules: list[list[str]], identifiers: dict[str, list[str]], outcomes: dict[str, list]
) -> float:
    """P(some rule catches a match): over the identifiers in turn, the probability of each
    set of rules still satisfied so far (independent identifiers)."""
    states: dict[frozenset[int], float] = {frozenset(range(len(rules))): 1.0}
    for identifier, columns in identifiers.items():
        following: dict[frozenset[int], float] = {}
        for agreeing, probability in outcomes[identifier]:
            equal = {c for c, a in zip(columns, agreeing, strict=True) if a}
            for state, p in states.items():
                kept = frozenset(
                    i
                    for i in state
                    if all(c in equal for c in rules[i] if identifier_of(c) == identifier)
                )
                following[kept] = following.get(kept, 0.0) + p * probability
        states = following
    return sum(p for state, p in states.items() if state)


def expected_unblocked_matches(
    engine: Engine, input_tables: dict[str, str], rules_sql: list[str], pairs_table: str
) -> dict[str, Any]:
    """Per pair of sources: the share of matches the rules catch (P), the matches the
    scored pairs hold (B) and the matches never blocked, B (1 - P) / P."""
    rules = [r for r in (equality_columns(s) for s in rules_sql) if r]
    columns = sorted({c for r in rules for c in r})
    identifiers: dict[str, list[str]] = {}
    for column in columns:
        identifiers.setdefault(identifier_of(column), []).append(column)
    if not rules:
        return {
            "rules_read": 0,
            "rules_left_out": len(rules_sql),
            "expected_matches_not_blocked": None,
            "by_source_pair": [],
        }

    def held(identifier: str, alias: str = "") -> str:
        """The record holds the identifier: any of its columns is filled."""
        return " OR ".join(f"{alias}{ident(c)} IS NOT NULL" for c in identifiers[identifier])

    equal = ", ".join(f"coalesce(l.{ident(c)} = r.{ident(c)}, false) AS e_{c}" for c in columns)
    both = ", ".join(f"(({held(i, 'l.')}) AND ({held(i, 'r.')})) AS h_{i}" for i in identifiers)
    reach = ("__reach_records", "__reach_pairs")
    for table in reach:  # a stored one, left by an earlier version, would hide them
        engine.drop_table(table)
    # Working tables in the scratch area: at 1M, 2.8-3.0 s written to the file, 1.6 s not.
    with engine.scratch():
        _records_table(engine, "__reach_records", input_tables, columns)
        engine.create_table(
            "__reach_pairs",
            f"""SELECT p.match_probability AS p,
                       least(p.source_dataset_l, p.source_dataset_r) AS s1,
                       greatest(p.source_dataset_l, p.source_dataset_r) AS s2, {equal}, {both}
                FROM {pairs_table} p
                JOIN __reach_records l
                  ON l.source_dataset = p.source_dataset_l AND l.record_id = p.record_id_l
                JOIN __reach_records r
                  ON r.source_dataset = p.source_dataset_r AND r.record_id = p.record_id_r""",
        )
    outcomes: dict[str, list] = {}
    for identifier, cols in identifiers.items():
        others = [r for r in rules if all(identifier_of(c) != identifier for c in r)]
        blocked_elsewhere = (
            " OR ".join("(" + " AND ".join(f"e_{c}" for c in r) + ")" for r in others) or "false"
        )
        rows = engine.fetch(
            f"SELECT {', '.join(f'e_{c}' for c in cols)}, sum(p) FROM __reach_pairs "
            f"WHERE h_{identifier} AND ({blocked_elsewhere}) "
            f"GROUP BY {', '.join(f'e_{c}' for c in cols)}"
        )
        total = sum(float(r[-1]) for r in rows)
        # With no evidence, take the identifier to agree among matches (P leans high).
        outcomes[identifier] = (
            [(tuple(bool(v) for v in r[:-1]), float(r[-1]) / total) for r in rows]
            if total
            else [(tuple(True for _ in cols), 1.0)]
        )
    presence = ", ".join(f"avg(CASE WHEN {held(i)} THEN 1.0 ELSE 0.0 END)" for i in identifiers)
    held_share = {
        row[0]: dict(zip(identifiers, (float(v) for v in row[1:]), strict=True))
        for row in engine.fetch(
            f"SELECT source_dataset, {presence} FROM __reach_records GROUP BY source_dataset"
        )
    }
    by_pair = []
    for s1, s2, blocked in engine.fetch(
        "SELECT s1, s2, sum(p) FROM __reach_pairs GROUP BY s1, s2 ORDER BY s1, s2"
    ):
        pair_outcomes = {}
        for identifier, cols in identifiers.items():
            both_hold = held_share[s1][identifier] * held_share[s2][identifier]
            pair_outcomes[identifier] = [(a, p * both_hold) for a, p in outcomes[identifier]] + [
                (tuple(False for _ in cols), 1 - both_hold)
            ]
        share = _share_caught(rules, identifiers, pair_outcomes)
        blocked = float(blocked)
        by_pair.append(
            {
                "sources": [s1, s2],
                "share_of_matches_blocked": round(share, 4),
                "expected_matches_blocked": round(blocked, 1),
                "expected_matches_not_blocked": round(blocked * (1 - share) / share, 1)
                if share
                else None,
            }
        )
    with engine.scratch():
        for table in reach:
            engine.execute(f"DROP TABLE IF EXISTS {table}")
    missing = sum(p["expected_matches_not_blocked"] or 0.0 for p in by_pair)
    return {
        "rules_read": len(rules),
        "rules_left_out": len(rules_sql) - len(rules),
        "expected_matches_not_blocked": round(missing, 1),
        "by_source_pair": by_pair,
    }


@dataclass(frozen=True)
class BlockingRules:
    """The rules that chose which pairs were scored, and the records they read."""

    rules_sql: list[str]
    input_tables: dict[str, str]
    # link_only: pairs within one source are never compared, whatever the rules say.
    link_only: bool = False

    def columns_read(self) -> list[str]:
        """The records' columns the rules read, besides their keys."""
        read = {c for rule in self.rules_sql for c in _RULE_COLUMN.findall(rule)}
        return sorted(read - {"source_dataset", "record_id"})


def rule_records(engine: Engine, name: str, blocking: BlockingRules) -> str:
    """Table `name`: every input record keyed (id, source|record), with the columns the
    rules read; returns the condition under which the rules compare two of them, over
    aliases l and r (either way round, as Splink may orient a pair). The error-rate
    estimates read a pair that meets it but was not stored as scored below the floor."""
    _records_table(engine, name, blocking.input_tables, blocking.columns_read())
    flipped = [
        re.sub(r"\b([lr])\.", lambda m: "r." if m.group(1) == "l" else "l.", rule)
        for rule in blocking.rules_sql
    ]
    caught = " OR ".join(f"coalesce(({rule}), false)" for rule in [*blocking.rules_sql, *flipped])
    compared = f"({caught or 'false'})"
    if blocking.link_only:
        compared = f"(l.source_dataset <> r.source_dataset AND {compared})"
    return compared


def pairs_never_blocked_in_persons(
    engine: Engine,
    blocking: BlockingRules,
    person_columns: list[str],
    lookup_table: str = Tables.PERSON_LOOKUP,
    pairs_table: str = Tables.PAIRWISE_PREDICTIONS,
    out: str = Tables.PAIRS_NEVER_BLOCKED_IN_PERSONS,
    largest_person: int = LARGEST_PERSON_PAIRED,
    changed: str | None = None,
) -> int:
    """The pairs of records one person holds at any threshold that were not scored above
    the floor and that no rule blocks, either way round (Splink may put either record on
    the left): never compared, rather than compared and scored below the floor. Written to
    `out` (source_a, record_a, source_b, record_b) for the error-rate estimates; returns
    how many. Persons of more than `largest_person` records are left out.

    `changed`: a table (source_dataset, record_id) of the records an incremental linkage
    reclustered or removed, when `out` lists the pairs of the publication it extended: only
    their pairs are listed again. They are whole clusters at every threshold
    (pipelines.incremental.recluster_touched), so a person holding one holds only them."""
    working = ["__unscored_in_persons", "__rule_records"]
    if changed:
        working += ["__changed_lookup", "__changed_never_blocked"]
    for table in working:  # a stored one, left by an earlier version, would hide them
        engine.drop_table(table)
    ordered = (
        "(x.source_dataset < y.source_dataset OR (x.source_dataset = y.source_dataset "
        "AND x.source_record_id < y.source_record_id))"
    )

    def listed(c: str) -> str:
        """The lookup's records in persons small enough to pair, filtered before the
        self-join so a giant person is never paired at all."""
        return f"""(SELECT k.* FROM {lookup_table} k
            JOIN (SELECT {ident(c)} AS person FROM {lookup_table} GROUP BY {ident(c)}
                  HAVING count(*) <= {int(largest_person)}) AS small
              ON small.person = k.{ident(c)})"""

    columns = blocking.columns_read()
    with engine.scratch():  # the working tables
        if changed:
            engine.create_table(
                "__changed_lookup",
                f"SELECT * FROM {lookup_table} WHERE {record_key('source_record_id')} IN "
                f"(SELECT {record_key()} FROM {changed})",
            )
            lookup_table = "__changed_lookup"
        together = " UNION ".join(
            f"""SELECT x.source_dataset AS source_a, x.source_record_id AS record_a,
                       y.source_dataset AS source_b, y.source_record_id AS record_b
                FROM {listed(c)} x JOIN {listed(c)} y
                  ON x.{ident(c)} = y.{ident(c)} AND {ordered}"""
            for c in person_columns
        )
        engine.create_table(
            "__unscored_in_persons",
            f"""SELECT t.* FROM ({together}) AS t
                ANTI JOIN {pairs_table} s1
                  ON s1.source_dataset_l = t.source_a AND s1.record_id_l = t.record_a
                 AND s1.source_dataset_r = t.source_b AND s1.record_id_r = t.record_b
                ANTI JOIN {pairs_table} s2
                  ON s2.source_dataset_l = t.source_b AND s2.record_id_l = t.record_b
                 AND s2.source_dataset_r = t.source_a AND s2.record_id_r = t.record_a""",
        )
        _records_table(engine, "__rule_records", blocking.input_tables, columns, changed)
    caught = " OR ".join(f"coalesce(({rule}), false)" for rule in blocking.rules_sql) or "false"
    if blocking.link_only:
        caught = f"o.source_a = o.source_b OR {caught}"
    never_blocked = f"""WITH oriented AS (
            SELECT source_a, record_a, source_b, record_b,
                   source_a AS sl, record_a AS rl, source_b AS sr, record_b AS rr
            FROM __unscored_in_persons
            UNION ALL
            SELECT source_a, record_a, source_b, record_b, source_b, record_b,
                   source_a, record_a
            FROM __unscored_in_persons
        )
        SELECT o.source_a, o.record_a, o.source_b, o.record_b
        FROM oriented o
        JOIN __rule_records l ON l.source_dataset = o.sl AND l.record_id = o.rl
        JOIN __rule_records r ON r.source_dataset = o.sr AND r.record_id = o.rr
        GROUP BY o.source_a, o.record_a, o.source_b, o.record_b
        HAVING max(CASE WHEN {caught} THEN 1 ELSE 0 END) = 0"""
    if changed:
        with engine.scratch():
            engine.create_table("__changed_never_blocked", never_blocked)
        ends = f"SELECT {record_key()} FROM {changed}"
        a, b = record_key("record_a", "source_a"), record_key("record_b", "source_b")
        engine.delete_rows(out, f"{a} IN ({ends}) OR {b} IN ({ends})")
        engine.insert_rows(out, "SELECT * FROM __changed_never_blocked")
    else:
        engine.create_table(out, never_blocked)
    with engine.scratch():
        for table in working:
            engine.execute(f"DROP TABLE IF EXISTS {table}")
    return engine.count(out)

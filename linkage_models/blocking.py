"""Blocking rules checked on the data before training, with Splink's blocking analysis.

Splink counts the pairs each rule adds beyond the rules before it (and the running total).
A rule joinedup derived that adds more than the project's bound is dropped (it would cost
more than it is likely to find); a rule the project wrote is kept, and reported. Counts
come from a deterministic sample of records on large inputs (Splink scales them up), so
they are labelled estimates when sampled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from splink.blocking_analysis import count_comparisons_from_blocking_rules

from linkage_models.project import BlockingRule, LinkageProject
from linkage_models.settings import blocking_rule

# Records sampled for the counts: exact below this, a stable estimate above.
SAMPLE_RECORDS = 200_000


@dataclass(frozen=True)
class RuleCount:
    rule: BlockingRule
    adds_pairs: int
    cumulative_pairs: int
    kept: bool
    why: str


def _counts(frames: list[Any], rules: list[BlockingRule], link_type: str, proportion: float):
    return count_comparisons_from_blocking_rules(
        frames,
        blocking_rules=[blocking_rule(r) for r in rules],
        link_type=link_type,
        unique_id_column_name="record_id",
        source_dataset_column_name="source_dataset",
        record_sample_proportion=proportion,
    )


def _registered(db_api: Any, input_tables: dict[str, str], prefix: str) -> tuple[list[Any], float]:
    """The input tables registered with Splink, and the share of records to count on."""
    frames = [
        db_api.register(table, table_name=f"{prefix}_{source}")
        for source, table in input_tables.items()
    ]
    records = sum(
        int(db_api.query_sql(f"SELECT count(*) AS n FROM {t}", "pandas").n.iloc[0])
        for t in input_tables.values()
    )
    return frames, min(1.0, SAMPLE_RECORDS / max(records, 1))


def count_pairs(
    db_api: Any, input_tables: dict[str, str], rule: BlockingRule, link_type: str
) -> int:
    """How many pairs one rule makes (estimated from a sample on large inputs)."""
    frames, proportion = _registered(db_api, input_tables, "count_input")
    return int(_counts(frames, [rule], link_type, proportion)[0]["marginal_comparison_count"])


def choose_blocking_rules(
    db_api: Any, input_tables: dict[str, str], project: LinkageProject
) -> dict[str, Any]:
    """Count every rule's pairs; keep the rules within the bound (or written by hand).

    Returns {rules: the kept rules, analysis: one RuleCount per rule, total_possible,
    estimated: bool, bound}."""
    model = project.model
    frames, proportion = _registered(db_api, input_tables, "blocking_input")
    rules = list(model.blocking_rules)
    derived = "blocking_rules" in model.derived
    first = _counts(frames, rules, model.link_type, proportion)
    bound = model.max_comparisons_per_blocking_rule
    too_many = [r["marginal_comparison_count"] > bound for r in first]
    kept = [r for r, big in zip(rules, too_many, strict=True) if not (derived and big)]
    if not kept:  # never none: the rule that adds fewest pairs stays
        cheapest = min(range(len(rules)), key=lambda i: first[i]["marginal_comparison_count"])
        kept = [rules[cheapest]]
    recounted = _counts(frames, kept, model.link_type, proportion)
    final = {str(r): c for r, c in zip(kept, recounted, strict=True)}
    analysis = []
    for rule, count, big in zip(rules, first, too_many, strict=True):
        after = final.get(str(rule))
        if after is not None:
            why = "kept" if not big else "kept (written in the project) although above the bound"
        else:
            why = "dropped: adds more pairs than the bound"
        analysis.append(
            RuleCount(
                rule=rule,
                adds_pairs=int((after or count)["marginal_comparison_count"]),
                cumulative_pairs=int(after["cumulative_comparison_count"]) if after else 0,
                kept=after is not None,
                why=why,
            )
        )
    return {
        "rules": kept,
        "analysis": [asdict(a) for a in analysis],
        "total_possible_pairs": int(first[0]["total_possible_comparison_count"]) if first else 0,
        "estimated": proportion < 1.0,
        "bound": bound,
        "derived": derived,
    }

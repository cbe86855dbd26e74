"""Statistical disclosure control: the one policy every count that may leave the secure
setting goes through (the shareable manifest, the linkage report and its JSON, the
data-owner pages).

The policy:

1. Every count of records or persons is rounded to a multiple of BASE (5): to the nearest,
   halves up, except that a count of 1 to 4 becomes 5, so that "none" is never shown where
   there were some.
2. A total is never rounded on its own: it is the sum of its rounded parts. A delivery's
   rows received are its rounded rows linked plus its rounded rows quarantined for each
   reason; a source's figures are the sums of its deliveries', the project's the sums of its
   sources'. Every table still adds up, and since every published figure is a sum of
   multiples of 5, subtracting published figures from one another, within one table or
   across tables, gives back multiples of 5, never an exact count ("1,385 received, 1,381
   linked" no longer tells that 4 were quarantined).
3. Pages show a rounded count below SMALL (10) as "<10", and compute rates from rounded
   counts; a rate whose numerator is shown as "<10" is shown as a bound.

Pages show every count rounded. In the JSON documents, the model's figures (pairs scored,
links and persons per threshold, the largest cluster, clerically reviewed pairs) are exact:
the record-level linked tables give links and persons exactly to whoever holds them
(approved researchers), and pair counts describe the model's work, not people. The churn
ledger of person ids (ids created, kept, merged, retired; records added, moved, withdrawn)
is exact for the same reason: it is a comparison of two published lookups. A reader of
the linked tables can count rows linked per source exactly, and still learns no exact count
of quarantined or rejected rows, since those are published rounded. Probabilities and rates
are not counts.

ACRO (the SACRO project's output checker) was considered: it checks and suppresses cells
of tables a researcher builds through its wrappers (threshold and dominance rules, primary
suppression), but does not protect totals and their parts against differencing, which is
the risk in these reports. Rounding with additive totals does, in a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BASE = 5
SMALL = 10

POLICY = {
    "method": "rounding to base 5 with additive totals",
    "base": BASE,
    "rule": (
        f"each count of records rounded to the nearest multiple of {BASE} (1-{BASE - 1} "
        f"become {BASE}); every total is the sum of its rounded parts"
    ),
    "not_rounded": "rates, probabilities, the model's counts of pairs, links and persons, "
    "and the churn ledger of person ids (the linked tables of consecutive snapshots give "
    "them exactly)",
}


def rounded(n: int) -> int:
    """A count rounded to a multiple of BASE; 1 to BASE - 1 become BASE."""
    if n <= 0:
        return 0
    return max(BASE, BASE * ((n + BASE // 2) // BASE))


def rounded_parts(parts: Mapping[str, int]) -> dict[str, int]:
    return {k: rounded(int(v)) for k, v in parts.items()}


def shown_count(n: int | None) -> str:
    """A count as a page shows it: rounded, and "<10" below SMALL."""
    if n is None:
        return "—"
    r = rounded(n)
    return f"<{SMALL}" if 0 < r < SMALL else f"{r:,}"


def shown_rate(n: int | None, d: int | None) -> str:
    """n/d as a percentage of rounded counts, or a bound when n is shown as "<10"."""
    if n is None or not d:
        return "—"
    rn, rd = rounded(n), rounded(d)
    if 0 < rn < SMALL:
        return f"<{SMALL / rd:.1%}"
    return f"{rn / rd:.1%}"


def protected_delivery(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A delivery's counts (rows_in, rows_accepted, rows_quarantined, quarantined_by_reason),
    rounded so that received = linked + quarantined and quarantined = sum of its reasons."""
    reasons = rounded_parts(stats["quarantined_by_reason"])
    accepted = rounded(stats["rows_accepted"])
    quarantined = sum(reasons.values())
    return {
        **stats,
        "rows_in": accepted + quarantined,
        "rows_accepted": accepted,
        "rows_quarantined": quarantined,
        "quarantined_by_reason": reasons,
    }


def protected_reconciliation(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's reconciliation with every count protected; each source's figures are
    the sums of its deliveries', the totals the sums of the sources'."""
    by_source: dict[str, Any] = {}
    for name, source in rec["by_source"].items():
        deliveries = {k: protected_delivery(d) for k, d in source["by_delivery"].items()}
        reasons: dict[str, int] = {}
        for d in deliveries.values():
            for reason, n in d["quarantined_by_reason"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        by_source[name] = {
            **source,
            **{
                k: sum(d[k] for d in deliveries.values())
                for k in ("rows_in", "rows_accepted", "rows_quarantined")
            },
            "quarantined_by_reason": dict(sorted(reasons.items())),
            "values_set_missing": rounded_parts(source["values_set_missing"]),
            "names_transliterated": rounded(source.get("names_transliterated", 0)),
            "by_delivery": deliveries,
        }
    totals = {
        k: sum(s[k] for s in by_source.values())
        for k in ("rows_in", "rows_accepted", "rows_quarantined")
    }
    return {
        **rec,
        "rows_in": totals["rows_in"],
        "rows_linked": totals["rows_accepted"],
        "rows_quarantined": totals["rows_quarantined"],
        "by_source": by_source,
    }


def protected_manifest(document: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest that may leave: reconciliation and delivery rows protected."""
    rec = protected_reconciliation(document["reconciliation"])
    inputs = [
        {
            **entry,
            "files": [
                {
                    **f,
                    "rows": rec["by_source"]
                    .get(entry["source"], {})
                    .get("by_delivery", {})
                    .get(f["delivery"], {})
                    .get("rows_in", rounded(int(f["rows"] or 0))),
                }
                for f in entry["files"]
            ],
        }
        for entry in document["inputs"]
    ]
    measured = document.get("measured_accuracy")
    if measured:
        measured = {
            name: {**m, "records": rounded(m["records"])} if "records" in m else m
            for name, m in measured.items()
        }
    return {
        **document,
        "inputs": inputs,
        "reconciliation": rec,
        "measured_accuracy": measured,
        "disclosure_control": POLICY,
    }


# Keys whose integer values count records in the documents that leave, wherever they sit.
COUNT_KEYS = frozenset(
    {
        "rows",
        "rows_in",
        "rows_accepted",
        "rows_quarantined",
        "rows_linked",
        "records",
        "missing",
        "linked_to_other_sources",
        "within_source_duplicates",
        "quarantined_by_reason",
        "values_set_missing",
        "names_transliterated",
    }
)


def disclosive_counts(document: Any, path: str = "") -> list[str]:
    """Where a document holds a count of records that did not go through this policy (not a
    multiple of BASE): the paths, never the values."""
    found: list[str] = []
    if isinstance(document, Mapping):
        for key, value in document.items():
            where = f"{path}.{key}" if path else str(key)
            if key in COUNT_KEYS and isinstance(value, Mapping):
                found += [
                    f"{where}.{k}"
                    for k, v in value.items()
                    if isinstance(v, int) and not isinstance(v, bool) and v % BASE
                ]
            elif key in COUNT_KEYS and isinstance(value, int) and not isinstance(value, bool):
                if value % BASE:
                    found.append(where)
            else:
                found += disclosive_counts(value, where)
    elif isinstance(document, list):
        for i, item in enumerate(document):
            found += disclosive_counts(item, f"{path}[{i}]")
    return found

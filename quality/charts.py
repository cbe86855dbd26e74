"""Charts for the linkage report, drawn with Altair and rendered to static SVG by vl-convert
(no JavaScript, no network: the report reads the same in a secure setting as anywhere).

Charts show the same figures as the report's tables and obey the same disclosure rule:
nothing is drawn from a count of 1 to 9.
"""

from __future__ import annotations

import re
from typing import Any

import altair as alt
import pandas as pd
import vl_convert

from pipelines.disclosure_control import SMALL as SMALL_CELL

WIDTH = 560


def _svg(chart: alt.TopLevelMixin) -> str:
    """Inline SVG for an HTML page (namespace declarations are not needed there)."""
    svg = vl_convert.vegalite_to_svg(chart.to_json())
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)


def error_rate_chart(quality: dict[str, Any]) -> str:
    """Estimated precision and recall per threshold with 95% intervals; measured values
    (against ground truth) as crosses where they exist."""
    rows = []
    measured = quality.get("measured_against_ground_truth") or {}
    for threshold, e in quality["estimated"].items():
        for measure in ("precision", "recall"):
            ci = e[f"{measure}_95ci"]
            rows.append(
                {
                    "threshold": threshold,
                    "measure": measure,
                    "estimated": e[measure],
                    "low": ci[0],
                    "high": ci[1],
                    "measured": (measured.get(threshold) or {}).get(measure),
                }
            )
    frame = pd.DataFrame(rows)
    base = alt.Chart(frame).encode(
        y=alt.Y("threshold:N", sort=list(quality["estimated"]), title=None)
    )
    x = alt.X("estimated:Q", scale=alt.Scale(zero=False), title="pairwise rate")
    layers = [
        base.mark_rule(color="#4a6fa5").encode(x=alt.X("low:Q", title=None), x2="high:Q"),
        base.mark_point(filled=True, size=60, color="#1f3b63").encode(
            x=x, tooltip=["threshold", "measure", "estimated", "low", "high"]
        ),
    ]
    if frame["measured"].notna().any():
        layers.append(
            base.mark_point(shape="cross", size=90, color="#b00020").encode(x="measured:Q")
        )
    chart = (
        alt.layer(*layers, data=frame)
        .properties(width=WIDTH // 2 - 40, height=90)
        .facet(column=alt.Column("measure:N", title=None))
        .resolve_scale(x="independent")
    )
    return _svg(chart)


def bias_chart(bias: dict[str, Any], dimension: str) -> str | None:
    """Estimated recall of the balanced links by group, against the overall figure;
    flagged groups in red. Groups of fewer than 10 records are not drawn."""
    overall = bias["overall"][0]["estimated_recall"]
    rows = [
        {"group": r["group"], "recall": r["estimated_recall"], "flagged": r["flagged"]}
        for r in bias["dimensions"][dimension]
        if r["records"] >= SMALL_CELL and r["estimated_recall"] is not None
    ]
    if not rows or overall is None:
        return None
    frame = pd.DataFrame(rows)
    points = (
        alt.Chart(frame)
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("recall:Q", scale=alt.Scale(zero=False), title="estimated recall"),
            y=alt.Y("group:N", title=None, sort=None),
            color=alt.Color(
                "flagged:N",
                scale=alt.Scale(domain=[False, True], range=["#1f3b63", "#b00020"]),
                legend=None,
            ),
        )
    )
    line = (
        alt.Chart(pd.DataFrame({"overall": [overall]}))
        .mark_rule(strokeDash=[4, 3])
        .encode(x="overall:Q")
    )
    return _svg((points + line).properties(width=WIDTH, height=max(60, 18 * len(rows))))


def cluster_size_rows(distribution: list[dict[str, int]]) -> list[dict[str, int]]:
    """The records-per-person sizes that may be drawn: only those held by 10 or more
    persons (a bar's height would otherwise give a small count away)."""
    return [r for r in distribution if r["persons"] >= SMALL_CELL]


def cluster_size_chart(distribution: list[dict[str, int]]) -> str | None:
    rows = cluster_size_rows(distribution)
    if not rows:
        return None
    chart = (
        alt.Chart(pd.DataFrame(rows))
        .mark_bar(color="#4a6fa5")
        .encode(
            x=alt.X("records_per_person:O", title="records per person (balanced)"),
            y=alt.Y("persons:Q", title="persons", scale=alt.Scale(type="symlog")),
        )
        .properties(width=WIDTH, height=160)
    )
    return _svg(chart)


def report_charts(q: dict[str, Any]) -> dict[str, Any]:
    """Every chart of the linkage report, as inline SVG (None where nothing may be drawn)."""
    return {
        "error_rates": error_rate_chart(q["quality"]),
        "clusters": cluster_size_chart(q["quality"]["clusters"]["distribution"]),
        "bias": {dim: bias_chart(q["bias"], dim) for dim in q["bias"]["dimensions"]},
    }

"""The model card: what a model version was trained on, its parameters, and what it cannot
do, in a short Markdown page beside the registry."""

from __future__ import annotations

import math
from typing import Any

from linkage_models.registry import ModelVersion


def _weight(m: float | None, u: float | None) -> str:
    if not m or not u:
        return "n/a"
    return f"{math.log2(m / u):+.2f}"


def _comparisons_without_m(model: dict[str, Any]) -> list[str]:
    """Comparisons EM estimated no level of: scored wholly on Splink's default m."""
    names = []
    for comparison in model.get("comparisons", []):
        levels = [
            level
            for level in comparison.get("comparison_levels", [])
            if not level.get("is_null_level")
        ]
        if levels and all("m_probability" not in level for level in levels):
            names.append(str(comparison.get("output_column_name")))
    return names


def _blocking_lines(blocking: dict[str, Any] | None) -> list[str]:
    """The blocking analysis: pairs each rule adds, and which rules were kept and why."""
    if not blocking:
        return []
    origin = (
        "derived from the identifiers the sources map"
        if blocking.get("derived")
        else "written in the project"
    )
    counted = "estimated from a sample of records" if blocking.get("estimated") else "exact"
    lines = [
        "",
        "## Blocking",
        "",
        f"Blocking rules {origin}, checked with Splink's blocking analysis before training "
        f"(pair counts {counted}; bound {blocking['bound']:,.0f} pairs added per rule; "
        f"{blocking['total_possible_pairs']:,} possible pairs in all):",
        "",
        "| rule | pairs it adds | cumulative | outcome |",
        "|---|---|---|---|",
    ]
    for rule in blocking["analysis"]:
        cumulative = f"{rule['cumulative_pairs']:,}" if rule["kept"] else "—"
        added = f"{rule['adds_pairs']:,}"
        lines.append(f"| `{rule['rule']}` | {added} | {cumulative} | {rule['why']} |")
    return lines


def _balanced_choice_lines(choice: dict[str, Any] | None) -> list[str]:
    """How the balanced threshold was chosen with this model (quality.threshold_choice)."""
    if not choice:
        return []
    lines = [
        "",
        "## Balanced threshold",
        "",
        f"Chosen with this model on its first linkage, from its own label-free estimates at "
        f"each candidate, and frozen with it: {choice['threshold']}, {choice['rule']}. The "
        "estimates take the model's probabilities at face value (see the linkage report for "
        "where they have missed).",
        "",
        "| threshold | estimated precision (95% low) | estimated recall | estimated F1 |",
        "|---|---|---|---|",
    ]
    for c in choice["candidates"]:
        mark = " (chosen)" if c["threshold"] == choice["threshold"] else ""
        lines.append(
            f"| {c['threshold']}{mark} | {c['estimated_precision']:.4f} "
            f"({c['estimated_precision_95ci_low']:.4f}) | "
            f"{c['estimated_recall']:.4f} | {c['estimated_f1']:.4f} |"
        )
    return lines


def _household_lines(found: dict[str, Any] | None) -> list[str]:
    """How often different members of one household share a birth date (the u of the
    within-household levels)."""
    if not found:
        return []
    if not found.get("learnt"):
        return [
            "",
            f"Within-household levels: an estimated {found.get('strangers', 0):,} pairs of "
            f"different people in one household (of {found.get('pairs', 0):,} pairs with the "
            "same family name and place) are too few to learn from, so these levels keep the "
            "population's u: a birth date shared within a household weighs as one shared by "
            "strangers.",
        ]
    rows = [
        f"| {name} | {u['within_household']:.3g} | {u['population']:.3g} |"
        for name, u in found["u"].items()
        if u["within_household"] is not None and u["population"] is not None
    ]
    return [
        "",
        f"Within-household levels: u learnt by EM (m held, u free) over "
        f"`{found['blocking_rule']}`: {found['pairs']:,} pairs, an estimated "
        f"{found['strangers']:,} of them different people of one household. Different "
        "members of one household share a birth date far more often than strangers do "
        "(twins, forms that copy a relative's), so that agreement weighs less there; m is "
        "the exact level's, and u is never set below the population's.",
        "",
        "| exact level | u within one household | u in the population |",
        "|---|---:|---:|",
        *rows,
    ]


def model_card_markdown(
    project: str,
    entry: ModelVersion,
    model: dict[str, Any],
    thresholds: dict[str, float],
    training_summary: dict[str, Any] | None,
    probable_twins_rule: str,
    balanced_choice: dict[str, Any] | None = None,
) -> str:
    """A short card: what was trained on what, its parameters, and what it cannot do."""
    prior = entry.probability_two_random_records_match
    lines = [
        f"# Model card: {project} v{entry.version}",
        "",
        f"- Created: {entry.created_at}",
        f"- Splink: {entry.splink_version}; link type: {model.get('link_type')}",
        f"- Config hash: `{entry.config_hash}`",
        f"- Training data fingerprint: `{entry.training_data_fingerprint}`",
        f"- Prior probability two random records match: {prior:.3e} "
        f"(match weight {math.log2(prior / (1 - prior)):+.2f})",
        "- Clustering thresholds (match probability): "
        + ", ".join(f"{k} {v}" for k, v in thresholds.items()),
        "- Probable-twins rule: "
        + (
            "exclude, opted in (pairs with the same date of birth and different given "
            "names, at most sharing an initial, are not linked)"
            if probable_twins_rule == "exclude"
            else "off (pairs are linked on their match weight alone)"
        ),
        *_balanced_choice_lines(balanced_choice),
        "",
        "## Training",
        "",
    ]
    if training_summary:
        lines.append(
            "Prior from deterministic rules; u by random sampling; m by expectation "
            "maximisation over these blocking rules:"
        )
        lines.append("")
        for s in training_summary.get("em_sessions", []):
            lines.append(f"- `{s['blocking_rule']}`")
        refit = training_summary.get("prior_refit")
        if refit and refit.get("implied_recall"):
            lines += [
                "",
                f"The prior was first built on the declared recall of the deterministic rules "
                f"({refit['declared_recall']}: prior {refit['first_prior']:.3e}). That first "
                f"model's scores put their recall at {refit['implied_recall']}, so the prior "
                "was rebuilt on it and m estimated again over the same blocking rules, with "
                "the match rate of each block the prior can give (every column it blocks on "
                "has an exact-match level) fixed from the new prior instead of left to EM: "
                + (
                    ", ".join(
                        f"`{s['blocking_rule']}`"
                        for s in refit.get("em_sessions", [])
                        if s["match_rate_fixed"]
                    )
                    or "none"
                )
                + ".",
            ]
        elif refit:
            lines += [
                "",
                "The prior stands on the declared recall of the deterministic rules: the scored "
                "pairs lack a column the rules read, so their recall could not be checked.",
            ]
        lines += _household_lines(training_summary.get("household_dependence"))
        held = [
            *(training_summary.get("m_held_at_floor") or []),
            *((refit or {}).get("m_held_at_floor") or []),
        ]
        if held:
            lines += [
                "",
                "EM drove m below what a float holds for "
                + ", ".join(dict.fromkeys(held))
                + ": held at 1e-5, fixed, and the EM sessions run again.",
            ]
        floored = training_summary.get("m_probabilities_floored") or []
        lines.append("")
        lines.append(
            "Levels whose m probability EM drove below 1e-5 (never seen among matches in the "
            "training data) were raised to 1e-5 so they cannot veto a link on their own: "
            + (", ".join(floored) if floored else "none")
            + "."
        )
        bounded = training_summary.get("u_probabilities_bounded") or []
        lines.append("")
        lines.append(
            "Levels no randomly sampled pair fell into were given u = 3 / pairs sampled, the "
            "most often they can occur among non-matches and still go unseen (95% bound), "
            "so their weight is if anything understated, not a default: "
            + (", ".join(bounded) if bounded else "none")
            + "."
        )
        unseen = training_summary.get("levels_never_seen") or []
        if unseen:
            lines.append("")
            lines.append(
                "Levels neither EM nor the random sample ever saw are scored as no evidence "
                "(m = u, weight 0), not with Splink's default m: " + ", ".join(unseen) + "."
            )
        untrained = training_summary.get("untrained") or {}
        lines += [
            "",
            'Splink may print "Level ... not observed in dataset, unable to train m value" '
            "while training: each EM session holds fixed the columns it blocks on, so some "
            "levels cannot occur in it, and another session estimates them. What counts is "
            "the model at the end of training"
            + (
                ": every level's m and u was estimated."
                if not (untrained.get("m") or untrained.get("u"))
                else ", below."
            ),
        ]
        if untrained.get("m") or untrained.get("u"):
            lines += [
                "",
                'Splink warned that some values were "not fully trained". This means no pair '
                "in the training samples fell into these levels, so their parameters could not "
                "be estimated and Splink scores them with its default values: the weights of "
                "these levels are assumptions, not estimates. It is common for rare levels "
                "(for example a one-character difference in a date) and harmless when the "
                "level is rare in the data being linked too; if a level matters, add an EM "
                "blocking rule (`model.training.em_blocking_rules`) that does not fix the "
                "column it compares, so EM can see it vary.",
                "",
            ]
            for parameter in ("m", "u"):
                for level in untrained.get(parameter, []):
                    lines.append(f"- {parameter} not estimated: {level}")
            for name in _comparisons_without_m(model):
                lines += [
                    "",
                    f"**No level of `{name}` had its m estimated**: the whole comparison is "
                    "weighed by Splink's defaults (0.95 of matches on its first level), not by "
                    "this data. No EM session held pairs with it on both records: add one that "
                    "blocks on identifiers the sources carrying it map too.",
                ]
        lines += _blocking_lines(training_summary.get("blocking"))
    else:
        lines.append("This run reused an earlier version; no training was done.")
    lines += [
        "",
        "## Parameters",
        "",
        "| comparison | level | m | u | match weight |",
        "|---|---|---|---|---|",
    ]
    for comp in model.get("comparisons", []):
        for level in comp.get("comparison_levels", []):
            if level.get("is_null_level"):
                continue
            m, u = level.get("m_probability"), level.get("u_probability")
            label = level.get("label_for_charts") or level.get("sql_condition", "")
            lines.append(
                f"| {comp.get('output_column_name')} | {label} | "
                f"{'' if m is None else f'{m:.4g}'} | {'' if u is None else f'{u:.4g}'} | "
                f"{_weight(m, u)} |"
            )
    lines += [
        "",
        "## Limitations",
        "",
        "- Fellegi-Sunter assumes comparisons are independent given match status; people who "
        "share a household, surname and birth date (twins) break this. The household "
        "comparison weighs family name and place together, which keeps most twins apart; "
        "without it they score as strong links unless the project opts in to the "
        "probable-twins rule.",
        "- Women who changed surname and moved address between records are hard to link.",
        "- Parameters are estimated without labels; see the manifest for measured accuracy "
        "where ground truth exists.",
    ]
    return "\n".join(lines) + "\n"

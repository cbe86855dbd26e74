"""The model card explains Splink's "not fully trained" warning level by level."""

from __future__ import annotations

import pytest

from linkage_models.linkage import (
    bound_unobserved_u_probabilities,
    neutralise_unobserved_levels,
    untrained_levels,
)
from linkage_models.model_card import model_card_markdown
from linkage_models.registry import ModelVersion


def _model(dob_exact_m: float | None) -> dict:
    exact = {"label_for_charts": "Exact match", "u_probability": 0.001}
    if dob_exact_m is not None:
        exact["m_probability"] = dob_exact_m
    return {
        "link_type": "link_and_dedupe",
        "comparisons": [
            {
                "output_column_name": "date_of_birth",
                "comparison_levels": [
                    {"label_for_charts": "Null", "is_null_level": True},
                    exact,
                    {"label_for_charts": "One character", "u_probability": 0.01},
                    {"label_for_charts": "All other", "m_probability": 0.05, "u_probability": 0.9},
                ],
            }
        ],
    }


def _card(model: dict, **training: list[str]) -> str:
    """The card for `model`, with what training found (`training`: summary keys)."""
    entry = ModelVersion(1, "model_v1.json", "2026-11-21", "c", "f", "5.0", 1e-4)
    summary = {"em_sessions": [], "untrained": untrained_levels(model), **training}
    return model_card_markdown("p", entry, model, {"balanced": 0.95}, summary, "off")


def test_card_names_each_level_splink_could_not_estimate() -> None:
    model = _model(dob_exact_m=None)
    assert untrained_levels(model) == {
        "m": ["date_of_birth: Exact match", "date_of_birth: One character"],
        "u": [],
    }
    card = _card(model)
    assert '"not fully trained"' in card and "default values" in card
    assert "- m not estimated: date_of_birth: Exact match" in card
    assert "- m not estimated: date_of_birth: One character" in card
    assert "Null" not in card.split("## Parameters")[0]


def test_card_says_when_a_whole_comparison_was_never_estimated() -> None:
    """A comparison no EM session could see (pseudopeople's 1040 returns once left the date
    of birth so) is weighed wholly by Splink's defaults: the card says so in bold, apart
    from the list of rare levels."""
    model = _model(dob_exact_m=None)
    assert "No level of `date_of_birth`" not in _card(model)  # one level was estimated
    del model["comparisons"][0]["comparison_levels"][3]["m_probability"]
    card = _card(model)
    assert "**No level of `date_of_birth` had its m estimated**" in card
    assert "Splink's defaults" in card


def test_card_is_silent_when_every_level_was_estimated() -> None:
    model = _model(dob_exact_m=0.9)
    model["comparisons"][0]["comparison_levels"][2]["m_probability"] = 0.04
    assert untrained_levels(model) == {"m": [], "u": []}
    card = _card(model)
    assert "not fully trained" not in card
    assert "every level's m and u was estimated" in card


def test_a_level_no_sampled_pair_fell_into_is_weighed_from_the_sample_not_a_default() -> None:
    """Splink saves no u for such a level and scores it with a default; a rare, strong
    agreement then weighed less than weaker ones. It gets the bound the sample allows."""
    model = _model(dob_exact_m=0.9)
    levels = model["comparisons"][0]["comparison_levels"]
    levels[2]["m_probability"] = 0.04
    del levels[1]["u_probability"]  # exact date of birth: never seen among sampled pairs
    bounded = bound_unobserved_u_probabilities(model, pairs_sampled=1e6)
    assert bounded == ["date_of_birth: Exact match"]
    assert levels[1]["u_probability"] == pytest.approx(3e-6)
    assert levels[2]["u_probability"] == 0.01  # estimated levels keep their estimate
    assert untrained_levels(model) == {"m": [], "u": []}
    card = _card(model, u_probabilities_bounded=bounded)
    assert "3 / pairs sampled" in card and ": date_of_birth: Exact match." in card


def test_a_level_nothing_ever_reached_is_scored_as_no_evidence() -> None:
    """Neither EM nor the u sample saw it: Splink's default m over the sampled u bound made
    it a link on its own. It weighs nothing, and the card says so."""
    model = _model(dob_exact_m=0.9)
    levels = model["comparisons"][0]["comparison_levels"]
    del levels[2]["u_probability"]  # "One character": no m and no u
    unseen = neutralise_unobserved_levels(model, pairs_sampled=1e6)
    assert unseen == ["date_of_birth: One character"]
    assert levels[2]["m_probability"] == levels[2]["u_probability"]
    assert bound_unobserved_u_probabilities(model, pairs_sampled=1e6) == []
    card = _card(model, levels_never_seen=unseen)
    assert "scored as no evidence" in card and "date_of_birth: One character." in card

"""Model registry: every training produces a new, immutable, versioned model artefact.

Layout under the registry directory:
  model_v0001.json   a Splink model (settings + trained m/u), loadable by splink.Linker
  registry.json      one entry per version: created_at, config hash, training data fingerprint
  model_card.md      a short human-readable card for the newest version
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import splink


@dataclass(frozen=True)
class ModelVersion:
    version: int
    path: str
    created_at: str
    config_hash: str
    training_data_fingerprint: str
    splink_version: str
    probability_two_random_records_match: float


class ModelRegistry:
    def __init__(self, directory: Path):
        self.directory = directory
        self.index_path = directory / "registry.json"

    def versions(self) -> list[ModelVersion]:
        if not self.index_path.exists():
            return []
        return [ModelVersion(**v) for v in json.loads(self.index_path.read_text())["versions"]]

    def register(
        self, model: dict[str, Any], *, config_hash: str, training_data_fingerprint: str
    ) -> ModelVersion:
        """Store `model` as the next version; earlier versions are never overwritten."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.versions()
        number = (existing[-1].version + 1) if existing else 1
        path = self.directory / f"model_v{number:04d}.json"
        path.write_text(json.dumps(model, indent=2))
        entry = ModelVersion(
            version=number,
            path=path.name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            config_hash=config_hash,
            training_data_fingerprint=training_data_fingerprint,
            splink_version=splink.__version__,
            probability_two_random_records_match=float(
                model["probability_two_random_records_match"]
            ),
        )
        index = {"versions": [asdict(v) for v in [*existing, entry]]}
        self.index_path.write_text(json.dumps(index, indent=2))
        return entry

    def get(self, version: int | str) -> ModelVersion:
        versions = self.versions()
        if not versions:
            raise FileNotFoundError(f"{self.index_path}: no trained model registered yet")
        if version == "latest":
            return versions[-1]
        for v in versions:
            if v.version == int(version):
                return v
        raise KeyError(
            f"{self.index_path}: no model version {version}; have {[v.version for v in versions]}"
        )

    def load(self, version: int | str) -> tuple[ModelVersion, dict[str, Any]]:
        entry = self.get(version)
        return entry, json.loads((self.directory / entry.path).read_text())


def _weight(m: float | None, u: float | None) -> str:
    if not m or not u:
        return "n/a"
    return f"{math.log2(m / u):+.2f}"


def model_card_markdown(
    project: str,
    entry: ModelVersion,
    model: dict[str, Any],
    thresholds: dict[str, float],
    training_summary: dict[str, Any] | None,
    probable_twins_rule: str,
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
        f"- Probable-twins rule: {probable_twins_rule} (pairs with the same date of birth and "
        "different given names, at most sharing an initial, are not linked)",
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
        floored = training_summary.get("m_probabilities_floored") or []
        lines.append("")
        lines.append(
            "Levels whose m probability EM drove below 1e-5 (never seen among matches in the "
            "training data) were raised to 1e-5 so they cannot veto a link on their own: "
            + (", ".join(floored) if floored else "none")
            + "."
        )
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
        "share a household, surname and birth date (twins) break this, hence the twins rule.",
        "- Women who changed surname and moved address between records are hard to link.",
        "- Parameters are estimated without labels; see the manifest for measured accuracy "
        "where ground truth exists.",
    ]
    return "\n".join(lines) + "\n"

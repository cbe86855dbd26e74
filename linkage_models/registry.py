"""Model registry: every training produces a new, immutable, versioned model artefact.

Layout under the registry directory:
  model_v0001.json   a Splink model (settings + trained m/u), loadable by splink.Linker
  registry.json      one entry per version: created_at, config hash, training data fingerprint
  model_card.md      a short human-readable card for the version in use (model_card.py)
"""

from __future__ import annotations

import json
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

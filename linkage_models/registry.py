"""Model registry: every training produces a new, immutable, versioned model artefact.

Layout under the registry directory:
  model_v0001.json   a Splink model (settings + trained m/u), loadable by splink.Linker
  registry.json      one entry per version: created_at, config hash, training data fingerprint;
                     the approved version and every approval, oldest first
  model_card.md      a short human-readable card for the version in use (model_card.py)

Training registers a candidate; linkage runs with the approved version only. Approving is
an explicit step (`joinedup promote`), except that a project's first model is approved
when it is trained, so that a new project can link at all.
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
    # The recall of the deterministic rules the prior was built on (None: older versions,
    # built on the project's declared recall).
    deterministic_rules_recall: float | None = None
    # The balanced threshold chosen for this model on its first linkage (projects with
    # `balanced: auto`), with the estimates it was chosen from; frozen once set, so every
    # linkage with the model, incremental ones too, clusters at it (None: not chosen yet).
    balanced_threshold: float | None = None
    balanced_threshold_choice: dict[str, Any] | None = None


class ModelRegistry:
    def __init__(self, directory: Path):
        self.directory = directory
        self.index_path = directory / "registry.json"

    def _index(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"versions": [], "approved": None, "approvals": []}
        index = json.loads(self.index_path.read_text())
        index.setdefault("approved", None)
        index.setdefault("approvals", [])
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.index_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(index, indent=2))
        temporary.replace(self.index_path)  # one rename: never half an index

    def versions(self) -> list[ModelVersion]:
        return [ModelVersion(**v) for v in self._index()["versions"]]

    def approved(self) -> ModelVersion | None:
        """The version runs link with (None before the first approval)."""
        number = self._index()["approved"]
        return None if number is None else self.get(number)

    def approvals(self) -> list[dict[str, Any]]:
        return list(self._index()["approvals"])

    def approve(self, version: int | str) -> ModelVersion:
        """Make a registered version the one runs link with; the approval is recorded."""
        entry = self.get(version)
        index = self._index()
        index["approved"] = entry.version
        index["approvals"].append(
            {
                "version": entry.version,
                "approved_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "replaced": index["approvals"][-1]["version"] if index["approvals"] else None,
            }
        )
        self._write_index(index)
        return entry

    def register(
        self,
        model: dict[str, Any],
        *,
        config_hash: str,
        training_data_fingerprint: str,
        deterministic_rules_recall: float | None = None,
    ) -> ModelVersion:
        """Store `model` as the next version (a candidate, not approved); earlier versions
        are never overwritten."""
        self.directory.mkdir(parents=True, exist_ok=True)
        index = self._index()
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
            deterministic_rules_recall=deterministic_rules_recall,
        )
        index["versions"] = [asdict(v) for v in [*existing, entry]]
        self._write_index(index)
        return entry

    def record_balanced_threshold(
        self, version: int | str, threshold: float, choice: dict[str, Any]
    ) -> ModelVersion:
        """Freeze the balanced threshold chosen for a version; a version that has one keeps it."""
        entry = self.get(version)
        if entry.balanced_threshold is not None:
            raise ValueError(
                f"{self.index_path}: model v{entry.version} already links at balanced "
                f"{entry.balanced_threshold}"
            )
        index = self._index()
        for v in index["versions"]:
            if v["version"] == entry.version:
                v.update(balanced_threshold=threshold, balanced_threshold_choice=choice)
        self._write_index(index)
        return self.get(entry.version)

    def entry_for(self, model_file: Path) -> ModelVersion | None:
        """The entry of a registered model file (None: not one of this registry's)."""
        return next((v for v in self.versions() if v.path == model_file.name), None)

    def get(self, version: int | str) -> ModelVersion:
        versions = self.versions()
        if not versions:
            raise FileNotFoundError(f"{self.index_path}: no trained model registered yet")
        if version == "latest":
            return versions[-1]
        if version == "approved":
            approved = self._index()["approved"]
            if approved is None:
                raise KeyError(f"{self.index_path}: no model version has been approved yet")
            version = approved
        for v in versions:
            if v.version == int(version):
                return v
        raise KeyError(
            f"{self.index_path}: no model version {version}; have {[v.version for v in versions]}"
        )

    def load(self, version: int | str) -> tuple[ModelVersion, dict[str, Any]]:
        entry = self.get(version)
        return entry, json.loads((self.directory / entry.path).read_text())

"""Dagster code location: `dagster dev -m dagster_project` (see definitions.py)."""

from dagster_project.definitions import definitions_from_environment

defs = definitions_from_environment()

"""Dagster code location: `dg dev` from the repository root (see definitions.py)."""

from dagster_project.definitions import definitions_from_environment

defs = definitions_from_environment()

"""Checks on what is published: attributes that repeat a record's identifiers.

An attribute declared as non-identifying can still be an identifier in disguise (a court
region that is the defendant's postcode area, a "reference" that is a date of birth). For
each published attribute, the share of records whose value equals that record's own given
name, family name, date of birth, postcode, postcode district, postcode area or any other
identifier the source maps (a national number, an address...); values of one character are
not counted.
"""

from __future__ import annotations

import re

from linkage_models.project import LinkageProject
from pipelines.contract import Tables
from pipelines.engines import Engine
from pipelines.sql import ident

# Attribute names that look like identifiers (whatever their content shows).
IDENTIFYING_NAME = re.compile(
    r"name|birth|dob|postcode|post_code|zip|address|street|phone|email|nhs|ni_?num|ssn|"
    r"national_?insurance|passport|licen[cs]e",
    re.IGNORECASE,
)


def identifying_names(project: LinkageProject) -> list[str]:
    """Published attributes (as `source.column`) whose name looks identifying."""
    return [
        f"{s.name}.{a}" for s in project.sources for a in s.attributes if IDENTIFYING_NAME.search(a)
    ]


# What an attribute's value is compared with: the record's own standardised identifiers.
_ECHOES = (
    "upper(given_name)",
    "upper(family_name)",
    "CAST(date_of_birth AS VARCHAR)",
    "replace(postcode, ' ', '')",
    "postcode_district",
    "postcode_area",
)


def identifier_echo_rates(
    engine: Engine, project: LinkageProject, accepted_sources: list[str]
) -> dict[str, float]:
    """Per published attribute (as `source.column`), the share of its non-empty values that
    equal one of the same record's identifiers."""
    rates: dict[str, float] = {}
    for source in project.sources:
        if source.name not in accepted_sources:
            continue
        for attribute in source.attributes:
            value = f"upper(replace(trim({ident(attribute)}), ' ', ''))"
            # A one-character value (Y/N, a grade) cannot identify anyone, even when it
            # happens to equal a one-letter postcode area.
            # ... and the source's other identifiers (a national number, an address...).
            others = [
                f"upper(replace(CAST({ident(n)} AS VARCHAR), ' ', ''))"
                for n in source.identifiers.other
            ]
            echoes = (
                f"length({value}) > 1 AND ("
                + " OR ".join(f"{value} = {e}" for e in [*_ECHOES, *others])
                + ")"
            )
            filled, echoed = engine.fetch(
                f"SELECT count(*), count(*) FILTER (WHERE {echoes}) "
                f"FROM {Tables.accepted(source.name)} "
                f"WHERE nullif(trim({ident(attribute)}), '') IS NOT NULL"
            )[0]
            rates[f"{source.name}.{attribute}"] = (
                round(int(echoed) / int(filled), 6) if filled else 0.0
            )
    return rates

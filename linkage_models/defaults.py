"""A model derived from what a project maps, for projects that leave (part of) `model:` out.

Plain data in, plain data out (the same shape as the YAML), so the derivation is easy to
read and to test: which identifiers exist decides the comparisons, the blocking rules,
the deterministic rules for the prior and the EM sessions. Splink's blocking analysis
then checks the rules on the data before training (linkage_models/blocking.py).

The choices, and why:
- compare every identifier some source maps (for link_only: at least two sources);
  term-frequency adjustments on given name, family name, postcode and address, where
  common values are weak evidence;
- compare the family name and where a person lives (the addresses, or the postcode where
  no address is mapped) as one comparison, `household`: people of one household agree on
  both together, and separate comparisons would add those agreements up as if they were
  independent (beside an address the postcode stays a comparison of its own);
- block on each person identifier alone, on the full name, on date of birth with each
  name's sound, on postcode (or address) with each name, and on the swapped names;
- estimate the prior from rules that admit almost no false links (a person identifier
  with a name, full name with date of birth, family name with date of birth and postcode);
- run EM on at least two sessions so that every comparison is free in one of them, and
  free among pairs that can hold it: a session blocked on an identifier only one source
  maps sees that source's records alone, so it frees a comparison only if that source
  maps it too (pseudopeople's 1040 returns carry the SSN and no date of birth: a session
  on the SSN left the date of birth to Splink's default m).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from itertools import combinations_with_replacement
from typing import Any

# The comparison of family name and where a person lives together. Fellegi-Sunter treats
# comparisons as independent given match status; among members of one household the family
# name and the address (or postcode) agree together, so as separate comparisons their
# weights add up to a link between two different people of one household.
HOUSEHOLD = "household"

# The standardised columns each standard comparison reads (linkage_models/settings.py). An
# EM session cannot estimate a comparison that reads any column it blocks on (Splink
# switches such comparisons off): the given name's "names swapped" and "known by a middle
# name" levels read the family and middle names, so blocking on the family name fixes it.
COMPARED_COLUMNS = {
    "given_name": ("given_name", "given_name_aliases", "middle_names", "family_name"),
    "middle_names": ("middle_names",),
    "family_name": ("family_name", "family_name_soundex", "family_name_tokens"),
    "date_of_birth": ("date_of_birth", "dob_day", "dob_month", "dob_year"),
    "sex": ("sex",),
    "postcode": ("postcode", "postcode_area", "postcode_district", "postcode_sector"),
}
HOUSEHOLD_POSTCODE_COLUMNS = ("postcode", "postcode_district")
ADDRESS_SUFFIXES = ("", "_tokens", "_number", "_street", "_house")

TERM_FREQUENCY_PRIMITIVES = ("given_name", "family_name", "postcode")
PRIMITIVE_ORDER = ("given_name", "middle_names", "family_name", "date_of_birth", "sex", "postcode")
SWAPPED_NAMES = "l.given_name = r.family_name AND l.family_name = r.given_name"


def household_place(mapped: dict[str, int], others: dict[str, str], link_type: str) -> list[str]:
    """What the household comparison compares with the family name: the addresses, or the
    postcode where no address is mapped; [] when there is no household to compare (for
    link_only, only identifiers two or more sources map count). Beside an address the
    postcode is compared on its own."""
    need = 2 if link_type == "link_only" else 1
    if mapped.get("family_name", 0) < need:
        return []
    addresses = [n for n, t in others.items() if t == "address" and mapped.get(n, 0) >= need]
    return addresses or (["postcode"] if mapped.get("postcode", 0) >= need else [])


def identifier_counts(per_source: Sequence[frozenset[str]]) -> dict[str, int]:
    """How many sources map each identifier, from what each source maps."""
    return dict(Counter(key for present in per_source for key in present))


def derive_model(
    per_source: Sequence[frozenset[str]], others: dict[str, str], link_type: str
) -> dict[str, Any]:
    """comparisons, blocking_rules and training for the identifiers mapped.

    `per_source`: for each source, the identifiers it maps (primitives, `dob_year`, other
    identifiers' names); `others`: other identifier name -> type."""
    mapped = identifier_counts(per_source)
    need = 2 if link_type == "link_only" else 1

    def has(*keys: str) -> bool:
        return all(mapped.get(k, 0) >= need for k in keys)

    person_ids = [n for n, t in others.items() if t == "person_id" and has(n)]
    addresses = [n for n, t in others.items() if t == "address" and has(n)]
    place = household_place(mapped, others, link_type)
    household = bool(place)
    in_household = {"family_name", *place} if household else set()
    full_dob = has("date_of_birth")
    birth = "date_of_birth" if full_dob else "dob_year"

    comparisons: dict[str, Any] = {}
    for primitive in PRIMITIVE_ORDER:
        key = "dob_year" if primitive == "date_of_birth" else primitive
        if primitive == "family_name" and household:
            comparisons[HOUSEHOLD] = {}
        elif has(key) and primitive not in in_household:
            tf = primitive in TERM_FREQUENCY_PRIMITIVES
            comparisons[primitive] = {"term_frequency_adjustments": True} if tf else {}
    for name, kind in others.items():
        if has(name) and name not in in_household:
            comparisons[name] = {"term_frequency_adjustments": kind == "address"}

    blocking: list[Any] = [[p] for p in person_ids]
    names = has("given_name", "family_name")
    if names:
        blocking.append(["given_name", "family_name"])
    for name in ("family_name", "given_name"):
        if has(name) and has("dob_year"):
            blocking.append([birth, f"{name}_soundex"] if full_dob else [birth, name])
    if has("postcode"):
        if has("dob_year"):
            blocking.append([birth, "postcode_district"])
        blocking += [[n, "postcode"] for n in ("family_name", "given_name") if has(n)]
    for address in addresses:
        blocking.append([f"{address}_house"])
        if has("postcode"):
            blocking.append(["postcode", f"{address}_number"])
        if has("family_name"):
            blocking.append(["family_name", f"{address}_street"])
            # The house number with the family name or the date of birth: a pair whose
            # street, postcode and other name each carry a typo is still reached.
            blocking.append(["family_name", f"{address}_number"])
        if full_dob:
            blocking.append(["date_of_birth", f"{address}_number"])
    if names and has("dob_year"):
        blocking.append(["given_name_soundex", "family_name_soundex", "dob_year"])
    if names:
        blocking.append(SWAPPED_NAMES)

    deterministic: list[Any] = []
    for pid in person_ids:
        partner = next((k for k in ("family_name", "date_of_birth", "given_name") if has(k)), None)
        deterministic.append([pid, partner] if partner else [pid])
    if names and has("dob_year"):
        deterministic.append(["given_name", "family_name", birth])
    if has("family_name", "postcode") and has("dob_year"):
        deterministic.append(["family_name", birth, "postcode"])
    for address in addresses:
        if names:
            deterministic.append(["given_name", "family_name", address])

    columns = {name: compared_columns(name, place) for name in comparisons}
    held = _held_together(per_source, link_type, others)
    sessions = _em_sessions(has, birth, full_dob, person_ids, addresses, columns, place, held)
    if not blocking:
        blocking = list(sessions)
    if not deterministic:
        deterministic = blocking[:1]
    return {
        "comparisons": comparisons,
        "blocking_rules": blocking,
        "training": {"deterministic_rules": deterministic, "em_blocking_rules": sessions},
    }


def compared_columns(name: str, place: list[str]) -> set[str]:
    """The standardised columns a comparison reads; `place`: the household's (see
    household_place)."""
    if name == HOUSEHOLD:
        if place == ["postcode"]:
            where = set(HOUSEHOLD_POSTCODE_COLUMNS)
        else:
            where = {address + suffix for address in place for suffix in ADDRESS_SUFFIXES}
        return {"family_name", "family_name_soundex", *where}
    if name in COMPARED_COLUMNS:
        return set(COMPARED_COLUMNS[name])
    return {name + suffix for suffix in ADDRESS_SUFFIXES}  # another identifier's columns


def _identifier_of(column: str, others: dict[str, str]) -> str:
    """The identifier a standardised column comes from (`postcode_district` -> postcode,
    `dob_year` -> dob_year, `home_address_house` -> home_address)."""
    for name in others:
        if column == name or any(column == name + suffix for suffix in ADDRESS_SUFFIXES):
            return name
    if column.startswith("dob_"):
        return "dob_year"
    return next((p for p in PRIMITIVE_ORDER if column.startswith(p)), column)


def _held_together(
    per_source: Sequence[frozenset[str]], link_type: str, others: dict[str, str]
) -> Callable[[list[str], str], bool]:
    """Whether a session blocked on `rule` can hold a pair that has comparison `name` on
    both records: some pair of sources the linkage compares (one source with itself,
    except for link_only) both map every identifier the rule blocks on and the one the
    comparison needs (for the household, the family name)."""
    pairs = [
        per_source[i] & per_source[j]
        for i, j in combinations_with_replacement(range(len(per_source)), 2)
        if not (link_type == "link_only" and i == j)
    ]

    def needed(name: str) -> str:
        if name == HOUSEHOLD:
            return "family_name"
        return "dob_year" if name == "date_of_birth" else name

    def held(rule: list[str], name: str) -> bool:
        wanted = {_identifier_of(column, others) for column in rule} | {needed(name)}
        return any(wanted <= both for both in pairs)

    return held


def _em_sessions(
    has: Any,
    birth: str,
    full_dob: bool,
    person_ids: list[str],
    addresses: list[str],
    comparisons: dict[str, set[str]],
    place: list[str],
    held: Callable[[list[str], str], bool],
) -> list[list[str]]:
    """At least two EM blocking rules, each comparison free in at least one of them (a
    session frees a comparison when it blocks on none of the columns it reads, and some
    pair of sources it compares maps that comparison on both records: `held`).

    With a household comparison, the first sessions block on identifiers that admit few
    non-matches and leave family name and place free (each person identifier, then given
    name with date of birth), so that EM learns how family name and place agree among true
    matches; blocking on the given name alone lets EM settle on "same given name in the
    same area" as its match class. Where no person identifier frees the given name, it is
    learnt among records at one place born the same day: there the non-matches are twins
    (and the rare neighbour born the same day), who differ in given name, so EM tells them
    from matches by it. Blocking on the date of birth alone counts twins among the matches
    (their family name and place agree), and so learns unrelated given names as common
    among matches (3.5 times too common at 1M generated records). Blocking on the family
    name's sound too would hide the given name's swapped-names level, which reads the
    family name: no swapped pair agrees on it, and at 1M its m came out 270 times too
    small."""
    candidates: list[list[str]] = []
    if place:
        candidates += [[p] for p in person_ids]
        if has("given_name", "dob_year"):
            candidates.append(["given_name", birth])
        candidates.append(["family_name", birth] if has("dob_year") else ["family_name"])
        if full_dob:
            candidates.append([_place_key(place), birth])
    if has("dob_year"):
        candidates.append([birth] if full_dob else [birth, "family_name"])
    if has("given_name", "family_name"):
        candidates.append(["given_name", "family_name"])
    if has("postcode"):
        candidates.append(["postcode"])
    candidates += [[p] for p in person_ids]
    candidates += [[f"{a}_street"] for a in addresses]
    candidates += [[k] for k in ("family_name", "given_name") if has(k)]

    def frees(rule: list[str], name: str) -> bool:
        return not set(rule) & comparisons[name] and held(rule, name)

    sessions: list[list[str]] = []
    for rule in candidates:
        untrained = [c for c in comparisons if not any(frees(s, c) for s in sessions)]
        if len(sessions) >= 2 and not untrained:
            break
        if rule not in sessions and any(frees(rule, c) for c in untrained):
            sessions.append(rule)  # it lets EM estimate a comparison no session has yet
    for rule in candidates:  # Splink's EM wants two sessions at least
        if len(sessions) < 2 and rule not in sessions:
            sessions.append(rule)
    return sessions


def _place_key(place: list[str]) -> str:
    """The column on which records of one household agree exactly: the postcode, or the
    first address's house (number and street)."""
    return "postcode" if place == ["postcode"] else f"{place[0]}_house"

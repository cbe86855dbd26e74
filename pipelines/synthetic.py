"""Synthetic departmental extracts with known ground truth, in the flavour of Data First / BOLD.

A population of people is simulated once (names, sex, date of birth, address history, name
changes on marriage, twins), then each department samples appearances of those people over
the years and records them with its own schema, file format, conventions and error
processes. Ground truth is written to a separate file the linkage never reads.

Name frequencies follow published UK patterns: the 300 commonest surnames carry ~40% of
people (Smith ~1.2%) and a long tail of ~3,000 names the rest; the commonest given name is
~4% within a sex. A third of people have a brother or sister who shares their family name
and first two homes; twins are 1% of people (same surname, date of birth and addresses).

Everything is vectorised over numpy arrays; the only Python-level loops are over small
corrupted subsets (character typos), so 1M records generate in well under two minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FIRST_EVENT = np.datetime64("2005-01-01")
LAST_EVENT = np.datetime64("2024-12-31")
POSTCODE_UNIT_LETTERS = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
FIRST_BIRTH = np.datetime64("1940-01-01")
LAST_BIRTH = np.datetime64("2008-12-31")
MONTHS = np.array(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
)


def _reference_csv(name: str) -> pd.DataFrame:
    with resources.files("pipelines").joinpath("reference_data", name).open("rb") as fh:
        return pd.read_csv(fh, keep_default_na=False)


@dataclass(frozen=True)
class ErrorRates:
    """Per-record probabilities of each error process, for one department."""

    given_typo: float = 0.02
    family_typo: float = 0.02
    nickname: float = 0.05
    names_swapped: float = 0.004
    given_missing: float = 0.004
    dob_missing: float = 0.01
    dob_day_month_swap: float = 0.008
    dob_digit_typo: float = 0.008
    dob_imputed_first_jan: float = 0.004
    dob_placeholder: float = 0.003
    dob_garbage: float = 0.001
    sex_unknown: float = 0.02
    postcode_missing: float = 0.04
    postcode_typo: float = 0.01
    postcode_stale: float = 0.05
    duplicate_row: float = 0.001


@dataclass(frozen=True)
class Department:
    """How one department samples people and what its extract looks like."""

    name: str
    file_format: str
    id_prefix: str
    min_age: int
    max_age: int
    p_offender: float
    p_other: float
    mean_extra_records: float
    errors: ErrorRates


DEPARTMENTS = (
    Department(
        "magistrates_courts",
        "csv",
        "MC",
        18,
        90,
        0.85,
        0.01,
        1.4,
        ErrorRates(given_typo=0.025, family_typo=0.025, nickname=0.08),
    ),
    Department(
        "prisons",
        "parquet",
        "PR",
        18,
        90,
        0.35,
        0.0,
        0.6,
        ErrorRates(postcode_missing=0.15, nickname=0.06),
    ),
    Department(
        "probation",
        "csv",
        "PB",
        18,
        90,
        0.6,
        0.0,
        0.8,
        ErrorRates(names_swapped=0.006, dob_day_month_swap=0.01),
    ),
    Department(
        "pupils",
        "parquet",
        "NP",
        4,
        16,
        0.9,
        0.9,
        1.5,
        ErrorRates(
            nickname=0.01,
            dob_missing=0.002,
            dob_garbage=0.0,
            dob_placeholder=0.0,
            sex_unknown=0.002,
            postcode_missing=0.01,
        ),
    ),
    Department(
        "benefits",
        "csv",
        "DW",
        18,
        90,
        0.5,
        0.2,
        0.5,
        ErrorRates(dob_imputed_first_jan=0.008, postcode_stale=0.08),
    ),
)


class _Population:
    """People as parallel arrays (index = person)."""

    def __init__(self, n: int, rng: np.random.Generator):
        given = _given_name_pools()
        surnames = _reference_csv("surnames.csv")
        areas = _reference_csv("postcode_areas.csv")

        n_twins = int(n * 0.01)
        n_base = n - n_twins
        self.n = n
        self.sex = rng.choice(np.array(["M", "F"]), size=n)
        self.given = np.empty(n, dtype=object)
        self.middle = np.full(n, "", dtype=object)
        for sex, (names, p) in given.items():
            idx = np.flatnonzero(self.sex == sex)
            self.given[idx] = rng.choice(names, size=idx.size, p=p)
            has_middle = rng.random(idx.size) < 0.6
            middles = rng.choice(names, size=idx.size, p=p)
            second = rng.choice(names, size=idx.size, p=p)
            two = has_middle & (rng.random(idx.size) < 0.12)
            middles = np.where(two, middles + " " + second, middles)
            self.middle[idx] = np.where(has_middle, middles, "")

        sp = surnames.weight.to_numpy() / surnames.weight.sum()
        sn = surnames.family_name.to_numpy()
        self.birth_family = rng.choice(sn, size=n, p=sp).astype(object)
        double = rng.random(n) < 0.03
        self.birth_family[double] = (
            self.birth_family[double] + "-" + rng.choice(sn, size=int(double.sum()), p=sp)
        )

        span = (LAST_BIRTH - FIRST_BIRTH).astype(int)
        self.dob = FIRST_BIRTH + rng.integers(0, span, size=n).astype("timedelta64[D]")

        # Address history: up to four addresses, moving in given years.
        area_p = areas.weight.to_numpy() / areas.weight.sum()
        self.n_addresses = 4
        home_area = rng.choice(areas.area.to_numpy(), size=n, p=area_p)
        self.postcodes = np.empty((n, self.n_addresses), dtype=object)
        self.move_years = np.zeros((n, self.n_addresses), dtype=int)
        birth_year = self.dob.astype("datetime64[Y]").astype(int) + 1970
        for k in range(self.n_addresses):
            same_area = rng.random(n) < 0.7
            area = np.where(same_area, home_area, rng.choice(areas.area.to_numpy(), n, p=area_p))
            self.postcodes[:, k] = _random_postcodes(area, rng)
            if k == 0:
                self.move_years[:, k] = birth_year
            else:
                self.move_years[:, k] = self.move_years[:, k - 1] + rng.integers(2, 15, size=n)

        self._add_siblings(n_base, given, rng)
        birth_year = self.dob.astype("datetime64[Y]").astype(int) + 1970

        # Name change on marriage for some women, at a year in adult life.
        self.family_change_year = np.full(n, 9999)
        married = (self.sex == "F") & (rng.random(n) < 0.3)
        self.family_change_year[married] = birth_year[married] + rng.integers(20, 45, married.sum())
        self.married_family = rng.choice(sn, size=n, p=sp).astype(object)

        # Twins: copies of the last n_twins base people sharing surname, dob and addresses,
        # with a different given name (and maybe sex).
        src = rng.choice(n_base, size=n_twins, replace=False)
        tw = np.arange(n_base, n)
        for arr in (self.birth_family, self.dob, self.married_family):
            arr[tw] = arr[src]
        self.postcodes[tw] = self.postcodes[src]
        self.move_years[tw] = self.move_years[src]
        self.family_change_year[tw] = 9999
        for sex, (names, p) in given.items():
            idx = tw[self.sex[tw] == sex]
            picked = rng.choice(names, size=idx.size, p=p)
            clash = picked == self.given[src[np.isin(tw, idx)]]
            picked[clash] = rng.choice(names, size=int(clash.sum()), p=p)
            self.given[idx] = picked
        self.birth_year = birth_year
        # A small minority of people are known to the justice system.
        self.offender = rng.random(n) < 0.12

    def _add_siblings(
        self, n_base: int, given: dict[str, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
    ) -> None:
        """Make a third of the base people a brother or sister of another: same birth family
        name, born one to ten years apart, living in the family's first two homes until they
        leave. Without them every pair sharing a family name and a postcode was one person or
        twins, which no register of households looks like: at 1M records, 97% of such pairs
        with unrelated given names were born the same day."""
        others = rng.permutation(n_base)
        sib, src = others[: n_base // 3], others[n_base // 3 : 2 * (n_base // 3)]
        self.birth_family[sib] = self.birth_family[src]
        gap = rng.integers(365, 3650, size=sib.size).astype("timedelta64[D]")
        later = self.dob[src] + gap
        self.dob[sib] = np.where(later <= LAST_BIRTH, later, self.dob[src] - gap)
        self.dob[sib] = np.maximum(self.dob[sib], FIRST_BIRTH)
        born = self.dob[sib].astype("datetime64[Y]").astype(int) + 1970
        moves = self.move_years
        self.postcodes[sib, :2] = self.postcodes[src, :2]
        moves[sib, 0] = born
        moves[sib, 1] = np.maximum(moves[src, 1], born + 1)
        moves[sib, 2] = np.maximum(moves[src, 2], moves[sib, 1] + 1)
        moves[sib, 3] = moves[sib, 2] + rng.integers(2, 15, size=sib.size)
        for sex, (names, p) in given.items():  # parents do not give two children one name
            pick = (self.sex[sib] == sex) & (self.given[sib] == self.given[src])
            self.given[sib[pick]] = rng.choice(names, int(pick.sum()), p=p)


def _given_name_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per sex (M, then F: the order draws are made in), the given names and their
    probabilities."""
    given = _reference_csv("given_names.csv")
    pools = {}
    for sex in ("M", "F"):
        pool = given[given.sex == sex]
        pools[sex] = (pool.given_name.to_numpy(), pool.weight.to_numpy() / pool.weight.sum())
    return pools


def _random_postcodes(area: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = area.size
    district = rng.integers(1, 25, size=n).astype(str)
    sector = rng.integers(0, 10, size=n).astype(str)
    unit = rng.choice(POSTCODE_UNIT_LETTERS, size=(n, 2))
    return (area.astype(object) + district + " " + sector + unit[:, 0] + unit[:, 1]).astype(object)


def _typo(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One keyboard-style error per value: substitute, delete, insert or transpose."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = values.copy()
    kinds = rng.integers(0, 4, size=values.size)
    positions = rng.random(values.size)
    new_letters = rng.integers(0, 26, size=values.size)
    for i, s in enumerate(values):  # only the small corrupted subset reaches here
        if not isinstance(s, str) or len(s) < 3:
            continue
        p = 1 + int(positions[i] * (len(s) - 2))
        c = letters[new_letters[i]]
        kind = kinds[i]
        if kind == 0:
            out[i] = s[:p] + c + s[p + 1 :]
        elif kind == 1:
            out[i] = s[:p] + s[p + 1 :]
        elif kind == 2:
            out[i] = s[:p] + c + s[p:]
        else:
            out[i] = s[: p - 1] + s[p] + s[p - 1] + s[p + 1 :]
    return out


def _apply(mask: np.ndarray, target: np.ndarray, values: np.ndarray | object) -> None:
    if np.ndim(values) == 0:
        target[mask] = values
    else:
        target[mask] = np.asarray(values)[mask]


class _Records:
    """One department's records as arrays, before formatting."""

    def __init__(self, pop: _Population, dept: Department, rng: np.random.Generator):
        p = np.where(pop.offender, dept.p_offender, dept.p_other)
        lo = np.maximum(FIRST_EVENT, _add_years(pop.dob, dept.min_age))
        hi = np.minimum(LAST_EVENT, _add_years(pop.dob, dept.max_age))
        eligible = hi > lo
        appears = eligible & (rng.random(pop.n) < p)
        people = np.flatnonzero(appears)
        counts = 1 + rng.poisson(dept.mean_extra_records, size=people.size)
        person = np.repeat(people, counts)
        n = person.size
        window = (hi[person] - lo[person]).astype(int)
        self.event_date = lo[person] + (rng.random(n) * window).astype("timedelta64[D]")
        event_year = self.event_date.astype("datetime64[Y]").astype(int) + 1970
        self.person = person
        e = dept.errors

        self.sex = pop.sex[person].astype(object)
        self.given = pop.given[person].copy()
        self.middle = pop.middle[person].copy()
        changed = event_year >= pop.family_change_year[person]
        self.family = np.where(changed, pop.married_family[person], pop.birth_family[person])
        self.family = self.family.astype(object)
        self.dob = pop.dob[person].copy()

        # Address at the event date (or a stale earlier one).
        addr = (event_year[:, None] >= pop.move_years[person]).sum(axis=1) - 1
        addr = np.clip(addr, 0, pop.n_addresses - 1)
        stale = (rng.random(n) < e.postcode_stale) & (addr > 0)
        addr = addr - stale
        self.postcode = pop.postcodes[person, addr].astype(object)

        # Double-barrelled surnames often recorded as one part.
        hyph = np.array(["-" in f for f in self.family]) & (rng.random(n) < 0.3)
        parts = [f.split("-") for f in self.family[hyph]]
        pick = rng.integers(0, 2, size=len(parts))
        self.family[hyph] = np.array(
            [pp[k] for pp, k in zip(parts, pick, strict=True)], dtype=object
        )

        # Informal given names: some from the nickname list the standardisation also knows,
        # the rest shortened or pet forms nobody listed (Jul, Jullie, Sammie...), which a
        # linkage has to survive without a lookup.
        nick = _nickname_lookup()
        wants_nick = rng.random(n) < e.nickname
        listed = np.array([g in nick for g in self.given]) & (rng.random(n) < 0.6)
        has_nick = wants_nick & listed
        choice = rng.random(n)
        self.given[has_nick] = np.array(
            [
                nick[g][int(c * len(nick[g]))]
                for g, c in zip(self.given[has_nick], choice[has_nick], strict=True)
            ],
            dtype=object,
        )
        informal = wants_nick & ~listed
        self.given[informal] = _informal_forms(self.given[informal], choice[informal])
        m = rng.random(n) < e.given_typo
        self.given[m] = _typo(self.given[m], rng)
        m = rng.random(n) < e.family_typo
        self.family[m] = _typo(self.family[m], rng)
        swap = rng.random(n) < e.names_swapped
        self.given[swap], self.family[swap] = self.family[swap].copy(), self.given[swap].copy()
        self.given[rng.random(n) < e.given_missing] = ""
        self.given[rng.random(n) < 0.002] = "UNKNOWN"

        # Dates of birth as text later; record which error applied.
        self.dob_text_override = np.full(n, None, dtype=object)
        day = (self.dob - self.dob.astype("datetime64[M]")).astype(int) + 1
        month = self.dob.astype("datetime64[M]").astype(int) % 12 + 1
        year = self.dob.astype("datetime64[Y]").astype(int) + 1970
        u = rng.random(n)
        swap_dm = (u < e.dob_day_month_swap) & (day <= 12) & (day != month)
        self.dob[swap_dm] = _ymd(year[swap_dm], day[swap_dm], month[swap_dm])
        # A mistyped digit lands in the day, the month or the year alike.
        typo = (u >= e.dob_day_month_swap) & (u < e.dob_day_month_swap + e.dob_digit_typo)
        shift = rng.choice(np.array([-10, -1, 1, 10]), size=n)
        part = rng.integers(0, 3, size=n)
        new_day = np.where(part == 0, np.clip(day + shift, 1, 28), np.minimum(day, 28))
        new_month = np.where(part == 1, np.clip(month + np.sign(shift), 1, 12), month)
        new_year = np.where(part == 2, year + shift, year)
        self.dob[typo] = _ymd(new_year[typo], new_month[typo], new_day[typo])
        u2 = rng.random(n)
        imputed = u2 < e.dob_imputed_first_jan
        self.dob[imputed] = _ymd(
            year[imputed], np.ones(imputed.sum(), int), np.ones(imputed.sum(), int)
        )
        self.dob_missing = (u2 >= e.dob_imputed_first_jan) & (
            u2 < e.dob_imputed_first_jan + e.dob_missing
        )
        placeholder = (u2 >= 0.5) & (u2 < 0.5 + e.dob_placeholder)
        self.dob[placeholder] = np.datetime64("1900-01-01")
        self.dob_garbage = (u2 >= 0.7) & (u2 < 0.7 + e.dob_garbage)

        self.sex[rng.random(n) < e.sex_unknown] = None
        self.postcode[rng.random(n) < e.postcode_missing] = ""
        m = rng.random(n) < e.postcode_typo
        self.postcode[m] = np.array(
            [_postcode_typo(pc, rng) for pc in self.postcode[m]], dtype=object
        )
        self.n = n
        self.duplicate = rng.random(n) < e.duplicate_row


def _postcode_typo(pc: str, rng: np.random.Generator) -> str:
    if len(pc) < 6:
        return pc
    i = len(pc) - 1 - int(rng.integers(0, 2))
    return pc[:i] + str(POSTCODE_UNIT_LETTERS[rng.integers(0, 20)]) + pc[i + 1 :]


def _add_years(d: np.ndarray, years: int) -> np.ndarray:
    return d + np.timedelta64(int(years * 365.25), "D")


def _ymd(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    base = (np.asarray(year) - 1970).astype("datetime64[Y]").astype("datetime64[M]")
    return (base + (np.asarray(month) - 1).astype("timedelta64[M]")).astype("datetime64[D]") + (
        np.asarray(day) - 1
    ).astype("timedelta64[D]")


_NICKNAMES: dict[str, list[str]] | None = None


def _nickname_lookup() -> dict[str, list[str]]:
    """canonical given name -> list of nicknames people use for it."""
    global _NICKNAMES
    if _NICKNAMES is None:
        table = _reference_csv("nicknames.csv")
        _NICKNAMES = table.groupby("canonical").variant.apply(list).to_dict()
    return _NICKNAMES


def _informal_forms(names: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Shortened and pet forms made by rule, not taken from any list: the first syllable
    (Julian -> Jul, Christopher -> Chris), or it with a pet ending (Julie, Sammy, Emmie)."""
    lower = pd.Series(names, dtype="object").str.lower()
    stem = lower.str.extract(r"^([^aeiouy]*[aeiouy]+[^aeiouy])", expand=False)
    shortened = stem.notna() & (lower.str.len() >= 4) & (stem.str.len() < lower.str.len())
    c = pd.Series(choice)
    # A pet ending for two in three, the last consonant doubled for half of those.
    doubled = stem.str[-1].where(c >= 2 / 3, "")
    ending = pd.Series(np.where((c * 6) % 1 < 0.5, "ie", "y"))
    form = stem + (doubled + ending).where(c >= 1 / 3, "")
    out = names.copy()
    out[shortened.to_numpy()] = form[shortened].str.title().to_numpy()
    return out


def _title(values: np.ndarray) -> pd.Series:
    return pd.Series(values, dtype="object").fillna("").str.title()


def _dob_strings(rec: _Records, fmt: str) -> pd.Series:
    s = pd.Series(pd.to_datetime(rec.dob)).dt.strftime(fmt).astype(object)
    s[rec.dob_missing] = ""
    garbage = np.array(["31/02/1985", "00/00/0000", "19/13/1975", "??/??/19", "1985-02-31"])
    g = rec.dob_garbage
    s[g] = garbage[np.arange(g.sum()) % garbage.size]
    return s


def _record_ids(prefix: str, n: int, rng: np.random.Generator) -> np.ndarray:
    ids = rng.permutation(n) + int(rng.integers(10**8, 5 * 10**8))
    return np.char.add(prefix, ids.astype(str)).astype(object)


def _format_department(dept: Department, rec: _Records, rng: np.random.Generator) -> pd.DataFrame:
    """Lay out one department's extract with its own column names and conventions."""
    n = rec.n
    event = pd.Series(pd.to_datetime(rec.event_date))
    given = pd.Series(rec.given, dtype=object)
    middle = pd.Series(rec.middle, dtype=object)
    family = pd.Series(rec.family, dtype=object)
    sex = pd.Series(rec.sex, dtype=object)
    postcode = pd.Series(rec.postcode, dtype=object)
    ids = _record_ids(dept.id_prefix, n, rng)
    # The court's region: one of the ten English regions and Wales, where the hearing was
    # (usually the defendant's home region). Coarse by design: a postcode area would be a
    # quasi-identifier.
    areas = _reference_csv("postcode_areas.csv").set_index("area")["region"]
    region = postcode.str.extract(r"^([A-Z]{1,2})")[0].map(areas).fillna("Unknown")

    if dept.name == "magistrates_courts":
        forenames = (given + " " + middle).str.strip()
        name = family.str.upper() + ", " + forenames.str.upper()
        df = pd.DataFrame(
            {
                "case_defendant_id": ids,
                "defendant_name": name,
                "date_of_birth": _dob_strings(rec, "%d/%m/%Y"),
                "gender": sex.map({"M": "M", "F": "F"}).fillna("U"),
                "home_postcode": postcode.str.upper(),
                "hearing_date": event.dt.strftime("%d/%m/%Y"),
                "offence_group": rng.choice(
                    ["violence", "theft", "drugs", "motoring", "public order", "fraud"], size=n
                ),
                "court_region": region,
            }
        )
    elif dept.name == "prisons":
        df = pd.DataFrame(
            {
                "prisoner_ref": ids,
                "first_name": _title(rec.given),
                "middle_name": _title(rec.middle),
                "last_name": _title(rec.family),
                "dob": _dob_strings(rec, "%Y%m%d"),
                "sex": sex.map({"M": "Male", "F": "Female"}).fillna("Not Known"),
                "postcode": postcode.str.replace(" ", "", regex=False).str.lower(),
                "reception_date": event.dt.date,
                "establishment_type": rng.choice(
                    ["local", "training", "open", "high security"], size=n
                ),
                "sentence_band": rng.choice(["<12m", "1-4y", "4y+", "remand"], size=n),
            }
        )
    elif dept.name == "probation":
        name = (given + " " + middle + " " + family).str.replace(r"\s+", " ", regex=True)
        df = pd.DataFrame(
            {
                "person_ref": ids,
                "full_name": name.str.strip().str.title(),
                "birth_date": _dob_strings(rec, "%Y-%m-%d"),
                "gender": sex.fillna(""),
                "postcode": postcode,
                "supervision_start": event.dt.strftime("%Y-%m-%d"),
                "requirement_type": rng.choice(
                    ["unpaid work", "rehabilitation activity", "curfew", "treatment"], size=n
                ),
            }
        )
    elif dept.name == "pupils":
        dob = pd.Series(pd.to_datetime(rec.dob)).dt.date.astype(object)
        dob[rec.dob_missing] = None
        df = pd.DataFrame(
            {
                "pupil_matching_ref": ids,
                "forename": given.str.upper(),
                "surname": family.str.upper(),
                "date_of_birth": dob,
                "sex": sex.fillna(""),
                "postcode": postcode,
                "census_date": event.dt.date,
                "fsm_eligible": rng.choice(["Y", "N"], size=n, p=[0.2, 0.8]),
                "sen_provision": rng.choice(
                    ["none", "sen support", "ehc plan"], size=n, p=[0.82, 0.14, 0.04]
                ),
            }
        )
    elif dept.name == "benefits":
        forenames = (given + " " + middle).str.strip()
        dob = _dob_strings(rec, "%d-%b-%Y")
        df = pd.DataFrame(
            {
                "claim_id": ids,
                "claimant_forenames": forenames,
                "claimant_surname": family.str.upper(),
                "birth_date": dob,
                "sex_code": sex.map({"M": "1", "F": "2"}).fillna("0"),
                "postcode": postcode.str.replace(" ", "", regex=False),
                "claim_start": event.dt.strftime("%Y%m%d"),
                "benefit_type": rng.choice(["universal credit", "jsa", "esa", "pip"], size=n),
            }
        )
    else:  # pragma: no cover - the department list is fixed above
        raise ValueError(dept.name)
    return df


@dataclass(frozen=True)
class GeneratedData:
    out_dir: Path
    files: dict[str, Path]
    records: dict[str, int]
    people: int
    ground_truth: Path


def generate_extracts(out_dir: str | Path, people: int, seed: int = 42) -> GeneratedData:
    """Write one extract per department plus ground_truth.parquet into `out_dir`."""
    if people < 10:
        raise ValueError("people must be at least 10")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pop = _Population(people, rng)
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    truth_parts = []
    for dept in DEPARTMENTS:
        rec = _Records(pop, dept, rng)
        df = _format_department(dept, rec, rng)
        id_col = df.columns[0]
        truth_parts.append(
            pd.DataFrame(
                {
                    "source_dataset": dept.name,
                    "source_record_id": df[id_col].to_numpy(),
                    "true_person_id": np.char.add("T", rec.person.astype(str)),
                }
            )
        )
        # Re-delivered rows: exact copies that share a record id.
        df = pd.concat([df, df[rec.duplicate]], ignore_index=True)
        df = df.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)
        path = out / f"{dept.name}.{dept.file_format}"
        if dept.file_format == "csv":
            sep = ";" if dept.name == "benefits" else ","
            df.to_csv(path, index=False, sep=sep)
        else:
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
        files[dept.name] = path
        counts[dept.name] = len(df)
    truth = pd.concat(truth_parts, ignore_index=True)
    truth_path = out / "ground_truth.parquet"
    pq.write_table(pa.Table.from_pandas(truth, preserve_index=False), truth_path)
    (out / "README.txt").write_text(
        "Synthetic extracts generated by joinedup "
        f"(people={people}, seed={seed}).\nground_truth.parquet is for evaluation only: "
        "the linkage never reads it.\n"
    )
    return GeneratedData(out, files, counts, people, truth_path)


def label_from_ground_truth(sample: pd.DataFrame, truth_path: Path) -> pd.DataFrame:
    """A simulated clerical reviewer for synthetic data: decisions taken from ground truth
    (1 when the two records of a sampled pair are the same true person, else 0)."""
    truth = pd.read_parquet(truth_path).set_index(["source_dataset", "source_record_id"])
    person = truth["true_person_id"]
    left = person.reindex(list(zip(sample.source_dataset_l, sample.record_id_l, strict=True)))
    right = person.reindex(list(zip(sample.source_dataset_r, sample.record_id_r, strict=True)))
    reviewed = sample.copy()
    reviewed["clerical_match"] = (left.to_numpy() == right.to_numpy()).astype(int).astype(str)
    return reviewed

"""Helpers the tests share: the identifiers of a synthetic delivery, and HTML tables as rows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from linkage_models.project import DEFAULT_PLACEHOLDER_DATES, DEFAULT_PLACEHOLDERS
from pipelines.contract import OutputLayout
from pipelines.synthetic import GeneratedData
from quality.shareable_text import without_library_code

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "examples" / "demo_project.yaml"


def demo_settings() -> dict[str, Any]:
    """The demo project file as a dict, a fresh copy a test may change into its variant."""
    return yaml.safe_load(DEMO_CONFIG.read_text())


def write_project(raw: dict[str, Any], path: Path) -> Path:
    """A project's settings written as a project file at `path` (keys in their order)."""
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def demo_subset(data: GeneratedData, folder: Path, sources: tuple[str, ...]) -> Path:
    """The demo project over some of its sources, with their files copied into `folder`
    (free to break) and its outputs in `folder/out`; returns the project file."""
    raw = demo_settings()
    raw["sources"] = [s for s in raw["sources"] if s["name"] in sources]
    for s in raw["sources"]:
        shutil.copy(data.files[s["name"]], folder / s["path"])
    raw["data_dir"] = str(folder)
    raw["output"]["path"] = str(folder / "out")
    return write_project(raw, folder / "project.yaml")


def published(output_dir: Path) -> OutputLayout:
    """The latest publication in an output folder (what a researcher would read)."""
    return OutputLayout(output_dir).published


# Where each synthetic extract keeps its names, dates of birth and postcodes.
NAME_COLUMNS = {
    "magistrates_courts": ["defendant_name"],
    "prisons": ["first_name", "middle_name", "last_name"],
    "probation": ["full_name"],
    "pupils": ["forename", "surname"],
    "benefits": ["claimant_forenames", "claimant_surname"],
}
DOB_COLUMNS = {
    "magistrates_courts": "date_of_birth",
    "prisons": "dob",
    "probation": "birth_date",
    "pupils": "date_of_birth",
    "benefits": "birth_date",
}
POSTCODE_COLUMNS = {
    "magistrates_courts": "home_postcode",
    "prisons": "postcode",
    "probation": "postcode",
    "pupils": "postcode",
    "benefits": "postcode",
}


def read_extract(data: GeneratedData, source: str) -> pd.DataFrame:
    path = data.files[source]
    if path.suffix == ".parquet":
        return pd.read_parquet(path).astype(str).replace({"None": "", "NaT": "", "nan": ""})
    sep = ";" if source == "benefits" else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


# Placeholder dates of birth (01/01/1900...) are nobody's: reports may name them as examples.
PLACEHOLDER_YEARS = {d[:4] for d in DEFAULT_PLACEHOLDER_DATES}


@dataclass(frozen=True)
class Identifiers:
    """Values from the deliveries that must never leave: long name words (lower case),
    postcodes (as delivered and compact) and dates of birth (as delivered)."""

    name_words: frozenset[str]
    postcodes: frozenset[str]
    dates_of_birth: frozenset[str]

    def found_in(self, text: str) -> list[str]:
        """The identifiers that occur in `text` (names as whole words, any case), outside
        the chart libraries inlined for offline use."""
        text = without_library_code(text)
        words = set(re.findall(r"[a-z][a-z'-]+", text.lower()))
        tokens = set(re.findall(r"[0-9A-Za-z/-]+", text))
        found = sorted(self.name_words & words)
        found += sorted(p for p in self.postcodes if (p in text if " " in p else p in tokens))
        found += sorted(self.dates_of_birth & tokens)
        return found


def identifiers_of(data: GeneratedData, min_name_length: int = 7) -> Identifiers:
    """Name words of at least `min_name_length` letters (shorter ones collide with ordinary
    words), every postcode and every date of birth of the synthetic deliveries."""
    names: set[str] = set()
    postcodes: set[str] = set()
    dobs: set[str] = set()
    for source in NAME_COLUMNS:
        frame = read_extract(data, source)
        for column in NAME_COLUMNS[source]:
            for value in frame[column].str.lower():
                names.update(w for w in re.split(r"[\s,]+", value) if len(w) >= min_name_length)
        for value in frame[POSTCODE_COLUMNS[source]]:
            if len(value.strip()) >= 5:
                postcodes.add(value.strip())
                postcodes.add(value.replace(" ", "").upper())
        dobs.update(
            v.strip()
            for v in frame[DOB_COLUMNS[source]]
            if len(v.strip()) >= 8 and not any(y in v for y in PLACEHOLDER_YEARS)
        )
    names -= {p.lower() for p in DEFAULT_PLACEHOLDERS}  # "UNKNOWN" is no one's name
    return Identifiers(frozenset(names), frozenset(postcodes), frozenset(dobs))


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> list[list[list[str]]]:
    """Every table of a page as rows of cell texts (entities decoded); row 0 is the header."""
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def small_counts_shown(html: str, count_headers: set[str]) -> list[tuple[str, str]]:
    """Cells under a count column that show a count from 1 to 9 (which must be suppressed)."""
    shown = []
    for table in html_tables(html):
        if not table:
            continue
        header = table[0]
        for row in table[1:]:
            for name, cell in zip(header, row, strict=False):
                digits = cell.replace(",", "")
                if name in count_headers and digits.isdigit() and 0 < int(digits) < 10:
                    shown.append((name, cell))
    return shown


@dataclass(frozen=True)
class RenderedPage:
    text: str  # what a reader sees, without markup
    requests: list[str]  # every http(s) URL the page itself asked for


def render_offline(page: Path, scratch: Path) -> RenderedPage:
    """Open `page` in headless Chromium with the network cut off (no name resolves, every
    connection goes to a closed local port) and log what the page tried to fetch. The
    browser's own background requests are not the page's and are left out."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "chromium is not installed: pages people read are checked in a real browser "
            "(apt-get install chromium; .ci/run installs it)"
        )
    net_log = scratch / "net-log.json"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            f"--log-net-log={net_log}",
            f"--user-data-dir={scratch / 'chromium-profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", done.stdout, flags=re.S)
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", body)).split())
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [
        url
        for e in log["events"]
        if e["type"] == start_job
        and e["params"].get("initiator") != "not an origin"  # the browser's own
        and not (url := e["params"].get("url", "file:")).startswith(("file:", "data:"))
    ]
    return RenderedPage(text, requests)

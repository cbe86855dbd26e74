"""The words of the shareable zone's text, read as the publication audit reads them.

The audit looks for an input record's full name as two adjacent words. Read as one stream of
characters, a report is mostly markup and code: tag names, JSON keys, column names, the
chart libraries. At a million records, some record's given and family name were bound to
match two such neighbours ("is `day and month swapped`" in a chart, a given name "Is" and
family name "Day"), and the audit refused the publication. So only what a person reads,
or what a data value could be written into, is read here: an HTML page's text and
attribute values, the string literals of its scripts (where charts keep their data), a
JSON document's strings, a CSV file's rows, and other text as it is.

Within those, two words are neighbours only if nothing but spaces and punctuation parts
them: a piece holding a digit or an underscore (a count, a code, a column name) is no word
of a name and parts the words either side, as do quotation marks and backticks (a quoted
label is not one phrase with the words before it). Word pairs the product writes itself,
in its own templates and code, are not taken for names (`own_phrases`): a record whose
full name is one of them could not be told from the product's own text.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from collections.abc import Iterator
from functools import cache
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

# The chart libraries (Vega) inlined so charts work offline: minified code, never data.
LIBRARY_BUNDLE = re.compile(r"<script[^>]*>\s*!function\(.*?</script>", re.S)
PIECE = re.compile(r"[\w'‘’-]+")
NAME_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
QUOTES = re.compile(r"[`\"“”]")
STRING_LITERAL = re.compile(r"\"((?:[^\"\\\n]|\\.)*)\"|'((?:[^'\\\n]|\\.)*)'")
# The product's own text: the packages that write what is published.
OWN_PACKAGES = ("quality", "pipelines", "linkage_models", "dagster_project")
OWN_SUFFIXES = {".py", ".j2", ".js", ".css"}


def without_library_code(text: str) -> str:
    """Text of a shareable file with inlined JavaScript libraries left out (their
    identifiers, e.g. a function `marshall`, are not anyone's name)."""
    return LIBRARY_BUNDLE.sub("", text)


def word_pairs(unit: str, quotes_part: bool = True) -> set[str]:
    """Adjacent word pairs of one piece of text, lower case ("given family")."""
    pairs = set()
    for part in QUOTES.split(unit) if quotes_part else [QUOTES.sub(" ", unit)]:
        previous = None
        for piece in PIECE.findall(part):
            piece = piece.strip("'‘’-")  # a name in single quotes is still a name
            word = piece.lower() if NAME_WORD.fullmatch(piece) else None
            if previous and word:
                pairs.add(f"{previous} {word}")
            previous = word
    return pairs


def _literals(code: str) -> list[str]:
    """The string literals of a script or style sheet, unescaped where they are JSON."""
    found = []
    for double, single in STRING_LITERAL.findall(code):
        literal = double or single
        try:
            found.append(json.loads(f'"{literal}"'))
        except ValueError:
            found.append(literal)
    return found


class _HtmlUnits(HTMLParser):
    """An HTML (or SVG) page's text as one unit, tags parting nothing (a table's cells
    stay neighbours), plus each attribute value and each string in its scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.units: list[str] = []
        self.in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.units += [value for _, value in attrs if value]
        self.in_code = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.in_code = False

    def handle_data(self, data: str) -> None:
        if self.in_code:
            self.units += _literals(data)
        else:
            self.text.append(data)


def _json_strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)


def text_units(text: str, suffix: str) -> list[str]:
    """The pieces of a shareable file's text (libraries left out; `suffix` its kind, e.g.
    ".html") in which a name could be written."""
    if suffix in (".html", ".svg"):
        page = _HtmlUnits()
        page.feed(text)
        page.close()
        return [" ".join(page.text), *page.units]
    if suffix == ".json":
        try:
            return list(_json_strings(json.loads(text)))
        except ValueError:
            return [text]
    if suffix == ".js":
        return _literals(text)
    if suffix == ".csv":
        return [" ".join(row) for row in csv.reader(io.StringIO(text))]
    return [text]


def name_pairs(text: str, suffix: str) -> set[str]:
    """Adjacent word pairs of a shareable file's text (as in `text_units`) that are not
    the product's own."""
    found = set().union(*(word_pairs(unit) for unit in text_units(text, suffix.lower())))
    return found - own_phrases()


def _strings_written(source: str) -> list[str]:
    """The string constants of Python code that could be written out: not its docstrings
    (nor its comments), whose examples may name people."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


@cache
def own_phrases() -> frozenset[str]:
    """Word pairs of the text the product writes itself: its templates, and the strings
    of its code (quotation marks inside them left out)."""
    pairs: set[str] = set()
    for package in OWN_PACKAGES:
        for path in Path(str(resources.files(package))).rglob("*"):
            text = path.read_text(errors="replace") if path.suffix in OWN_SUFFIXES else ""
            units = _strings_written(text) if path.suffix == ".py" else [text]
            for unit in units:
                pairs |= word_pairs(unit, quotes_part=False)
    return frozenset(pairs)

"""What the publication audit reads as neighbouring words in each kind of shareable file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quality.shareable_text import name_pairs, own_phrases


def _pairs_of(name: str, text: str) -> set[str]:
    return name_pairs(text, Path(name).suffix)


def test_a_name_in_a_page_is_read_in_text_table_cells_attributes_and_chart_data() -> None:
    assert "ann lee" in _pairs_of("a.html", "<p>Checked Ann Lee by hand.</p>")
    assert "ann o'neill" in _pairs_of("q.html", "<p>Checked ‘Ann O'Neill’.</p>")
    cells = "<table><tr><td>Ann</td><td>Lee</td></tr></table>"
    assert "ann lee" in _pairs_of("b.html", cells)
    assert "ann lee" in _pairs_of("c.html", '<td title="Ann Lee">1</td>')
    chart = '<script>var spec = {"values": [{"label": "Ann Lee"}]};</script>'
    assert "ann lee" in _pairs_of("d.html", chart)
    document = json.dumps({"note": {"who": ["Ann Lee"]}})
    assert "ann lee" in _pairs_of("e.json", document)
    assert "ann lee" in _pairs_of("f.csv", 'id,given,family\n1,"Ann","Lee"\n')


@pytest.mark.parametrize(
    "text",
    [
        '<script>var spec = {"chart_start": 10, "mark": "bar"};</script>',  # JSON keys
        "<p>all in\n<code>linked</code></p>",  # tag names
        "<p>Dates in claim_start read as yyyymmdd</p>",  # a column name
        "<p>If comparison level is `day and month swapped` then</p>",  # a quoted label
        "<p style='color: #1b1b1b'>ok</p>",  # a colour code
    ],
)
def test_markup_code_and_quoted_labels_make_no_words_beside_their_neighbours(text: str) -> None:
    found = _pairs_of("page.html", text)
    assert not found & {"start mark", "in code", "start read", "is day", "b b"}


def test_the_products_own_sentences_are_its_phrases_and_hold_no_name() -> None:
    phrases = own_phrases()
    assert "has more" in phrases  # "No person has more than 25 records."
    # Docstrings and comments, where an example may name someone, are not written out.
    assert "william mohamed" not in phrases

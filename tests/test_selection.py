"""The selection language: parsed, never evaluated; results checked against plain Python."""
from __future__ import annotations

import polars as pl
import pytest

from warehouse.selection import SelectionError, parse_selection

AVAILABLE = {"length": {"keep", "n_words"}, "quality": {"score"}}
FRAME = pl.DataFrame({
    "length.keep": [True, False, True, None, True],
    "length.n_words": [10, 3, 50, 7, 200],
    "quality.score": [0.9, 0.8, 0.2, 0.7, None],
    "source": ["a", "b", "a", "c", "b"],
})


@pytest.mark.parametrize("text, expected", [
    ("length.keep", [True, False, True, False, True]),
    ("length.keep and quality.score >= 0.5", [True, False, False, False, False]),
    ("not length.keep", [False, True, False, False, False]),
    ("source in ['a', 'c'] or length.n_words > 100", [True, False, True, True, True]),
    ("quality.score is None or quality.score > 0.75", [True, True, False, False, True]),
    ("10 <= length.n_words < 100", [True, False, True, False, False]),
    ("true", [True] * 5),
    ("", [True] * 5),
])
def test_selection_matches_python(text, expected):
    sel = parse_selection(text, AVAILABLE)
    assert FRAME.with_columns(sel.expr.alias("s")).get_column("s").to_list() == expected


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('echo hi')", "not allowed"),
    ("length.keep and open('x')", "not allowed"),
    ("lenght.keep", "no stage named 'lenght'"),
    ("length.score > 1", "has no column 'score'"),
    ("keep", "unknown name 'keep'"),
    ("length.keep and", "cannot parse"),
    ("length.n_words in length.keep", "needs a list"),
])
def test_bad_selections_are_clear_errors(text, message):
    with pytest.raises(SelectionError, match=message):
        parse_selection(text, AVAILABLE)


def test_referenced_columns_are_reported():
    sel = parse_selection("length.keep and quality.score > 0.1", AVAILABLE)
    assert sel.stages == {"length", "quality"}
    assert sel.columns == {"length.keep", "quality.score"}

"""Parsing model replies (canned replies: this is the parsing unit, not the LLM stage)."""
from __future__ import annotations

import math

import pytest

from scorers.llm_parsing import parse_edu, parse_multi, yes_probability


@pytest.mark.parametrize("reply, value, reason", [
    ("The text explains photosynthesis clearly.\nScore: 4", 4.0, None),
    ("Some points apply. Score: 2/5", 2.0, None),
    ("First I thought Score: 1 but on reflection\nScore: 3", 3.0, None),
    ("**Score:** 5", 5.0, None),
    ("This is a fine text.", None, "no_score"),
    ("Score: 7", None, "out_of_range"),
    ("Score: 2.5", None, "out_of_range"),
    ("I cannot evaluate this document.", None, "refusal"),
    ("", None, "no_score"),
])
def test_edu(reply, value, reason):
    p = parse_edu(reply)
    assert (p.value, p.reason) == (value, reason)


@pytest.mark.parametrize("reply, overall, domain, reason", [
    ('{"accuracy": 4, "coherence": 3, "language": 5, "knowledge": 2, "overall": 3, "domain": "history"}', 3.0, "history", None),
    ('Sure! {"accuracy": 5, "coherence": 5, "language": 5, "knowledge": 5, "overall": 4, "domain": "Cooking"} hope it helps',
     4.0, "other", None),
    ('{"accuracy": 4, "coherence": 3, "language": 5, "knowl', None, None, "truncated_json"),
    ('{"accuracy": 4, "coherence": 3}', None, None, "missing_criteria"),
    ('{"accuracy": 9, "coherence": 3, "language": 5, "knowledge": 2, "overall": 3}', None, None, "missing_criteria"),
    ("{accuracy: four}", None, None, "bad_json"),
    ("no json here", None, None, "bad_json"),
])
def test_multi(reply, overall, domain, reason):
    p = parse_multi(reply)
    assert (p.value, p.label, p.reason) == (overall, domain, reason)
    if overall is not None:
        assert set(p.criteria) == {"accuracy", "coherence", "language", "knowledge", "overall"}


def test_yes_probability_closed_form():
    p = yes_probability({"Yes": math.log(0.3), "No": math.log(0.1)})
    assert p.value == pytest.approx(0.75) and p.label == "yes"
    assert yes_probability({"Yes": float("-inf"), "No": -1.0}).value == 0.0
    assert yes_probability({"Yes": float("-inf"), "No": float("-inf")}).reason == "no_yes_no_token"
    assert yes_probability({"Yes": float("nan"), "No": -1.0}).reason == "backend_error"

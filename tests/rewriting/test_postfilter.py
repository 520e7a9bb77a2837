"""Post-filters and reply parsing on canned replies: every bad reply is dropped with its reason,
good ones are kept and parsed as the method says; backend errors are not cached; the cache
answers a second run. (The canned backend stands in for a model only to control the replies;
tests/rewriting/test_model.py runs the real one.)"""
from __future__ import annotations

import pytest

from engines.inference import Generation
from rewriting.generate import Generator
from rewriting.methods.base import Parent
from rewriting.params import RewriteParams
from tests.rewriting.canned import CannedBackend

SEGMENT = ("The Rhine is a river that rises in the Swiss Alps and flows north through Germany and the Netherlands "
           "to the North Sea. It is about 1,230 kilometres long and one of the busiest waterways in Europe. "
           "Barges carry coal, grain and containers between the port of Rotterdam and the industrial Ruhr.")
PARENT = Parent(0, "doc-0", SEGMENT, "wiki_en")
GOOD = ("The Rhine rises in the Swiss Alps and runs north across Germany and the Netherlands into the North Sea. "
        "With a length of roughly 1,230 kilometres it is among the most heavily used waterways of Europe, and "
        "barges move coal, grain and containers from Rotterdam to the Ruhr.")


def run(route: dict, reply, tmp_path, parents=(PARENT,), language_check=True):
    params = RewriteParams.model_validate({"routes": [route], "language_check": language_check})
    backend = CannedBackend(reply if callable(reply) else (lambda msgs: reply))
    gen = Generator(params)
    gen.setup(str(tmp_path), backend=backend)
    name = route.get("name") or route["method"]
    outs = gen.run(list(parents), {name: list(range(len(parents)))})
    return outs, backend, gen


@pytest.mark.parametrize("reply, reason", [
    (GOOD, None),
    ("I'm sorry, but I can't help with rewriting this text.", "refusal"),
    ("As an AI language model, I cannot do that.", "refusal"),
    (Generation(GOOD[:80], "length", 10, 64), "truncated"),
    ("   \n  ", "empty"),
    (SEGMENT, "copy_of_input"),
    ("Rewrite the text below as clear, well-organised prose of the kind an encyclopedia article uses: neutral tone, "
     "complete sentences, and the facts in a sensible order.", "prompt_echo"),
    ("Le Rhin prend sa source dans les Alpes suisses et coule vers le nord à travers l'Allemagne et les Pays-Bas "
     "jusqu'à la mer du Nord. Il mesure environ 1 230 kilomètres.", "wrong_language"),
    ("The Rhine.", "too_short"),
    (Generation("", "error", error="HTTP 503"), "backend_error"),
])
def test_wrap_reply_checks(reply, reason, tmp_path):
    outs, _, _ = run({"method": "wrap"}, reply, tmp_path)
    [o] = outs
    assert o.cand.reason == reason
    assert o.cand.status == ("kept" if reason is None else "error" if reason == "backend_error" else "dropped")
    assert (o.cand.text is not None) == (reason is None)
    if reason is None:
        assert o.cand.text == GOOD


def test_language_check_can_be_switched_off(tmp_path):
    french = "Le Rhin prend sa source dans les Alpes suisses et coule vers le nord jusqu'à la mer du Nord, loin."
    outs, _, _ = run({"method": "wrap"}, french, tmp_path, language_check=False)
    assert outs[0].cand.reason is None


def test_cache_answers_a_second_run_and_errors_are_retried(tmp_path):
    replies = iter([Generation("", "error", error="timeout"), GOOD, GOOD])
    outs, backend, _ = run({"method": "wrap"}, lambda m: next(replies), tmp_path)
    assert outs[0].cand.reason == "backend_error"
    outs, backend, _ = run({"method": "wrap"}, lambda m: next(replies), tmp_path)  # the error was not cached
    assert outs[0].cand.reason is None and len(backend.prompts) == 1
    outs, backend, gen = run({"method": "wrap"}, lambda m: pytest.fail("asked the model again"), tmp_path)
    assert outs[0].cand.text == GOOD and outs[0].cached == 1 and gen.calls == 0


def test_cache_key_has_template_sampling_and_text(tmp_path):
    run({"method": "wrap"}, GOOD, tmp_path)
    for route, parent in (({"method": "wrap", "temperature": 0.7}, PARENT), ({"method": "wrap", "styles": ["hard"]}, PARENT),
                          ({"method": "wrap"}, Parent(0, "doc-0", SEGMENT + " Also a port.", "wiki_en"))):
        _, backend, _ = run(route, GOOD, tmp_path, parents=(parent,))
        assert len(backend.prompts) == 1  # a different key: asked again


def nemo(family: str) -> dict:
    return {"method": "nemotron_cc", "families": [family], "temperature": 0, "min_tokens": 5}


@pytest.mark.parametrize("family, reply, text, reason", [
    ("distill", "Condensed text:\n" + GOOD, GOOD, None),
    ("distill", "**Condensed text:**\n\"" + GOOD + "\"", GOOD, None),
    ("distill", GOOD, None, "missing_prefix"),
    ("wikipedia", "Paraphrase: " + GOOD, GOOD, None),
    ("wikipedia", "Here is my version:\n" + GOOD, None, "missing_prefix"),
    ("extract_knowledge", "Passage 1:\n" + GOOD + "\n## Passage 2:\nBarges carry coal and grain along the Rhine.",
     GOOD + "\nBarges carry coal and grain along the Rhine.", None),
    ("knowledge_list", "Here are the facts:\n- The Rhine rises in the Swiss Alps.\n- It flows into the North Sea.\n"
     "- It is about 1,230 km long.", "The Rhine rises in the Swiss Alps.\nIt flows into the North Sea.\n"
     "It is about 1,230 km long.", None),
    ("diverse_qa", "The text is about rivers.\nQuestion: Where does the Rhine rise?\nAnswer: In the Swiss Alps.",
     None, "malformed_qa"),
    ("diverse_qa", "Questions and answers:\n", None, "no_qa_pairs"),
])
def test_nemotron_parsing(family, reply, text, reason, tmp_path):
    outs, _, _ = run(nemo(family), reply, tmp_path)
    [o] = outs
    assert o.cand.reason == reason and o.cand.text == text


def test_nemotron_too_long_reply(tmp_path):
    reply = Generation("Paraphrase: " + GOOD, "stop", 10, 511)  # the published bound is 510 tokens
    outs, _, _ = run(nemo("wikipedia"), reply, tmp_path)
    assert outs[0].cand.reason == "too_long"


def test_diverse_qa_keeps_pairs_in_proportion_to_length(tmp_path):
    pairs = "\n".join(f"- Question: Q{i}?\n  Answer: A{i}." for i in range(10))
    reply = "Questions and answers:\n" + pairs
    short = Parent(0, "s", "The Rhine flows north to the sea through the lowlands.", "wiki_en")  # 10 words = tokens here
    long_text = " ".join([SEGMENT] * 6)
    long = Parent(1, "l", long_text, "wiki_en")
    route = {**nemo("diverse_qa"), "min_segment_tokens": 5}  # the short parent is under the default 30
    outs, _, _ = run(route, reply, tmp_path, parents=(short, long))
    by = {o.cand.parent: o for o in outs}
    s_text, l_text = by[0].cand.text, by[1].cand.text
    # 10 tokens: at most max(1, int(10 * 10 / 150)) = 1 pair; the long segment may keep up to all 10
    assert s_text.startswith(short.text) and s_text.count("Question:") == 1
    n_long = l_text.count("Question:")
    assert l_text.startswith(long_text) and 1 <= n_long <= 10
    assert "Answer:" in l_text and "- Question" not in l_text
    # seeded: the same selection on every run
    again, _, _ = run(route, reply, tmp_path / "other", parents=(short, long))
    assert {o.cand.parent: o.cand.text for o in again} == {0: s_text, 1: l_text}


@pytest.mark.parametrize("reply, text, reason", [
    ("Plan:\n- explain the river\n\nImproved text:\n" + GOOD, GOOD, None),
    ("Plan: fix it.\n**Improved text:**\n" + GOOD, GOOD, None),
    ("Plan:\n- explain the river\n" + GOOD, None, "missing_marker"),
])
def test_rewire_marker(reply, text, reason, tmp_path):
    outs, _, _ = run({"method": "rewire", "min_tokens": 5}, reply, tmp_path)
    assert outs[0].cand.reason == reason and outs[0].cand.text == text


DOC = "Home | News | Sport\nThe Rhine rises in the Alps.\nIt flows north.\nClick here to subscribe!\n"


@pytest.mark.parametrize("reply, reason, text, keep, parent_reason", [
    ("remove_lines(1, 1)\nremove_lines(4, 4)", None, "The Rhine rises in the Alps.\nIt flows north.\n", False, "prox:edited"),
    ("normalize('Click here to subscribe!', '')", None, DOC.replace("Click here to subscribe!", ""), False, "prox:edited"),
    ("keep()", "no_edit", None, True, None),
    ("This document is good.", "malformed_program", None, True, None),
    ("remove_lines(2, 9)", "malformed_program", None, True, None),
    ("drop()", "program_drop", None, False, "prox:drop"),
    ("remove_lines(1, 3)", "program_drop", None, False, "prox:drop"),  # leaves "Click here...": under 10%? no
    (Generation("remove_lines(1, ", "length", 10, 128), "truncated", None, True, None),
    ("Write keep() alone when nothing needs to go, drop() alone when nothing is worth keeping.", "prompt_echo",
     None, True, None),
])
def test_prox_programs(reply, reason, text, keep, parent_reason, tmp_path):
    parent = Parent(0, "p", DOC, "handbook")
    if reply == "remove_lines(1, 3)":  # removes 3 of 4 lines: 78% of the characters, under the 0.9 default
        reason, keep, parent_reason = None, False, "prox:edited"
        text = "Click here to subscribe!\n"
    outs, _, gen = run({"method": "prox"}, reply, tmp_path, parents=(parent,))
    [o] = outs
    assert o.cand.reason == reason and o.cand.text == text
    assert gen.parent_verdict("prox", [o.cand]) == (keep, parent_reason)
    assert "[1] Home | News | Sport" in o.first.messages[-1]["content"]  # the model sees numbered lines

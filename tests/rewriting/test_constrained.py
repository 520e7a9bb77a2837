"""Constrained decoding: the ProX program regex, its automaton, the logits processors, the request
mappings for vLLM and OpenAI-compatible servers, and (slow) the real tiny model writing programs."""
from __future__ import annotations

import random
import re
from types import SimpleNamespace

import pytest
import torch

from engines.inference import InferenceConfig, SamplingParams, make_backend
from engines.inference.cache import cache_key
from engines.inference.constrain import Automaton, FrequencyPenalty
from engines.inference.openai_backend import chat_body
from engines.inference.vllm_backend import vllm_sampling_kwargs
from rewriting import prox_lang
from rewriting.methods.rewire import REPLY_REGEX, after_marker


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 19, 99, 100, 101, 250, 1000, 4321])
def test_number_regex_is_exactly_the_range(n):
    for lo in sorted({1, 2, 9, 10, 11, 99, 100, n} & set(range(1, n + 1))):
        r = re.compile(prox_lang.number_regex(n, lo))
        assert [i for i in range(n + 150) if r.fullmatch(str(i))] == list(range(lo, n + 1))
        assert not r.fullmatch("0") and not r.fullmatch(f"0{lo}")


def _walk(a: Automaton, rng: random.Random, alphabet: str, limit: int = 400) -> str | None:
    """A random string of the automaton's language (None when the walk ran past ``limit``)."""
    out, state = [], a.initial
    while len(out) < limit:
        if state in a.finals and rng.random() < 0.3:
            return "".join(out)
        moves = [c for c in alphabet if a.step(state, c) is not None]
        if not moves:
            return "".join(out) if state in a.finals else None
        c = rng.choice(moves)
        out.append(c)
        state = a.step(state, c)
    return None


ALPHABET = "kepdromvnliazu_()0123456789, \n\"'\\tx#;"


@pytest.mark.parametrize("n_lines, normalize", [(1, False), (4, False), (16, False), (17, False), (40, False),
                                                (5, True)])
def test_every_program_the_constraint_allows_parses_and_applies(n_lines, normalize):
    regex = prox_lang.program_regex(n_lines, normalize)
    a = Automaton(regex)
    lines = [f"line {i}\n" for i in range(1, n_lines + 1)]
    rng = random.Random(n_lines)
    seen = 0
    for _ in range(300):
        prog = _walk(a, rng, ALPHABET)
        if prog is None:
            continue
        seen += 1
        assert re.fullmatch(regex, prog), prog  # the automaton and Python's re agree
        parsed = prox_lang.parse(prog)
        assert parsed.ok, (prog, parsed.error)
        applied = prox_lang.apply(parsed, lines)
        if n_lines <= prox_lang.ORDERED_RANGES_MAX:  # a <= b is part of the constraint there
            assert applied.error is None, (prog, applied.error)
        assert len(parsed.calls) <= prox_lang.MAX_CONSTRAINED_EDITS
    assert seen > 100


def test_the_automaton_agrees_with_python_re_on_random_strings():
    rng = random.Random(0)
    for regex in (prox_lang.program_regex(12), prox_lang.program_regex(30, True), REPLY_REGEX):
        a = Automaton(regex)
        for _ in range(2000):
            s = "".join(rng.choice(ALPHABET + "PlanImprovedtx:") for _ in range(rng.randint(0, 24)))
            assert a.matches(s) == bool(re.fullmatch(regex, s, re.S)), (regex[:40], s)
        for s in ("keep()", "drop()\n", "remove_lines(3, 12)\nremove_lines(1, 1)", "remove_lines(12, 3)",
                  "keep()\ndrop()", "remove_lines(1, 13)", "Plan:\nfix it\n\nImproved text:\nThe Rhine."):
            assert a.matches(s) == bool(re.fullmatch(regex, s, re.S)), s
    with pytest.raises(ValueError, match="cannot compile"):
        Automaton("(unclosed")


def test_rewire_shape_always_has_its_marker():
    a = Automaton(REPLY_REGEX)
    rng = random.Random(3)
    replies = [r for r in (_walk(a, rng, "Plan:Improved text\n abc") for _ in range(200)) if r is not None]
    assert len(replies) > 50
    for reply in replies:  # every reply the constraint allows has a plan and a non-empty rewrite
        assert reply.startswith("Plan:\n") and after_marker(reply) is not None


def test_constraints_and_penalties_enter_the_cache_key_and_nothing_else_changes():
    plain = SamplingParams(max_tokens=64, seed=3)
    # Unset, the new fields are not in the dump: keys made before they existed stay valid.
    assert plain.model_dump(mode="json") == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 3,
                                             "stop": []}
    keys = {cache_key("m", "t@v1", p.model_dump(mode="json"), "h") for p in (
        plain, plain.model_copy(update={"regex": "keep\\(\\)"}), plain.model_copy(update={"regex": "drop\\(\\)"}),
        plain.model_copy(update={"frequency_penalty": 0.5}))}
    assert len(keys) == 4


def test_vllm_and_openai_requests_carry_the_constraint():
    made = []

    class StructuredOutputsParams:  # records what the vLLM >= 0.12 API would get
        def __init__(self, **kw):
            made.append(kw)
    new_api = SimpleNamespace(sampling_params=SimpleNamespace(StructuredOutputsParams=StructuredOutputsParams))
    p = SamplingParams(max_tokens=32, seed=7, regex="keep\\(\\)", frequency_penalty=0.5)
    kw = vllm_sampling_kwargs(p, new_api)
    assert isinstance(kw["structured_outputs"], StructuredOutputsParams) and made == [{"regex": "keep\\(\\)"}]
    assert kw["frequency_penalty"] == 0.5 and kw["max_tokens"] == 32 and kw["seed"] == 7

    class GuidedDecodingParams(StructuredOutputsParams):
        pass
    old_api = SimpleNamespace(sampling_params=SimpleNamespace(GuidedDecodingParams=GuidedDecodingParams))
    assert isinstance(vllm_sampling_kwargs(p, old_api)["guided_decoding"], GuidedDecodingParams)
    free = vllm_sampling_kwargs(SamplingParams(), new_api)
    assert "structured_outputs" not in free and "frequency_penalty" not in free

    body = chat_body("m", [{"role": "user", "content": "x"}], p)
    assert body["structured_outputs"] == {"regex": "keep\\(\\)"} and body["frequency_penalty"] == 0.5
    assert "structured_outputs" not in chat_body("m", [], SamplingParams())


def test_frequency_penalty_counts_generated_tokens_only():
    ids = torch.tensor([[5, 5, 1, 1, 1, 2], [5, 0, 0, 3, 3, 3]])  # prompt: the first two columns
    scores = torch.zeros(2, 6)
    out = FrequencyPenalty(0.5, prompt_len=2)(ids, scores.clone())
    assert out[0].tolist() == [0.0, -1.5, -0.5, 0.0, 0.0, 0.0]  # token 5 is in the prompt only: free
    assert out[1].tolist() == [-0.5, 0.0, 0.0, -1.5, 0.0, 0.0]


@pytest.mark.slow
def test_the_real_model_writes_programs_under_the_constraint(corpora):
    """SmolLM2-135M on real Python docs segments: free, it answers in prose or Python; constrained,
    every finished reply is a program of the language that parses, in the same batch as a free row."""
    from rewriting.methods import method_for
    from rewriting.methods.base import Parent
    from tests.helpers import real_texts

    backend = make_backend(InferenceConfig(threads=1, batch_size=4))
    texts = real_texts(corpora, "python_docs", 3)
    method = method_for(prox_lang_route())
    parents = [Parent(i, f"p{i}", t, "python_docs") for i, t in enumerate(texts)]
    jobs = method.jobs(parents, backend)
    params = [j.sampling for j in jobs] + [jobs[0].sampling.model_copy(update={"regex": None})]
    gens = backend.chat_each([j.messages for j in jobs] + [jobs[0].messages], params)
    for j, g in zip(jobs, gens):
        assert j.sampling.regex and re.fullmatch(j.sampling.regex, g.text), g.text
        assert prox_lang.parse(g.text).ok
        applied = prox_lang.apply(prox_lang.parse(g.text), j.segment.text.splitlines(keepends=True))
        assert applied.error is None
    assert not prox_lang.parse(gens[-1].text).ok  # the free row in the same batch stayed free
    cands = method.candidates(parents, jobs, gens)
    assert any(c.reason is None and c.text and len(c.text) < len(texts[c.parent]) for c in cands)


def prox_lang_route():
    from rewriting.methods.prox import ProxRoute
    return ProxRoute(max_segments=1, segment_tokens=96, max_tokens=64)


def test_route_frequency_penalty_reaches_the_request_and_unset_leaves_fingerprints_alone():
    from rewriting.methods import method_for
    from rewriting.methods.base import Parent
    from rewriting.params import RewriteParams
    from rewriting.plan import route_identity
    from tests.rewriting.canned import CannedBackend
    wrap, rewire, tuned = RewriteParams(routes=[
        {"method": "wrap", "styles": ["easy"]}, {"method": "rewire"},
        {"method": "wrap", "name": "w2", "styles": ["easy"], "frequency_penalty": 0.3}]).routes
    assert "frequency_penalty" not in route_identity(wrap)["route"]
    assert route_identity(tuned)["route"]["frequency_penalty"] == 0.3
    backend = CannedBackend(lambda m: "x")
    parent = [Parent(0, "p", "The Rhine rises in the Alps and flows north to the sea. " * 4, "wiki")]
    [j] = method_for(wrap).jobs(parent, backend)
    assert j.sampling.frequency_penalty == 0.0 and "frequency_penalty" not in j.sampling.model_dump()
    [j] = method_for(tuned).jobs(parent, backend)
    assert j.sampling.frequency_penalty == 0.3
    [j] = method_for(rewire).jobs(parent, backend)  # the family default, and the reply shape
    assert j.sampling.frequency_penalty == 0.5 and j.sampling.regex == REPLY_REGEX

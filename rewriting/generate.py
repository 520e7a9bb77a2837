"""The generator: routed parents -> jobs -> cache or model -> candidates -> checked candidates.

One ``Generator`` per worker process holds the inference backend (the model is loaded once), the
result cache and the language-ID model. ``run`` takes a batch of parents and, per route, the
parents routed to it, and returns every candidate (kept or with its drop reason) with what its
lineage needs. It is a pure function of its inputs and the cache: no state carries from one
batch to the next, so any executor can call it on any batch.

Result cache: ``<lake>/cache/rewrite_results.sqlite`` (engines.inference.cache.ResultCache),
keyed by (model, template id and version, sampling parameters with the job's seed, sha256 of
the segment). A reply is stored as soon as its batch returns, so a crash, a re-run or a config
change that keeps a job identical never asks the model twice. Backend errors are not stored
(the next run retries them).

Prefix caching: jobs are sent grouped by template, and every template puts its instruction
before the document, so within one engine call the prompts of a template share their prefix
(vLLM's ``enable_prefix_caching``, on by default in InferenceConfig, reuses it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.inference import Generation, InferenceBackend, make_backend
from engines.inference.cache import ResultCache, cache_key, text_hash
from rewriting.methods import Method, method_for
from rewriting.methods.base import Candidate, Job, Parent
from rewriting.params import RewriteParams
from rewriting.postfilter import COPY_SHARE, ECHO_SHARE, LanguageCheck, containment

CACHE_FILE = "rewrite_results.sqlite"


@dataclass
class Output:
    """A candidate with its route and the jobs it came from (for lineage)."""

    route: str
    method: str
    cand: Candidate
    jobs: list[Job]
    cached: int  # how many of its replies came from the cache

    @property
    def first(self) -> Job:
        return self.jobs[0]


class Generator:
    def __init__(self, params: RewriteParams):
        self.params = params
        self.methods: dict[str, Method] = {r.route_name: method_for(r) for r in params.routes}
        self.backend: InferenceBackend | None = None
        self.cache: ResultCache | None = None
        self.language: LanguageCheck | None = None
        self.calls = 0  # backend calls made (tests and benchmarks read it)

    def setup(self, cache_dir: str | None, backend: InferenceBackend | None = None,
              language: LanguageCheck | None = None) -> None:
        self.backend = backend or make_backend(self.params.inference)
        root = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "curate"
        self.cache = ResultCache(root / CACHE_FILE)
        self.language = language or LanguageCheck(self.params.min_language_score)

    # --- model calls -----------------------------------------------------------------------
    def _key(self, job: Job) -> str:
        assert self.backend is not None
        return cache_key(self.backend.model_id, job.template.ref, job.sampling.model_dump(mode="json"),
                         text_hash(job.segment.text))

    def _replies(self, jobs: list[Job]) -> tuple[list[Generation], list[bool]]:
        """One reply per job, from the cache when it has one; (replies, came from cache)."""
        assert self.backend is not None and self.cache is not None
        keys = [self._key(j) for j in jobs]
        cached = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in cached]
        # Grouped by template so prompts sharing a prefix are scheduled together.
        todo.sort(key=lambda i: (jobs[i].template.ref, i))
        fresh: dict[int, Generation] = {}
        step = self.params.chunk_prompts
        for s in range(0, len(todo), step):
            part = todo[s:s + step]
            gens = self.backend.chat_each([jobs[i].messages for i in part], [jobs[i].sampling for i in part])
            self.calls += 1
            fresh.update(zip(part, gens))
            self.cache.put_many({keys[i]: {"text": g.text, "finish_reason": g.finish_reason,
                                           "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens}
                                 for i, g in zip(part, gens) if g.finish_reason != "error"})
        out = [fresh[i] if i in fresh else Generation(**cached[k]) for i, k in enumerate(keys)]
        return out, [k in cached for k in keys]

    # --- one batch ---------------------------------------------------------------------------
    def run(self, parents: list[Parent], routed: dict[str, list[int]]) -> list[Output]:
        """Every candidate of every route for these parents (``routed``: route -> parent indices)."""
        assert self.backend is not None
        outputs: list[Output] = []
        for name, idx in routed.items():
            if not idx:
                continue
            method = self.methods[name]
            sub = [parents[i] for i in idx]
            jobs = method.jobs(sub, self.backend)
            for j in jobs:  # back to indices into ``parents``
                j.parent = idx[j.parent]
            gens, hits = self._replies(jobs) if jobs else ([], [])
            mine = [Output(name, method.name, c, [jobs[k] for k in c.jobs], sum(hits[k] for k in c.jobs))
                    for c in method.candidates(parents, jobs, gens)]
            if method.checks_text:
                self._check_texts(mine)
            outputs.extend(mine)
        return outputs

    def _check_texts(self, outs: list[Output]) -> None:
        """The shared text checks (postfilter.py) on candidates that still have a text."""
        assert self.backend is not None and self.language is not None
        live = [o for o in outs if o.cand.reason is None and o.cand.text is not None]
        for o in live:
            c, job = o.cand, o.first
            assert c.text is not None
            if not c.text.strip():
                c.reason = "empty"
            elif containment(c.text, job.template.instruction) >= ECHO_SHARE:
                c.reason = "prompt_echo"
            elif job.check_copy and containment(c.text, job.segment.text) >= COPY_SHARE:
                c.reason = "copy_of_input"
        live = [o for o in live if o.cand.reason is None]
        counts = self.backend.count_tokens([o.cand.text or "" for o in live]) if live else []
        for o, n in zip(live, counts):
            o.cand.extra["tokens"] = n
            if n < o.first.min_tokens:
                o.cand.reason = "too_short"
        live = [o for o in live if o.cand.reason is None]
        if self.params.language_check and live:
            wrong = self.language.mismatch([(o.first.segment.text, o.cand.text or "") for o in live])
            for o, bad in zip(live, wrong):
                if bad:
                    o.cand.reason = "wrong_language"
        for o in outs:
            if o.cand.reason is not None:
                o.cand.text = None

    def parent_verdict(self, route: str, cands: list[Candidate]) -> tuple[bool, str | None]:
        return self.methods[route].parent_verdict(cands)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def __getstate__(self) -> dict[str, Any]:  # ship the params; each worker sets itself up
        return {"params": self.params, "methods": self.methods, "backend": None, "cache": None, "language": None,
                "calls": 0}

"""What a rewriting method is: the prompts it sends for a parent, and what it makes of the replies.

A method turns one parent document into **jobs** (a template, a segment of the parent, sampling
parameters) and the model's replies into **candidates** (a derived text, or the reason there is
none). The generator (rewriting/generate.py) runs the jobs through the inference backend and the
result cache, applies the shared reply checks (rewriting/postfilter.py) and writes what survives.

Most methods make one candidate per job (``parse`` takes what it needs from the reply); ProX makes
one per parent from the programs of all its segments (it overrides ``candidates``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.inference import Generation, InferenceBackend, SamplingParams
from rewriting.postfilter import reply_problem
from rewriting.segments import Segment, split_segments
from rewriting.templates import Template, load_template


class RouteConfig(BaseModel):
    """One route of a ``rewrite`` stage: which parents (``when``, ``sample_rate``, ``budget_tokens``)
    go to which method, with which limits. Fields left at None take the method's defaults.

    - ``name``: names the derived source ``<parent source>.<name>`` (default: the method name);
    - ``when``: an expression in the selection language over earlier stages' annotations and
      document columns (``ensemble.bucket >= 8``, ``not gopher.keep``, ``source == 'wiki_en'``);
    - ``sample_rate``: the share of matching parents taken, chosen by a hash of (``seed``, id):
      the same parents on every run;
    - ``budget_tokens``: stop taking parents (in lake order, oldest first) once those taken hold
      this many tokens (whitespace words, as the release counts them); None: no limit;
    - ``max_segments``: segments rewritten per parent (the rest of a long parent is left out);
    - ``segment_tokens`` / ``min_segment_tokens``: segment size limits (model tokens);
    - ``frequency_penalty``: lowers a token's score by this much per time it already occurs in
      the reply (a small model decoding greedily otherwise repeats itself into ``max_tokens``);
    - ``temperature``, ``top_p``, ``max_tokens``, ``seed``: sampling; each job's seed is derived
      from ``seed``, the parent id, the prompt and the segment, so sampling is reproducible on
      backends that honour per-request seeds (vLLM, OpenAI-compatible servers);
    - ``min_tokens``: replies shorter than this (in model tokens, after the method's own
      post-processing) are dropped as ``too_short``.
    """

    model_config = ConfigDict(extra="forbid")
    method: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
    when: str = "true"
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    budget_tokens: int | None = Field(default=None, ge=0)
    max_segments: int = Field(default=4, ge=1, le=1000)
    segment_tokens: int | None = Field(default=None, ge=16)
    min_segment_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int = 0

    @field_validator("when")
    @classmethod
    def _parses(cls, v: str) -> str:
        import ast
        try:
            ast.parse(v.strip() or "true", mode="eval")
        except SyntaxError as e:
            raise ValueError(f"cannot parse {v!r}: {e.msg}") from None
        return v

    @property
    def route_name(self) -> str:
        return self.name or self.method


@dataclass(frozen=True)
class Family:
    """One prompt of a method with its published (or chosen) limits."""

    template: str  # template file id
    segment_tokens: int  # largest segment sent
    max_tokens: int  # generation limit
    min_tokens: int = 0  # shortest kept reply (model tokens)
    max_reply_tokens: int | None = None  # longest kept reply; None: max_tokens decides (truncated)
    min_segment_tokens: int = 1
    check_copy: bool = True  # a reply that repeats the segment is no rewrite
    temperature: float = 0.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0


@dataclass
class Parent:
    row: int  # row in its raw shard
    id: str
    text: str
    source: str


@dataclass
class Job:
    parent: int  # index into the parents list
    family: str
    template: Template
    segment: Segment
    sampling: SamplingParams
    messages: list[dict[str, str]]
    check_copy: bool
    min_tokens: int
    max_reply_tokens: int | None


def reply_text(g: Generation) -> str:
    """What ``rewrite_outputs.reply`` keeps of a reply: its text, or for a backend error the
    backend's message in brackets (why the request failed: a rejected prompt, a timeout)."""
    return f"[{g.error}]" if g.finish_reason == "error" and g.error else g.text


@dataclass
class Candidate:
    """A derived text (``text``) or the reason there is none (``reason``); one per job, or per
    parent for ProX. ``status``: kept | dropped | error (the backend failed: retried next run)."""

    parent: int
    jobs: list[int]
    text: str | None
    reason: str | None
    reply: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.reason is None:
            return "kept"
        return "error" if self.reason == "backend_error" else "dropped"


def job_seed(route_seed: int, parent_id: str, family: str, segment: int) -> int:
    digest = hashlib.sha256(f"{route_seed}\x1f{parent_id}\x1f{family}\x1f{segment}".encode()).hexdigest()
    return int(digest[:8], 16)


class Method:
    """Base class; subclasses set ``name``, ``Route`` and ``families`` and may override the hooks."""

    name: ClassVar[str] = ""
    Route: ClassVar[type[RouteConfig]] = RouteConfig
    # Whether the shared text checks (empty, echo, copy, length, language) apply to candidates.
    checks_text: ClassVar[bool] = True

    def __init__(self, route: RouteConfig):
        self.route = route

    # --- what to ask -----------------------------------------------------------------------
    def families(self) -> dict[str, Family]:
        """The prompts this route sends to every parent: {family name: Family}."""
        raise NotImplementedError

    def families_for(self, parent: Parent) -> list[str]:
        """The families used for one parent (all by default)."""
        return list(self.families())

    def render(self, family: str, template: Template, segment: Segment) -> list[dict[str, str]]:
        return template.messages(segment.text)

    def sampling(self, fam: Family, parent: Parent, family: str, segment: Segment) -> SamplingParams:
        r = self.route
        return SamplingParams(temperature=fam.temperature if r.temperature is None else r.temperature,
                              top_p=fam.top_p if r.top_p is None else r.top_p,
                              max_tokens=r.max_tokens or fam.max_tokens,
                              frequency_penalty=fam.frequency_penalty if r.frequency_penalty is None else r.frequency_penalty,
                              seed=job_seed(r.seed, parent.id, family, segment.index))

    def identity(self) -> dict[str, str]:
        """What else decides this route's output beyond its config and prompts (a constraint's
        grammar version): part of the derived shards' fingerprint; empty for most methods."""
        return {}

    def jobs(self, parents: list[Parent], backend: InferenceBackend) -> list[Job]:
        r, fams = self.route, self.families()
        out: list[Job] = []
        for i, p in enumerate(parents):
            cache: dict[tuple[int, int], list[Segment]] = {}
            for name in self.families_for(p):
                fam = fams[name]
                limit = r.segment_tokens or fam.segment_tokens
                floor = r.min_segment_tokens or fam.min_segment_tokens
                segs = cache.get((limit, floor))
                if segs is None:
                    segs = cache[(limit, floor)] = split_segments(p.text, limit, backend.count_tokens, backend.truncate,
                                                                  r.max_segments, floor)
                tpl = load_template(fam.template)
                for seg in segs:
                    out.append(Job(i, name, tpl, seg, self.sampling(fam, p, name, seg), self.render(name, tpl, seg),
                                   fam.check_copy, fam.min_tokens if r.min_tokens is None else r.min_tokens,
                                   fam.max_reply_tokens))
        return out

    # --- what to keep ----------------------------------------------------------------------
    def parse(self, job: Job, reply: str) -> tuple[str | None, str | None]:
        """(derived text, None) or (None, reason) from one usable reply."""
        return reply.strip(), None

    def candidates(self, parents: list[Parent], jobs: list[Job], gens: list[Generation]) -> list[Candidate]:
        out = []
        for k, (job, g) in enumerate(zip(jobs, gens)):
            reason = reply_problem(g.text, g.finish_reason)
            if reason is None and job.max_reply_tokens is not None and g.completion_tokens > job.max_reply_tokens:
                reason = "too_long"
            text = None
            if reason is None:
                text, reason = self.parse(job, g.text)
            out.append(Candidate(job.parent, [k], text if reason is None else None, reason, reply_text(g), g.finish_reason,
                                 g.prompt_tokens, g.completion_tokens))
        return out

    def parent_verdict(self, cands: list[Candidate]) -> tuple[bool, str | None]:
        """(keep, reason) of the parent itself after rewriting; only ProX ever says False."""
        return True, None


def strip_prefix(reply: str, prefix: str) -> str | None:
    """The reply after a required first line ``prefix`` (case and surrounding markup ignored),
    or None when the reply does not start with it."""
    text = reply.lstrip()
    head, _, rest = text.partition("\n")
    clean = head.strip().strip("*#_ ").rstrip(":").strip().lower()
    want = prefix.rstrip(":").strip().lower()
    if clean == want:
        return rest.strip()
    if head.strip().strip("*#_ ").lower().startswith(want + ":"):  # "Paraphrase: text on the same line"
        return (head.strip().strip("*#_ ")[len(want) + 1:] + "\n" + rest).strip()
    return None


Style = Literal["easy", "medium", "hard", "qa"]

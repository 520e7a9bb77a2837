"""``prox``: a model writes an edit program per segment; the interpreter applies it (ProX).

ProX (Zhou et al., 2024, "Programming Every Example") has a small model decide, document by
document, whether to drop it and which lines to remove or strings to normalise, by emitting a
program in a few functions; models pre-trained on the refined corpora gained more than 2% on
average over 10 benchmarks. Here the model sees each segment's lines numbered from 1 and replies
with calls of ``keep()``, ``drop()``, ``remove_lines(start, end)``, ``normalize(old, new)``; the
reply is parsed and interpreted by rewriting/prox_lang.py (never evaluated as code).

Safety rules (as the method prescribes, thresholds ours):

- a malformed program (unparseable, unknown call, a line outside the segment), a truncated or
  refused reply, or a reply that copies the prompt's example leaves its segment unchanged;
- when the edits remove at least ``drop_threshold`` (default 0.9) of the document's characters,
  the document is dropped rather than kept as a stub.

Outcome per parent: unchanged (every program kept the text, or was malformed) -> no derived
document, the parent stands; edited -> one derived document, the edited text, and the parent's
annotation says ``keep=false, reason=prox:edited`` so a release selecting ``<stage>.keep`` takes
the edited version instead of the original; dropped -> no derived document and
``keep=false, reason=prox:drop``.

Defaults: segments of at most 512 tokens, greedy decoding, at most 128 new tokens per program.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from engines.inference import Generation, SamplingParams
from rewriting import prox_lang
from rewriting.methods.base import Candidate, Family, Job, Method, Parent, RouteConfig, reply_text
from rewriting.postfilter import containment, reply_problem
from rewriting.segments import Segment
from rewriting.templates import Template

ECHO_SHARE = 0.8


class ProxRoute(RouteConfig):
    """``constrained`` (default true): decode under the language's regex
    (``prox_lang.program_regex``: keep(), drop(), or edits naming the segment's own lines), so a
    small model cannot answer in prose or Python; false leaves the model free and the parser alone
    judges (for servers without structured outputs). ``allow_normalize`` (default false) lets
    the constrained model write ``normalize()`` calls too (see ``prox_lang.program_regex`` for
    why a small model is better off without them)."""

    method: Literal["prox"] = "prox"
    drop_threshold: float = Field(default=0.9, gt=0, le=1)
    constrained: bool = True
    allow_normalize: bool = False


class Prox(Method):
    name = "prox"
    Route = ProxRoute
    checks_text = False  # a program is no text: the shared text checks do not apply

    def families(self) -> dict[str, Family]:
        return {"prox": Family("prox", segment_tokens=512, max_tokens=128, min_segment_tokens=1, check_copy=False)}

    def render(self, family: str, template: Template, segment: Segment) -> list[dict[str, str]]:
        return template.messages(prox_lang.number_lines(segment.text.splitlines(keepends=True)))

    def sampling(self, fam: Family, parent: Parent, family: str, segment: Segment) -> SamplingParams:
        base = super().sampling(fam, parent, family, segment)
        route: ProxRoute = self.route  # type: ignore[assignment]
        if not route.constrained:
            return base
        n_lines = max(1, len(segment.text.splitlines()))
        return base.model_copy(update={"regex": prox_lang.program_regex(n_lines, route.allow_normalize)})

    def identity(self) -> dict[str, str]:
        return {"grammar": prox_lang.GRAMMAR_VERSION} if self.route.constrained else {}  # type: ignore[attr-defined]

    def program_for(self, job: Job, g: Generation) -> tuple[prox_lang.Applied, str | None]:
        """The segment after its program, and why the program was not applied (None if it was)."""
        lines = job.segment.text.splitlines(keepends=True)
        problem = reply_problem(g.text, g.finish_reason)
        if problem is None and containment(g.text, job.template.instruction) >= ECHO_SHARE:
            problem = "prompt_echo"
        if problem is not None:
            return prox_lang.Applied(lines, 0, 0, problem), problem
        applied = prox_lang.apply(prox_lang.parse(g.text), lines)
        return applied, None if applied.error is None else "malformed_program"

    def candidates(self, parents: list[Parent], jobs: list[Job], gens: list[Generation]) -> list[Candidate]:
        by_parent: dict[int, list[int]] = {}
        for k, job in enumerate(jobs):
            by_parent.setdefault(job.parent, []).append(k)
        route: ProxRoute = self.route  # type: ignore[assignment]
        out = []
        for p, ks in by_parent.items():
            text = parents[p].text
            pieces, pos = [], 0
            problems: list[str] = []
            removed = replaced = 0
            for k in sorted(ks, key=lambda k: jobs[k].segment.start):
                seg = jobs[k].segment
                applied, problem = self.program_for(jobs[k], gens[k])
                pieces.append(text[pos:seg.start])
                pieces.append("".join(applied.lines))
                pos = seg.end
                removed += applied.removed
                replaced += applied.replaced
                if problem:
                    problems.append(problem)
            pieces.append(text[pos:])
            edited = "".join(pieces)
            share = 1 - len(edited.strip()) / max(1, len(text.strip()))
            gs = [gens[k] for k in ks]
            extra = {"removed_lines": removed, "replaced": replaced, "removed_share": round(share, 4),
                     "program_problems": problems}
            if "backend_error" in problems:
                reason: str | None = "backend_error"
            elif share >= route.drop_threshold:
                reason = "program_drop"
            elif edited == text:
                reason = problems[0] if problems and len(problems) == len(ks) else "no_edit"
                if reason not in ("no_edit", "prompt_echo", "refusal", "truncated"):
                    reason = "malformed_program"
            else:
                reason = None
            out.append(Candidate(p, ks, edited if reason is None else None, reason,
                                 "\n".join(f"### segment {jobs[k].segment.index}\n{reply_text(gens[k])}" for k in ks),
                                 "length" if any(g.finish_reason == "length" for g in gs) else "stop",
                                 sum(g.prompt_tokens for g in gs), sum(g.completion_tokens for g in gs), extra))
        return out

    def parent_verdict(self, cands: list[Candidate]) -> tuple[bool, str | None]:
        if any(c.reason == "program_drop" for c in cands):
            return False, "prox:drop"
        if any(c.reason is None for c in cands):
            return False, "prox:edited"
        return True, None

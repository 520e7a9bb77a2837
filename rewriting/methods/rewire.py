"""``rewire``: plan-then-rewrite the documents the filters rejected (Nguyen et al., 2025, REWIRE).

REWIRE ("Recycling the Web") takes web documents that quality filters would discard, asks a
model to reason about what each one is trying to do and what a better version needs, and then to
write that version; the rewrites are filtered with a quality classifier like raw text, and the
kept ones mixed with high-quality raw text. That gained about 1.0, 1.3 and 2.5 points on a
suite of benchmarks at 1B, 3B and 7B scale, and most of the rewritten text in the mix came from
documents that would otherwise have been thrown away.

Route rejected parents here (``when: "not gopher.keep"``). The prompt (written for this project)
asks for a short ``Plan:`` and then an ``Improved text:`` section; the derived document is the
text after the last "Improved text:" heading (a reply without one is dropped, ``missing_marker``).
To keep only the best rewrites as the paper did, run the quality classifier on the derived
source and a ``top_fraction`` stage over its score (scorers/top_fraction.py), and add its
``keep`` to the release selection.

Defaults: segments of at most 1,024 tokens, greedy decoding, at most 1,536 new tokens, rewrites
under 30 tokens dropped, a rewrite that is mostly the input again dropped (``copy_of_input``).
"""
from __future__ import annotations

import re
from typing import Literal

from engines.inference import SamplingParams
from rewriting.methods.base import Family, Job, Method, Parent, RouteConfig
from rewriting.segments import Segment

_MARKER = re.compile(r"^[\s#*_]*improved\s+text\s*[:：][\s*_]*", re.IGNORECASE | re.M)


# The reply's shape, enforced by constrained decoding: a "Plan:" heading, one to four plan lines,
# a blank line, the "Improved text:" heading, then free text. Bump GRAMMAR_VERSION on a change.
REPLY_REGEX = r"Plan:\n(?:[^\n]+\n){1,4}\nImproved text:\n(?:[^\n]|\n)+"
GRAMMAR_VERSION = "g1"


class RewireRoute(RouteConfig):
    """``constrained`` (default true): decode under ``REPLY_REGEX``, so the plan is short and
    the rewrite always comes after its heading (a small model otherwise skips the plan, or
    never writes the heading); the rewrite itself is free text. ``frequency_penalty``
    (the family's default 0.5) keeps a greedily decoding small model from repeating one sentence until it
    runs out of tokens (every such reply is dropped as ``truncated``)."""

    method: Literal["rewire"] = "rewire"
    constrained: bool = True


def after_marker(reply: str) -> str | None:
    """The text after the last "Improved text:" heading, or None without one."""
    hits = list(_MARKER.finditer(reply))
    if not hits:
        return None
    return reply[hits[-1].end():].strip()


class Rewire(Method):
    name = "rewire"
    Route = RewireRoute

    def families(self) -> dict[str, Family]:
        return {"rewire": Family("rewire", segment_tokens=1024, max_tokens=1536, min_tokens=30, min_segment_tokens=16,
                                 frequency_penalty=0.5)}

    def sampling(self, fam: Family, parent: Parent, family: str, segment: Segment) -> SamplingParams:
        route: RewireRoute = self.route  # type: ignore[assignment]
        base = super().sampling(fam, parent, family, segment)
        return base.model_copy(update={"regex": REPLY_REGEX}) if route.constrained else base

    def identity(self) -> dict[str, str]:
        return {"grammar": GRAMMAR_VERSION} if self.route.constrained else {}  # type: ignore[attr-defined]

    def parse(self, job: Job, reply: str) -> tuple[str | None, str | None]:
        body = after_marker(reply)
        if body is None:
            return None, "missing_marker"
        return body, None

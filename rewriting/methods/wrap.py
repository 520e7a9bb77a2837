"""``wrap``: rephrase web text in styles (Maini et al., 2024, "Rephrasing the Web", WRAP).

The paper rephrased C4 with an instruction-tuned model in four styles, each document in chunks
of at most 300 tokens (longer inputs lost information), and trained on real and rephrased text
together, reaching the same perplexity about 3x faster and over 10% lower perplexity across
domains. The styles, as prompts written for this project:

- ``easy``: as simple as a young child could follow;
- ``medium``: clear encyclopedic prose, as in Wikipedia (the paper's most useful single style);
- ``hard``: terse, dense, academic;
- ``qa``: a conversation of questions and answers.

Defaults: ``styles: [medium]``, every style for every routed parent (``style_per_document:
one`` picks one style per parent by a hash of its id instead), segments of at most 300 tokens,
greedy decoding, at most 512 new tokens, replies under 10 tokens dropped. Each rewritten segment
becomes one derived document. A reply that is mostly the segment again is dropped
(``copy_of_input``).
"""
from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import Field

from rewriting.methods.base import Family, Method, Parent, RouteConfig, Style


class WrapRoute(RouteConfig):
    method: Literal["wrap"] = "wrap"
    styles: list[Style] = Field(default_factory=lambda: list[Style](["medium"]), min_length=1)
    style_per_document: Literal["all", "one"] = "all"


class Wrap(Method):
    name = "wrap"
    Route = WrapRoute

    def families(self) -> dict[str, Family]:
        route: WrapRoute = self.route  # type: ignore[assignment]
        return {s: Family(f"wrap_{s}", segment_tokens=300, max_tokens=512, min_tokens=10, min_segment_tokens=8)
                for s in dict.fromkeys(route.styles)}

    def families_for(self, parent: Parent) -> list[str]:
        route: WrapRoute = self.route  # type: ignore[assignment]
        styles: list[str] = list(dict.fromkeys(route.styles))
        if route.style_per_document == "all":
            return styles
        h = int(hashlib.sha256(f"{route.seed}\x1f{parent.id}".encode()).hexdigest()[:8], 16)
        return [styles[h % len(styles)]]

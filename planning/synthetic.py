"""Real against synthetic text in a mixture: ``release.mixture.synthetic_share``.

A derived (synthetic) source is a source: any mixture method can weigh it by name (``method:
fixed``, ``weights: {wiki_en.wrap: 0.05, ...}``). ``synthetic_share: s`` says it in one number:
the mixture method plans the ingested sources as usual, over their own tokens, and the derived
sources together make up a share ``s`` of the release, split between them in proportion to their
tokens. So the real part keeps the plan the method gives it (UniMax, temperature, an end
phase...), and the synthetic part is added on top: the budget grows to real budget / (1 - s).
Caps still apply when sampling (``max_epochs``): a small synthetic pool may fall short of its
share, which the manifest's ``released`` then shows.
"""
from __future__ import annotations

from collections.abc import Mapping

from planning.mixture import MixturePlan, Phase


def with_synthetic_share(plan: MixturePlan, synthetic_tokens: Mapping[str, float], share: float) -> MixturePlan:
    """``plan`` (over real sources) with the synthetic sources added at ``share`` of the total."""
    if not 0 < share < 1:
        raise ValueError(f"synthetic_share must be between 0 and 1, got {share}")
    total = float(sum(synthetic_tokens.values()))
    if total <= 0:
        return plan
    syn = {s: share * float(t) / total for s, t in synthetic_tokens.items()}

    def mix(weights: Mapping[str, float]) -> dict[str, float]:
        return {**{s: (1 - share) * w for s, w in weights.items()}, **syn}

    phases = tuple(Phase(p.name, p.start, p.end, mix(p.weights)) for p in plan.phases)
    return MixturePlan(plan.method, mix(plan.weights), {**plan.tokens, **{s: float(t) for s, t in synthetic_tokens.items()}},
                       plan.budget / (1 - share), phases, {**plan.diagnostics, "synthetic_share": share,
                                                           "synthetic_sources": sorted(syn)})

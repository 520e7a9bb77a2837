"""Mixture-ratio planning, document sampling and curriculum ordering of releases.

- ``planning.mixture``: planners that turn per-source token counts (and, for the fitted ones,
  the results of proxy runs) into a ``MixturePlan``: weights, the epochs they imply, phases and
  the planner's diagnostics.
- ``planning.sampling``: a seeded, deterministic plan of how many times each document is
  included (repeats up to the epoch caps) and in which phase, computed per source from ids and
  token counts only.
- ``planning.curriculum``: orderings (random, by a difficulty signal, folding, pacing, warm-up
  then random) and the split of an annealing phase.

Everything here is pure: plain dicts, NumPy arrays and Polars frames in, small result objects
out, so the release step can store them in the catalog and a test can check them in isolation.
"""
from planning.curriculum import CurriculumConfig, order_frame, order_release
from planning.mixture import MixtureConfig, MixturePlan, Phase, plan_mixture
from planning.sampling import SamplingPlan, phase_boundaries, plan_sampling, sample_source

__all__ = [
    "CurriculumConfig", "MixtureConfig", "MixturePlan", "Phase", "SamplingPlan", "order_frame", "order_release",
    "phase_boundaries", "plan_mixture", "plan_sampling", "sample_source",
]

"""The parameters of a ``rewrite`` stage (the ``params:`` block of ``kind: rewrite``)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.inference import InferenceConfig
from rewriting.methods import AnyRoute


class RewriteParams(BaseModel):
    """- ``inference``: the model and how it is served (transformers on CPU, vLLM, an
      OpenAI-compatible server), shared by every route;
    - ``routes``: which parents go to which method (see rewriting.methods.base.RouteConfig);
      each route writes the derived source ``<parent source>.<route name>``;
    - ``language_check``: drop replies whose language differs from the segment's
      (fastText lid.176, both predictions at least ``min_language_score``);
    - ``chunk_prompts``: prompts per engine call (vLLM schedules a call's prompts together; the
      transformers backend batches them by ``inference.batch_size``);
    - ``parents_per_batch``: routed parents generated for and written at a time (bounds memory).
    """

    model_config = ConfigDict(extra="forbid")
    inference: InferenceConfig = InferenceConfig()
    routes: list[AnyRoute] = Field(min_length=1)
    language_check: bool = True
    min_language_score: float = Field(default=0.5, ge=0, le=1)
    chunk_prompts: int = Field(default=256, ge=1)
    parents_per_batch: int = Field(default=256, ge=1)

    @field_validator("routes")
    @classmethod
    def _unique(cls, v: list) -> list:
        names = [r.route_name for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"route names must be unique (they name derived sources), repeated: {dup}; "
                             "give routes of the same method a `name`")
        return v

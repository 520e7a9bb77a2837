"""``release.gates``: the checks a release must pass before it is published (pydantic model).

Each threshold is a number, or ``null`` to switch that gate off. Rates are fractions of a source's
input rows (``rows_in`` of the manifest: kept + dropped + quarantined). A *rule* is one
(stage, reason) pair of the drop reasons, e.g. ``gopher: gopher_short_doc`` or ``release: empty_text``.

The defaults stop the releases a nightly job must never publish (nothing at all, a source that
vanished or was quarantined whole, one rule eating nearly a whole source, a night whose drop rates
jump far from the previous release of the same configuration) while letting ordinary curation
pass: in the demo's release the heaviest rule drops 58% of a source (Gopher's 50-word minimum on
French Wikipedia summaries), which warns but passes. A pipeline that keeps one language of a
many-language crawl can legitimately drop more than 90% of it in one rule: raise
``max_drop_rate`` there. ``warn_drop_rate`` never fails a run; it prints (and records) a warning
for any rule that removes more than that share of a source.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_rows: int | None = Field(default=1, ge=0)
    """Fewest rows the whole release may have (1: no empty release)."""
    min_source_rows: int | dict[str, int] | None = 1
    """Fewest rows each source must release: one number for all, or ``{source: rows}`` (sources not
    listed: 1). A source marked ``optional`` is exempt."""
    max_drop_rate: float | None = Field(default=0.9, ge=0, le=1)
    """Highest share of a source's rows one rule may drop."""
    max_drop_shift: float | None = Field(default=0.25, ge=0, le=1)
    """Largest change (in rate points, 0.25 = 25 points) of a rule's drop rate on a source since the
    parent release, checked only when the parent was built from the same pipeline configuration."""
    max_quarantine_rate: float | None = Field(default=0.1, ge=0, le=1)
    """Highest share of a source's rows that may be quarantined (unreadable, or a stage failed)."""
    warn_drop_rate: float | None = Field(default=0.5, ge=0, le=1)
    """Warn (run output and catalog, never a failure) when a rule drops more than this share of a source."""
    min_source_rows_in: int = Field(default=50, ge=0)
    """Rate gates (drop, shift, quarantine) judge only sources with at least this many input rows:
    on a handful of documents a rate says little. Floors and warnings apply to every source."""

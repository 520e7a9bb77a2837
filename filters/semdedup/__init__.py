"""Semantic deduplication: ``semantic_dedup`` (SemDeDup + D4 over the vectors of an ``embed``
stage, a global stage). See docs/semdedup.md."""
from filters.semdedup import stage

__all__ = ["stage"]

"""MinHash LSH near-duplicate detection: ``minhash_signatures`` (per shard, cached) and
``minhash_dedup`` (global: clusters and survivors). See docs/dedup.md."""
from filters.minhash import dedup, signatures

__all__ = ["dedup", "signatures"]

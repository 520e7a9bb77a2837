"""The parts of the release step (warehouse.release orchestrates them).

- ``fates``: load a raw shard with the annotation columns the release reads; decide each row's fate
  (kept / dropped with a reason / quarantined) and account for it.
- ``text``: ``release.text``, the chain of derived text columns the release carries, and what each
  link removed per source.
- ``writer``: release shards written as rows stream by, or in a planned order (DuckDB, out of core).
- ``gates``: the checks before publishing (``release.gates``) and the warnings a run prints.
- ``publish``: the commit protocol (shards, then ``manifest.json`` as the commit record, then
  ``LATEST``), the readers that see only committed releases, and the clean-up of leftovers.

Everything goes through fsspec (engines.storage), so a lake on object storage works the same.
"""

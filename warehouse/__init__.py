"""The lake layout, releases and manifests, the DuckDB catalog and its statistics."""

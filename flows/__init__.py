"""Prefect flows and the ``curate`` CLI: wiring only, no algorithms."""

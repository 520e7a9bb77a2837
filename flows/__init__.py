"""Prefect flows and the ``curate`` CLI: wiring only, no algorithms."""

from flows.prefect_env import apply_prefect_defaults

# Every flows module is imported after this package: Prefect's settings (read when Prefect is
# first imported) get curate's defaults where the user set none (see flows/prefect_env.py).
apply_prefect_defaults()

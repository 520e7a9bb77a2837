"""Heuristic quality filters (Gopher quality and repetition, C4, FineWeb), vectorised.

Importing this package registers the stages ``gopher_quality``, ``gopher_repetition``, ``c4`` and
``fineweb_quality``.
"""
from filters.heuristics import (  # noqa: F401
    c4,
    fineweb,
    gopher,  # noqa: F401
)

"""Stages that flag documents: each writes ``keep``, ``reason`` and its own measurements."""

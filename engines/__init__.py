"""Executors (where stages run) and, later, the inference layer. Imports only schemas."""

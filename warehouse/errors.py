"""Errors about the state of a lake that a user can act on.

The CLI prints a ``LakeError``'s message as one line, without a traceback, and exits with its
``exit_code``: the message already says what happened and what to do next.
"""
from __future__ import annotations


class LakeError(RuntimeError):
    """A lake problem with a clear remedy (busy, damaged, unreadable catalog...)."""

    exit_code = 1


class DamagedFile(LakeError):
    """A file of the lake cannot be read or does not match what the lake recorded for it."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem} (run `curate check` to list damage, `curate repair` to fix it)")

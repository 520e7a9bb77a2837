"""The ProX edit language: a model writes a tiny program, this module parses and interprets it.

ProX (Zhou et al., 2024, "Programming Every Example") lets a small model refine a document by
writing a program instead of new text: drop the document, remove lines, or replace a string.
Here the program is applied to one segment of a document whose lines are numbered from 1.

Grammar (a program is data; it is tokenised and interpreted here, never ``eval``-ed or run as
Python)::

    program   := (call | comment | blank)*      calls separated by newlines or ';'
    call      := NAME '(' [arg (',' arg)*] ')'
    arg       := INTEGER | STRING
    NAME      := drop | keep | remove_lines | normalize
                 (ProX's own spellings drop_doc, keep_doc and keep_chunk are read as drop/keep)
    INTEGER   := 1 to 7 decimal digits
    STRING    := '...' or "..." with the escapes \\\\ \\' \\" \\n \\t
    comment   := '#' to the end of the line

A surrounding Markdown code fence (```python ... ```) is ignored. Anything else (prose, an
unknown name, a wrong number or type of arguments, a line range outside the segment, a program
over ``MAX_PROGRAM_CHARS`` or ``MAX_CALLS``) makes the program **malformed**.

Semantics, in program order: ``keep()`` does nothing; ``drop()`` removes every line of the
segment; ``remove_lines(a, b)`` removes lines a..b (inclusive, 1-based, a <= b); ``normalize(s, t)``
replaces every occurrence of the literal string ``s`` (not a pattern) by ``t`` in the lines
still present. The safety rules of the method (rewriting/methods/prox.py) sit on top: a
malformed program leaves the segment as it was, and a document that loses nearly all its text
is dropped.

Nothing here raises for any input string: ``parse`` returns a ``Program`` whose ``error`` says
what is wrong, and ``apply`` on a malformed program returns the lines unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_PROGRAM_CHARS = 8_000
MAX_CALLS = 64
MAX_STRING_CHARS = 1_000
MAX_INT_DIGITS = 7

# name -> (canonical name, argument types)
SIGNATURES: dict[str, tuple[str, tuple[type, ...]]] = {
    "drop": ("drop", ()),
    "drop_doc": ("drop", ()),
    "keep": ("keep", ()),
    "keep_doc": ("keep", ()),
    "keep_chunk": ("keep", ()),
    "remove_lines": ("remove_lines", (int, int)),
    "normalize": ("normalize", (str, str)),
}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


@dataclass(frozen=True)
class Call:
    name: str  # canonical: drop | keep | remove_lines | normalize
    args: tuple[int | str, ...] = ()


@dataclass
class Program:
    calls: list[Call] = field(default_factory=list)
    error: str | None = None  # why the program is malformed; None when it parsed

    @property
    def ok(self) -> bool:
        return self.error is None


class _Malformed(Exception):
    pass


def _strip_fence(text: str) -> str:
    lines = text.strip().splitlines()
    if lines and lines[0].strip().startswith("```"):
        lines = lines[1:]
        if lines and lines[-1].strip() == "```":
            lines = lines[:-1]
    return "\n".join(lines)


class _Lexer:
    """Hand-written scanner over the program text; positions are character offsets."""

    def __init__(self, text: str):
        self.s, self.i = text, 0

    def fail(self, why: str) -> _Malformed:
        return _Malformed(f"{why} at character {self.i}")

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c in "\n;"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, ch: str) -> None:
        self.skip_space(newlines=False)
        if self.peek() != ch:
            got = repr(self.peek()) if self.peek() else "the end"
            raise self.fail(f"expected {ch!r}, found {got}")
        self.i += 1

    def name(self) -> str:
        start = self.i
        while self.i < len(self.s) and (self.s[self.i].isascii() and (self.s[self.i].isalnum() or self.s[self.i] == "_")):
            self.i += 1
        word = self.s[start:self.i]
        if not word or not (word[0].isalpha() or word[0] == "_"):
            self.i = start
            raise self.fail("expected a call such as remove_lines(3, 5)")
        return word

    def integer(self) -> int:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in "0123456789":
            self.i += 1
        digits = self.s[start:self.i]
        if len(digits) > MAX_INT_DIGITS:
            raise self.fail(f"number {digits[:12]}... is too large")
        return int(digits)

    def string(self) -> str:
        quote = self.s[self.i]
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == quote:
                self.i += 1
                return "".join(out)
            if c == "\\":
                nxt = self.s[self.i + 1] if self.i + 1 < len(self.s) else ""
                if nxt not in _ESCAPES:
                    raise self.fail("unknown escape in a string")
                out.append(_ESCAPES[nxt])
                self.i += 2
            elif c == "\n":
                raise self.fail("a string may not span lines (write \\n)")
            else:
                out.append(c)
                self.i += 1
            if len(out) > MAX_STRING_CHARS:
                raise self.fail(f"a string is longer than {MAX_STRING_CHARS} characters")
        raise self.fail("unterminated string")

    def arg(self) -> int | str:
        self.skip_space(newlines=False)
        c = self.peek()
        if c in ("'", '"'):
            return self.string()
        if c.isascii() and c.isdigit():
            return self.integer()
        got = repr(c) if c else "the end"
        raise self.fail(f"expected a number or a quoted string, found {got}")


def parse(text: object) -> Program:
    """Parse a model's reply into a program; never raises (a bad reply gives ``error``)."""
    if not isinstance(text, str):
        return Program(error=f"the reply is not text ({type(text).__name__})")
    if len(text) > MAX_PROGRAM_CHARS:
        return Program(error=f"the program is longer than {MAX_PROGRAM_CHARS} characters")
    lex = _Lexer(_strip_fence(text))
    calls: list[Call] = []
    try:
        while True:
            lex.skip_space(newlines=True)
            if not lex.peek():
                break
            if len(calls) == MAX_CALLS:
                raise lex.fail(f"more than {MAX_CALLS} calls")
            word = lex.name()
            if word not in SIGNATURES:
                raise lex.fail(f"unknown function {word[:40]!r} (allowed: drop, keep, remove_lines, normalize)")
            canonical, types = SIGNATURES[word]
            lex.expect("(")
            args: list[int | str] = []
            lex.skip_space(newlines=False)
            if lex.peek() != ")":
                args.append(lex.arg())
                while True:
                    lex.skip_space(newlines=False)
                    if lex.peek() != ",":
                        break
                    lex.i += 1
                    args.append(lex.arg())
            lex.expect(")")
            if len(args) != len(types) or any(type(a) is not t for a, t in zip(args, types)):
                want = ", ".join(t.__name__ for t in types) or "no arguments"
                raise lex.fail(f"{word}() takes {want}")
            calls.append(Call(canonical, tuple(args)))
            lex.skip_space(newlines=False)
            if lex.peek() not in ("", "\n", ";"):
                raise lex.fail("expected a new line or ';' after a call")
    except _Malformed as e:
        return Program(error=str(e))
    if not calls:
        return Program(error="the program holds no call")
    return Program(calls)


@dataclass
class Applied:
    lines: list[str]  # the lines that remain, edited
    removed: int  # lines removed
    replaced: int  # string replacements made
    error: str | None = None  # set when the program was malformed or invalid for these lines (lines unchanged)

    @property
    def changed(self) -> bool:
        return self.error is None and (self.removed > 0 or self.replaced > 0)


def apply(program: Program, lines: list[str]) -> Applied:
    """Run ``program`` on ``lines`` (numbered from 1). A malformed program, or one naming a line
    outside the segment or an empty string to normalise, leaves the lines unchanged."""
    if not program.ok:
        return Applied(list(lines), 0, 0, program.error)
    n = len(lines)
    for c in program.calls:  # validate everything first: a program applies whole or not at all
        if c.name == "remove_lines":
            a, b = c.args
            assert isinstance(a, int) and isinstance(b, int)
            if not 1 <= a <= b <= n:
                return Applied(list(lines), 0, 0, f"remove_lines({a}, {b}) is outside lines 1..{n}")
        elif c.name == "normalize" and c.args[0] == "":
            return Applied(list(lines), 0, 0, "normalize() with an empty source string")
    present = [True] * n
    text = list(lines)
    replaced = 0
    # A hostile normalize("a", <1,000 characters>) could multiply the text: cap the growth.
    limit = 2 * sum(len(t) for t in lines) + MAX_STRING_CHARS
    for c in program.calls:
        if c.name == "drop":
            present = [False] * n
        elif c.name == "remove_lines":
            a, b = c.args
            assert isinstance(a, int) and isinstance(b, int)
            for k in range(a - 1, b):
                present[k] = False
        elif c.name == "normalize":
            src, dst = c.args
            assert isinstance(src, str) and isinstance(dst, str)
            counts = [text[k].count(src) if present[k] else 0 for k in range(n)]
            size = sum(len(t) for t in text) + sum(counts) * (len(dst) - len(src))
            if size > limit:  # checked before replacing, so the text never grows past the cap
                return Applied(list(lines), 0, 0, "normalize() would more than double the text")
            for k in range(n):
                if counts[k]:
                    replaced += counts[k]
                    text[k] = text[k].replace(src, dst)
    kept = [t for t, p in zip(text, present) if p]
    return Applied(kept, n - len(kept), replaced)


def number_lines(lines: list[str]) -> str:
    """The segment as the model sees it: ``[1] first line`` ... one numbered line per line."""
    return "\n".join(f"[{i}] {line.rstrip(chr(10))}" for i, line in enumerate(lines, 1))


# --- the constraint: programs the model may write (constrained decoding) ---------------------
# Bump when program_regex changes: it is part of the rewrite's fingerprint (rewriting/plan.py),
# and the regex itself is part of every reply's cache key (SamplingParams.regex).
GRAMMAR_VERSION = "g1"
MAX_CONSTRAINED_EDITS = 4
ORDERED_RANGES_MAX = 16
# A string argument: any character but a quote, a backslash or a line break, or one of the
# escapes the lexer reads. The constraint never lets the model write an unterminated string.
_STRING_CHAR = r'(?:[^"\\\n]|\\[\\"nt])'


def number_regex(n: int, lo: int = 1) -> str:
    """A regex for the decimal numbers lo..n exactly (no leading zero), for 1 <= lo <= n."""
    if not 1 <= lo <= n:
        raise ValueError(f"no numbers from {lo} to {n}")
    parts, p = [], 1
    while p <= n:  # one part per digit count: p .. 10p - 1, clipped to lo .. n
        if 10 * p - 1 >= lo:
            parts.append(_range_regex(max(lo, p), min(n, 10 * p - 1)))
        p *= 10
    return "(?:" + "|".join(parts) + ")"


def _range_regex(lo: str | int, hi: str | int) -> str:
    """Numbers from lo to hi with the same number of digits (lo <= hi), as a regex."""
    a, b = str(lo), str(hi)
    if len(a) == 1:
        return f"[{a}-{b}]" if a != b else a
    if a[0] == b[0]:
        return a[0] + _range_regex(a[1:], b[1:])
    k = len(a) - 1
    parts = [a[0] + _range_regex(a[1:], "9" * k)]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}]" + "[0-9]" * k)
    parts.append(b[0] + _range_regex("0" * k, b[1:]))
    return "(?:" + "|".join(parts) + ")"


def program_regex(n_lines: int, normalize: bool = False) -> str:
    """The programs for a segment of ``n_lines`` lines that the constrained decoder allows:
    ``keep()`` alone, ``drop()`` alone, or one to ``MAX_CONSTRAINED_EDITS`` edits, one per line
    (the bound makes a looping small model stop: after the last edit only the end may follow).
    An edit is ``remove_lines(a, b)`` with 1 <= a <= b <= n_lines (the order a <= b only up to
    ``ORDERED_RANGES_MAX`` lines), or, with ``normalize``,
    ``normalize("old", "new")`` with a non-empty ``old``. The spelling is the prompt's (one
    space after each comma). Every string it matches parses (``parse``).

    ``normalize`` is off by default: a 135M model given the choice quotes whole sentences (of
    the prompt, or the segment) into the strings and runs out of tokens, and bounding the
    strings' length in the automaton multiplies its states. Portable syntax (no lookaround, no
    shorthand classes), so vLLM's structured-output backends read it as this module does."""
    n = max(1, n_lines)
    if n <= ORDERED_RANGES_MAX:  # a <= b: one branch per first line a, each followed by a..n
        ranges = "|".join(f"{a}, {number_regex(n, a)}" for a in range(1, n + 1))
    else:  # the automaton would grow with n squared: bounds only, ``apply`` checks the order
        ranges = f"{number_regex(n)}, {number_regex(n)}"
    edit = rf"remove_lines\((?:{ranges})\)"
    if normalize:
        edit = rf'(?:{edit}|normalize\("{_STRING_CHAR}+", "{_STRING_CHAR}*"\))'
    return rf"(?:keep\(\)|drop\(\)|{edit}(?:\n{edit}){{0,{MAX_CONSTRAINED_EDITS - 1}}})\n?"

"""Constrained decoding for local models: only tokens that keep the reply a prefix of a regex.

A request may carry ``SamplingParams.regex``: the whole reply must match it. vLLM and an
OpenAI-compatible vLLM server enforce it themselves (structured outputs); the transformers
backend enforces it here, with a ``LogitsProcessor``:

- the regex is compiled once into a deterministic automaton (``interegular``, pure Python) and
  the states from which no accepting state can be reached are pruned, so the model can never
  walk into a dead end;
- the tokenizer's vocabulary is decoded once per tokenizer into strings, kept in a character
  trie (special tokens and tokens that are a fragment of a UTF-8 character are left out: they
  cannot be matched against characters);
- for each automaton state the decoder reaches, the allowed tokens are found by walking the
  trie and the automaton together, once (a token is allowed when all its characters keep the
  automaton alive); the end-of-sequence tokens are allowed exactly in accepting states;
- at each step every row's state advances by the token it just chose, and its scores outside
  the allowed set become ``-inf``.

Cost: decoding a 49k-token vocabulary takes well under a second once per backend; a state's
mask takes a few milliseconds when few tokens fit (program structure) and about a second when
nearly all do (inside a quoted string); later steps in a known state cost one table lookup
and one ``masked_fill`` per row. Compiled regexes and their masks are kept per backend (the
most recent ``MAX_COMPILED``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_COMPILED = 64


def vocabulary_strings(tok: Any) -> dict[int, str]:
    """{token id: the text it stands for} for the tokens a constraint may use (no special
    tokens, no fragments of a UTF-8 character). Byte-level BPE vocabularies (GPT-2 style, as
    SmolLM2's) are read directly from their byte alphabet; others are decoded one id at a time."""
    special = set(getattr(tok, "all_special_ids", []) or [])
    special |= set(getattr(tok, "added_tokens_decoder", {}) or {})
    vocab: dict[str, int] = tok.get_vocab()
    out: dict[int, str] = {}
    byte_of = _byte_level_alphabet(tok)
    for piece, i in vocab.items():
        if i in special:
            continue
        if byte_of is not None:
            try:
                text = bytes(byte_of[c] for c in piece).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue
        else:
            text = tok.decode([i])
            if "\ufffd" in text:
                continue
        if text:
            out[i] = text
    return out


def _byte_level_alphabet(tok: Any) -> dict[str, int] | None:
    """The inverse of GPT-2's byte-to-character table when the tokenizer decodes byte-level."""
    backend = getattr(tok, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None or "ByteLevel" not in type(decoder).__name__ and "ByteLevel" not in repr(decoder):
        return None
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # tokens whose text ends here


def build_trie(strings: dict[int, str]) -> _Node:
    root = _Node()
    for i, s in strings.items():
        node = root
        for ch in s:
            nxt = node.children.get(ch)
            if nxt is None:
                nxt = node.children[ch] = _Node()
            node = nxt
        node.ids.append(i)
    return root


class Automaton:
    """A regex as a DFA over characters, restricted to states that can still reach a match."""

    def __init__(self, regex: str):
        try:
            import interegular
        except ImportError:
            from engines.extras import install_command
            raise ImportError("constrained decoding on the transformers backend needs the `interegular` package: "
                              f"{install_command(['models'])}") from None
        try:
            fsm = interegular.parse_pattern(regex).to_fsm().reduce()
        except Exception as e:  # noqa: BLE001 - the library raises several kinds for bad patterns
            raise ValueError(f"cannot compile the constraint regex {regex[:80]!r}: {e}") from None
        self.initial = fsm.initial
        self.finals = set(fsm.finals)
        self._symbols = {ch: fsm.alphabet[ch] for ch in fsm.alphabet}  # char -> transition key
        self._other = self._symbols.pop(interegular.fsm.anything_else, None)  # any character not named
        trans: dict[Any, dict[Any, Any]] = {s: dict(m) for s, m in fsm.map.items()}
        live = set(self.finals)  # states from which an accepting state is reachable
        changed = True
        while changed:
            changed = False
            for s, m in trans.items():
                if s not in live and any(t in live for t in m.values()):
                    live.add(s)
                    changed = True
        self.trans = {s: {sym: t for sym, t in m.items() if t in live} for s, m in trans.items() if s in live}
        if self.initial not in self.trans:
            raise ValueError(f"the constraint regex {regex[:80]!r} matches nothing")

    def step(self, state: Any, ch: str) -> Any:
        """The next state, or None when ``ch`` leaves every match."""
        m = self.trans.get(state)
        return None if m is None else m.get(self._symbols.get(ch, self._other))

    def walk(self, state: Any, text: str) -> Any:
        for ch in text:
            state = self.step(state, ch)
            if state is None:
                return None
        return state

    def matches(self, text: str) -> bool:
        return self.walk(self.initial, text) in self.finals


class Vocabulary:
    """A tokenizer's strings and trie, built once per backend, shared by all its constraints."""

    def __init__(self, tok: Any, eos_ids: list[int], size: int):
        self.strings = vocabulary_strings(tok)
        self.trie = build_trie(self.strings)
        self.eos_ids = sorted(set(eos_ids))
        self.size = size  # the model's logits width (may exceed the tokenizer's vocabulary)


class CompiledConstraint:
    """One regex over one vocabulary: lazily computed allowed-token masks per automaton state."""

    def __init__(self, regex: str, vocab: Vocabulary):
        import torch

        self._torch = torch
        self.automaton = Automaton(regex)
        self.vocab = vocab
        self._masks: dict[Any, Any] = {}

    def allowed(self, state: Any) -> list[int]:
        """Token ids allowed in ``state`` (end-of-sequence ids included when it accepts)."""
        a = self.automaton
        out: list[int] = list(self.vocab.eos_ids) if state in a.finals else []
        stack = [(self.vocab.trie, state)]
        while stack:
            node, s = stack.pop()
            for ch, child in node.children.items():
                t = a.step(s, ch)
                if t is not None:
                    out.extend(child.ids)
                    if child.children:
                        stack.append((child, t))
        return out

    def mask(self, state: Any) -> Any:
        """A bool tensor over the logits: True where a token is forbidden in ``state``."""
        m = self._masks.get(state)
        if m is None:
            torch = self._torch
            m = torch.ones(self.vocab.size, dtype=torch.bool)
            ids = [i for i in self.allowed(state) if i < self.vocab.size]
            if ids:
                m[torch.tensor(ids)] = False
            self._masks[state] = m
        return m

    def advance(self, state: Any, token: int) -> Any:
        """The state after ``token`` (None: the token left the language, or ended the reply)."""
        text = self.vocab.strings.get(token)
        return None if text is None else self.automaton.walk(state, text)


class ConstraintCache:
    """The compiled constraints of one backend, most recent ``MAX_COMPILED`` kept."""

    def __init__(self, tok: Any, eos_ids: list[int], size: int):
        self._args = (tok, eos_ids, size)
        self._vocab: Vocabulary | None = None
        self._compiled: OrderedDict[str, CompiledConstraint] = OrderedDict()

    def get(self, regex: str) -> CompiledConstraint:
        c = self._compiled.get(regex)
        if c is None:
            if self._vocab is None:
                self._vocab = Vocabulary(*self._args)
            c = self._compiled[regex] = CompiledConstraint(regex, self._vocab)
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(regex)
        return c


class RegexLogitsProcessor:
    """A transformers ``LogitsProcessor`` holding one constraint (or None: free) per batch row.

    ``prompt_len`` is the width of the (left-padded) prompt batch; each call looks at the token
    each row chose last, advances the row's state, and masks what the state forbids. A row that
    ended (end of sequence) or whose state is lost is left alone; the reply's parser decides."""

    def __init__(self, constraints: list[CompiledConstraint | None], prompt_len: int):
        self.constraints = constraints
        self.prompt_len = prompt_len
        self.states: list[Any] = [c.automaton.initial if c is not None else None for c in constraints]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids.shape[1] - self.prompt_len
        for row, c in enumerate(self.constraints):
            if c is None or self.states[row] is None:
                continue
            if generated > 0:
                self.states[row] = c.advance(self.states[row], int(input_ids[row, -1]))
                if self.states[row] is None:
                    continue
            scores[row].masked_fill_(c.mask(self.states[row]).to(scores.device), float("-inf"))
        return scores


class FrequencyPenalty:
    """OpenAI's ``frequency_penalty`` as a ``LogitsProcessor``: each token's score minus the
    penalty times its count among the tokens generated so far (the prompt does not count)."""

    def __init__(self, penalty: float, prompt_len: int):
        self.penalty = penalty
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_len:]
        if new.shape[1]:
            counts = torch.zeros_like(scores)
            counts.scatter_add_(1, new, torch.ones_like(new, dtype=scores.dtype))
            scores = scores - self.penalty * counts
        return scores

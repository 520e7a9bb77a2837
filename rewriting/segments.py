"""Cutting a document into segments a prompt can hold, on line boundaries.

Rewriting models lose content on long inputs, so every method rewrites segments of at most a
method-specific number of tokens (WRAP: 300; Nemotron-CC: 1,000 to 2,000 by prompt family, as its
published pipelines use). A segment is a run of whole lines whose token count stays within the
limit; a single line longer than the limit is cut at token boundaries (the backend's
``truncate``), so no text is skipped in the middle. Segments keep their character span in the
parent (``start``, ``end``), which is what a derived document's lineage records.

Cost: one tokenizer call over the lines of the document (a local tokenizer for the transformers
and vLLM backends; the OpenAI-compatible backend asks the server's ``/tokenize``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Segment:
    index: int  # position among the document's segments (0-based)
    start: int  # character span in the parent text: text[start:end]
    end: int
    text: str
    tokens: int


def _line_spans(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for line in text.splitlines(keepends=True):
        spans.append((pos, pos + len(line)))
        pos += len(line)
    return spans


def split_segments(text: str, max_tokens: int, count_tokens: Callable[[list[str]], list[int]],
                   truncate: Callable[[str, int], str], max_segments: int | None = None,
                   min_tokens: int = 1) -> list[Segment]:
    """Consecutive segments of ``text``, each at most ``max_tokens`` tokens, cut between lines.

    ``count_tokens``/``truncate`` come from the inference backend. Stops after ``max_segments``
    segments (the rest of a longer document is not rewritten). Segments under ``min_tokens``
    tokens (say a trailing line of navigation) are left out; their text is not rewritten.
    """
    spans = _line_spans(text)
    if not spans:
        return []
    counts = count_tokens([text[a:b] for a, b in spans])
    pieces: list[tuple[int, int, int]] = []  # (start, end, tokens) of lines, long lines already cut
    for (a, b), n in zip(spans, counts):
        if n <= max_tokens:
            pieces.append((a, b, n))
            continue
        pos = a
        while pos < b:
            head = truncate(text[pos:b], max_tokens) or text[pos:b][:1]  # always advance
            end = pos + len(head)
            pieces.append((pos, end, count_tokens([head])[0]))
            pos = end
    out: list[Segment] = []
    cur_start, cur_end, cur_tokens = pieces[0][0], pieces[0][0], 0

    def close() -> None:
        if cur_end > cur_start and cur_tokens >= min_tokens and text[cur_start:cur_end].strip():
            out.append(Segment(len(out), cur_start, cur_end, text[cur_start:cur_end], cur_tokens))

    for a, b, n in pieces:
        if cur_tokens and cur_tokens + n > max_tokens:
            close()
            if max_segments is not None and len(out) >= max_segments:
                return out
            cur_start, cur_tokens = a, 0
        cur_end, cur_tokens = b, cur_tokens + n
    close()
    return out[:max_segments] if max_segments is not None else out

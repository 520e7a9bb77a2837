"""Checks every model reply passes before it becomes a document (all methods share them).

A reply is dropped, with the first reason that applies, when it is:

- ``backend_error``: the backend gave no reply (a server that timed out after its retries);
  such replies are not cached and the parent shard is retried on the next run;
- ``truncated``: generation stopped at ``max_tokens`` (finish reason ``length``): the end of the
  text is missing;
- ``refusal``: it opens by declining ("I'm sorry, but I can't...", "As an AI...");
- ``empty``: nothing is left once the method has taken what it needs from it;
- ``prompt_echo``: most of it repeats the instruction (at least ``ECHO_SHARE`` of its word
  5-grams occur in the template's own text);
- ``copy_of_input``: for paraphrasing methods, it is the segment again (at least
  ``COPY_SHARE`` of its word 5-grams occur in the segment);
- ``too_short`` / ``too_long``: outside the method's token bounds;
- ``wrong_language``: fastText ``lid.176`` is confident (probability >= ``min_score``) about the
  language of both the segment and the reply, and they differ.

Methods add their own reasons before these (a missing required prefix, no question-answer pair,
a missing "Improved text:" heading). Cost: a few set operations per reply and one fastText
prediction per kept reply.
"""
from __future__ import annotations

import re
from typing import Any

ECHO_SHARE = 0.5
COPY_SHARE = 0.9
_REFUSAL = re.compile(
    r"^\W*(?:i'?m\s+sorry|i\s+am\s+sorry|sorry,|i\s+apologi[sz]e|i\s+(?:can\s*not|can'?t|won'?t|am\s+unable|'m\s+unable)"
    r"|i'm\s+unable|unfortunately,?\s+i\s|as\s+an\s+ai\b|i\s+(?:do\s+not|don'?t)\s+(?:feel\s+comfortable|have\s+access))",
    re.IGNORECASE)


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Word n-grams of a text, lower-cased (a text shorter than n words is one shingle)."""
    words = text.lower().split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def containment(part: str, whole: str | set[tuple[str, ...]]) -> float:
    """Share of ``part``'s word 5-grams that also occur in ``whole`` (0 for an empty part)."""
    a = shingles(part)
    if not a:
        return 0.0
    b = shingles(whole) if isinstance(whole, str) else whole
    return len(a & b) / len(a)


def is_refusal(reply: str) -> bool:
    return bool(_REFUSAL.match(reply[:200]))


def reply_problem(reply: str, finish_reason: str) -> str | None:
    """The reasons that need only the raw reply: backend_error, truncated, refusal."""
    if finish_reason == "error":
        return "backend_error"
    if finish_reason == "length":
        return "truncated"
    if is_refusal(reply):
        return "refusal"
    return None


class LanguageCheck:
    """fastText language ID (the ``langid`` stage's model, loaded once per worker)."""

    def __init__(self, min_score: float = 0.5, model: Any = None):
        self.min_score = min_score
        self._model = model

    def _load(self) -> Any:
        if self._model is None:
            import fasttext

            from filters.langid import default_model_path
            fasttext.FastText.eprint = lambda *a, **k: None  # its load warning is noise in run logs
            self._model = fasttext.load_model(default_model_path())
        return self._model

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        if not texts:
            return []
        labels, probs = self._load().predict([t.replace("\n", " ")[:4000] for t in texts], k=1)
        return [(lab[0].removeprefix("__label__") if len(lab) else "", float(min(p[0], 1.0)) if len(p) else 0.0)
                for lab, p in zip(labels, probs)]

    def mismatch(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """For (segment, reply) pairs: True where both languages are confidently known and differ."""
        if not pairs:
            return []
        preds = self.predict([s for s, _ in pairs] + [r for _, r in pairs])
        src, out = preds[:len(pairs)], preds[len(pairs):]
        return [a[0] != b[0] and a[1] >= self.min_score and b[1] >= self.min_score for a, b in zip(src, out)]

    def __getstate__(self) -> dict[str, Any]:  # ship the threshold, not the model
        return {"min_score": self.min_score, "_model": None}

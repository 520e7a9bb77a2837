"""Turning model replies into grades. Pure functions: tested on canned replies.

Each parser returns ``Parsed(value, label, criteria, reason)``; ``value`` is None when the reply
cannot be used and ``reason`` says why (``no_score``, ``out_of_range``, ``refusal``,
``truncated_json``, ``bad_json``, ``missing_criteria``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

_SCORE = re.compile(r"score\s*(?:is)?\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*(?:/\s*5|out of 5)?", re.IGNORECASE)
_REFUSAL = re.compile(r"\b(i can(?:no|')t|i am unable|i'm unable|as an ai)\b", re.IGNORECASE)
CRITERIA = ("accuracy", "coherence", "language", "knowledge", "overall")
DOMAINS = ("science", "technology", "history", "geography", "arts", "society", "health", "sports", "business", "other")


@dataclass
class Parsed:
    value: float | None
    label: str | None = None
    criteria: dict[str, int] = field(default_factory=dict)
    reason: str | None = None


def parse_edu(reply: str) -> Parsed:
    """The last "Score: N" in the reply, N an integer 0..5."""
    found = _SCORE.findall(reply)
    if not found:
        return Parsed(None, reason="refusal" if _REFUSAL.search(reply) else "no_score")
    v = float(found[-1])
    if not (0 <= v <= 5) or v != int(v):
        return Parsed(None, reason="out_of_range")
    return Parsed(v)


def yes_probability(logprobs: dict[str, float]) -> Parsed:
    """P(yes) among {yes, no} from next-token log-probabilities (Ask-LLM style)."""
    y, n = logprobs.get("Yes", float("-inf")), logprobs.get("No", float("-inf"))
    if any(math.isnan(x) for x in (y, n)):
        return Parsed(None, reason="backend_error")
    if y == n == float("-inf"):
        return Parsed(None, reason="no_yes_no_token")
    m = max(y, n)
    p = math.exp(y - m) / (math.exp(y - m) + math.exp(n - m))
    return Parsed(p, label="yes" if p >= 0.5 else "no")


def parse_multi(reply: str) -> Parsed:
    """A JSON object with the five criteria (integers 1..5) and a domain label."""
    start = reply.find("{")
    if start < 0:
        return Parsed(None, reason="refusal" if _REFUSAL.search(reply) else "bad_json")
    end = reply.find("}", start)
    if end < 0:
        return Parsed(None, reason="truncated_json")
    try:
        obj = json.loads(reply[start:end + 1])
    except json.JSONDecodeError:
        return Parsed(None, reason="bad_json")
    if not isinstance(obj, dict):
        return Parsed(None, reason="bad_json")
    crit: dict[str, int] = {}
    for c in CRITERIA:
        v = obj.get(c)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 1 <= v <= 5:
            return Parsed(None, reason="missing_criteria")
        crit[c] = int(v)
    domain = str(obj.get("domain", "other")).strip().lower()
    return Parsed(float(crit["overall"]), label=domain if domain in DOMAINS else "other", criteria=crit)

"""``nemotron_cc``: the five synthetic-data prompts of Nemotron-CC (Su et al., 2024).

Nemotron-CC rewrote Common Crawl by quality: high-quality documents went through four prompts
(diverse question-answer pairs, distillation, knowledge extraction, knowledge lists), low-quality
ones through a Wikipedia-style paraphrase; its 8B model trained on the result gained 5.6 MMLU
points on the high-quality subset. Route high-quality parents here with
``families: [diverse_qa, distill, extract_knowledge, knowledge_list]`` and low-quality ones with a
second route, ``families: [wikipedia]`` (the routing expression decides which is which, e.g.
``ensemble.bucket >= 8`` and ``ensemble.bucket < 8``).

Limits and post-filters follow NVIDIA's published Nemotron-CC pipelines (NeMo Curator), in our
code and with prompts written for this project. Segments are cut on line boundaries under each
prompt's input limit; replies are checked as below, then by the shared checks (postfilter.py):

| family | segment tokens | max new tokens | reply kept when |
|---|---|---|---|
| diverse_qa | 1,000 | 600 | at most 598 tokens, at least one "Question:" pair; a random (seeded) 1..max(1, 10 x segment tokens / 150) of the pairs are appended to the segment; the result is at least 100 tokens |
| distill | 2,000 | 1,600 | at most 1,598 tokens, starts with the required line "Condensed text:" (removed); at least 50 tokens |
| extract_knowledge | 1,400 | 1,400 | at most 1,398 tokens; heading lines such as "Passage 2:" removed; at least 50 tokens |
| knowledge_list | 1,000 | 600 | at most 598 tokens; a first line that is not a list item is removed, item markers stripped; at least 50 tokens |
| wikipedia | 512 | 512 | at most 510 tokens, starts with the required line "Paraphrase:" (removed); at least 50 tokens |

Markdown emphasis and heading marks are removed from every reply, and quotation marks around a
whole paraphrase. Sampling defaults to the published temperature 0.5 and top-p 0.9 (set
``temperature: 0`` for greedy decoding). Each kept reply is one derived document.
"""
from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import Field

from rewriting.methods.base import Family, Job, Method, RouteConfig, strip_prefix

FamilyName = Literal["diverse_qa", "distill", "extract_knowledge", "knowledge_list", "wikipedia"]
HIGH_QUALITY: list[FamilyName] = ["diverse_qa", "distill", "extract_knowledge", "knowledge_list"]
_PREFIX = {"distill": "Condensed text:", "wikipedia": "Paraphrase:", "diverse_qa": "Questions and answers:"}
_PASSAGE = re.compile(r"^\s*passage\s*\d*\s*:\s*$", re.IGNORECASE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.M)
_EMPHASIS = re.compile(r"(\*\*|__)(.+?)\1", re.S)


class NemotronRoute(RouteConfig):
    method: Literal["nemotron_cc"] = "nemotron_cc"
    families: list[FamilyName] = Field(default_factory=lambda: list(HIGH_QUALITY), min_length=1)
    # Question-answer pairs kept: a random 1..max(1, max_qa_pairs * segment tokens / qa_tokens_per_pair).
    max_qa_pairs: int = Field(default=10, ge=1)
    qa_tokens_per_pair: int = Field(default=150, ge=1)


def _fam(template: str, seg: int, new: int, min_tokens: int, max_reply: int, check_copy: bool,
         min_segment: int = 30) -> Family:
    return Family(template, segment_tokens=seg, max_tokens=new, min_tokens=min_tokens, max_reply_tokens=max_reply,
                  min_segment_tokens=min_segment, check_copy=check_copy, temperature=0.5, top_p=0.9)


FAMILIES: dict[str, Family] = {
    "diverse_qa": _fam("nemotron_diverse_qa", 1000, 600, 100, 598, check_copy=False),
    "distill": _fam("nemotron_distill", 2000, 1600, 50, 1598, check_copy=True, min_segment=10),
    "extract_knowledge": _fam("nemotron_extract_knowledge", 1400, 1400, 50, 1398, check_copy=False),
    "knowledge_list": _fam("nemotron_knowledge_list", 1000, 600, 50, 598, check_copy=False),
    "wikipedia": _fam("nemotron_wikipedia", 512, 512, 50, 510, check_copy=True),
}


def remove_markdown(text: str) -> str:
    """Headings' '#' marks and **bold**/__bold__ markers removed; the words stay."""
    return _EMPHASIS.sub(r"\2", _HEADING.sub("", text))


def unquote(text: str) -> str:
    t = text.strip()
    for a, b in (('"', '"'), ("“", "”"), ("'", "'")):
        if len(t) >= 2 and t.startswith(a) and t.endswith(b):
            return t[1:-1].strip()
    return t


def qa_pairs(reply: str) -> list[str] | None:
    """Question-answer blocks of a reply (a question line plus the lines after it), or None when
    text other than the optional opening line comes before the first question."""
    lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    lines = [ln[2:].strip() if ln.startswith(("- ", "* ")) else ln for ln in lines]
    if lines and strip_prefix(lines[0], _PREFIX["diverse_qa"]) is not None:
        lines = lines[1:]
    pairs: list[str] = []
    for ln in lines:
        if re.match(r"^(?:\*\*)?question\s*\d*\s*:", ln, re.IGNORECASE):
            pairs.append(ln)
        elif pairs:
            pairs[-1] += "\n" + ln
        else:
            return None
    return pairs


class NemotronCC(Method):
    name = "nemotron_cc"
    Route = NemotronRoute

    def families(self) -> dict[str, Family]:
        route: NemotronRoute = self.route  # type: ignore[assignment]
        return {f: FAMILIES[f] for f in dict.fromkeys(route.families)}

    def parse(self, job: Job, reply: str) -> tuple[str | None, str | None]:
        text = remove_markdown(reply).strip()
        fam = job.family
        if fam in ("distill", "wikipedia"):
            body = strip_prefix(text, _PREFIX[fam])
            if body is None:
                return None, "missing_prefix"
            return unquote(body), None
        if fam == "extract_knowledge":
            return "\n".join(ln for ln in text.splitlines() if not _PASSAGE.match(ln)).strip(), None
        if fam == "knowledge_list":
            lines = text.splitlines()
            if lines and not lines[0].lstrip().startswith("-"):
                lines = lines[1:]
            items = [ln.strip()[2:].strip() if ln.strip().startswith(("- ", "* ")) else ln.strip() for ln in lines]
            return "\n".join(i for i in items if i), None
        pairs = qa_pairs(text)
        if pairs is None:
            return None, "malformed_qa"
        if not pairs:
            return None, "no_qa_pairs"
        route: NemotronRoute = self.route  # type: ignore[assignment]
        rng = random.Random(job.sampling.seed)
        rng.shuffle(pairs)
        keep = rng.randint(1, max(1, int(route.max_qa_pairs * job.segment.tokens / route.qa_tokens_per_pair)))
        return job.segment.text.strip() + "\n\n" + "\n\n".join(pairs[:keep]), None

"""Prompt templates: text files in rewriting/prompts/, each with an id and a version.

A file ``<id>_v<k>.txt`` holds an optional ``[system]`` section and a ``[user]`` section (a
file without section lines is all user prompt). ``{document}`` marks where the segment goes;
it is replaced literally (the document is never interpreted as a format string). Every
instruction comes before the document, so all prompts of one template share a long prefix
that vLLM's prefix cache (and an OpenAI-compatible vLLM server's) computes once.

The template's **version** is ``v<k>-<first 8 hex of sha256 of the file>``: editing a file
changes its version even when nobody bumps ``k``, and the version is part of the result-cache
key, the lineage of every derived document and the rewrite's fingerprint, so a re-run
regenerates exactly what a prompt change affects. All prompts here were written for this
project; the methods' papers supplied the facts (styles, families, limits), not the wording.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROMPTS = Path(__file__).parent / "prompts"
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.M)


@dataclass(frozen=True)
class Template:
    id: str  # e.g. "wrap_medium"
    version: str  # e.g. "v1-3f2a1b9c"
    system: str | None
    user: str

    @property
    def ref(self) -> str:
        """``id@version``: how lineage and cache keys name the template."""
        return f"{self.id}@{self.version}"

    def messages(self, document: str) -> list[dict[str, str]]:
        """Chat messages with the document in place of ``{document}``."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user.replace("{document}", document)}]

    @property
    def instruction(self) -> str:
        """The template's own words (without the document): what a reply must not parrot back."""
        return ((self.system or "") + "\n" + self.user.replace("{document}", "")).strip()


@cache
def load_template(name: str) -> Template:
    """The newest version of template ``name`` (the file ``<name>_v<k>.txt`` with the largest k)."""
    files = sorted(PROMPTS.glob(f"{name}_v*.txt"), key=lambda p: int(p.stem.rsplit("_v", 1)[1]))
    if not files:
        known = sorted({p.stem.rsplit("_v", 1)[0] for p in PROMPTS.glob("*_v*.txt")})
        raise KeyError(f"no prompt template {name!r}; templates: {', '.join(known)}")
    path = files[-1]
    raw = path.read_text(encoding="utf-8")
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    parts = _SECTION.split(raw)
    sections: dict[str, str] = {}
    if len(parts) == 1:
        sections["user"] = raw.strip()
    else:
        for role, body in zip(parts[1::2], parts[2::2]):
            sections[role] = body.strip()
    if "{document}" not in sections.get("user", ""):
        raise ValueError(f"{path}: the [user] section has no {{document}} placeholder")
    return Template(name, f"v{path.stem.rsplit('_v', 1)[1]}-{digest}", sections.get("system"), sections["user"])

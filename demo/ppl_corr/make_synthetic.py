"""Writes the demo's SYNTHETIC perplexity-correlation inputs (bpb.csv, scores.csv).

Real use needs bits per byte of tens of public LLMs on your domains (run the ``perplexity``
stage once per model on a GPU) and their published benchmark scores. Neither fits in a demo, so
these files are made up, with a planted relation: 40 "models" whose benchmark error goes down
where their bits per byte on English Wikipedia and the Python docs go down; the other domains
are noise. Regenerate with ``python demo/ppl_corr/make_synthetic.py`` (seeded, deterministic).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DOMAINS = ["en.wikipedia.org", "docs.python.org", "fr.wikipedia.org", "es.wikipedia.org", "debian-handbook.info"]
INFORMATIVE = {"en.wikipedia.org", "docs.python.org"}

if __name__ == "__main__":
    rng = np.random.default_rng(7)
    n = 40
    skill = rng.normal(size=n)  # a latent ability: better models have lower loss and lower error
    here = Path(__file__).parent
    with open(here / "bpb.csv", "w") as f:
        f.write("model,domain,bpb\n")
        for i in range(n):
            for d in DOMAINS:
                base = 1.1 if d in INFORMATIVE else 1.6
                x = base - (0.15 * skill[i] if d in INFORMATIVE else 0.0) + rng.normal(scale=0.05)
                f.write(f"model_{i:02d},{d},{x:.4f}\n")
    with open(here / "scores.csv", "w") as f:
        f.write("model,arc_easy_error,piqa_error\n")
        for i in range(n):
            e1 = float(np.clip(0.5 - 0.1 * skill[i] + rng.normal(scale=0.03), 0.01, 0.99))
            e2 = float(np.clip(0.4 - 0.08 * skill[i] + rng.normal(scale=0.03), 0.01, 0.99))
            f.write(f"model_{i:02d},{e1:.4f},{e2:.4f}\n")

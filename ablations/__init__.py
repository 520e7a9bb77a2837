"""Proxy-model ablations of releases: does curation make a better training set?

``curate ablate NAME/V1 NAME/V2 --config ablation.yaml`` trains the same small decoder-only
language model on each release (same tokenizer, architecture, token budget, schedule and seeds),
evaluates its checkpoints on held-out text (bits per byte) and on multiple-choice benchmarks
(accuracy by log-likelihood), and records every number in the lake and in the catalog.

| module | what it holds |
|---|---|
| ``config`` | the ablation YAML (model preset, tokenizer, budget, schedule, seeds, eval sets) |
| ``tokenizer`` | the built-in byte-level BPE tokenizer (4,096 ids) and training one on a fixed reference |
| ``data`` | releases -> their tokenised export (made on demand) -> fixed-size training batches |
| ``model`` | model presets (a tiny Llama from ``transformers``) and deterministic set-up |
| ``train`` | one run: a plain PyTorch loop, evaluations at fixed points |
| ``evaluate`` | bits per byte on held-out files; multiple-choice accuracy with ``lm-eval`` |
| ``contamination`` | was the release decontaminated against the eval sets? (provenance + measured) |
| ``results`` | the lake records, the catalog tables, the summary across seeds |
| ``plot`` | the loss curves (matplotlib) |
| ``runner`` | the whole ablation: every release x seed, resumable |
"""

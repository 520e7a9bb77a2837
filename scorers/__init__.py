"""Stages that score documents (quality classifiers, LLM grades, perplexity, difficulty)."""

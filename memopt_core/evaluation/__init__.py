"""Scoring a model against its original: perplexity, KL, agreement, encoders' similarity, statistics."""

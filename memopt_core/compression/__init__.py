"""Compressing a copy of a model: layers that really store compressed weights, walkers, calibrated methods."""

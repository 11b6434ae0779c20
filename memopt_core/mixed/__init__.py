"""Per-layer sensitivity and mixed-precision plans."""

"""Models larger than memory: loaded under a memory cap with accelerate, compressed and evaluated
one transformer block at a time (``streamed`` loads, ``sequential`` compresses, ``layer_by_layer``
runs one setting end to end)."""

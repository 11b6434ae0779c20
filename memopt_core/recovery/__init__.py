"""Recovery: short distillation fine-tuning of a compressed copy from its original (the teacher).

``config`` the settings, ``trainable`` the training view of compressed layers and its export back
to packed storage, ``data`` the training tokens (never the evaluated ones), ``losses`` the
distillation losses, ``distill`` the training loop, ``result`` what a recovery records,
``recover`` one compressed setting recovered end to end, ``stored`` its place in the results store.
"""

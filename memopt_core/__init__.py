"""memopt_core: prune and quantize a copy of a language model, evaluate it, measure its memory.

The engine never imports Streamlit; the dashboard (``app.py``, ``pages/``, ``ui/``) and the CLI
(``python -m memopt_core``) are thin layers over it.
"""
from memopt_core.errors import MemoptError

__all__ = ["MemoptError"]
__version__ = "0.1.0"

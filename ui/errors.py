"""One way to show failures: a one-line ``st.error`` with what to do, never a traceback."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from memopt_core.errors import MemoptError

_LOG = logging.getLogger("memopt.ui")


def error_message(error: BaseException) -> str:
    """The text shown for ``error``: memopt's own one-line message, or a short line for a bug."""
    if isinstance(error, MemoptError):
        return str(error)
    if isinstance(error, MemoryError):
        return "out of memory: choose a smaller model, a 16-bit dtype or a smaller evaluation budget"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    detail = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return f"unexpected error ({detail}); the page is still usable: change a setting and try again"


@contextmanager
def user_errors(context: str = "", where=None) -> Iterator[None]:
    """Run a block; a MemoptError or any other Exception becomes ``st.error`` and the page goes on.

    Streamlit's own control-flow exceptions (rerun, stop) derive from BaseException, so they pass
    through untouched. Unexpected errors are logged with their traceback for the developer.
    ``where`` is the container the error appears in (default: where the block writes).
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - the dashboard must survive anything a run raises
        if not isinstance(error, MemoptError):
            _LOG.exception("unexpected error in the dashboard")
        prefix = f"{context}: " if context else ""
        (where or st).error(prefix + error_message(error), icon=":material/error:")

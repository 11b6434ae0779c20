"""Units shown to people: binary gibibytes, labelled GiB."""

GIB = 2**30


def format_gib(n_bytes: float, digits: int = 2) -> str:
    """``format_gib(2**30 * 1.234) -> '1.23 GiB'``."""
    return f"{n_bytes / GIB:.{digits}f} GiB"

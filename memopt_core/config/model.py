"""Which model to load and which of its Linear layers to compress."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from memopt_core.config.checks import one_of, require
from memopt_core.config.choices import BUNDLED_MODELS, DEVICES, DTYPES
from memopt_core.errors import choices

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and where: a bundled key, a local folder or a Hugging Face id."""

    source: str
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.source, str) and self.source.strip() != "",
                 "model must be a bundled name, a local folder or a Hugging Face id; got an empty value")
        object.__setattr__(self, "source", self.source.strip())
        require(self.device in DEVICES or re.fullmatch(r"cuda:\d+", str(self.device)) is not None,
                 f"device {self.device!r} is not supported; choose {choices(DEVICES)}")
        one_of("dtype", self.dtype, DTYPES)
        if self.origin == "hub":
            require(_HUB_ID.match(self.source) is not None,
                     f"model {self.source!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}), "
                     "an existing folder, nor a valid Hugging Face id")

    @property
    def origin(self) -> str:
        """'bundled', 'local' or 'hub'."""
        if self.source in BUNDLED_MODELS:
            return "bundled"
        if os.path.isdir(os.path.expanduser(self.source)) or self.source.startswith((".", "/", "~")):
            return "local"
        return "hub"


@dataclass(frozen=True)
class TargetConfig:
    """Which Linear layers are compressed.

    By default every ``nn.Linear`` inside the transformer blocks (embeddings and ``lm_head`` stay).
    ``include`` (fnmatch patterns over module names, e.g. ``"lm_head"`` or ``"*.mlp.*"``) replaces
    that default selection with the Linears matching any pattern; ``exclude`` then removes matches.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = tuple(getattr(self, name))
            require(all(isinstance(p, str) and p for p in value), f"{name} patterns must be non-empty strings")
            object.__setattr__(self, name, value)

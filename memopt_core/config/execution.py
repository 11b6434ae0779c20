"""Where a run's tensors live and where a sweep's settings run: never a figure."""
from __future__ import annotations

from dataclasses import dataclass

from memopt_core.config.checks import require, require_number


@dataclass(frozen=True)
class OffloadConfig:
    """The layer-by-layer route for models larger than memory: the memory the model may take at the
    run's peak (``max_memory`` bytes: resident weights, one block streamed from disk and compressed,
    one window's working memory; the blocks that do not fit stay on disk and are read one at a time)
    and where offloaded weights go (``offload_dir``; by default a temporary folder). It changes where
    tensors live, never a figure: results equal the in-memory route's."""

    max_memory: int
    offload_dir: str | None = None

    def __post_init__(self) -> None:
        require_number("max memory", self.max_memory, int)
        require(self.max_memory > 0, f"max memory {self.max_memory} must be a positive number of bytes")
        require(self.offload_dir is None or (isinstance(self.offload_dir, str) and self.offload_dir.strip() != ""),
                 "offload folder must be a folder path")

    @classmethod
    def from_text(cls, size: str, offload_dir: str | None = None) -> "OffloadConfig":
        """Parse ``'300MB'`` (10^6 bytes), ``'2GiB'`` (2^30 bytes), ``'512MiB'`` ... with accelerate's parser."""
        # accelerate imports torch: loaded only once a size is really parsed, not when the CLI starts.
        from accelerate.utils import convert_file_size_to_int

        text = str(size).strip()
        try:
            value = convert_file_size_to_int(text)
        except (ValueError, OverflowError):
            value = -1
        # A lower-case 'b' means bits to accelerate: refused, so '300mb' cannot silently mean 37.5 MB.
        require(value > 0 and text.endswith("B"),
                 f"max memory {size!r} is not a size; write it like 300MB, 512MiB or 2GiB (B for bytes)")
        return cls(max_memory=value, offload_dir=offload_dir)


@dataclass(frozen=True)
class ClusterConfig:
    """Where a sweep's settings run on Ray: ``address`` of an existing cluster (``host:port``,
    ``ray://host:port`` or ``auto``), or None for a local cluster on this machine only; ``workers``
    processes, each loading the model once (None: as many as the cluster's CPUs allow), each with
    ``cpus_per_worker`` CPUs and as many compute threads."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.address is not None:
            require(isinstance(self.address, str) and self.address.strip() != "",
                     "cluster address must be host:port, ray://host:port or auto; leave it out for a local cluster")
            object.__setattr__(self, "address", self.address.strip())
        if self.workers is not None:
            require_number("workers", self.workers, int)
            require(self.workers >= 1, f"workers {self.workers} must be at least 1")
        require_number("CPUs per worker", self.cpus_per_worker, int)
        require(self.cpus_per_worker >= 1, f"CPUs per worker {self.cpus_per_worker} must be at least 1")

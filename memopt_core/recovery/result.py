"""What one recovery hands back: the run measured after recovery, the same before it, and the record
of the recovery itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memopt_core.compression.compress import CompressedModel
from memopt_core.runs.workbench import RunResult


@dataclass
class RecoveredRun:
    """``result`` measured after recovery; ``before`` the same metrics before it; ``recovery`` the
    settings, training data, loop summary (curve included) and the memory and sparsity checks;
    ``before_result`` the unrecovered run; ``compressed`` the recovered copy (for saving)."""

    result: RunResult
    before: dict[str, Any]
    recovery: dict[str, Any]
    before_result: RunResult
    compressed: CompressedModel

    def to_dict(self) -> dict[str, Any]:
        """``run``'s JSON object plus ``before_recovery`` and ``recovery``."""
        return {**self.result.to_dict(), "before_recovery": self.before, "recovery": self.recovery}

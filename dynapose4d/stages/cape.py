"""The cape stage. PLACEHOLDER: being implemented (see its issue)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CapeStageConfig:
    """Settings of the cape stage."""

    steps: int = 100  # optimisation steps

"""The static stage. PLACEHOLDER: being implemented (see its issue)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StaticConfig:
    """Settings of the static stage."""

    steps: int = 100  # optimisation steps

"""The dynamic stage. PLACEHOLDER: being implemented (see its issue)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DynamicConfig:
    """Settings of the dynamic stage."""

    steps: int = 100  # optimisation steps

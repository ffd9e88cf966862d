"""How the bench's Markdown tables write a measured number."""

from __future__ import annotations

import math


def num(x: float | None) -> str:
    """A figure at a precision that suits its size: 123, 12.3, 1.23, 0.0123, 1.23e-04."""
    if x is None or not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.1:
        return f"{x:.2f}"
    if a >= 0.001:
        return f"{x:.4f}"
    return f"{x:.2e}"

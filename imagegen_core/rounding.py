"""The one rounding rule for numbers shown to people: ``imagegen stats`` prints them, the console's tables show
them, and the two must agree."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def whole(value: float) -> int:
    """``value`` to the nearest whole number, halves away from zero: 990.5 ms is 991, as the console's printf
    formats show it. Python's ``f"{v:.0f}"`` rounds halves to even (990), so the CLI said 990 where the console
    said 991. Decided on the float's exact value, as printf does (no ``value + 0.5`` that turns
    0.49999999999999994 into 1)."""
    return int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP))

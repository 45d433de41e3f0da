"""What size or shape to ask a provider for, given the size a request wants.

Providers take sizes in their own terms (an aspect-ratio enum, sides that are multiples of 32 within bounds);
the image they make is then cover-cropped to the exact request by the normaliser, so each helper only picks the
nearest shape the provider accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def nearest_aspect_ratio(width: int, height: int, ratios: Sequence[str]) -> str:
    """The ``"W:H"`` of ``ratios`` closest to ``width``:``height``, compared on a log scale so that 2:1 and 1:2
    are equally far from 1:1."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ratios, key=distance)


def sides_in_steps(width: int, height: int, *, step: int, min_side: int, max_side: int) -> tuple[int, int]:
    """``width``×``height`` scaled to fit ``min_side``..``max_side`` (keeping the aspect ratio while it can), each
    side then rounded to a multiple of ``step`` within those bounds (which must be multiples of ``step``).

    A request larger than the bounds is scaled down rather than clipped, so the provider still draws the whole
    scene the crop expects; an extreme ratio that cannot fit both bounds keeps its long side at ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    scale = max(scale, min_side / min(width, height))
    scale = min(scale, max_side / max(width, height))  # an extreme ratio: the long side's bound wins

    def fitted(side: int) -> int:
        stepped = round(side * scale / step) * step
        return min(max_side, max(min_side, stepped))

    return fitted(width), fitted(height)

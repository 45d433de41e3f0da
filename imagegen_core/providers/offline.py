"""The offline provider: a procedural picture drawn locally from the prompt, no network, no key.

It keeps imagegen doing its main job on a fresh machine (DESIGN §1) and gives tests and demos a real,
decodable image. The picture is seeded by the prompt's SHA-256, so it is reproducible, and different
prompts differ in palette, time of day, sky disc, silhouettes and shapes. The bytes come from
:func:`imagegen_core.images.draw_prompt_image`; the composition lives here, with its provider.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import random
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from .base import ProviderBase, ProviderContext, ProviderJob, ProviderOutput, check_known_options

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]

#: Model name reported for offline images (in the log and the result).
OFFLINE_MODEL = "offline-procedural"


class OfflineProvider(ProviderBase):
    """Draws :func:`~imagegen_core.images.draw_prompt_image` in an image thread; never fails for a
    valid size and never touches the network (empty ``output_hosts``)."""

    kind: ClassVar[str] = "offline"
    requires_key: ClassVar[bool] = False
    local: ClassVar[bool] = True
    output_hosts: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """No options: the drawing has nothing to set (a name there would be ignored at every call)."""
        check_known_options(options, cls.kind, ())

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Render the prompt's picture off the event loop (it is CPU-bound, tens of ms)."""
        from ..images import draw_prompt_image, in_image_worker

        data = await in_image_worker(functools.partial(draw_prompt_image, job.prompt, job.width, job.height))
        return ProviderOutput(data=data, content_type="image/png", model=OFFLINE_MODEL)


# --------------------------------------------------------------------------------------------------
# The picture


def _hls(hue: float, lightness: float, saturation: float) -> Colour:
    r, g, b = colorsys.hls_to_rgb(hue % 1.0, min(max(lightness, 0.0), 1.0), min(max(saturation, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


# Per time of day: sky lightness at top / middle / horizon, and the disc colour.
_MOODS: dict[str, tuple[tuple[float, float, float], Colour]] = {
    "day": ((0.52, 0.68, 0.86), (255, 240, 190)),
    "dusk": ((0.30, 0.52, 0.70), (255, 176, 112)),
    "night": ((0.08, 0.16, 0.30), (236, 236, 222)),
}


def compose_scene(prompt: str, width: int, height: int) -> Image.Image:
    """The offline picture for ``prompt`` as an RGB image of exactly ``width`` x ``height``.

    Everything random is drawn from one ``random.Random`` seeded with the prompt's SHA-256, in a fixed
    order, so the same prompt always gives the same pixels.
    """
    from PIL import ImageDraw

    from ..images import vertical_gradient

    rng = random.Random(hashlib.sha256(prompt.encode("utf-8")).digest())
    hue = rng.random()
    mood = rng.choice(sorted(_MOODS))
    (l_top, l_mid, l_low), disc_colour = _MOODS[mood]
    accent = hue + rng.uniform(0.08, 0.5)
    sky = [_hls(hue, l_top, 0.55), _hls(hue + 0.04, l_mid, 0.6), _hls(accent, l_low, 0.7)]
    img = vertical_gradient(width, height, sky)
    draw = ImageDraw.Draw(img, "RGBA")  # RGBA drawing blends translucent fills onto the RGB canvas
    unit = min(width, height)

    if mood == "night":
        for _ in range(rng.randint(25, 70)):
            x, y, r = rng.uniform(0, width), rng.uniform(0, height * 0.6), rng.uniform(0.5, 1.6) * unit / 400
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 240, rng.randint(120, 230)))

    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.12, 0.45) * height
    radius = rng.uniform(0.05, 0.12) * unit
    for scale, alpha in ((2.2, 28), (1.6, 48), (1.25, 80), (1.0, 255)):  # soft glow, then the disc
        r = radius * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*disc_colour, alpha))

    _draw_shapes(draw, rng, width, height, hue)
    _draw_silhouettes(draw, rng, width, height, hue, mood)
    _draw_caption(draw, prompt, width, height)
    return img


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int, hue: float) -> None:
    unit = min(width, height)
    for _ in range(rng.randint(3, 9)):
        kind = rng.choice(("circle", "ring", "triangle", "square"))
        x, y = rng.uniform(0, width), rng.uniform(0, height * 0.7)
        size = rng.uniform(0.03, 0.16) * unit
        colour = (*_hls(hue + rng.choice((0.0, 0.33, 0.5, 0.66)), rng.uniform(0.45, 0.8), 0.7), rng.randint(70, 160))
        box = (x - size, y - size, x + size, y + size)
        if kind == "circle":
            draw.ellipse(box, fill=colour)
        elif kind == "ring":
            draw.ellipse(box, outline=colour, width=max(1, round(size / 5)))
        elif kind == "square":
            draw.regular_polygon((x, y, size), 4, rotation=rng.uniform(0, 90), fill=colour)
        else:
            draw.regular_polygon((x, y, size), 3, rotation=rng.uniform(0, 120), fill=colour)


def _draw_silhouettes(
    draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int, hue: float, mood: str
) -> None:
    style = rng.choice(("hills", "waves", "peaks"))
    layers = rng.randint(2, 4)
    land_hue = hue + rng.choice((0.25, 0.4, 0.5, 0.6))
    darkest = 0.08 if mood == "night" else 0.18
    samples = 48 if style == "peaks" else 160
    for layer in range(layers):
        depth = (layer + 1) / layers  # 1 = front
        base = height * (0.5 + 0.3 * depth)
        amplitude = height * rng.uniform(0.04, 0.1) * (1.2 - 0.5 * depth)
        lightness = 0.5 - (0.5 - darkest) * depth
        colour = _hls(land_hue + 0.03 * layer, lightness, 0.35 if mood == "night" else 0.45)
        waves = [(rng.uniform(1, 3), rng.uniform(0, math.tau)) for _ in range(3)]
        if style == "waves":
            waves = [(f * 3.5, p) for f, p in waves]
        points = [(0.0, float(height))]
        for i in range(samples + 1):
            x = width * i / samples
            if style == "peaks":
                y = base - amplitude * rng.uniform(0.0, 1.6)
            else:
                t = x / width * math.tau
                y = base - amplitude * sum(math.sin(f * t + p) for f, p in waves) / 2
            points.append((x, y))
        points.append((float(width), float(height)))
        draw.polygon(points, fill=colour)


def _draw_caption(draw: ImageDraw.ImageDraw, prompt: str, width: int, height: int) -> None:
    """The prompt, word-wrapped to at most two lines (the last ends in an ellipsis if cut), on a band."""
    from PIL import ImageFont

    band = max(10, round(height * 0.14))
    draw.rectangle((0, height - band, width, height), fill=(0, 0, 0, 120))
    font = ImageFont.load_default(size=max(7, round(band * 0.3)))
    margin = max(2, round(width * 0.03))
    caption = _drawable(" ".join(prompt.split()), font) or "(a prompt the offline font cannot draw)"
    lines = _wrap(caption, font, width - 2 * margin, max_lines=2)
    step = band / (len(lines) + 1)
    for i, line in enumerate(lines):
        draw.text((margin, height - band + step * (i + 1)), line, fill=(255, 255, 255), font=font, anchor="lm")


def _wrap(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: float, *, max_lines: int
) -> list[str]:
    """Greedy word wrap; a line that still overflows (one long word) or the last kept line of a longer
    text is cut and ends in an ellipsis."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    lines: list[str] = []
    for word in text.split(" "):
        if len(lines) > max_lines:
            break  # already cut: the rest cannot show
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= max_width:
            lines[-1] = candidate
        else:
            lines.append(word)
    cut = len(lines) > max_lines
    lines = lines[:max_lines]
    for i, line in enumerate(lines):
        if font.getlength(line) > max_width or (cut and i == len(lines) - 1):
            lines[i] = _fit_with_ellipsis(line, font, max_width)
    return lines


def _fit_with_ellipsis(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: float) -> str:
    """The longest prefix of ``line`` that fits with an ellipsis after it. A binary search: a 2,000-character
    word costs a dozen measurements, where trimming one character at a time cost seconds."""
    fits, too_long = 0, len(line) + 1
    while too_long - fits > 1:
        mid = (fits + too_long) // 2
        if font.getlength(line[:mid] + "…") <= max_width:
            fits = mid
        else:
            too_long = mid
    return line[:fits].rstrip() + "…"


#: Letters without a decomposition to a plain one (NFKD handles é, ó, ź …).
_PLAIN_LETTERS = str.maketrans(
    {"ł": "l", "Ł": "L", "ß": "ss", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "đ": "d", "Đ": "D"}
)


def _drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """``text`` with each character the font has no glyph for replaced by its plain letter (Łódź → Lodz), or
    left out (and a word of nothing else with it): Pillow's built-in font covers little beyond ASCII, and a
    missing glyph draws as a box (a caption of "?" for an Arabic or Japanese prompt looked broken)."""
    missing = _glyph_signature(font, "\uffff")
    chosen: dict[str, str] = {}
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        if ch not in chosen:
            if _glyph_signature(font, ch) != missing:
                chosen[ch] = ch
            else:
                plain = "".join(
                    c
                    for c in unicodedata.normalize("NFKD", ch.translate(_PLAIN_LETTERS))
                    if not unicodedata.combining(c)
                )
                chosen[ch] = plain if plain.isascii() and plain.strip() else ""
        out.append(chosen[ch])
    return " ".join("".join(out).split())


def _glyph_signature(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, ch: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(ch)
    return mask.size, bytes(mask)

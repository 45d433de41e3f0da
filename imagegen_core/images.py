"""Fetch, verify, normalise and draw images; the one place where PIL errors become ImageError.

Pillow is imported inside the functions so ``import imagegen_core`` stays fast. Decoding accepts only
the formats image providers actually emit (:data:`ACCEPTED_FORMATS`): Pillow's other plugins (EPS calls
Ghostscript, for one) are attack surface we do not need. The CPU-bound functions touch no global state,
so they are safe in worker threads; a race's run in :func:`in_image_worker`. The drawings live in
:mod:`._drawing`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import io
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

import httpx

from .errors import FailureClass, ImageError, ImageTooLargeError, ProviderError, clip
from .providers.base import DownloadPolicy, classify_response, image_too_large, origin, transport_failure
from .workers import usable_cores

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: What we decode; everything else is refused before any plugin parses it.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "AVIF")
#: Default decode limit; well under Pillow's own bomb threshold (~89 Mpx) so ours fires first.
DEFAULT_MAX_PIXELS = 50_000_000
#: The WebP format's hard limit per side.
WEBP_MAX_SIDE = 16_383


def too_many_pixels(width: int, height: int) -> tuple[str, str] | None:
    """For a size of more pixels than any image imagegen makes (:data:`DEFAULT_MAX_PIXELS`: a provider's, the
    offline one's and the default image are refused as decompression bombs past it), the side to name ("width"
    or "height", the longer) and why; None for a size within it."""
    if width * height <= DEFAULT_MAX_PIXELS:
        return None
    why = f"{width}x{height} is {width * height:,} pixels; at most {DEFAULT_MAX_PIXELS:,} are made (e.g. 8000x6000)"
    return ("width" if width >= height else "height"), why


#: libwebp effort (0 fast .. 6 small). Measured at 1024x768 on 2 cores: method 2 = 15 ms, 4 = 33 ms
#: (4% smaller), 6 = 45 ms (another 5%). A stored, CDN-served-for-a-year file is worth 4's 18 ms.
WEBP_METHOD = 4

_MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ERROR_BODY_BYTES = 4096
_EXIF_ORIENTATION = 0x0112
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_TRANSIENT: dict[str, Any] = {"failure_class": FailureClass.TRANSIENT}


T = TypeVar("T")


def _image_threads() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(usable_cores(), thread_name_prefix="imagegen-image")


#: The process's threads for a race's image work, one per usable core (see :func:`in_image_worker`).
_image_executor = _image_threads()


def _new_image_threads_after_fork() -> None:
    # A forked child has the pool's count of threads but none of the threads: its calls would never run.
    global _image_executor
    _image_executor = _image_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_image_threads_after_fork)


async def in_image_worker(call: Callable[[], T]) -> T:
    """Await CPU-bound image work (decode, verify, fit, encode) in the process's image threads: at most one
    per core, shared by every ImageGen, apart from the event loop's default executor.

    Why: in the default executor (6 threads on 2 cores) a burst of large images took every thread, so the
    store writes and default images of requests already decided waited behind them, and the images shared the
    cores, each finishing late, instead of one after the other. Here a call waits its turn in order; a call
    whose request was cancelled before its turn (its deadline passed) never runs."""
    return await asyncio.get_running_loop().run_in_executor(_image_executor, call)


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """Downloaded bytes. ``url`` is the final URL after redirects (a ``data:`` URI is shortened)."""

    data: bytes
    content_type: str | None
    url: str


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What :func:`inspect_image` found: Pillow format name (``PNG``, ``JPEG``, ``WEBP``...), size, MIME."""

    format: str
    width: int
    height: int
    mime: str


@dataclass(frozen=True, slots=True)
class NormalizedImage:
    """WebP bytes of exactly ``width`` x ``height``, and what the source was (size after EXIF rotation)."""

    data: bytes
    width: int
    height: int
    source_format: str
    source_width: int
    source_height: int


# --------------------------------------------------------------------------------------------------
# Download


async def fetch_image(
    client: httpx.AsyncClient,
    url: str,
    *,
    policy: DownloadPolicy,
    provider: str,
    max_bytes: int,
    headers: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> FetchedImage:
    """Download a provider's output image, or decode a ``data:`` URI, under the provider's policy.

    Every hop of a redirect chain (at most 3) must pass ``policy``, so an allowed host cannot bounce us
    to an internal address; credentials are not forwarded to another origin. The body is refused as
    soon as it exceeds ``max_bytes``. There is no overall time cap here: the caller bounds the whole
    attempt; ``timeout_s`` only sets httpx's per-operation timeouts. Failures are ProviderError.
    """
    if url[:5].lower() == "data:":
        return _decode_data_uri(url, provider=provider, max_bytes=max_bytes)
    timeout: Any = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
    current, hop_headers = url, dict(headers or {})
    for _hop in range(_MAX_REDIRECTS + 1):
        if not policy.allows(current):
            raise ProviderError(f"{provider}: output URL host not allowed: {_describe_host(current)}", **_TRANSIENT)
        try:
            async with client.stream(
                "GET", current, headers=hop_headers, follow_redirects=False, timeout=timeout
            ) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    target = str(response.url.join(location))
                    if origin(target) != origin(current):
                        hop_headers = {k: v for k, v in hop_headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
                    current = target
                    continue
                return await _read_body(response, current, provider=provider, max_bytes=max_bytes)
        except Exception as exc:
            if (failure := transport_failure(provider, exc)) is None:
                raise
            raise failure from None
    raise ProviderError(f"{provider}: more than {_MAX_REDIRECTS} redirects fetching the output image", **_TRANSIENT)


_too_large = image_too_large

#: Top-level media types that are never an image (``text/html`` from a login page or an error page, a
#: video, a form); ``application/*`` is judged by :data:`_DOCUMENT_SUBTYPES`.
_NOT_IMAGE_TOP_TYPES = frozenset({"text", "audio", "video", "font", "model", "message", "multipart"})
#: What in an ``application/*`` subtype marks a document, not bytes of unknown kind: JSON, XML, HTML, scripts,
#: PDF, forms (``application/problem+json``, ``application/xhtml+xml`` …).
_DOCUMENT_SUBTYPES = re.compile(r"json|xml|html|javascript|ecmascript|pdf|form-urlencoded")


def not_an_image_type(content_type: str) -> bool:
    """Whether a download's media type (lower-case, without parameters) is clearly not an image. ``image/*``,
    ``application/octet-stream``, ``binary/octet-stream`` (S3's default) and other unspecific binary types
    pass: the bytes are verified by decoding them anyway; only a type that says "document" is refused."""
    top, _, subtype = content_type.partition("/")
    if top in _NOT_IMAGE_TOP_TYPES:
        return True
    return top == "application" and _DOCUMENT_SUBTYPES.search(subtype) is not None


def check_inline_size(data: bytes, *, provider: str, max_bytes: int) -> bytes:
    """``data`` (an image a provider answered inline, e.g. OpenAI's ``b64_json``) unless it is larger than
    ``max_bytes``: the same limit, and the same failure, as a downloaded image's (QA: inline bytes skipped it)."""
    if len(data) > max_bytes:
        raise _too_large(provider, max_bytes)
    return data


async def _read_body(response: httpx.Response, url: str, *, provider: str, max_bytes: int) -> FetchedImage:
    status = response.status_code
    if status in (404, 410):
        # Provider output links expire (Replicate: 1 hour): the provider is not broken, the link is stale.
        raise ProviderError(
            f"{provider}: output image gone (HTTP {status}); the link has probably expired",
            failure_class=FailureClass.TRANSIENT,
            http_status=status,
        )
    if not response.is_success:
        raise classify_response(provider, await _bounded_copy(response))
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
    if content_type is not None and not_an_image_type(content_type):
        # Refused before the body is read: the first *verified* image wins, and the right content type is part
        # of that (DESIGN §4); QA: a real PNG served as text/html was accepted.
        raise ProviderError(
            f"{provider}: output is not an image (Content-Type: {clip(content_type, 80)})", **_TRANSIENT
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(provider, max_bytes)
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():  # decoded bytes: a gzip bomb is capped too
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(provider, max_bytes)
        chunks.append(chunk)
    return FetchedImage(data=b"".join(chunks), content_type=content_type, url=url)


async def _bounded_copy(response: httpx.Response) -> httpx.Response:
    """A read copy of an error response holding at most a few KB of body, for classify_response."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= _ERROR_BODY_BYTES:
            break
    # The copy holds decoded bytes: drop the headers that would make httpx decode or frame them again.
    kept = {k: v for k, v in response.headers.items() if k.lower() not in ("content-encoding", "content-length")}
    return httpx.Response(response.status_code, headers=kept, content=body[:_ERROR_BODY_BYTES])


def _decode_data_uri(uri: str, *, provider: str, max_bytes: int) -> FetchedImage:
    header, comma, payload = uri[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    is_base64 = "base64" in params[1:]
    # Even fully percent-encoded base64 is under 4 characters per byte: past that the URI is surely too
    # big, and is refused before being decoded into another large copy. The exact check follows.
    if len(payload) > 4 * max_bytes + 64:
        raise _too_large(provider, max_bytes)
    try:
        if not comma:
            raise ValueError("no comma")
        if is_base64:
            compact = "".join(unquote_to_bytes(payload).decode("ascii").split())
            data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        else:
            data = unquote_to_bytes(payload)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ProviderError(f"{provider}: malformed data: URI", **_TRANSIENT) from None
    if not data:
        raise ProviderError(f"{provider}: empty data: URI", **_TRANSIENT)
    if len(data) > max_bytes:
        raise _too_large(provider, max_bytes)
    return FetchedImage(data=data, content_type=params[0] or None, url=f"data:{header[:60]},…")


def _describe_host(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "(none)"
    except ValueError:
        return "(unparseable URL)"
    return host if parts.scheme == "https" else f"{host} ({parts.scheme or 'no'} scheme; https only)"


# --------------------------------------------------------------------------------------------------
# Decode, verify, normalise


def inspect_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Verify that ``data`` is a complete image of an accepted format and at most ``max_pixels``.

    The pixel check runs on the header, before any decoding, so a decompression bomb costs nothing.
    The image is then verified (checksums) and decoded once, because ``verify()`` alone misses a
    truncated JPEG; JPEGs decode at 1/8 scale, which still reads every coded byte (80 -> 53 ms for a
    noisy 12 Mpx photo). CPU-bound: call it through :func:`in_image_worker` for large images.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            _check_pixels(img, max_pixels)
            fmt = img.format or "UNKNOWN"
            mime = img.get_format_mimetype() or Image.MIME.get(fmt, "application/octet-stream")
            if fmt == "MPO":  # a camera JPEG with extra frames; every JPEG reader shows the first one
                fmt, mime = "JPEG", "image/jpeg"
            width, height = img.size
            img.verify()
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            img.draft(None, (max(1, width // 8), max(1, height // 8)))
            img.load()
            _check_complete(img, data)
    except ImageError:
        raise
    except Exception as exc:  # Pillow plugins raise many types on hostile input; all mean "not an image"
        raise _image_error("not an image", exc) from None
    return ImageInfo(format=fmt, width=width, height=height, mime=mime)


def normalize_to_webp(
    data: bytes,
    width: int,
    height: int,
    *,
    quality: int = 82,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> NormalizedImage:
    """Decode, honour EXIF orientation, flatten alpha onto white and cover-crop (centred) to exactly
    ``width`` x ``height``, then encode WebP. Raises ImageError on bad sizes or undecodable input.

    Same result as ``ImageOps.fit(..., LANCZOS)``, but faster: JPEGs are decoded at a reduced scale
    when still larger than needed (``draft``), and the resize uses ``reducing_gap`` (a cheap box
    reduction, then Lanczos over the last factor of 3): 145 ms instead of 280 ms for a 12 Mpx JPEG.
    """
    from PIL import Image, ImageOps

    check_size(width, height)
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            _check_pixels(img, max_pixels)
            source_format = img.format or "UNKNOWN"
            source_width, source_height = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                source_width, source_height = source_height, source_width
            side = max(width, height)  # big enough whichever way EXIF turns the picture
            img.draft("RGB", (side, side))
            img.load()
            _check_complete(img, data)
            # In place: a copy of an upright picture doubled the memory of a large decode (QA: 20 requests of a
            # 49 Mpx PNG held 1.7 GB).
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _flatten_onto_white(img)
        fitted = rgb.resize(
            (width, height), Image.Resampling.LANCZOS, box=_cover_box(rgb.size, width, height), reducing_gap=3.0
        )
        out = io.BytesIO()
        fitted.save(out, "WEBP", quality=quality, method=WEBP_METHOD)
    except ImageError:
        raise
    except Exception as exc:  # see inspect_image
        raise _image_error("cannot normalise image", exc) from None
    return NormalizedImage(out.getvalue(), width, height, source_format, source_width, source_height)


def check_size(width: int, height: int) -> None:
    """Refuse output sizes no WebP can hold (ImageError)."""
    if not (1 <= width <= WEBP_MAX_SIDE and 1 <= height <= WEBP_MAX_SIDE):
        raise ImageError(f"image size {width}x{height} out of range (1..{WEBP_MAX_SIDE} per side)")


#: Adam7's passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Inflated bytes looked at per step (then dropped): the check holds no copy of the pixels.
_INFLATE_STEP = 1 << 20


def _png_scanline_bytes(data: bytes) -> int:
    """The bytes a complete PNG's inflated IDAT stream holds (filter bytes included), from its IHDR."""
    fields: tuple[int, ...] = struct.unpack(">IIBBBBB", data[16:29])
    width, height, depth, colour, _, _, interlace = fields
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + (columns * bits + 7) // 8)
    return total


def _check_png_complete(data: bytes) -> None:
    """Raise OSError unless the PNG's IDAT stream, inflated, holds every row IHDR announces. The inflated
    bytes are counted in steps and dropped: no copy of the pixels is kept."""
    expected = _png_scanline_bytes(data)
    inflater = zlib.decompressobj()
    got, position = 0, 8
    while position + 8 <= len(data) and got < expected:
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending: bytes | memoryview = memoryview(data)[position + 8 : position + 8 + length]
            while pending and got < expected:
                got += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
        position += 12 + length
    if got < expected:
        raise OSError(f"image file is truncated (pixel data of {got} of {expected} bytes)")


def _check_complete(img: PILImage.Image, data: bytes) -> None:
    """Raise OSError if ``img`` (just loaded from ``data``) is a PNG missing rows.

    Why: Pillow stops where the zlib stream ends, and one that ends early (a 1024x768 PNG whose IDAT holds
    100 rows, then IEND) loads with the missing rows black and no error (QA), LOAD_TRUNCATED_IMAGES being off
    notwithstanding: only a stream cut mid-way counts as truncated. Rows are decoded in order into zeroed
    memory, so a PNG (not interlaced) whose last row is not all zero is complete, which costs microseconds;
    otherwise (a black or transparent bottom row, Adam7) the IDAT stream is inflated once more and measured:
    about 10 ms for a 1024x1024 PNG, a third of Pillow's own decode of it."""
    if img.format != "PNG":
        return
    width, height = img.size
    interlaced = len(data) > 28 and data[28] != 0
    if not interlaced and img.crop((0, height - 1, width, height)).getbbox() is not None:
        return
    _check_png_complete(data)


def _check_pixels(img: PILImage.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"not an image: {width}x{height} exceeds {max_pixels} pixels (decompression bomb?)")


def _image_error(what: str, exc: Exception) -> ImageError:
    """Pillow's failure as ours: its own bomb check (twice its limit, before ours can look at the size) is an
    :class:`ImageTooLargeError` like ours, anything else an :class:`ImageError`."""
    from PIL import Image

    kind = ImageTooLargeError if isinstance(exc, Image.DecompressionBombError) else ImageError
    return kind(f"{what}: {_reason(exc)}")


def _cover_box(size: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """The centred source region with the target's aspect ratio (what ImageOps.fit crops)."""
    src_w, src_h = size
    target_ratio = width / height
    if src_w / src_h > target_ratio:  # too wide: crop the sides
        crop_w = src_h * target_ratio
        return ((src_w - crop_w) / 2, 0.0, (src_w + crop_w) / 2, float(src_h))
    crop_h = src_w / target_ratio
    return (0.0, (src_h - crop_h) / 2, float(src_w), (src_h + crop_h) / 2)


def _flatten_onto_white(img: PILImage.Image) -> PILImage.Image:
    from PIL import Image

    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # convert() would copy an RGBA picture whole
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def _reason(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # PIL's text names the buffer's address: no two errors alike
        return "not a known image format"
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = re.sub(r" at 0x[0-9a-f]+", "", text)  # object addresses make every error unique: nothing to group by
    return clip(f"{type(exc).__name__}: {text}", 200) if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Drawn images


def vertical_gradient(
    width: int, height: int, stops: list[tuple[int, int, int]], *, steps: int = 256
) -> PILImage.Image:
    """An RGB image fading top to bottom through evenly spaced colour ``stops``.

    Built as a ``steps``-pixel column and stretched: ~1 ms at 1600x900 instead of drawing every line.
    """
    from PIL import Image

    column = []
    for i in range(steps):
        pos = i / (steps - 1) * (len(stops) - 1)
        lo = min(int(pos), len(stops) - 2)
        t = pos - lo
        a, b = stops[lo], stops[lo + 1]
        column.append(tuple(round(a[c] + (b[c] - a[c]) * t) for c in range(3)))
    strip = Image.new("RGB", (1, steps))
    strip.putdata(column)
    return strip.resize((width, height), Image.Resampling.BILINEAR)


def draw_default_image(width: int, height: int) -> bytes:
    """The neutral "image unavailable" placeholder as WebP, exactly ``width`` x ``height``; deterministic.

    Drawn locally, never fetched from a placeholder service (DESIGN §4 Default image): a soft grey-blue
    gradient, a picture-frame glyph (mountain and sun) and a caption when there is room for it.
    """
    from PIL import ImageDraw, ImageFont

    check_size(width, height)
    img = vertical_gradient(width, height, [(238, 241, 245), (216, 222, 230)])
    draw = ImageDraw.Draw(img)
    ink = (146, 156, 170)
    unit = min(width, height)
    if unit >= 24:  # below that a glyph is just noise
        half_w, half_h = unit * 0.2, unit * 0.15
        cx, cy = width / 2, height / 2 - unit * 0.06
        line = max(1, round(unit / 90))
        left, top, right, bottom = cx - half_w, cy - half_h, cx + half_w, cy + half_h
        draw.rounded_rectangle((left, top, right, bottom), radius=unit * 0.025, outline=ink, width=line)
        ridge = [
            (left + line, bottom - line),
            (cx - half_w * 0.3, cy - half_h * 0.1),
            (cx + half_w * 0.05, cy + half_h * 0.35),
            (cx + half_w * 0.4, cy - half_h * 0.25),
            (right - line, bottom - half_h * 0.6),
            (right - line, bottom - line),
        ]
        draw.polygon(ridge, fill=(190, 198, 209))
        sun_r = unit * 0.035
        sx, sy = cx + half_w * 0.45, cy - half_h * 0.5
        draw.ellipse((sx - sun_r, sy - sun_r, sx + sun_r, sy + sun_r), fill=ink)
        font = ImageFont.load_default(size=max(9, round(unit * 0.045)))
        text = "image unavailable"
        if font.getlength(text) < width * 0.9:
            draw.text((cx, bottom + unit * 0.08), text, fill=(112, 122, 138), font=font, anchor="mt")
    out = io.BytesIO()
    img.save(out, "WEBP", quality=85, method=WEBP_METHOD)
    return out.getvalue()


def draw_prompt_image(prompt: str, width: int, height: int) -> bytes:
    """The offline provider's picture for ``prompt`` as PNG, exactly ``width`` x ``height``.

    A procedural landscape seeded by the prompt's SHA-256 (same prompt, same bytes; different prompts
    look clearly different) with the prompt as a caption; composed in :mod:`.providers.offline`.
    PNG at ``compress_level=1``: lossless, so the service's WebP normalisation is the only lossy step,
    and on this flat artwork it encodes as fast as WebP ``method=0`` (~22 ms at 1600x900).
    """
    from .providers.offline import compose_scene

    check_size(width, height)
    out = io.BytesIO()
    compose_scene(prompt, width, height).save(out, "PNG", compress_level=1)
    return out.getvalue()

"""OpenAI Images API (``POST /v1/images/generations``), and any server that speaks its wire format.

Wire format: providers.md §4.1. GPT image models answer with base64 (``data[0].b64_json``), so there is
nothing to download; OpenAI-compatible servers that answer with ``data[0].url`` are supported too (the
URL must then pass the download policy). ``429`` with ``insufficient_quota`` is billing, not a rate
limit — :func:`~imagegen_core.providers.base.classify_response` already tells them apart.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import FailureClass, FieldProblem, ProviderError
from .base import (
    ProviderBase,
    ProviderContext,
    ProviderJob,
    ProviderOutput,
    base64_over,
    check_known_options,
    check_mapping,
    check_model_id,
    content_rejected,
    image_too_large,
    json_object,
    missing_key,
    send,
)

DEFAULT_MODEL = "gpt-image-1"
#: A model name (``gpt-image-1``, ``dall-e-3``, ``ft:…``; an OpenAI-compatible server's ``owner/model`` too): parts
#: of letters, digits, ``.``, ``_``, ``-`` or ``:``, each starting with a letter or digit, joined by single ``/``.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*(/[A-Za-z0-9][A-Za-z0-9._:-]*)*")
MODEL_NAME_FORM = (
    f"an OpenAI model name such as {DEFAULT_MODEL!r} or 'dall-e-3': letters, digits, '.', '_', '-' or ':', "
    "starting with a letter or digit ('owner/model' for a compatible server)"
)
#: Sizes GPT image models accept (width, height); the request is cover-cropped from the nearest one.
SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))


def nearest_size(width: int, height: int) -> str:
    """The supported size whose aspect ratio is closest to ``width``×``height``."""
    ratio = width / height
    w, h = min(SIZES, key=lambda s: abs(s[0] / s[1] - ratio))
    return f"{w}x{h}"


class OpenAIProvider(ProviderBase):
    """Text-to-image through OpenAI's Images API (slow at high quality: best as a late fallback)."""

    kind: ClassVar[str] = "openai"
    requires_key: ClassVar[bool] = True
    output_hosts: ClassVar[tuple[str, ...]] = ("*.blob.core.windows.net",)
    default_base_url: ClassVar[str] = "https://api.openai.com"

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """A model name, a string ``quality`` (models differ in the values they take), an object ``input``."""
        check_model_id(model, MODEL_NAME, MODEL_NAME_FORM)
        check_known_options(options, cls.kind, ("input", "quality"))
        quality = options.get("quality")
        if quality is not None and not isinstance(quality, str):
            raise FieldProblem("options.quality", f"must be a string such as 'low' or 'high', got {quality!r}")
        check_mapping(options, "input")

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """One image; options: ``quality`` (low|medium|high|auto), ``input`` (extra body fields)."""
        if not self._api_key:
            raise missing_key(self.name, "OPENAI_API_KEY")
        self.checked(job)
        extra = job.options.get("input") or {}
        body: dict[str, Any] = {
            "model": job.model or DEFAULT_MODEL,
            "n": 1,
            "size": nearest_size(job.width, job.height),
            **({"quality": job.options["quality"]} if "quality" in job.options else {}),
            **extra,
            "prompt": job.prompt,
        }
        response = await send(
            self.name,
            ctx.client,
            "POST",
            f"{self.base_url}/v1/images/generations",
            json=body,
            headers={"Authorization": f"Bearer {self._api_key}"},
            timeout=job.timeout_s + 5,  # the race enforces the budget; let the server answer first
        )
        answer = json_object(self.name, response, "images response")
        data = answer.get("data")
        if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
            raise ProviderError(f"{self.name}: response has no image", failure_class=FailureClass.TRANSIENT)
        first = data[0]
        if first.get("b64_json"):
            if isinstance(first["b64_json"], str) and base64_over(first["b64_json"], job.max_image_bytes):
                raise image_too_large(self.name, job.max_image_bytes or 0, billed=True)
            try:
                image = base64.b64decode(first["b64_json"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise ProviderError(  # garbled, but made: the call is charged all the same
                    f"{self.name}: b64_json is not base64", failure_class=FailureClass.TRANSIENT, billed=True
                ) from None
            if job.max_image_bytes is not None and len(image) > job.max_image_bytes:
                raise image_too_large(self.name, job.max_image_bytes, billed=True)
            return ProviderOutput(data=image, model=body["model"])
        if isinstance(first.get("url"), str):
            return ProviderOutput(url=first["url"], model=body["model"])
        if first.get("refusal") or answer.get("error"):
            raise content_rejected(self.name, str(first.get("refusal") or answer.get("error")))
        raise ProviderError(f"{self.name}: image has neither b64_json nor url", failure_class=FailureClass.TRANSIENT)

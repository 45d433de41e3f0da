"""Stability AI's Stable Image API (``POST /v2beta/stable-image/generate/{core|ultra|sd3}``), default ``core``.

Wire format: providers.md §4.3. The request is ``multipart/form-data`` even without a file (each field sent as a
form part), and with ``Accept: image/*`` the answer is the image itself, so there is nothing to download and
nothing expires; its ``finish-reason`` header says whether the image was filtered. An answer in the JSON form
(``{"image": <base64>, "finish_reason", "seed"}``, which a proxy may ask for) is read too. The call is synchronous:
a race loser's request is simply dropped, there is no job to cancel.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from ..errors import FailureClass, ProviderError, clip
from . import sizes
from .base import (
    ProviderBase,
    ProviderContext,
    ProviderJob,
    ProviderOutput,
    base64_over,
    check_known_options,
    check_mapping,
    check_model_id,
    classify_response,
    content_rejected,
    image_too_large,
    json_body,
    json_object,
    looks_like_content_rejection,
    missing_key,
    send,
)

DEFAULT_MODEL = "core"
#: The three generate services; an SD3 model id (``sd3.5-large`` …) is posted to ``sd3`` as its ``model`` field.
SERVICES = ("core", "ultra", "sd3")
MODEL_ID = re.compile(r"core|ultra|sd3|sd3(?:\.\d+)?-[a-z0-9]+(?:-[a-z0-9]+)*")
MODEL_ID_FORM = "one of 'core', 'ultra', 'sd3', or an SD3 model such as 'sd3.5-large' (sent to the sd3 service)"
#: The ``aspect_ratio`` values the services take; the image is cover-cropped from the nearest one.
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
#: Lossless, and taken by every service (sd3 has no webp); the normaliser makes the WebP.
OUTPUT_FORMAT = "png"

_FILTERED = "CONTENT_FILTERED"
_SUCCESS = "SUCCESS"


def _service(model: str) -> tuple[str, str | None]:
    """The service a model id is posted to, and the ``model`` field to send with it (SD3 models only)."""
    if model in SERVICES:
        return model, None
    return "sd3", model


def _form_value(value: Any) -> str:
    """One ``options.input`` value as a form field's text: strings as they are, anything else as JSON (``true``,
    ``42``, a list), which is how the API's typed fields read their text."""
    return value if isinstance(value, str) else json.dumps(value)


class StabilityProvider(ProviderBase):
    """Text-to-image through Stability AI's Stable Image services (Core, Ultra, SD3), answered inline.

    Options (``providers.<name>.options``): ``input`` (extra form fields, e.g. ``{"style_preset": "photographic",
    "negative_prompt": "text"}``).
    """

    kind: ClassVar[str] = "stability"
    requires_key: ClassVar[bool] = True
    default_base_url: ClassVar[str] = "https://api.stability.ai"

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """A service (``core``, ``ultra``, ``sd3``) or an SD3 model id, and an object ``input``."""
        check_model_id(model, MODEL_ID, MODEL_ID_FORM)
        check_known_options(options, cls.kind, ("input",))
        check_mapping(options, "input")

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """One image, from the service ``model`` names, as the bytes the API answers."""
        if not self._api_key:
            raise missing_key(self.name, "STABILITY_API_KEY")
        self.checked(job)
        model = job.model or DEFAULT_MODEL
        service, sd3_model = _service(model)
        fields: dict[str, str] = {
            "aspect_ratio": sizes.nearest_aspect_ratio(job.width, job.height, ASPECT_RATIOS),
            "output_format": OUTPUT_FORMAT,
            **({"model": sd3_model} if sd3_model else {}),
            **({"seed": str(job.seed)} if job.seed is not None else {}),
            **{str(k): _form_value(v) for k, v in (job.options.get("input") or {}).items()},
            "prompt": job.prompt,
        }
        response = await send(
            self.name,
            ctx.client,
            "POST",
            f"{self.base_url}/v2beta/stable-image/generate/{service}",
            # (None, text): a plain form part without a file name, so httpx sends multipart and no dummy file.
            files={name: (None, value) for name, value in fields.items()},
            headers={"Authorization": f"Bearer {self._api_key}", "Accept": "image/*"},
            timeout=job.timeout_s + 5,  # the race enforces the budget; let the server answer first
            ok_statuses=(403,),
        )
        if response.status_code == 403:
            raise self._refusal(response)
        return self._output(response, model, job)

    def _refusal(self, response: httpx.Response) -> ProviderError:
        """A 403: Stability's moderation refusal (``"name": "content_moderation"``), else what a 403 always is
        (an unusable key, or a marker the shared classification knows)."""
        try:
            body = json_body(self.name, response)
        except ProviderError:  # not JSON: the shared classification reads it as text
            body = None
        name = str(body.get("name") or "") if isinstance(body, Mapping) else ""
        errors = body.get("errors") if isinstance(body, Mapping) else None
        said = "; ".join(str(e) for e in errors[:3]) if isinstance(errors, list) else ""
        if "moderation" in name.lower() or "moderation" in said.lower() or looks_like_content_rejection(said):
            return content_rejected(self.name, clip(said or name, 200))
        return classify_response(self.name, response)

    def _output(self, response: httpx.Response, model: str, job: ProviderJob) -> ProviderOutput:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            answer = json_object(self.name, response, "image answer")
            finish, seed, image = answer.get("finish_reason"), answer.get("seed"), self._decoded(answer, job)
        else:
            finish, seed, image = response.headers.get("finish-reason"), response.headers.get("seed"), response.content
        if finish == _FILTERED:  # a blurred stand-in, not a result
            raise content_rejected(self.name, f"finish-reason {_FILTERED}")
        if finish not in (None, _SUCCESS):
            raise ProviderError(
                f"{self.name}: finish-reason {clip(str(finish), 60)}", failure_class=FailureClass.TRANSIENT
            )
        if not image:
            raise ProviderError(f"{self.name}: answer has no image", failure_class=FailureClass.TRANSIENT)
        if job.max_image_bytes is not None and len(image) > job.max_image_bytes:
            raise image_too_large(self.name, job.max_image_bytes, billed=True)
        return ProviderOutput(
            data=image,
            content_type=content_type if content_type.startswith("image/") else None,
            model=model,
            seed=_seed(seed, job.seed),
        )

    def _decoded(self, answer: Mapping[str, Any], job: ProviderJob) -> bytes:
        """The JSON form's base64 ``image``, refused before decoding when it is surely over the size limit."""
        text = answer.get("image")
        if not isinstance(text, str) or not text:
            return b""
        if base64_over(text, job.max_image_bytes):
            raise image_too_large(self.name, job.max_image_bytes or 0, billed=True)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(  # garbled, but made: charged all the same
                f"{self.name}: image is not base64", failure_class=FailureClass.TRANSIENT, billed=True
            ) from None


def _seed(value: Any, default: int | None) -> int | None:
    """The seed the answer reports (a header's digits or a JSON number), else the one asked for."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default

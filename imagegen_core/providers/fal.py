"""fal.ai: one image from a fal app (default ``fal-ai/flux/schnell``), through the queue or directly.

Wire format: providers.md §2. Queue mode (the default) submits to ``queue.fal.run`` and polls the
``status_url`` the submit answer names, then fetches ``response_url``; a race loser is cancelled with a
PUT to ``cancel_url``. Those URLs are always taken from the submit answer, never built: they use only the
first two segments of the app id (§2.3), which is easy to get wrong. Sync mode is one POST to ``fal.run``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from ..errors import FailureClass, ProviderError, clip
from .base import (
    ProviderBase,
    ProviderContext,
    ProviderJob,
    ProviderOutput,
    check_choice,
    check_known_options,
    check_mapping,
    check_model_id,
    check_positive_number,
    content_rejected,
    json_object,
    looks_like_content_rejection,
    missing_key,
    number_option,
    origin,
    poll,
    send,
    url_path,
)

DEFAULT_APP = "fal-ai/flux/schnell"

#: An app id (providers.md §2.1): ``owner/app`` and maybe more path segments (``fal-ai/flux-2-klein/4b``), each of
#: letters, digits, ``.``, ``_``, ``-`` and not starting with ``.``. Slashes around it are tolerated (and dropped).
APP_ID = re.compile(r"/*[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+/*")
APP_ID_FORM = (
    f"a fal app id such as {DEFAULT_APP!r}: 'owner/app[/path]', segments of letters, digits, '.', '_' or '-' "
    "not starting with '.'"
)
QUEUE_BASE_URL = "https://queue.fal.run"
SYNC_BASE_URL = "https://fal.run"

_MODES = ("queue", "sync")
_CANCEL_TIMEOUT_S = 5.0


class FalProvider(ProviderBase):
    """Text-to-image through fal.ai's queue (default) or its direct sync endpoint.

    Options (``providers.<name>.options``): ``mode`` (``queue`` | ``sync``), ``poll_interval_s``
    (default 0.5) and ``input`` (extra model inputs merged into the request body).
    An overridden base URL serves both modes (one local test server emulates fal).
    """

    kind: ClassVar[str] = "fal"
    requires_key: ClassVar[bool] = True
    output_hosts: ClassVar[tuple[str, ...]] = ("fal.media", "*.fal.media")
    default_base_url: ClassVar[str] = QUEUE_BASE_URL

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """A fal app id (``owner/app[/path]``), ``mode`` queue or sync, a positive ``poll_interval_s``, an
        object ``input``."""
        check_model_id(model, APP_ID, APP_ID_FORM)
        check_known_options(options, cls.kind, ("input", "mode", "poll_interval_s"))
        check_choice(options, "mode", _MODES)
        check_positive_number(options, "poll_interval_s")
        check_mapping(options, "input")

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Run the app once and return the first image's URL (https or ``data:``)."""
        self.checked(job)
        app_id = (job.model or DEFAULT_APP).strip("/")
        app_path = url_path(self.name, *app_id.split("/"))
        mode = job.options.get("mode", "queue")
        interval_s = number_option(job.options, "poll_interval_s", 0.5)
        extra = job.options.get("input") or {}
        body: dict[str, Any] = {
            "image_size": {"width": job.width, "height": job.height},
            "num_images": 1,
            "num_inference_steps": 4,
            "enable_safety_checker": True,
            "output_format": "jpeg",
            **extra,
            "prompt": job.prompt,
        }
        if job.seed is not None:
            body["seed"] = job.seed
        headers = {
            **self._auth(),
            # Server-side deadline; fal requires more than one second.
            "X-Fal-Request-Timeout": str(max(2, math.ceil(job.timeout_s))),
        }

        if mode == "sync":
            host = self._base_url_override or SYNC_BASE_URL
            response = await send(
                self.name,
                ctx.client,
                "POST",
                f"{host}/{app_path}",
                headers=headers,
                json=body,
                # The answer comes only when the image is ready: don't let the client give up first.
                timeout=httpx.Timeout(job.timeout_s + 5.0),
            )
            result = json_object(self.name, response, "result")
            return self._output(result, app_id, job, response.headers.get("x-fal-request-id"))
        return await self._run_queued(app_id, app_path, job, ctx, headers, body, interval_s)

    async def _run_queued(
        self,
        app_id: str,
        app_path: str,
        job: ProviderJob,
        ctx: ProviderContext,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        interval_s: float,
    ) -> ProviderOutput:
        response = await send(self.name, ctx.client, "POST", f"{self.base_url}/{app_path}", headers=headers, json=body)
        submitted = json_object(self.name, response, "queue submit answer")
        request_id = str(submitted.get("request_id") or "")
        cancel_url = self._returned_url(submitted, "cancel_url")
        state: Mapping[str, Any] = submitted
        try:
            status_url = self._returned_url(submitted, "status_url")
            response_url = self._returned_url(submitted, "response_url")
            if status_url is None or response_url is None:
                returned = {"status_url": status_url, "response_url": response_url}
                foreign = [f for f, url in returned.items() if url is None and isinstance(submitted.get(f), str)]
                problem = (
                    f"points its {' and '.join(foreign)} away from {origin(self.base_url)} (not followed: the key "
                    "would go there)"
                    if foreign
                    else f"lacks a status_url or response_url on {self.base_url}"
                )
                raise ProviderError(f"{self.name}: queue submit answer {problem}", failure_class=FailureClass.TRANSIENT)
            slept_s = 0.0
            while state.get("status") != "COMPLETED":
                if slept_s >= job.timeout_s:
                    raise ProviderError(
                        f"{self.name}: request {request_id} not completed after {job.timeout_s:g}s",
                        failure_class=FailureClass.TIMEOUT,
                    )
                await ctx.sleep(interval_s)
                slept_s += interval_s
                # A Retry-After longer than what is left of the budget is not waited out.
                left_s = job.timeout_s - slept_s
                response = await poll(self.name, ctx, status_url, headers=self._auth(), max_wait_s=left_s)
                state = json_object(self.name, response, "queue status")
        except BaseException:
            # Cancelled (a race loser) or given up while the request is queued or running: free the
            # runner without waiting for the answer.
            if cancel_url is not None:
                ctx.spawn(self._cancel(ctx.client, cancel_url))
            raise
        self._check_completed(state)
        left_s = job.timeout_s - slept_s
        response = await poll(self.name, ctx, response_url, headers=self._auth(), max_wait_s=left_s)
        result = json_object(self.name, response, "result")
        return self._output(result, app_id, job, request_id)

    def _auth(self) -> dict[str, str]:
        if not self._api_key:
            raise missing_key(self.name, "FAL_KEY")
        return {"Authorization": f"Key {self._api_key}"}

    def _returned_url(self, submitted: Mapping[str, Any], field: str) -> str | None:
        """A URL from the submit answer, only if it is on the queue host (the key is never sent elsewhere)."""
        url = submitted.get(field)
        return url if isinstance(url, str) and origin(url) == origin(self.base_url) else None

    def _check_completed(self, state: Mapping[str, Any]) -> None:
        """COMPLETED is not success: the status may carry ``error``/``error_type`` (providers.md §2.3)."""
        error, error_type = state.get("error"), state.get("error_type")
        if not error and not error_type:
            return
        text = " ".join(str(part) for part in (error_type, error) if part)
        if looks_like_content_rejection(text):
            raise content_rejected(self.name, text)
        raise ProviderError(clip(f"{self.name}: request failed: {text}", 300), failure_class=FailureClass.TRANSIENT)

    def _output(
        self, result: Mapping[str, Any], app_id: str, job: ProviderJob, request_id: str | None
    ) -> ProviderOutput:
        nsfw = result.get("has_nsfw_concepts")
        # With the safety checker on, a flagged image comes back blacked out: it is not a result.
        if isinstance(nsfw, list) and any(flag is True for flag in nsfw):
            raise content_rejected(self.name, "the safety checker flagged the image (has_nsfw_concepts)")
        images = result.get("images")
        first = images[0] if isinstance(images, list) and images else None
        if not isinstance(first, Mapping) or not isinstance(first.get("url"), str) or not first["url"]:
            raise ProviderError(f"{self.name}: result has no image", failure_class=FailureClass.TRANSIENT)
        url: str = first["url"]
        content_type = first.get("content_type")
        seed = result.get("seed")
        return ProviderOutput(
            url=url,
            content_type=content_type if isinstance(content_type, str) else None,
            model=app_id,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else job.seed,
            provider_ref=request_id or None,
        )

    async def _cancel(self, client: httpx.AsyncClient, url: str) -> None:
        """Fire-and-forget cancel (note: PUT); nobody waits for it, so every failure is swallowed."""
        with contextlib.suppress(Exception):
            await send(
                self.name,
                client,
                "PUT",
                url,
                headers=self._auth(),
                timeout=_CANCEL_TIMEOUT_S,
                total_s=_CANCEL_TIMEOUT_S,
            )

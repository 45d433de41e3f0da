"""Replicate: one prediction on a model (default ``black-forest-labs/flux-schnell``).

Wire format: providers.md §1. ``owner/name`` runs an official model (``POST /v1/models/{owner}/{name}/predictions``),
``owner/name:<version>`` that exact version (``POST /v1/predictions``). The create call asks Replicate to hold
the connection open (``Prefer: wait=N``) so most images arrive in one round trip; otherwise ``urls.get`` is polled.
``Cancel-After`` gives the prediction a server-side deadline, and a race loser is cancelled through
``urls.cancel`` so nobody pays for an image that will be thrown away. The hold is short (:data:`SYNC_WAIT_S`):
until the create call answers, the prediction's id, which its cancel needs, is unknown. A loser cancelled
during that wait leaves the call to answer in the background and cancels the prediction then.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from ..errors import FailureClass, ProviderError, clip
from . import sizes
from .base import (
    ProviderBase,
    ProviderContext,
    ProviderJob,
    ProviderOutput,
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

DEFAULT_MODEL = "black-forest-labs/flux-schnell"

#: ``owner/name`` or ``owner/name:<version>`` (providers.md §1.2): names of letters, digits, ``.``, ``_``, ``-``
#: (not starting with ``.``), a version of 64 hex digits.
MODEL_ID = re.compile(r"([A-Za-z0-9_-][A-Za-z0-9._-]*)/([A-Za-z0-9_-][A-Za-z0-9._-]*)(?::([0-9a-f]{64}))?")
MODEL_ID_FORM = f"a Replicate model 'owner/name' or 'owner/name:<version of 64 hex digits>' (e.g. {DEFAULT_MODEL!r})"

#: flux-schnell's ``aspect_ratio`` enum (the model has no width/height inputs).
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")

_FAILED = "failed"
_STOPPED = ("canceled", "aborted")  # aborted: Cancel-After passed before the prediction started
_TERMINAL = frozenset({"succeeded", _FAILED, *_STOPPED})
_CANCEL_TIMEOUT_S = 5.0
#: The default ``Prefer: wait`` (seconds). With the whole attempt's budget (as before), a loser cancelled while
#: the create call waited could not be cancelled at all (no id yet): its prediction ran, and was billed, until
#: ``Cancel-After``. A prediction still running after this is polled (every ``poll_interval_s``).
SYNC_WAIT_S = 5


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The flux-schnell aspect ratio closest to ``width``:``height`` (compared on a log scale, so
    2:1 and 1:2 are equally far from 1:1)."""
    return sizes.nearest_aspect_ratio(width, height, ASPECT_RATIOS)


def _model_parts(model: str) -> tuple[str, str, str]:
    """``(owner, name, version)`` of a model id; ``version`` is empty for ``owner/name``."""
    owner_and_name, _, version = model.partition(":")
    owner, _, name = owner_and_name.partition("/")
    return owner, name, version


class ReplicateProvider(ProviderBase):
    """Text-to-image through Replicate's predictions API (an official model, or a pinned version).

    Options (``providers.<name>.options``): ``wait_s`` (``Prefer: wait``, 1-60 s, default :data:`SYNC_WAIT_S`
    or the attempt's budget if shorter), ``poll_interval_s`` (default 0.5) and ``input`` (extra model inputs,
    e.g. ``{"output_format": "jpg"}`` for models that refuse webp).
    """

    kind: ClassVar[str] = "replicate"
    requires_key: ClassVar[bool] = True
    output_hosts: ClassVar[tuple[str, ...]] = ("replicate.delivery", "*.replicate.delivery")
    default_base_url: ClassVar[str] = "https://api.replicate.com"

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """A model ``owner/name`` (optionally ``:version``), positive ``wait_s`` and ``poll_interval_s``, an
        object ``input``."""
        check_model_id(model, MODEL_ID, MODEL_ID_FORM)
        check_known_options(options, cls.kind, ("input", "poll_interval_s", "wait_s"))
        check_positive_number(options, "poll_interval_s")
        check_positive_number(options, "wait_s")
        check_mapping(options, "input")

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Create a prediction, wait or poll for its output, and return the first output URL."""
        self.checked(job)
        model = job.model or DEFAULT_MODEL
        owner, model_name, version = _model_parts(model)
        interval_s = number_option(job.options, "poll_interval_s", 0.5)
        wait_s = min(60, max(1, int(number_option(job.options, "wait_s", min(SYNC_WAIT_S, job.timeout_s)))))
        headers = {
            **self._auth(),
            "Prefer": f"wait={wait_s}",
            "Cancel-After": f"{max(1, math.ceil(job.timeout_s))}s",
        }
        extra = job.options.get("input") or {}
        model_input: dict[str, Any] = {
            "aspect_ratio": nearest_aspect_ratio(job.width, job.height),
            "num_outputs": 1,
            "output_format": "webp",
            "output_quality": 90,
            **extra,
            "prompt": job.prompt,
        }
        if job.seed is not None:
            model_input["seed"] = job.seed
        if version:  # that exact version: the general endpoint, which takes the version in the body
            create_url, create_body = f"{self.base_url}/v1/predictions", {"version": version, "input": model_input}
        else:
            path = url_path(self.name, owner, model_name)
            create_url, create_body = f"{self.base_url}/v1/models/{path}/predictions", {"input": model_input}

        cancel_url: str | None = None
        prediction: Mapping[str, Any] = {}
        # A task of its own, so that a loser cancelled before it answers can still learn the prediction's id.
        creating = asyncio.ensure_future(
            send(
                self.name,
                ctx.client,
                "POST",
                create_url,
                headers=headers,
                json=create_body,
                # The server holds the request for up to wait_s: don't let the client give up first. The
                # call outlives a race it lost (_cancel_once_created): bounded as a whole, not per read.
                timeout=httpx.Timeout(wait_s + 5.0),
                total_s=wait_s + 5.0,
            )
        )
        try:
            response = await asyncio.shield(creating)
            prediction = json_object(self.name, response, "prediction")
            prediction_id = str(prediction.get("id") or "")
            cancel_url = self._api_url(prediction, "cancel", prediction_id)
            get_url = self._api_url(prediction, "get", prediction_id)
            slept_s = 0.0
            while (url := self._finished(prediction)) is None:
                if slept_s >= job.timeout_s:
                    raise ProviderError(
                        f"{self.name}: prediction {prediction_id} not finished after {job.timeout_s:g}s",
                        failure_class=FailureClass.TIMEOUT,
                    )
                if get_url is None:
                    raise ProviderError(
                        f"{self.name}: prediction has no id to poll", failure_class=FailureClass.TRANSIENT
                    )
                await ctx.sleep(interval_s)
                slept_s += interval_s
                # A Retry-After longer than what is left of the budget is not waited out.
                left_s = job.timeout_s - slept_s
                response = await poll(self.name, ctx, get_url, headers=self._auth(), max_wait_s=left_s)
                prediction = json_object(self.name, response, "prediction")
        except BaseException:
            # Cancelled (a race loser) or given up while the prediction still runs: stop it server-side
            # without waiting for the answer. Cancel-After covers the case where this request is lost.
            if cancel_url is not None and prediction.get("status") not in _TERMINAL:
                ctx.spawn(self._cancel(ctx.client, cancel_url))
            elif cancel_url is None and _may_answer(creating):
                ctx.start_lingering(self._cancel_once_created(ctx.client, creating))
            raise
        return ProviderOutput(url=url, model=model, seed=job.seed, provider_ref=prediction_id or None)

    def _auth(self) -> dict[str, str]:
        if not self._api_key:
            raise missing_key(self.name, "REPLICATE_API_TOKEN", what="API token")
        return {"Authorization": f"Bearer {self._api_key}"}

    def _api_url(self, prediction: Mapping[str, Any], kind: str, prediction_id: str) -> str | None:
        """``urls.<kind>`` from the prediction when it is on our API host (the token is never sent
        elsewhere), else the documented path under the base URL; None without a prediction id."""
        urls = prediction.get("urls")
        url = urls.get(kind) if isinstance(urls, Mapping) else None
        if isinstance(url, str) and origin(url) == origin(self.base_url):
            return url
        if not prediction_id:
            return None
        suffix = "/cancel" if kind == "cancel" else ""
        return f"{self.base_url}/v1/predictions/{quote(prediction_id, safe='')}{suffix}"

    def _finished(self, prediction: Mapping[str, Any]) -> str | None:
        """The output URL when the prediction has one; None while it runs; raises when it ended badly."""
        status = str(prediction.get("status") or "")
        if status == _FAILED:
            error = str(prediction.get("error") or "no error message")
            if looks_like_content_rejection(error):
                raise content_rejected(self.name, error)
            raise ProviderError(
                clip(f"{self.name}: prediction failed: {error}", 300), failure_class=FailureClass.TRANSIENT
            )
        if status in _STOPPED:
            # "canceled" stopped a running prediction (Cancel-After, or someone's cancel): its run time is
            # billed; "aborted" never started, and is not (providers.md §1.3).
            raise ProviderError(
                f"{self.name}: prediction {status}", failure_class=FailureClass.TRANSIENT, billed=status == "canceled"
            )
        output = prediction.get("output")
        if isinstance(output, list) and output:
            output = output[0]
        # File outputs may be complete while status is still "processing" (providers.md §1.3).
        if isinstance(output, str) and output:
            return output
        if status == "succeeded":
            raise ProviderError(
                f"{self.name}: prediction succeeded without an output URL", failure_class=FailureClass.TRANSIENT
            )
        return None

    async def _cancel_once_created(self, client: httpx.AsyncClient, creating: asyncio.Future[httpx.Response]) -> None:
        """A loser's create call that had not answered: wait for it (Replicate answers within ``Prefer: wait``;
        the call's own timeout bounds it), then cancel the prediction it made unless that has ended. Nobody
        waits for this, so every failure is swallowed."""
        with contextlib.suppress(Exception):
            prediction = json_object(self.name, await creating, "prediction")
            url = self._api_url(prediction, "cancel", str(prediction.get("id") or ""))
            if url is not None and prediction.get("status") not in _TERMINAL:
                await self._cancel(client, url)

    async def _cancel(self, client: httpx.AsyncClient, url: str) -> None:
        """Fire-and-forget cancel; nobody waits for it, so every failure is swallowed."""
        with contextlib.suppress(Exception):
            await send(
                self.name,
                client,
                "POST",
                url,
                headers=self._auth(),
                timeout=_CANCEL_TIMEOUT_S,
                total_s=_CANCEL_TIMEOUT_S,
            )


def _may_answer(creating: asyncio.Future[httpx.Response]) -> bool:
    """Whether the create call is still under way or answered (a prediction may exist), rather than failed or
    cancelled (none does)."""
    return not creating.done() or (not creating.cancelled() and creating.exception() is None)

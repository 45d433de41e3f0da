"""Black Forest Labs' own API (``POST /v1/<model>``, then poll), default model ``flux-2-pro``.

Wire format: providers.md §4.2. The submit answer names a ``polling_url`` on the cluster that runs the task
(``api.eu1.bfl.ai`` …, not the global host it was sent to), which is polled with the same ``x-key`` header until
the task is ``Ready``; its ``result.sample`` is a signed link on BFL's delivery hosts that expires after ten
minutes, so the race downloads it at once. The key is only sent to BFL's own hosts (or to the origin of an
overridden base URL). BFL documents no way to cancel a task: a race loser's task runs on at BFL, and is billed,
which is why this provider costs more than a hedge may add and only fails over (``race.maxExtraCostPerRequest``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

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
    missing_key,
    number_option,
    origin,
    poll,
    send,
    url_path,
)

DEFAULT_MODEL = "flux-2-pro"
#: The endpoints providers.md §4.2 lists (for the messages; any endpoint name of the right form is sent, as
#: BFL adds models often).
KNOWN_MODELS = (
    "flux-2-max",
    "flux-2-pro",
    "flux-2-flex",
    "flux-2-klein-4b",
    "flux-2-klein-9b",
    "flux-kontext-max",
    "flux-kontext-pro",
    "flux-pro-1.1-ultra",
    "flux-pro-1.1",
    "flux-pro",
    "flux-dev",
)
#: An endpoint name: lower-case letters and digits in parts joined by single ``-`` or ``.``.
MODEL_NAME = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
MODEL_NAME_FORM = f"a BFL endpoint name (one of {', '.join(KNOWN_MODELS)}, or a newer one of that form)"
#: Models that take an ``aspect_ratio`` instead of ``width``/``height``, and the ratios asked of them (both
#: accept 21:9 to 9:21).
ASPECT_RATIO_MODELS = frozenset({"flux-pro-1.1-ultra", "flux-kontext-pro", "flux-kontext-max"})
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "4:3", "1:1", "3:4", "2:3", "9:16", "9:21")
#: ``width``/``height`` are multiples of 32 within FLUX.1 [pro]'s documented 256..1440; FLUX.2 takes larger
#: sizes but bills per megapixel, and the normaliser scales the image to the request anyway.
SIDE_STEP, MIN_SIDE, MAX_SIDE = 32, 256, 1440

_READY = "ready"
_MODERATED = frozenset({"request moderated", "content moderated"})
#: Statuses that end a task without an image; any other (``Pending``, newer models' ``Reasoning`` or
#: ``Generating``, one BFL adds later) is polled again until the attempt's budget runs out.
_FAILED = frozenset({"error", "failed", "task not found"})


def bfl_size(width: int, height: int) -> dict[str, int]:
    """The ``width``/``height`` sent for a request of ``width``×``height`` (see :data:`SIDE_STEP`)."""
    w, h = sizes.sides_in_steps(width, height, step=SIDE_STEP, min_side=MIN_SIDE, max_side=MAX_SIDE)
    return {"width": w, "height": h}


class BFLProvider(ProviderBase):
    """Text-to-image through Black Forest Labs' API (FLUX.2 and FLUX.1 models): submit, poll, download.

    Options (``providers.<name>.options``): ``poll_interval_s`` (default 0.5) and ``input`` (extra body fields,
    e.g. ``{"safety_tolerance": 2, "output_format": "png"}``).
    """

    kind: ClassVar[str] = "bfl"
    requires_key: ClassVar[bool] = True
    output_hosts: ClassVar[tuple[str, ...]] = ("*.bfl.ai", "bfldeliveryprod.blob.core.windows.net")
    default_base_url: ClassVar[str] = "https://api.bfl.ai"

    @classmethod
    def check_settings(cls, model: str | None, options: Mapping[str, Any]) -> None:
        """An endpoint name (``flux-2-pro`` …), a positive ``poll_interval_s``, an object ``input``."""
        check_model_id(model, MODEL_NAME, MODEL_NAME_FORM)
        check_known_options(options, cls.kind, ("input", "poll_interval_s"))
        check_positive_number(options, "poll_interval_s")
        check_mapping(options, "input")

    async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
        """Submit the task, poll its ``polling_url`` until it is ready, and return ``result.sample``."""
        headers = self._auth()
        self.checked(job)
        model = job.model or DEFAULT_MODEL
        interval_s = number_option(job.options, "poll_interval_s", 0.5)
        shape = (
            {"aspect_ratio": sizes.nearest_aspect_ratio(job.width, job.height, ASPECT_RATIOS)}
            if model in ASPECT_RATIO_MODELS
            else bfl_size(job.width, job.height)
        )
        body: dict[str, Any] = {
            **shape,
            "output_format": "jpeg",
            **(job.options.get("input") or {}),
            "prompt": job.prompt,
        }
        if job.seed is not None:
            body["seed"] = job.seed
        response = await send(
            self.name,
            ctx.client,
            "POST",
            f"{self.base_url}/v1/{url_path(self.name, model)}",
            json=body,
            headers=headers,
        )
        submitted = json_object(self.name, response, "submit answer")
        task_id = str(submitted.get("id") or "")
        polling_url = self._polling_url(submitted, task_id)
        state: Mapping[str, Any] = {}
        slept_s = 0.0
        while (sample := self._finished(state)) is None:
            if slept_s >= job.timeout_s:
                raise ProviderError(
                    f"{self.name}: task {task_id} not ready after {job.timeout_s:g}s",
                    failure_class=FailureClass.TIMEOUT,
                )
            await ctx.sleep(interval_s)
            slept_s += interval_s
            # A Retry-After longer than what is left of the budget is not waited out.
            response = await poll(self.name, ctx, polling_url, headers=headers, max_wait_s=job.timeout_s - slept_s)
            state = json_object(self.name, response, "task status")
        result = state.get("result")
        seed = result.get("seed") if isinstance(result, Mapping) else None
        return ProviderOutput(
            url=sample,
            model=model,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else job.seed,
            provider_ref=task_id or None,
        )

    def _auth(self) -> dict[str, str]:
        if not self._api_key:
            raise missing_key(self.name, "BFL_API_KEY")
        return {"x-key": self._api_key}

    def _polling_url(self, submitted: Mapping[str, Any], task_id: str) -> str:
        """The answer's ``polling_url`` when the key may go there (an https host of BFL's, or the base URL's own
        origin); without one, ``/v1/get_result?id=`` on the base URL (the API's older answers gave only the id)."""
        url = submitted.get("polling_url")
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            on_bfl = parts.scheme == "https" and (host == "bfl.ai" or host.endswith(".bfl.ai"))
            if on_bfl or origin(url) == origin(self.base_url):
                return url
            raise ProviderError(
                f"{self.name}: submit answer's polling_url is on {clip(host or '?', 80)}, not a BFL host (not "
                "followed: the key would go there)",
                failure_class=FailureClass.TRANSIENT,
            )
        if not task_id:
            raise ProviderError(
                f"{self.name}: submit answer has neither an id nor a polling_url", failure_class=FailureClass.TRANSIENT
            )
        return f"{self.base_url}/v1/get_result?id={quote(task_id, safe='')}"

    def _finished(self, state: Mapping[str, Any]) -> str | None:
        """The image URL once the task is ready; None while it runs; raises when it ended without one."""
        status = str(state.get("status") or "")
        said = f"{status}{_details(state.get('details'))}"
        if status.casefold() in _MODERATED:
            raise content_rejected(self.name, said)
        if status.casefold() in _FAILED:
            raise ProviderError(clip(f"{self.name}: task ended: {said}", 300), failure_class=FailureClass.TRANSIENT)
        if status.casefold() != _READY:
            return None
        result = state.get("result")
        sample = result.get("sample") if isinstance(result, Mapping) else None
        if not isinstance(sample, str) or not sample:
            # Made (Ready), so billed, but without a link to it.
            raise ProviderError(
                f"{self.name}: task is Ready without result.sample", failure_class=FailureClass.TRANSIENT, billed=True
            )
        return sample


def _details(details: Any) -> str:
    """A status's ``details`` (moderation reasons, an error's text) as a suffix for the message, or ""."""
    if isinstance(details, Mapping):
        text = "; ".join(f"{key}: {value}" for key, value in list(details.items())[:3])
    elif details:
        text = str(details)
    else:
        return ""
    return f" ({clip(text, 200)})"

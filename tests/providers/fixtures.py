"""Shared test harness and illustrative provider payloads (made-up ids, shapes per providers.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import respx

from imagegen_core.providers.base import ProviderContext, ProviderJob


@dataclass
class Harness:
    """A respx router behind a real ``httpx.AsyncClient`` plus a ProviderContext that records work.

    ``spawned`` collects the clean-up coroutines a provider starts; ``sleeps`` records poll intervals.
    With ``park_on_sleep`` set, the first ``ctx.sleep`` signals ``parked`` and blocks until cancelled,
    which lets a test cancel a provider exactly while it is polling.
    """

    router: respx.Router
    client: httpx.AsyncClient
    spawned: list[Coroutine[Any, Any, Any]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    park_on_sleep: bool = False
    parked: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ctx(self) -> ProviderContext:
        return ProviderContext(client=self.client, spawn=self.spawned.append, sleep=self._sleep)

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.park_on_sleep:
            self.parked.set()
            await asyncio.Future()

    async def run_spawned(self) -> None:
        """Await every spawned coroutine, as the service's background task set would."""
        while self.spawned:
            await self.spawned.pop(0)


@asynccontextmanager
async def harness() -> AsyncIterator[Harness]:
    """A Harness whose client is closed and whose unawaited spawned coroutines are closed on exit."""
    router = respx.Router(assert_all_called=False)
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        h = Harness(router=router, client=client)
        try:
            yield h
        finally:
            for coro in h.spawned:
                coro.close()


def job(**overrides: Any) -> ProviderJob:
    """A 1600x900 job with a 20 s budget, overridable field by field."""
    values: dict[str, Any] = {
        "request_id": "req-1",
        "prompt": "lighthouse at dusk, editorial photo",
        "width": 1600,
        "height": 900,
        "timeout_s": 20.0,
    }
    values.update(overrides)
    return ProviderJob(**values)


def sent_json(request: httpx.Request) -> Any:
    """The JSON body a provider sent."""
    return json.loads(request.content)


def problem(status: int, title: str | None, detail: str, **extra: Any) -> httpx.Response:
    """A Replicate RFC 7807 error response."""
    body: dict[str, Any] = {"detail": detail, "status": status, **extra}
    if title is not None:
        body["title"] = title
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


# --- Replicate (providers.md §1.5) ------------------------------------------------------------------

REPLICATE_API = "https://api.replicate.com"
PREDICTION_ID = "q1w2e3r4t5y6u7i8o9p0asdfgh"
REPLICATE_OUTPUT = "https://replicate.delivery/xezq/AbCdEf123/out-0.webp"


def prediction(status: str, output: Any = None, error: str | None = None, api: str = REPLICATE_API) -> dict[str, Any]:
    """A prediction object in the given state."""
    return {
        "id": PREDICTION_ID,
        "model": "black-forest-labs/flux-schnell",
        "version": "dp-0123456789abcdef",
        "input": {"prompt": "lighthouse at dusk"},
        "logs": "",
        "output": output,
        "data_removed": False,
        "error": error,
        "status": status,
        "created_at": "2026-03-01T10:00:00.000Z",
        "urls": {
            "get": f"{api}/v1/predictions/{PREDICTION_ID}",
            "cancel": f"{api}/v1/predictions/{PREDICTION_ID}/cancel",
        },
    }


# --- fal (providers.md §2.3, §2.5) --------------------------------------------------------------------

FAL_QUEUE = "https://queue.fal.run"
FAL_SYNC = "https://fal.run"
FAL_REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
FAL_IMAGE = "https://v3.fal.media/files/koala/Xy12ab_example.jpg"


def fal_submitted(queue: str = FAL_QUEUE) -> dict[str, Any]:
    """The queue submit answer; note the URLs use only ``fal-ai/flux`` of the app id."""
    base = f"{queue}/fal-ai/flux/requests/{FAL_REQUEST_ID}"
    return {
        "request_id": FAL_REQUEST_ID,
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "status": "IN_QUEUE",
        "queue_position": 0,
    }


def fal_result(nsfw: bool = False, url: str = FAL_IMAGE) -> dict[str, Any]:
    """A flux/schnell result."""
    return {
        "images": [{"url": url, "width": 1600, "height": 900, "content_type": "image/jpeg"}],
        "timings": {"inference": 0.41},
        "seed": 424242,
        "has_nsfw_concepts": [nsfw],
        "prompt": "lighthouse at dusk, editorial photo",
    }


# --- Unsplash (providers.md §3.4) ---------------------------------------------------------------------

UNSPLASH_API = "https://api.unsplash.com"
UNSPLASH_RAW = "https://images.unsplash.com/photo-1500000000000-abc?ixid=TESTIXID&ixlib=rb-4.1.0"


def unsplash_photo(photo_id: str = "Abc123xyz", name: str = "Ada Lens", api: str = UNSPLASH_API) -> dict[str, Any]:
    """One photo object from a search answer."""
    return {
        "id": photo_id,
        "width": 6000,
        "height": 4000,
        "color": "#40a0c0",
        "alt_description": "lighthouse on a cliff",
        "urls": {
            "raw": UNSPLASH_RAW,
            "regular": f"{UNSPLASH_RAW}&q=80&w=1080&fit=max&fm=jpg&crop=entropy&cs=tinysrgb",
        },
        "links": {
            "html": f"https://unsplash.com/photos/{photo_id}",
            "download_location": f"{api}/photos/{photo_id}/download?ixid=TESTIXID",
        },
        "user": {"name": name, "username": "adalens", "links": {"html": "https://unsplash.com/@adalens"}},
    }


def unsplash_search(*photos: dict[str, Any]) -> dict[str, Any]:
    """A search answer with the given photos."""
    return {"total": len(photos), "total_pages": 1 if photos else 0, "results": list(photos)}


# --- Black Forest Labs (providers.md §4.2) -------------------------------------------------------------

BFL_API = "https://api.bfl.ai"
BFL_TASK_ID = "5b7c1e2a-3d4f-4a6b-9c8d-0e1f2a3b4c5d"
#: The task's cluster, which the submit answer's polling_url names (not the global host it was sent to).
BFL_POLLING_URL = f"https://api.eu1.bfl.ai/v1/get_result?id={BFL_TASK_ID}"
BFL_SAMPLE = f"https://delivery-eu1.bfl.ai/results/ab/cd/{BFL_TASK_ID}/sample.jpeg?se=2026-03-01T10%3A10%3A00Z&sig=AbC"


def bfl_submitted(polling_url: str | None = BFL_POLLING_URL) -> dict[str, Any]:
    """The submit answer (FLUX.2 adds its cost and megapixels)."""
    answer: dict[str, Any] = {"id": BFL_TASK_ID, "cost": 3.0, "input_mp": 0.0, "output_mp": 1.15}
    if polling_url is not None:
        answer["polling_url"] = polling_url
    return answer


def bfl_status(status: str, sample: str | None = BFL_SAMPLE, details: Any = None) -> dict[str, Any]:
    """A poll answer; ``result`` only once the task is Ready."""
    ready = status == "Ready"
    return {
        "id": BFL_TASK_ID,
        "status": status,
        "result": {"sample": sample, "seed": 1234, "prompt": "lighthouse at dusk"} if ready else None,
        "progress": 1.0 if ready else 0.4,
        "details": details,
    }


# --- Stability AI (providers.md §4.3) ------------------------------------------------------------------

STABILITY_API = "https://api.stability.ai"


def sent_form(request: httpx.Request) -> dict[str, str]:
    """The fields of a multipart/form-data request, each of which must be a plain part (no file name)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    assert message.is_multipart(), request.headers["content-type"]
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        assert part.get_filename() is None, part.get_filename()  # no dummy file part
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = part.get_payload(decode=True).decode()
    return fields


def stability_error(status: int, name: str, *errors: str) -> httpx.Response:
    """An error answer: ``{"id", "name", "errors": [...]}``."""
    return httpx.Response(status, json={"id": "a1b2c3d4e5f6", "name": name, "errors": list(errors)})

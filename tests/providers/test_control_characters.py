"""Text a provider chooses (an error body, a prediction's error, a photographer's name) reaches our messages, the
log and the terminal as one printable line: no control character, no bidi override.

Regression (QA): a fake provider answering ``500 text/plain`` with ESC sequences (clear screen, set the window
title, colours) and ``\\r\\nimagegen: success`` made ``imagegen generate`` print them as they were.
"""

from __future__ import annotations

import re

import httpx
import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers.base import ProviderBase, classify_response
from imagegen_core.providers.bfl import BFLProvider
from imagegen_core.providers.fal import FalProvider
from imagegen_core.providers.openai import OpenAIProvider
from imagegen_core.providers.replicate import ReplicateProvider
from imagegen_core.providers.stability import StabilityProvider
from imagegen_core.providers.unsplash import UnsplashProvider

from .fixtures import (
    BFL_API,
    BFL_POLLING_URL,
    FAL_QUEUE,
    PREDICTION_ID,
    REPLICATE_API,
    STABILITY_API,
    UNSPLASH_API,
    Harness,
    bfl_status,
    bfl_submitted,
    fal_submitted,
    job,
    prediction,
    unsplash_photo,
    unsplash_search,
)

#: The QA's body, byte for byte.
HOSTILE = "boom \x1b[2J\x1b]0;PWNED-TITLE\x07\x1b[31mFAKE: all good\x1b[0m \r\nimagegen: success"
#: Every character that must not survive: C0, DEL, C1, line/paragraph separators, bidi controls.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
BIDI = "name \u202egnp.exe\u202c \u2066x\u2069 \u200fend\x85next\u2028line\x00"


def _printable(text: str) -> None:
    assert UNSAFE.search(text) is None, repr(text)
    assert "  " not in text and text == text.strip(), repr(text)


def test_one_line_turns_controls_and_bidi_overrides_into_single_spaces() -> None:
    from imagegen_core.errors import one_line

    assert one_line(HOSTILE) == "boom [2J ]0;PWNED-TITLE [31mFAKE: all good [0m imagegen: success"
    assert one_line(BIDI) == "name gnp.exe x end next line"
    assert one_line("café – ok ✓ 日本") == "café – ok ✓ 日本"  # printable Unicode is kept


def test_classify_response_keeps_a_plain_text_body_on_one_printable_line() -> None:
    error = classify_response("p", httpx.Response(500, text=HOSTILE, headers={"content-type": "text/plain"}))
    assert error.failure_class is FailureClass.TRANSIENT
    _printable(str(error))
    assert "FAKE: all good [0m imagegen: success" in str(error)


async def _fails(provider: ProviderBase, h: Harness) -> str:
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(), h.ctx)
    message = str(err.value)
    _printable(message)
    return message


async def test_replicate_error_bodies_and_prediction_errors_are_one_printable_line(h: Harness) -> None:
    create = h.router.post(f"{REPLICATE_API}/v1/models/black-forest-labs/flux-schnell/predictions")
    create.respond(500, text=HOSTILE, headers={"content-type": "text/plain"})
    assert "imagegen: success" in await _fails(ReplicateProvider(api_key="r8_k"), h)
    create.respond(422, json={"title": "Invalid\x1b[2J", "detail": BIDI, "status": 422})
    assert "Invalid [2J: name gnp.exe" in await _fails(ReplicateProvider(api_key="r8_k"), h)
    create.respond(201, json=prediction("failed", error=HOSTILE))
    assert "prediction failed: boom" in await _fails(ReplicateProvider(api_key="r8_k"), h)


async def test_replicate_ids_and_models_it_answers_are_one_printable_line(h: Harness) -> None:
    answer = prediction("succeeded", ["https://replicate.delivery/xezq/a/out-0.webp"])
    answer["id"] = PREDICTION_ID + "\x1b[2J\r\n"
    h.router.post(f"{REPLICATE_API}/v1/models/black-forest-labs/flux-schnell/predictions").respond(201, json=answer)
    output = await ReplicateProvider(api_key="r8_k").generate(job(), h.ctx)
    assert output.provider_ref is not None
    _printable(output.provider_ref)


async def test_fal_details_and_job_errors_are_one_printable_line(h: Harness) -> None:
    submit = h.router.post(f"{FAL_QUEUE}/fal-ai/flux/schnell")
    submit.respond(500, json={"detail": HOSTILE})
    assert "imagegen: success" in await _fails(FalProvider(api_key="id:secret"), h)
    submit.respond(422, json={"detail": [{"type": "value_error\x1b[2J", "msg": BIDI}]})
    await _fails(FalProvider(api_key="id:secret"), h)
    submit.respond(200, json=fal_submitted())
    status = f"{FAL_QUEUE}/fal-ai/flux/requests/{fal_submitted()['request_id']}/status"
    h.router.get(status).respond(200, json={"status": "COMPLETED", "error": HOSTILE, "error_type": "runner\r\nx"})
    assert "boom" in await _fails(FalProvider(api_key="id:secret"), h)


async def test_unsplash_errors_and_photographer_names_are_one_printable_line(h: Harness) -> None:
    search = h.router.get(f"{UNSPLASH_API}/search/photos")
    search.respond(500, json={"errors": [HOSTILE, BIDI]})
    assert "imagegen: success" in await _fails(UnsplashProvider(api_key="k", app_name="newsroom"), h)
    search.respond(200, json=unsplash_search(unsplash_photo(name="Ada\x1b]0;PWNED\x07 \u202eLens\r\nimagegen: ok")))
    output = await UnsplashProvider(api_key="k", app_name="newsroom").generate(job(), h.ctx)
    assert output.attribution is not None
    _printable(output.attribution.text)
    assert output.attribution.photographer_name == "Ada ]0;PWNED Lens imagegen: ok"


async def test_openai_error_messages_are_one_printable_line(h: Harness) -> None:
    route = h.router.post("https://api.openai.com/v1/images/generations")
    route.respond(500, json={"error": {"type": "server_error", "message": HOSTILE}})
    assert "imagegen: success" in await _fails(OpenAIProvider(api_key="sk-k"), h)
    route.respond(200, json={"created": 1, "data": [{"revised_prompt": "x"}], "error": BIDI})
    await _fails(OpenAIProvider(api_key="sk-k"), h)


async def test_bfl_task_statuses_and_their_details_are_one_printable_line(h: Harness) -> None:
    """A task's status and ``details`` are BFL's text, put in our message."""
    h.router.post(f"{BFL_API}/v1/flux-2-pro").respond(200, json=bfl_submitted())
    polls = h.router.get(BFL_POLLING_URL)
    for status in ("Content Moderated", "Error"):
        polls.respond(200, json=bfl_status(status, details={"reason": HOSTILE, "more": BIDI}))
        assert "imagegen: success" in await _fails(BFLProvider(api_key="bfl-k"), h)


async def test_stability_errors_are_one_printable_line(h: Harness) -> None:
    """Its ``errors`` list and a refusal's text reach our message; so does an unknown finish-reason."""
    route = h.router.post(f"{STABILITY_API}/v2beta/stable-image/generate/core")
    route.respond(500, json={"id": "e", "name": "internal_error", "errors": [HOSTILE, BIDI]})
    assert "imagegen: success" in await _fails(StabilityProvider(api_key="sk-k"), h)
    route.respond(403, json={"id": "e", "name": "content_moderation", "errors": [HOSTILE]})
    assert "imagegen: success" in await _fails(StabilityProvider(api_key="sk-k"), h)
    route.respond(200, content=b"x", headers={"content-type": "image/png", "finish-reason": "ODD\x1b[2J\x07"})
    await _fails(StabilityProvider(api_key="sk-k"), h)

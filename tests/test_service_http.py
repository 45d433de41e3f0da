"""The whole pipeline over HTTP in the real wire formats (respx behind the shared client): providers
race, the winner's output is downloaded from the provider's CDN host, normalised and stored; the loser
is cancelled on the provider's side; Unsplash answers with a hotlink and attribution."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from imagegen_core import Attribution, ImageGen
from imagegen_core.history import reuse, search
from imagegen_core.log.history import get_request

pytestmark = pytest.mark.looptime

PID = "q1w2e3r4t5y6u7i8o9p0asdfgh"
FAL_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buf, format="PNG")
    return buf.getvalue()


def prediction(status: str, output: Any = None) -> dict[str, Any]:
    return {
        "id": PID,
        "model": "black-forest-labs/flux-schnell",
        "status": status,
        "output": output,
        "error": None,
        "urls": {
            "get": f"https://api.replicate.com/v1/predictions/{PID}",
            "cancel": f"https://api.replicate.com/v1/predictions/{PID}/cancel",
        },
    }


def only(*names: str, mode: str = "parallel") -> dict[str, Any]:
    providers = {n: {"enabled": n in names} for n in ("replicate", "fal", "unsplash")}
    if "fal" in names:
        providers["fal"]["options"] = {"mode": "queue", "poll_interval_s": 0.2}
    if "replicate" in names:
        providers["replicate"]["options"] = {"poll_interval_s": 0.5}
    return {"providers": providers, "race": {"mode": mode}}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False)


@pytest.fixture
async def client(router: respx.Router) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
        yield c


def fal_queue_routes(router: respx.Router, *, image_url: str) -> dict[str, respx.Route]:
    base = "https://queue.fal.run/fal-ai/flux/requests/" + FAL_ID
    return {
        "submit": router.post("https://queue.fal.run/fal-ai/flux/schnell").respond(
            200,
            json={
                "request_id": FAL_ID,
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
                "status": "IN_QUEUE",
                "queue_position": 0,
            },
        ),
        "status": router.get(base + "/status").mock(
            side_effect=[
                httpx.Response(202, json={"status": "IN_PROGRESS", "logs": []}),
                httpx.Response(200, json={"status": "COMPLETED", "logs": [], "metrics": {}}),
            ]
        ),
        "result": router.get(base).respond(
            200,
            json={
                "images": [{"url": image_url, "width": 1024, "height": 768, "content_type": "image/jpeg"}],
                "seed": 424242,
                "has_nsfw_concepts": [False],
                "prompt": "lighthouse",
            },
        ),
        "cancel": router.put(base + "/cancel").respond(202, json={"status": "CANCELLATION_REQUESTED"}),
    }


async def test_fal_wins_its_image_is_copied_and_the_slow_replicate_prediction_is_cancelled(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    image_url = "https://v3.fal.media/files/koala/Xy12ab_example.jpg"
    fal = fal_queue_routes(router, image_url=image_url)
    cdn = router.get(image_url).respond(200, content=png(1024, 768), headers={"Content-Type": "image/png"})
    router.post("https://api.replicate.com/v1/models/black-forest-labs/flux-schnell/predictions").respond(
        201, json=prediction("starting")
    )
    router.get(f"https://api.replicate.com/v1/predictions/{PID}").respond(200, json=prediction("processing"))
    cancel = router.post(f"https://api.replicate.com/v1/predictions/{PID}/cancel").respond(
        200, json=prediction("canceled")
    )
    settings = settings_factory(REPLICATE_API_TOKEN="r8_test", FAL_KEY="fal_test")
    async with ImageGen.from_settings(settings, http_client=client) as gen:
        gen.set_config(only("replicate", "fal"))
        result = await gen.generate({"prompt": "lighthouse", "width": 640, "height": 360, "articleId": "a-1"})
        await gen.flush()
        assert result.success and result.provider == "fal", result.error
        assert fal["submit"].called and fal["result"].called and cdn.called
        stored = (gen.settings.home / "images" / result.key).read_bytes()
        assert Image.open(io.BytesIO(stored)).size == (640, 360)
        assert cancel.called, "the losing Replicate prediction must be cancelled server-side"
        outcomes = {a.provider: a.outcome for a in result.attempts}
        assert outcomes == {"fal": "success", "replicate": "cancelled"}
        assert result.cost_usd == pytest.approx(0.006)  # the cancelled prediction may still be billed


async def test_an_output_on_a_foreign_host_is_refused_and_never_fetched(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    evil = router.get("https://evil.example/steal.png").respond(200, content=png(10, 10))
    fal_queue_routes(router, image_url="https://evil.example/steal.png")
    async with ImageGen.from_settings(settings_factory(FAL_KEY="fal_test"), http_client=client) as gen:
        gen.set_config(only("fal"))
        result = await gen.generate({"prompt": "lighthouse"})
    assert not result.success and not evil.called
    assert "not allowed" in (result.error or "")


UNSPLASH_RAW = "https://images.unsplash.com/photo-1500000000000-abc?ixid=TESTIXID&ixlib=rb-4.1.0"


def unsplash_routes(router: respx.Router) -> tuple[respx.Route, respx.Route]:
    """Unsplash's search answering one photo by Ada Lens, its image, and its download tracking (photo, ping)."""
    raw = UNSPLASH_RAW
    router.get("https://api.unsplash.com/search/photos").respond(
        200,
        json={
            "total": 1,
            "total_pages": 1,
            "results": [
                {
                    "id": "Abc123xyz",
                    "width": 6000,
                    "height": 4000,
                    "urls": {"raw": raw},
                    "links": {
                        "html": "https://unsplash.com/photos/Abc123xyz",
                        "download_location": "https://api.unsplash.com/photos/Abc123xyz/download?ixid=TESTIXID",
                    },
                    "user": {
                        "name": "Ada Lens",
                        "username": "adalens",
                        "links": {"html": "https://unsplash.com/@adalens"},
                    },
                }
            ],
        },
    )
    photo = router.get(url__startswith="https://images.unsplash.com/photo-1500000000000-abc").respond(
        200, content=png(800, 450), headers={"Content-Type": "image/png"}
    )
    ping = router.get("https://api.unsplash.com/photos/Abc123xyz/download").respond(200, json={"url": raw})
    return photo, ping


async def test_unsplash_answers_with_a_hotlink_and_attribution_and_pings_download_tracking(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    raw = UNSPLASH_RAW
    photo, ping = unsplash_routes(router)
    async with ImageGen.from_settings(settings_factory(UNSPLASH_ACCESS_KEY="us_test"), http_client=client) as gen:
        gen.set_config(only("unsplash"))
        result = await gen.generate({"prompt": "lighthouse on a cliff", "width": 800, "height": 450})
        await gen.flush()
        assert result.success and result.provider == "unsplash"
        assert result.url.startswith(raw + "&") and "w=800" in result.url and "h=450" in result.url
        assert result.key is None and list((gen.settings.home / "images").rglob("*.webp")) == []
        wire = result.to_wire()
        assert wire["attribution"]["text"] == "Photo by Ada Lens on Unsplash"
        assert "utm_source=imagegen&utm_medium=referral" in wire["attribution"]["photographerUrl"]
        assert photo.called and ping.called
        assert json.dumps(wire)  # serialisable as the API will send it


async def test_a_stock_photos_credit_is_kept_in_the_log_and_a_reuse_of_it_carries_it(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """QA: the log kept no credit, so History's reuse of an earlier stock photo could not say whom to credit
    (Unsplash's terms require it wherever the photo is published)."""
    unsplash_routes(router)
    async with ImageGen.from_settings(settings_factory(UNSPLASH_ACCESS_KEY="us_test"), http_client=client) as gen:
        gen.set_config(only("unsplash"))
        result = await gen.generate({"prompt": "lighthouse on a cliff", "articleId": "art-1"})
        await gen.flush()
        assert result.attribution is not None and result.attribution.photographer_name == "Ada Lens"
        (row,), total, _ = search(gen, "lighthouse")
        assert total == 1 and row["attribution"] == result.attribution
        reused = reuse(gen, result.request_id, "art-2")
        assert (reused["status"], reused["article_id"]) == ("reused", "art-2")
        assert reused["attribution"] == result.attribution


async def test_a_stock_photo_picked_in_a_comparison_keeps_its_credit_in_the_log(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    unsplash_routes(router)
    async with ImageGen.from_settings(settings_factory(UNSPLASH_ACCESS_KEY="us_test"), http_client=client) as gen:
        gen.set_config(only("unsplash"))
        comparison = await gen.compare({"prompt": "lighthouse on a cliff"})
        result = await gen.pick(comparison, "unsplash")
        await gen.flush()
        row = get_request(gen.log, comparison.request_id)
        assert result.attribution is not None and row is not None and row["status"] == "success"
        assert Attribution.from_log(row["attribution"]) == result.attribution


@pytest.mark.parametrize(
    "throttle",
    [
        {"headers": {"Retry-After": "9" * 400}, "json": {"detail": "slow down"}},  # float() of it is infinity
        {"json": {"detail": "Request was throttled. Expected available in 99999999999999999999 seconds."}},
    ],
    ids=["header", "body"],
)
async def test_an_absurd_retry_after_is_a_rate_limited_attempt_and_the_backup_answers(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient, throttle: dict[str, Any]
) -> None:
    """QA: "Retry-After: 999…9" (400 digits) made every generate a 500 while fal was healthy, its request logged
    ``cancelled`` and the attempt ``running`` forever; 20 digits left the attempt ``running`` (the log's integer
    column refused the wait in ms). The wait is now bounded to a day: a rate-limited attempt like any other."""
    router.post("https://api.replicate.com/v1/models/black-forest-labs/flux-schnell/predictions").respond(
        429, **throttle
    )
    image_url = "https://v3.fal.media/files/koala/Xy12ab_example.jpg"
    fal_queue_routes(router, image_url=image_url)
    router.get(image_url).respond(200, content=png(1024, 768), headers={"Content-Type": "image/png"})
    settings = settings_factory(REPLICATE_API_TOKEN="r8_test", FAL_KEY="fal_test")
    async with ImageGen.from_settings(settings, http_client=client) as gen:
        gen.set_config(only("replicate", "fal", mode="hedged"))
        result = await gen.generate({"prompt": "lighthouse", "width": 640, "height": 360})
        await gen.flush()
        assert result.success and result.provider == "fal", result.error
        rows = gen.log.query("SELECT provider, outcome, failure_class, retry_after_ms FROM attempts ORDER BY provider")
        status = gen.log.query("SELECT status FROM requests")
    assert rows == [
        {"provider": "fal", "outcome": "success", "failure_class": None, "retry_after_ms": None},
        {"provider": "replicate", "outcome": "failed", "failure_class": "rate_limited", "retry_after_ms": 86_400_000},
    ]
    assert status == [{"status": "success"}]


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: its size is about 3 bytes per pixel."""
    import random

    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), random.Random(7).randbytes(width * height * 3)).save(buf, format="PNG")
    return buf.getvalue()


async def test_an_inline_image_over_max_download_bytes_fails_like_a_download_over_it(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """Regression (QA): OpenAI's ``b64_json`` bytes skipped ``limits.maxDownloadBytes`` (the fetch step returned
    inline data as it was). Now they fail the attempt as a too-large download does: transient, same message;
    an inline image within the limit still wins."""
    import base64

    big = noise_png(64, 64)
    limit = len(big) - 1
    openai = router.post("https://api.openai.com/v1/images/generations")
    openai.respond(200, json={"created": 1, "data": [{"b64_json": base64.b64encode(big).decode()}]})
    cdn = "https://v3.fal.media/files/koala/big.png"
    router.get(cdn).respond(200, content=big, headers={"Content-Type": "image/png"})
    status = fal_queue_routes(router, image_url=cdn)["status"]
    status.side_effect = None  # done at once, for each of the two fal requests below
    status.respond(200, json={"status": "COMPLETED", "logs": [], "metrics": {}})
    settings = settings_factory(OPENAI_API_KEY="sk-test", FAL_KEY="fal_test")
    off = {n: {"enabled": False} for n in ("replicate", "unsplash", "offline")}
    async with ImageGen.from_settings(settings, http_client=client) as gen:
        for name in ("openai", "fal"):
            gen.set_config(
                {
                    "providers": {
                        **off,
                        "fal": {"enabled": name == "fal", "retries": 0, "options": {"mode": "queue"}},
                        "openai": {"enabled": name == "openai", "retries": 0},
                    },
                    "limits": {"maxDownloadBytes": limit},
                }
            )
            result = await gen.generate({"prompt": "lighthouse", "width": 64, "height": 64})
            assert not result.success, name
            [attempt] = [a for a in result.attempts if a.provider == name]
            assert (attempt.outcome, attempt.failure_class) == ("failed", "invalid_request"), attempt
            assert attempt.error == f"{name}: image larger than {limit} bytes, over limits.maxDownloadBytes"
        gen.set_config({"limits": {"maxDownloadBytes": len(big)}}, merge=True)
        result = await gen.generate({"prompt": "lighthouse", "width": 64, "height": 64})
        assert result.success and result.provider == "fal", result.error


async def test_a_png_served_as_html_is_a_failed_attempt_not_the_answer(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """Regression (QA): a real PNG downloaded with ``Content-Type: text/html`` won the race."""
    image_url = "https://v3.fal.media/files/koala/Xy12ab_example.jpg"
    fal_queue_routes(router, image_url=image_url)
    router.get(image_url).respond(200, content=png(64, 64), headers={"Content-Type": "text/html; charset=utf-8"})
    async with ImageGen.from_settings(settings_factory(FAL_KEY="fal_test"), http_client=client) as gen:
        document = only("fal")
        document["providers"]["fal"]["retries"] = 0
        gen.set_config(document)
        result = await gen.generate({"prompt": "lighthouse", "width": 64, "height": 64})
    assert not result.success
    [attempt] = [a for a in result.attempts if a.provider == "fal"]
    assert (attempt.outcome, attempt.failure_class) == ("failed", "transient")
    assert attempt.error == "fal: output is not an image (Content-Type: text/html)"


async def test_an_image_of_absurd_size_is_not_paid_for_again_nor_counted_against_the_provider(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """QA (security review): a PNG claiming 60000x60000 failed as ``transient``, so with ``retries: 1`` fal was
    asked, paid and the image downloaded twice, and its breaker counted it; the same request makes the same
    size again. Now ``invalid_request`` like an image over ``limits.maxDownloadBytes``: one call, no count."""
    from tests.test_images import png_header_claiming

    image_url = "https://v3.fal.media/files/koala/bomb.png"
    routes = fal_queue_routes(router, image_url=image_url)
    routes["status"].side_effect = None  # done at once, for each request below
    routes["status"].respond(200, json={"status": "COMPLETED", "logs": [], "metrics": {}})
    bomb = router.get(image_url).respond(
        200, content=png_header_claiming(60_000, 60_000), headers={"Content-Type": "image/png"}
    )
    settings = settings_factory(FAL_KEY="fal_test")
    async with ImageGen.from_settings(settings, http_client=client) as gen:
        document = only("fal")
        document["providers"]["fal"]["retries"] = 1
        gen.set_config(document)
        result = await gen.generate({"prompt": "lighthouse", "width": 64, "height": 64})
        await gen.flush()  # breaker verdicts go through the log writer
        breaker = gen.breakers.state("fal")
    assert not result.success
    [attempt] = result.attempts  # not retried
    assert (attempt.outcome, attempt.failure_class) == ("failed", "invalid_request"), attempt
    assert "60000x60000" in (attempt.error or "") or "DecompressionBombError" in (attempt.error or ""), attempt
    assert (routes["submit"].call_count, bomb.call_count) == (1, 1)
    assert str(breaker.state) == "closed" and not [at for at, failed in breaker.window if failed], breaker


BFL_TASK = "5b7c1e2a-3d4f-4a6b-9c8d-0e1f2a3b4c5d"
BFL_POLLING_URL = f"https://api.eu1.bfl.ai/v1/get_result?id={BFL_TASK}"
#: Every built-in that talks to a network, switched off so that one provider races alone.
NETWORKED_OFF = {
    n: {"enabled": False} for n in ("replicate", "fal", "unsplash", "openai", "bfl", "stability", "offline")
}


def bfl_poll(status: str, sample: str | None = None) -> httpx.Response:
    result = {"sample": sample, "seed": 99} if sample else None
    return httpx.Response(200, json={"id": BFL_TASK, "status": status, "result": result})


async def test_bfl_is_polled_and_its_signed_sample_is_copied_normalised_and_stored(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """BFL through the whole engine: submit, the cluster's polling_url until Ready, the 10-minute signed sample
    downloaded at once from BFL's delivery host (without the key), cover-cropped to the request and stored."""
    sample = f"https://delivery-eu1.bfl.ai/results/{BFL_TASK}/sample.jpeg?se=2026-03-01T10%3A10%3A00Z&sig=AbC"
    submit = router.post("https://api.bfl.ai/v1/flux-2-pro").respond(
        200, json={"id": BFL_TASK, "polling_url": BFL_POLLING_URL}
    )
    polls = router.get(BFL_POLLING_URL).mock(side_effect=[bfl_poll("Pending"), bfl_poll("Ready", sample)])
    cdn = router.get(sample).respond(200, content=png(1440, 800), headers={"Content-Type": "image/jpeg"})
    settings = settings_factory(BFL_API_KEY="bfl-engine-key-1f2e3d")
    async with ImageGen.from_settings(settings, http_client=client) as gen:
        gen.set_config({"providers": {**NETWORKED_OFF, "bfl": {"enabled": True}}})
        result = await gen.generate({"prompt": "lighthouse", "width": 640, "height": 360, "articleId": "a-9"})
        await gen.flush()
        assert result.success and result.provider == "bfl", result.error
        assert (result.model, result.cost_usd) == ("flux-2-pro", pytest.approx(0.03))
        assert (submit.call_count, polls.call_count, cdn.call_count) == (1, 2, 1)
        assert json.loads(submit.calls.last.request.content)["width"] == 640  # within 256..1440 as asked
        assert "x-key" not in cdn.calls.last.request.headers  # the signed link needs no key: it stays with the API
        stored = Image.open(io.BytesIO((gen.settings.home / "images" / result.key).read_bytes()))
        assert (stored.format, stored.size) == ("WEBP", (640, 360))


async def test_bfl_refusing_its_key_opens_its_breaker_and_the_key_is_never_shown(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 that quotes the key back: the attempt is ``auth`` (breaker open at once, no retry), and the key is
    in neither the answer, the log DB's rows nor the log records."""
    key = "bfl-SECRET-key-9a8b7c"
    submit = router.post("https://api.bfl.ai/v1/flux-2-pro").respond(401, json={"detail": f"Invalid key {key}"})
    caplog.set_level("DEBUG", logger="imagegen")
    async with ImageGen.from_settings(settings_factory(BFL_API_KEY=key), http_client=client) as gen:
        gen.set_config({"providers": {**NETWORKED_OFF, "bfl": {"enabled": True, "retries": 2}}})
        result = await gen.generate({"prompt": "lighthouse", "width": 64, "height": 64})
        await gen.flush()
        rows = gen.log.query("SELECT failure_class, error FROM attempts WHERE request_id = ?", (result.request_id,))
        breaker = gen.breakers.state("bfl")
    assert not result.success and submit.call_count == 1
    assert [(r["failure_class"], r["error"]) for r in rows] == [("auth", "bfl: HTTP 401 Invalid key ***")]
    assert str(breaker.state) == "open"
    shown = result.model_dump_json() + caplog.text + json.dumps(rows)
    assert key not in shown and "Invalid key ***" in shown


STABILITY_CORE = "https://api.stability.ai/v2beta/stable-image/generate/core"


async def test_stabilitys_inline_image_is_normalised_and_stored(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """Stability through the whole engine: one multipart POST answered with the PNG itself (nothing to download),
    cover-cropped from the 16:9 it was asked for to the request's size and stored as WebP."""
    core = router.post(STABILITY_CORE).respond(
        200, content=png(1344, 768), headers={"content-type": "image/png", "finish-reason": "SUCCESS", "seed": "31"}
    )
    async with ImageGen.from_settings(settings_factory(STABILITY_API_KEY="sk-engine-3c4d"), http_client=client) as gen:
        gen.set_config({"providers": {**NETWORKED_OFF, "stability": {"enabled": True}}})
        result = await gen.generate({"prompt": "lighthouse", "width": 640, "height": 360})
        await gen.flush()
        assert result.success and result.provider == "stability", result.error
        assert (result.model, result.cost_usd, core.call_count) == ("core", pytest.approx(0.03), 1)
        assert b'name="aspect_ratio"\r\n\r\n16:9' in core.calls.last.request.content
        stored = Image.open(io.BytesIO((gen.settings.home / "images" / result.key).read_bytes()))
        assert (stored.format, stored.size) == ("WEBP", (640, 360))


async def test_a_stability_moderation_refusal_is_content_rejected_and_no_breaker_failure(
    settings_factory: Any, router: respx.Router, client: httpx.AsyncClient
) -> None:
    """Stability's 403 ``content_moderation`` is the prompt's fault, not a bad key: not retried, and its breaker
    does not count it (a 403 otherwise reads as ``auth``, which would open it at once)."""
    body = {"id": "e1", "name": "content_moderation", "errors": ["Your request was flagged by our content moderation"]}
    core = router.post(STABILITY_CORE).respond(403, json=body)
    async with ImageGen.from_settings(settings_factory(STABILITY_API_KEY="sk-engine-3c4d"), http_client=client) as gen:
        gen.set_config({"providers": {**NETWORKED_OFF, "stability": {"enabled": True, "retries": 2}}})
        result = await gen.generate({"prompt": "lighthouse", "width": 64, "height": 64})
        await gen.flush()
        breaker = gen.breakers.state("stability")
    assert not result.success and core.call_count == 1
    [attempt] = result.attempts
    assert (attempt.failure_class, attempt.http_status) == ("content_rejected", None)
    assert str(breaker.state) == "closed" and not [at for at, failed in breaker.window if failed], breaker

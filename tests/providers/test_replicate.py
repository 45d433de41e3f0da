"""ReplicateProvider against respx routes shaped like api.replicate.com (providers.md §1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from imagegen_core.errors import FailureClass, ProviderError
from imagegen_core.providers.replicate import SYNC_WAIT_S, ReplicateProvider, nearest_aspect_ratio

from .fixtures import (
    PREDICTION_ID,
    REPLICATE_API,
    REPLICATE_OUTPUT,
    Harness,
    job,
    prediction,
    problem,
    sent_json,
)

CREATE = f"{REPLICATE_API}/v1/models/black-forest-labs/flux-schnell/predictions"
GET = f"{REPLICATE_API}/v1/predictions/{PREDICTION_ID}"
CANCEL = f"{GET}/cancel"
KEY = "r8_TESTKEY"


@pytest.fixture
def provider() -> ReplicateProvider:
    return ReplicateProvider(api_key=KEY)


async def _fails(provider: ReplicateProvider, h: Harness, **job_fields: object) -> ProviderError:
    with pytest.raises(ProviderError) as err:
        await provider.generate(job(**job_fields), h.ctx)
    assert KEY not in str(err.value)
    assert str(err.value).startswith("replicate: ")
    return err.value


async def test_sync_success_sends_documented_request(provider: ReplicateProvider, h: Harness) -> None:
    """One POST with Bearer auth, Prefer: wait, Cancel-After and flux-schnell inputs returns the output URL."""
    route = h.router.post(CREATE).respond(201, json=prediction("succeeded", [REPLICATE_OUTPUT]))
    out = await provider.generate(job(seed=1234, timeout_s=19.2), h.ctx)
    assert out.url == REPLICATE_OUTPUT
    assert (out.model, out.seed, out.provider_ref) == ("black-forest-labs/flux-schnell", 1234, PREDICTION_ID)
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Prefer"] == f"wait={SYNC_WAIT_S}"  # short: a loser's id is known soon (see below)
    assert request.headers["Cancel-After"] == "20s"
    assert sent_json(request) == {
        "input": {
            "prompt": "lighthouse at dusk, editorial photo",
            "aspect_ratio": "16:9",
            "num_outputs": 1,
            "output_format": "webp",
            "output_quality": 90,
            "seed": 1234,
        }
    }
    assert h.sleeps == [] and h.spawned == []


async def test_wait_is_clamped_to_60_and_options_override_inputs(provider: ReplicateProvider, h: Harness) -> None:
    """Prefer: wait never exceeds 60 s nor the attempt's budget; options.wait_s and options.input are honoured;
    no seed without one."""
    route = h.router.post(f"{REPLICATE_API}/v1/models/google/nano-banana/predictions").respond(
        201, json=prediction("succeeded", REPLICATE_OUTPUT)
    )
    await provider.generate(job(timeout_s=90, model="google/nano-banana", options={"wait_s": 75}), h.ctx)
    assert route.calls.last.request.headers["Prefer"] == "wait=60"
    assert route.calls.last.request.headers["Cancel-After"] == "90s"
    await provider.generate(job(timeout_s=2.5, model="google/nano-banana"), h.ctx)
    assert route.calls.last.request.headers["Prefer"] == "wait=2"
    await provider.generate(
        job(model="google/nano-banana", options={"wait_s": 12, "input": {"output_format": "jpg"}}), h.ctx
    )
    request = route.calls.last.request
    assert request.headers["Prefer"] == "wait=12"
    sent = sent_json(request)["input"]
    assert sent["output_format"] == "jpg" and "seed" not in sent


@pytest.mark.parametrize(
    ("width", "height", "ratio"),
    [
        (1024, 1024, "1:1"),
        (1600, 900, "16:9"),
        (900, 1600, "9:16"),
        (2560, 1080, "21:9"),
        (1200, 800, "3:2"),
        (800, 1000, "4:5"),
    ],
)
def test_nearest_aspect_ratio_picks_the_closest_enum_value(width: int, height: int, ratio: str) -> None:
    """flux-schnell has no width/height, so the size maps to its nearest aspect_ratio."""
    assert nearest_aspect_ratio(width, height) == ratio


async def test_polls_until_succeeded(provider: ReplicateProvider, h: Harness) -> None:
    """starting → processing → succeeded over several GETs, sleeping the poll interval in between."""
    h.router.post(CREATE).respond(201, json=prediction("starting"))
    poll = h.router.get(GET).mock(
        side_effect=[
            httpx.Response(200, json=prediction("starting")),
            httpx.Response(200, json=prediction("processing")),
            httpx.Response(200, json=prediction("succeeded", [REPLICATE_OUTPUT])),
        ]
    )
    out = await provider.generate(job(options={"poll_interval_s": 1.5}), h.ctx)
    assert out.url == REPLICATE_OUTPUT
    assert poll.call_count == 3
    assert poll.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"
    assert h.sleeps == [1.5, 1.5, 1.5]


async def test_output_while_processing_counts_as_success(provider: ReplicateProvider, h: Harness) -> None:
    """File outputs can exist before the prediction is marked succeeded: no further polling."""
    h.router.post(CREATE).respond(201, json=prediction("processing", [REPLICATE_OUTPUT]))
    poll = h.router.get(GET).respond(200, json=prediction("processing"))
    assert (await provider.generate(job(), h.ctx)).url == REPLICATE_OUTPUT
    assert poll.call_count == 0


async def test_output_as_plain_string(provider: ReplicateProvider, h: Harness) -> None:
    """Some models return one URL string instead of a list."""
    h.router.post(CREATE).respond(201, json=prediction("processing"))
    h.router.get(GET).respond(200, json=prediction("succeeded", REPLICATE_OUTPUT))
    assert (await provider.generate(job(), h.ctx)).url == REPLICATE_OUTPUT


async def test_nsfw_failure_is_content_rejected(provider: ReplicateProvider, h: Harness) -> None:
    """A failed prediction with a moderation error is a content rejection, not the provider's fault."""
    h.router.post(CREATE).respond(201, json=prediction("processing"))
    h.router.get(GET).respond(200, json=prediction("failed", error="All generated images contained NSFW content"))
    err = await _fails(provider, h)
    assert err.failure_class is FailureClass.CONTENT_REJECTED
    assert h.spawned == []  # a finished prediction needs no cancel


async def test_other_failures_and_cancellations_are_transient(provider: ReplicateProvider, h: Harness) -> None:
    """failed (non-moderation), canceled and aborted predictions are retryable transient failures."""
    route = h.router.post(CREATE)
    billed = {"failed": False, "canceled": True, "aborted": False}  # canceled ran (and is charged); aborted never did
    for final in (prediction("failed", error="CUDA out of memory"), prediction("canceled"), prediction("aborted")):
        route.respond(201, json=final)
        error = await _fails(provider, h)
        assert error.failure_class is FailureClass.TRANSIENT
        assert error.billed is billed[final["status"]], final["status"]


async def test_succeeded_without_output_is_transient(provider: ReplicateProvider, h: Harness) -> None:
    """A succeeded prediction with no output URL is garbage from the provider."""
    h.router.post(CREATE).respond(201, json=prediction("succeeded", []))
    assert (await _fails(provider, h)).failure_class is FailureClass.TRANSIENT


@pytest.mark.parametrize(
    ("response", "expected", "retry_after"),
    [
        (problem(401, "Unauthenticated", "You did not pass a valid authentication token"), FailureClass.AUTH, None),
        (
            problem(402, "Insufficient credit", "You have insufficient credit to run this model. Go to billing."),
            FailureClass.BILLING,
            None,
        ),
        (
            problem(
                422,
                "Input validation failed",
                '- input.output_format: output_format must be one of the following: "jpg", "png"\n',
                invalid_fields=[{"type": "enum", "field": "input.output_format", "description": "..."}],
            ),
            FailureClass.INVALID_REQUEST,
            None,
        ),
        (
            httpx.Response(429, json={"detail": "Request was throttled."}, headers={"Retry-After": "7"}),
            FailureClass.RATE_LIMITED,
            7.0,
        ),
        (
            httpx.Response(
                429, json={"detail": "Request was throttled. Expected available in 1 second.", "status": 429}
            ),
            FailureClass.RATE_LIMITED,
            1.0,
        ),
        (problem(503, "Service Unavailable", "try later"), FailureClass.TRANSIENT, None),
        (httpx.Response(201, text="{not json"), FailureClass.TRANSIENT, None),
        (httpx.Response(201, json=["not", "an", "object"]), FailureClass.TRANSIENT, None),
    ],
)
async def test_create_errors_are_classified(
    provider: ReplicateProvider,
    h: Harness,
    response: httpx.Response,
    expected: FailureClass,
    retry_after: float | None,
) -> None:
    """Problem+json errors, throttling hints and malformed bodies map to providers.md §7 classes."""
    h.router.post(CREATE).mock(return_value=response)
    err = await _fails(provider, h)
    assert err.failure_class is expected
    assert err.retry_after_s == retry_after


async def test_timeout_and_connection_errors(provider: ReplicateProvider, h: Harness) -> None:
    """A read timeout is TIMEOUT; a refused connection is TRANSIENT."""
    route = h.router.post(CREATE)
    route.side_effect = httpx.ReadTimeout("slow")
    assert (await _fails(provider, h)).failure_class is FailureClass.TIMEOUT
    route.side_effect = httpx.ConnectError("refused")
    assert (await _fails(provider, h)).failure_class is FailureClass.TRANSIENT


async def test_missing_key_is_auth_without_a_request(h: Harness) -> None:
    """An unconfigured provider fails as AUTH and never calls the API."""
    route = h.router.post(CREATE).respond(201, json=prediction("succeeded", [REPLICATE_OUTPUT]))
    err = await _fails(ReplicateProvider(), h)
    assert err.failure_class is FailureClass.AUTH and route.call_count == 0


async def test_bad_model_id_is_invalid_request(provider: ReplicateProvider, h: Harness) -> None:
    """Only official 'owner/name' models are supported on this endpoint."""
    err = await _fails(provider, h, model="flux-schnell")
    assert err.failure_class is FailureClass.INVALID_REQUEST


async def test_cancelled_while_polling_cancels_the_prediction(provider: ReplicateProvider, h: Harness) -> None:
    """A race loser spawns POST urls.cancel (with auth) and re-raises CancelledError."""
    h.router.post(CREATE).respond(201, json=prediction("starting"))
    cancel = h.router.post(CANCEL).respond(200, json=prediction("canceled"))
    h.park_on_sleep = True
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await h.parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancel.call_count == 0  # not awaited by the loser itself
    await h.run_spawned()
    assert cancel.call_count == 1
    assert cancel.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"


async def lost_while_created(provider: ReplicateProvider, h: Harness, answer: Callable[[], httpx.Response]) -> Any:
    """Race ``provider`` and cancel it (a loser) while Replicate holds its create call; the call then answers
    with ``answer()`` (or raises), and the background work the loser left runs. Returns the cancel route."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        entered.set()
        await release.wait()
        return answer()

    h.router.post(CREATE).mock(side_effect=held)
    cancel = h.router.post(CANCEL).respond(200, json=prediction("canceled"))
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # at once: the loser does not wait for the create call
    assert len(h.spawned) == 1 and cancel.call_count == 0
    release.set()
    await h.run_spawned()
    return cancel


@pytest.mark.parametrize(("answer", "cancels"), [("starting", 1), ("processing", 1), ("succeeded", 0), ("failed", 0)])
async def test_a_loser_cancelled_before_create_answers_cancels_the_prediction_once_it_does(
    provider: ReplicateProvider, h: Harness, answer: str, cancels: int
) -> None:
    """Regression: a loser cancelled while the create call was held open (``Prefer: wait``) had no prediction id
    to cancel, so its prediction ran on, billed, until ``Cancel-After`` (the whole timeout). Now the call goes
    on in the background and the prediction is cancelled as soon as it answers, unless it has ended."""
    output = [REPLICATE_OUTPUT] if answer == "succeeded" else None
    cancel = await lost_while_created(provider, h, lambda: httpx.Response(201, json=prediction(answer, output)))
    assert cancel.call_count == cancels
    if cancels:
        assert cancel.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"


async def test_a_create_call_that_fails_after_its_loser_left_is_swallowed(
    provider: ReplicateProvider, h: Harness
) -> None:
    """No prediction was made: nothing to cancel, and nothing raised from the background."""

    def reset() -> httpx.Response:
        raise httpx.ConnectError("reset")

    assert (await lost_while_created(provider, h, reset)).call_count == 0


async def test_cancel_errors_are_swallowed(provider: ReplicateProvider, h: Harness) -> None:
    """The fire-and-forget cancel never raises, whatever the API answers."""
    h.router.post(CREATE).respond(201, json=prediction("starting"))
    cancel = h.router.post(CANCEL).mock(side_effect=httpx.ConnectError("down"))
    h.park_on_sleep = True
    task = asyncio.create_task(provider.generate(job(), h.ctx))
    await h.parked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await h.run_spawned()
    assert cancel.call_count == 1


async def test_gives_up_after_the_budget_and_cancels(provider: ReplicateProvider, h: Harness) -> None:
    """Polling stops once the attempt budget is slept away: TIMEOUT, and the prediction is cancelled."""
    h.router.post(CREATE).respond(201, json=prediction("processing"))
    h.router.get(GET).respond(200, json=prediction("processing"))
    cancel = h.router.post(CANCEL).respond(200, json=prediction("canceled"))
    err = await _fails(provider, h, timeout_s=2.0)
    assert err.failure_class is FailureClass.TIMEOUT
    assert sum(h.sleeps) == pytest.approx(2.0)
    await h.run_spawned()
    assert cancel.call_count == 1


async def test_base_url_override_uses_returned_urls_and_opens_test_origin(h: Harness) -> None:
    """With IMAGEGEN_REPLICATE_BASE_URL the API, poll URLs and output downloads all live on that origin."""
    local = "http://127.0.0.1:8123"
    provider = ReplicateProvider(api_key=KEY, base_url=local)
    create = h.router.post(f"{local}/v1/models/black-forest-labs/flux-schnell/predictions").respond(
        201, json=prediction("starting", api=local)
    )
    h.router.get(f"{local}/v1/predictions/{PREDICTION_ID}").respond(
        200, json=prediction("succeeded", [f"{local}/files/out-0.webp"], api=local)
    )
    out = await provider.generate(job(), h.ctx)
    assert create.call_count == 1 and out.url == f"{local}/files/out-0.webp"
    assert provider.download_policy.allows(out.url)
    default = ReplicateProvider(api_key=KEY).download_policy
    assert not default.allows(out.url)
    assert default.allows(REPLICATE_OUTPUT) and default.allows("https://pbxt.replicate.delivery/x/out.png")
    assert not default.allows("http://replicate.delivery/x.webp")
    assert not default.allows("https://replicate.delivery@evil.com/x.webp")
    assert not default.allows("https://evil.com/x.webp")


async def test_foreign_poll_urls_are_ignored(provider: ReplicateProvider, h: Harness) -> None:
    """The token is only sent to the API host: a urls.get elsewhere is replaced by the documented path."""
    h.router.post(CREATE).respond(201, json=prediction("starting", api="https://evil.example"))
    evil = h.router.get(host="evil.example").respond(200, json=prediction("succeeded", [REPLICATE_OUTPUT]))
    h.router.get(GET).respond(200, json=prediction("succeeded", [REPLICATE_OUTPUT]))
    assert (await provider.generate(job(), h.ctx)).url == REPLICATE_OUTPUT
    assert evil.call_count == 0


def test_repr_never_shows_the_key(provider: ReplicateProvider) -> None:
    """The token stays out of reprs (and so out of logs)."""
    assert KEY not in repr(provider)


async def test_a_rate_limited_poll_is_polled_again_not_a_new_prediction(
    provider: ReplicateProvider, h: Harness
) -> None:
    """Create is limited to 600/min and each prediction is paid for: a 429 on GET (limit 3000/min) waits
    Retry-After and polls again, without a cancel and without a second create (providers.md §1.7, §1.8)."""
    create = h.router.post(CREATE).respond(201, json=prediction("starting"))
    poll = h.router.get(GET).mock(
        side_effect=[
            httpx.Response(
                429,
                json={"detail": "Request was throttled. Expected available in 1 second.", "status": 429},
                headers={"Retry-After": "1"},
            ),
            httpx.Response(200, json=prediction("succeeded", [REPLICATE_OUTPUT])),
        ]
    )
    cancel = h.router.post(CANCEL).respond(200, json=prediction("canceled"))
    out = await provider.generate(job(options={"poll_interval_s": 0.5}), h.ctx)
    assert out.url == REPLICATE_OUTPUT
    assert (create.call_count, poll.call_count) == (1, 2)
    assert h.sleeps == [0.5, 1.0] and h.spawned == [] and cancel.call_count == 0


VERSION = "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"


async def test_a_pinned_version_runs_through_the_general_predictions_endpoint(
    provider: ReplicateProvider, h: Harness
) -> None:
    """``owner/name:<version>`` posts the version in the body of ``POST /v1/predictions`` (providers.md §1.2); the
    official-model endpoint takes no version."""
    route = h.router.post(f"{REPLICATE_API}/v1/predictions").respond(
        201, json=prediction("succeeded", [REPLICATE_OUTPUT])
    )
    model = f"black-forest-labs/flux-schnell:{VERSION}"
    out = await provider.generate(job(model=model), h.ctx)
    assert out.url == REPLICATE_OUTPUT and out.model == model
    sent = sent_json(route.calls.last.request)
    assert sent["version"] == VERSION and sent["input"]["prompt"] == "lighthouse at dusk, editorial photo"


@pytest.mark.parametrize(
    "model", ["owner/name?x=1", "owner/name#frag", "owner/../name", "owner/na%2Fme", "owner/name:abc", "   "]
)
async def test_a_model_id_outside_the_format_fails_the_call_without_a_request(
    provider: ReplicateProvider, h: Harness, model: str
) -> None:
    """An instance built in code gets the same rule as a saved config: our config's fault, nothing sent."""
    err = await _fails(provider, h, model=model)
    assert err.failure_class is FailureClass.INVALID_REQUEST
    assert str(err).startswith("replicate: model: must be a Replicate model 'owner/name'") and "\n" not in str(err)
    assert not h.router.calls


class _Unchecked(ReplicateProvider):
    """A subclass that skips the model rule: the URL builder must hold on its own."""

    @classmethod
    def check_settings(cls, model: str | None, options: object) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("model", "raw_path"),
    [
        ("owner/name?x=1", b"/v1/models/owner/name%3Fx%3D1/predictions"),
        ("owner/name#frag", b"/v1/models/owner/name%23frag/predictions"),
        ("owner/a/../../x", b"/v1/models/owner/a%2F..%2F..%2Fx/predictions"),
    ],
)
async def test_a_model_id_that_bypassed_the_check_cannot_steer_the_url(h: Harness, model: str, raw_path: bytes) -> None:
    route = h.router.post(url__startswith=f"{REPLICATE_API}/v1/").respond(
        201, json=prediction("succeeded", [REPLICATE_OUTPUT])
    )
    await _Unchecked(api_key=KEY).generate(job(model=model), h.ctx)
    url = route.calls.last.request.url
    assert (url.host, url.raw_path, url.query, url.fragment) == ("api.replicate.com", raw_path, b"", "")


async def test_a_dot_segment_that_bypassed_the_check_is_refused_without_a_request(h: Harness) -> None:
    err = await _fails(_Unchecked(api_key=KEY), h, model="../x")
    assert err.failure_class is FailureClass.INVALID_REQUEST and not h.router.calls


async def test_a_gateway_timeout_on_a_poll_is_polled_again_not_a_cancelled_prediction(
    provider: ReplicateProvider, h: Harness
) -> None:
    """Replicate's own client sends GETs again after 429, 503 *and 504* (providers.md §1.7): a 504 from the gateway
    in front of the status endpoint says nothing about the prediction, which runs on and is paid for."""
    create = h.router.post(CREATE).respond(201, json=prediction("starting"))
    poll = h.router.get(GET).mock(
        side_effect=[
            httpx.Response(504, text="<html><body><h1>504 Gateway Time-out</h1></body></html>"),
            httpx.Response(200, json=prediction("succeeded", [REPLICATE_OUTPUT])),
        ]
    )
    cancel = h.router.post(CANCEL).respond(200, json=prediction("canceled"))
    out = await provider.generate(job(options={"poll_interval_s": 0.5}), h.ctx)
    assert out.url == REPLICATE_OUTPUT
    assert (create.call_count, poll.call_count, cancel.call_count) == (1, 2, 0) and h.spawned == []


async def test_a_poll_rate_limited_past_the_budget_gives_up_at_once_and_cancels(
    provider: ReplicateProvider, h: Harness
) -> None:
    """A Retry-After that ends after the attempt's budget cannot be honoured (DESIGN §4: only if it fits): the
    attempt fails at once as RATE_LIMITED with the hint, rather than sleeping into a timeout that counts against
    the breaker, and the running prediction is cancelled."""
    h.router.post(CREATE).respond(201, json=prediction("starting"))
    poll = h.router.get(GET).respond(429, json={"detail": "Request was throttled."}, headers={"Retry-After": "120"})
    cancel = h.router.post(CANCEL).respond(200, json=prediction("canceled"))
    err = await _fails(provider, h, timeout_s=20.0, options={"poll_interval_s": 0.5})
    assert err.failure_class is FailureClass.RATE_LIMITED and err.retry_after_s == 120.0
    assert poll.call_count == 1 and h.sleeps == [0.5]
    await h.run_spawned()
    assert cancel.call_count == 1

"""Rate limiting: a token bucket per client IP, off by default, configured (hot) in ``rateLimit``."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from imagegen_core.api import create_app
from imagegen_core.api.ratelimit import TokenBucketLimiter
from imagegen_core.service import ImageGen

from .conftest import ADMIN, api_client, fakes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(clock=clock)

    def take(key: str = "a") -> float:
        return limiter.acquire(key, rate_per_s=2.0, burst=3)

    assert [take(), take(), take()] == [0.0, 0.0, 0.0]
    assert take() == 0.5  # empty: the next token comes in 1 / 2 s
    clock.now += 0.25
    assert take() == 0.25  # a refused call takes nothing
    clock.now += 0.25
    assert take() == 0.0
    assert take("b") == 0.0  # another client has its own bucket
    clock.now += 60
    assert [take(), take(), take(), take()] == [0.0, 0.0, 0.0, 0.5]  # refilled to the burst, no more
    assert limiter.acquire("a", rate_per_s=2.0, burst=5) == 0.0  # a new limit starts everyone afresh


def test_idle_buckets_are_dropped_past_the_key_limit() -> None:
    clock = FakeClock()
    limiter = TokenBucketLimiter(clock=clock, max_keys=2)
    for key in ("a", "b", "c"):
        assert limiter.acquire(key, rate_per_s=0.001, burst=1) == 0.0
    assert limiter.acquire("a", rate_per_s=0.001, burst=1) == 0.0  # "a" was dropped, so it is full again
    assert limiter.acquire("c", rate_per_s=0.001, burst=1) > 0  # "c" was kept


async def test_rate_limiting_is_off_by_default(make_gen: Callable[..., ImageGen]) -> None:
    async with api_client(make_gen(fakes(quick={}))) as client:
        codes = {
            (await client.post("/images/generate", json={"prompt": "x", "width": 64})).status_code for _ in range(15)
        }
    assert codes == {200}


async def test_an_empty_bucket_answers_429_with_retry_after_per_client(make_gen: Callable[..., ImageGen]) -> None:
    gen = make_gen(fakes(quick={}))
    clock = FakeClock()
    app = create_app(gen)
    app.state.ctx.limiter = TokenBucketLimiter(clock=clock)

    def client_at(ip: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 1234)), base_url="http://t")

    body = {"prompt": "x", "width": 64, "height": 64}
    async with client_at("10.0.0.1") as first, client_at("10.0.0.2") as second:
        enabled = {"rateLimit": {"enabled": True, "requestsPerMinute": 6, "burst": 2}}  # hot, no restart
        assert (await first.patch("/admin/config", json=enabled, headers=ADMIN)).status_code == 200
        assert [(await first.post("/images/generate", json=body)).status_code for _ in range(2)] == [200, 200]
        refused = await first.post("/images/generate", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "10"  # 6 per minute: one token every 10 s
        assert refused.json() == {
            "error": "rate limit exceeded (6 requests per minute, burst 2); retry after 10 s",
            "field": None,
        }
        assert (await second.post("/images/generate", json=body)).status_code == 200  # its own bucket
        clock.now += 4
        assert (await first.post("/images/generate", json=body)).headers["retry-after"] == "6"
        clock.now += 6
        assert (await first.post("/images/generate", json=body)).status_code == 200
        assert (await first.get("/health")).status_code == 200  # only generate is limited


async def test_limiting_switched_off_by_another_process_frees_a_client_already_refused(
    make_gen: Callable[..., ImageGen],
) -> None:
    """Regression (QA): ``imagegen config set`` (or another worker's PATCH) switching rate limiting off did not
    reach a server that was refusing a client: the limit was read from the config in force, which only a
    generate refreshes, and a refused request reaches none. A refusal is now decided on the newest config."""
    gen = make_gen(fakes(quick={}))
    other = make_gen(admin=False)  # another process on the same log DB
    body = {"prompt": "x", "width": 64, "height": 64}
    async with api_client(gen) as client:
        enabled = {"rateLimit": {"enabled": True, "requestsPerMinute": 1, "burst": 1}}
        assert (await client.patch("/admin/config", json=enabled, headers=ADMIN)).status_code == 200
        assert [(await client.post("/images/generate", json=body)).status_code for _ in range(2)] == [200, 429]
        other.set_config({"rateLimit": {"enabled": False}}, source="cli", merge=True)
        assert [(await client.post("/images/generate", json=body)).status_code for _ in range(3)] == [200] * 3
        loosened = {"rateLimit": {"enabled": True, "requestsPerMinute": 600, "burst": 5}}
        assert (await client.patch("/admin/config", json=loosened, headers=ADMIN)).status_code == 200
        assert [(await client.post("/images/generate", json=body)).status_code for _ in range(5)] == [200] * 5
        assert (await client.post("/images/generate", json=body)).status_code == 429  # still limited


async def test_limiting_switched_on_by_another_process_applies_to_the_next_request(
    make_gen: Callable[..., ImageGen], db_url: str
) -> None:
    """QA: switched on by another process (another worker's PATCH), each process let one more request through
    than its limit: it decided on the config in force, which only a generate refreshes. On SQLite it decides on
    the newest config (the change stamp makes that a memory read); on PostgreSQL the documented lag stays."""
    gen = make_gen(fakes(quick={}), IMAGEGEN_DATABASE_URL=db_url)
    other = make_gen(admin=False, IMAGEGEN_DATABASE_URL=db_url)  # another process on the same log DB
    body = {"prompt": "x", "width": 64, "height": 64}
    async with api_client(gen) as client:
        assert (await client.post("/images/generate", json=body)).status_code == 200  # the config read once
        other.set_config({"rateLimit": {"enabled": True, "requestsPerMinute": 1, "burst": 1}}, source="cli", merge=True)
        answers = [(await client.post("/images/generate", json=body)).status_code for _ in range(3)]
    expected = [200, 429, 429] if db_url.startswith("sqlite") else [200, 200, 429]
    assert answers == expected


async def test_the_bucket_is_taken_before_the_api_token_is_checked(make_gen: Callable[..., ImageGen]) -> None:
    """As the README says: a client guessing IMAGEGEN_API_TOKEN is slowed like any other, so its wrong guesses
    take tokens; clients behind its address share the bucket (QA security review asked which it was)."""
    gen = make_gen(fakes(quick={}), IMAGEGEN_API_TOKEN="api-token-0123456789abcdef0123")
    body = {"prompt": "x", "width": 64, "height": 64}
    async with api_client(gen) as client:
        enabled = {"rateLimit": {"enabled": True, "requestsPerMinute": 1, "burst": 2}}
        assert (await client.patch("/admin/config", json=enabled, headers=ADMIN)).status_code == 200
        wrong = {"Authorization": "Bearer wrong"}
        guesses = [(await client.post("/images/generate", json=body, headers=wrong)).status_code for _ in range(3)]
        right = {"Authorization": "Bearer api-token-0123456789abcdef0123"}
        after = await client.post("/images/generate", json=body, headers=right)
    assert guesses == [401, 401, 429]
    assert after.status_code == 429  # the same address: its bucket is empty

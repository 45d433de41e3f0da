"""A timed-out attempt costs its price only if its request may have reached the provider (SRE fault injection:
a full listen backlog, where the connection never opened and nothing was sent, was charged ``costPerImage``).
Real sockets on 127.0.0.1, and the HTTP client imagegen makes for itself (``make_http_client``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest

from imagegen_core.breaker import CircuitBreakers, InMemoryBreakerStore
from imagegen_core.config import BreakerConfig
from imagegen_core.gates import DirectBreakerGate
from imagegen_core.models import AttemptOutcome
from imagegen_core.providers.base import ProviderJob, ProviderOutput, send
from imagegen_core.providers.fake import FakeProvider
from imagegen_core.race import Entrant, Race, RacePlan
from imagegen_core.service import make_http_client

PRICE = 0.003
JOB = ProviderJob(request_id="r1", prompt="a lighthouse", width=64, height=64, timeout_s=30)


@contextmanager
def full_backlog(port: int) -> Iterator[str]:
    """A listening socket that never accepts, its backlog filled: a new connection never opens (its SYN is
    dropped), so nothing is sent."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in (*fillers, listener):
            sock.close()


@asynccontextmanager
async def silent_server(port: int) -> AsyncIterator[str]:
    """A server that reads the request and never answers: the request reached it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


class Poster(FakeProvider):
    """Posts the job to ``url`` and waits for the answer, as a real provider's create call does."""

    url = ""

    async def generate(self, job: Any, ctx: Any) -> ProviderOutput:
        await send(self.name, ctx.client, "POST", f"{self.url}/predictions", json={"prompt": job.prompt})
        raise AssertionError("the server never answers")


async def one_attempt(client: httpx.AsyncClient, url: str, *, timeout_s: float, deadline_s: float) -> Any:
    async def finish(_entrant: Entrant, output: ProviderOutput, _data: bytes | None) -> ProviderOutput:
        return output

    provider = Poster(name="poster")
    provider.url = url
    race: Race[ProviderOutput] = Race(
        client=client,
        breakers=DirectBreakerGate(CircuitBreakers(InMemoryBreakerStore(), BreakerConfig())),
        finish=finish,
    )
    entrant = Entrant(
        name="poster", provider=provider, timeout_s=timeout_s, retries=0, hedge_delay_s=10, cost_per_image=PRICE
    )
    plan = RacePlan(
        entrants=(entrant,), mode="sequential", deadline_s=deadline_s, backoff_initial_s=0.1, backoff_max_s=0.1
    )
    result = await race.run(plan, JOB)
    [attempt] = result.attempts
    return attempt


@pytest.mark.parametrize(
    ("timeout_s", "deadline_s", "outcome"),
    [(0.3, 5.0, AttemptOutcome.FAILED), (5.0, 0.3, AttemptOutcome.CANCELLED)],
    ids=["the provider's timeout", "the request's deadline"],
)
async def test_a_timeout_before_the_connection_opened_costs_nothing(
    timeout_s: float, deadline_s: float, outcome: AttemptOutcome
) -> None:
    client = make_http_client()
    try:
        with full_backlog(18331) as url:
            attempt = await one_attempt(client, url, timeout_s=timeout_s, deadline_s=deadline_s)
    finally:
        await client.aclose()
    assert (attempt.outcome, attempt.failure_class, attempt.cost_usd) == (outcome, "timeout", 0.0)


async def test_a_timeout_after_the_request_went_out_costs_its_price() -> None:
    client = make_http_client()
    try:
        async with silent_server(18332) as url:
            attempt = await one_attempt(client, url, timeout_s=0.3, deadline_s=5.0)
    finally:
        await client.aclose()
    assert (attempt.outcome, attempt.failure_class, attempt.cost_usd) == (AttemptOutcome.FAILED, "timeout", PRICE)


async def test_a_client_that_cannot_tell_what_it_sent_is_charged_as_before() -> None:
    """An embedder's or a test's own client: whether the request went out is unknown, so it may have reached."""
    from imagegen_core.sent_requests import SentRequests

    async with httpx.AsyncClient() as client:
        assert not SentRequests(client).known
        with full_backlog(18333) as url:
            attempt = await one_attempt(client, url, timeout_s=0.3, deadline_s=5.0)
    assert (attempt.failure_class, attempt.cost_usd) == ("timeout", PRICE)

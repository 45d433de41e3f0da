"""The ImageGen façade end to end with fake and offline providers, the local store and a real SQLite log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegen_core import DuplicateRequestIdError, GenerateRequest, ImageGen, InvalidRequestError
from imagegen_core.breaker import Permit
from imagegen_core.errors import FailureClass
from imagegen_core.log.catalog import dump_rows
from imagegen_core.log.queries import attempts_for, recent_requests
from imagegen_core.storage.local import LocalStore

OFF = {"enabled": False}
ID1, ID2 = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
NETWORKED_OFF = {"replicate": OFF, "fal": OFF, "unsplash": OFF}


def fakes(**entries: dict[str, Any]) -> dict[str, Any]:
    """A config document racing only the given fake providers."""
    providers: dict[str, Any] = dict(NETWORKED_OFF)
    for prio, (name, options) in enumerate(entries.items(), start=1):
        providers[name] = {"type": "fake", "priority": prio, "timeout": 5000, "retries": 0, "options": options}
    return {"providers": providers}


def make_gen(
    settings_factory: Any, document: dict[str, Any] | None = None, *, db_url: str | None = None, **kwargs: Any
) -> ImageGen:
    env = {"IMAGEGEN_DATABASE_URL": db_url} if db_url else {}
    gen = ImageGen.from_settings(settings_factory(**env), **kwargs)
    if document is not None:
        gen.set_config(document, source="test")
    return gen


def local_file(gen: ImageGen, key: str) -> Path:
    assert isinstance(gen.store, LocalStore)
    return gen.settings.home / "images" / key


def stored_images(gen: ImageGen) -> list[Path]:
    return [p for p in (gen.settings.home / "images").rglob("*.webp")]


async def test_offline_provider_answers_on_a_machine_without_keys(settings_factory: Any) -> None:
    async with make_gen(settings_factory) as gen:
        result = await gen.generate(GenerateRequest(prompt="a lighthouse at dusk", width=1200, height=630))
        assert result.success and result.provider == "offline"
        assert result.url.startswith("file://") and result.key is not None
        image = Image.open(io.BytesIO(local_file(gen, result.key).read_bytes()))
        assert (image.format, image.size) == ("WEBP", (1200, 630))
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
        assert row["status"] == "success" and row["provider"] == "offline"
        assert [a["outcome"] for a in attempts_for(gen.log, result.request_id)] == ["success"]


async def test_offline_stays_out_when_a_networked_provider_has_a_key(settings_factory: Any) -> None:
    gen = ImageGen.from_settings(settings_factory(FAL_KEY="fal-test-key"))
    try:
        assert [e.name for e in gen.entrants()] == ["fal"]
    finally:
        await gen.aclose()


async def test_a_key_pasted_into_a_request_reaches_no_provider_and_no_log_row(settings_factory: Any) -> None:
    """Regression (new-user run): a configured secret typed into a prompt was stored verbatim in the log DB
    (and sent to the providers). It is redacted on admission, before anything sees it."""
    from imagegen_core.providers.fake import FakeProvider

    painter = FakeProvider(name="painter", options={"latencyMs": 1})
    gen = ImageGen.from_settings(
        settings_factory(FAL_KEY="fal-id-1234:fal-secret-5678"), providers={"painter": painter}
    )
    gen.set_config(fakes(painter={"latencyMs": 1}), source="test")
    async with gen:
        request = {"prompt": "a harbour fal-secret-5678", "keyword": "fal-id-1234:fal-secret-5678", "article_id": "a1"}
        result = await gen.generate(request)
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
    assert result.success and [job.prompt for job in painter.calls] == ["a harbour ***"]
    assert painter.calls[0].keyword == "***" and (row["prompt"], row["keyword"]) == ("a harbour ***", "***")


@pytest.mark.looptime
async def test_all_failing_answers_with_the_default_image_inside_the_deadline(settings_factory: Any) -> None:
    doc = fakes(a={"latencyMs": 50, "failureRate": 1.0}, b={"hang": True})
    doc["defaults"] = {"timeout": 3000}
    async with make_gen(settings_factory, doc) as gen:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        result = await gen.generate({"prompt": "x", "width": 300, "height": 200})
        assert loop.time() - t0 <= 3.0
        assert not result.success and result.provider == "default"
        assert "a: injected transient failure" in (result.error or "")
        assert result.key is None and result.url.endswith("defaults/default-300x200.webp")
        default_file = gen.settings.home / "images" / "ai" / "defaults" / "default-300x200.webp"
        assert Image.open(default_file).size == (300, 200)
        mtime = default_file.stat().st_mtime_ns
        await gen.generate({"prompt": "y", "width": 300, "height": 200})
        assert default_file.stat().st_mtime_ns == mtime  # stored once per size
        await gen.flush()
        assert [r["status"] for r in recent_requests(gen.log)] == ["failed", "failed"]


@pytest.mark.parametrize(
    ("request_doc", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "ok", "width": 5000}, "width"),
        ({"prompt": "ok", "height": 10}, "height"),
        ({"prompt": "ok", "style": "cubism-deluxe"}, "style"),
        ({"prompt": "ok", "width": "wide"}, "width"),
        ({"prompt": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_bad_input_names_the_field_stores_nothing_and_is_logged_as_rejected(
    settings_factory: Any, request_doc: dict[str, Any], field: str
) -> None:
    async with make_gen(settings_factory) as gen:
        with pytest.raises(InvalidRequestError) as info:
            await gen.generate(request_doc)
        assert info.value.field == field and str(info.value).startswith(f"{field}: ")
        await gen.flush()
        assert stored_images(gen) == []
        rows = recent_requests(gen.log)
        assert [r["status"] for r in rows] == ["rejected"] and field in rows[0]["error"]


async def test_a_refused_value_that_is_no_text_is_logged_as_json_wrote_it(settings_factory: Any) -> None:
    """QA: an ``articleId`` of ``true`` was logged as ``'True'`` (Python's word) in its rejected row."""
    async with make_gen(settings_factory) as gen:
        for article_id in (True, [None, False]):
            with pytest.raises(InvalidRequestError):
                await gen.generate({"prompt": "ok", "articleId": article_id})
        await gen.flush()
        assert [r["article_id"] for r in recent_requests(gen.log)] == ["[null, false]", "true"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"prompt": "ok", "width": "wide"}, "width"), ({"prompt": 7}, "prompt"), ({"width": 64}, "prompt")],
)
def test_a_request_built_in_code_with_a_bad_value_raises_invalid_request_naming_it(
    fields: dict[str, Any], field: str
) -> None:
    """As the README promises embedders: InvalidRequestError with ``.field``, not pydantic's own error."""
    with pytest.raises(InvalidRequestError) as info:
        GenerateRequest(**fields)
    assert info.value.field == field


async def test_a_config_change_by_another_instance_is_used_by_the_next_request(
    settings_factory: Any, db_url: str
) -> None:
    """On both log backends: the other instance shares the log DB (SQLite file or PostgreSQL database)."""
    async with make_gen(settings_factory, fakes(first={"latencyMs": 1}), db_url=db_url) as gen:
        assert (await gen.generate({"prompt": "p"})).provider == "first"
        other = make_gen(settings_factory, db_url=db_url)  # the same log DB
        other.set_config(fakes(second={"latencyMs": 1}), source="other process")
        other.close()
        assert (await gen.generate({"prompt": "p"})).provider == "second"


def test_concurrent_merges_from_two_instances_each_keep_their_change(settings_factory: Any, db_url: str) -> None:
    """QA run: 16 concurrent ``PATCH /admin/config`` over two processes all answered 200, and 12 of the 16
    new styles were gone: each merged into the same version and the later save undid the earlier. A merge is
    now stored only over the version it was merged into, and made again over a newer one."""
    import threading

    instances = [make_gen(settings_factory, db_url=db_url) for _ in range(2)]
    names = [f"qa{i}" for i in range(16)]
    barrier = threading.Barrier(len(names))
    failures: list[BaseException] = []

    def patch(name: str, gen: ImageGen) -> None:
        try:
            barrier.wait()
            gen.set_config({"styles": {name: f"{{prompt}} {name}"}}, merge=True, source=name)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=patch, args=(n, instances[i % 2])) for i, n in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert failures == []
        styles = instances[0].reload_config().styles
        assert set(names) <= set(styles)
        instances[1].reload_config()  # its version is the newest it has read: its own last save, or later
        assert instances[1].config_version == instances[0].config_version == len(names)  # one version per merge
    finally:
        for gen in instances:
            gen.close()


def test_a_merge_based_on_an_older_version_is_still_refused(settings_factory: Any) -> None:
    from imagegen_core import ConfigConflictError

    gen = make_gen(settings_factory)
    try:
        gen.set_config({"styles": {"a": "{prompt} a"}}, merge=True)
        gen.set_config({"styles": {"b": "{prompt} b"}}, merge=True)
        with pytest.raises(ConfigConflictError):  # the caller named its base: no quiet re-merge
            gen.set_config({"styles": {"c": "{prompt} c"}}, merge=True, based_on=1)
        assert "c" not in gen.reload_config().styles
    finally:
        gen.close()


async def test_two_instances_on_one_database_share_an_open_breaker(settings_factory: Any, db_url: str) -> None:
    doc = fakes(primary={"latencyMs": 1, "failureRate": 1.0, "failureClass": "billing"}, backup={"latencyMs": 1})
    async with make_gen(settings_factory, doc, db_url=db_url) as first:
        await first.generate({"prompt": "p"})
        await first.flush()
        assert first.breakers.state("primary").state == "open"
    async with make_gen(settings_factory, db_url=db_url) as second:
        result = await second.generate({"prompt": "p"})
        assert result.provider == "backup"
        assert next((a.provider, a.outcome) for a in result.attempts) == ("primary", "skipped")


async def test_a_probe_whose_process_died_holds_its_slot_for_three_of_its_providers_timeouts(
    settings_factory: Any, db_url: str
) -> None:
    """QA: a half-open probe whose process was killed kept every other process from probing for the fixed 120 s,
    though the provider's timeout was 10 s. Its lease is now derived from the config: 30 s."""
    now = [time.time()]
    doc = fakes(flaky={"latencyMs": 1}, backup={"latencyMs": 1})
    doc["providers"]["flaky"]["timeout"] = 10_000
    with make_gen(settings_factory, doc, db_url=db_url, breaker_clock=lambda: now[0]) as dying:
        dying.breakers.record(
            Permit("flaky", probe=False, token=now[0]), outcome="failure", failure_class=FailureClass.AUTH
        )
        now[0] += 3601  # the break is over: this process takes the probe, then is killed before it reports
        probe = dying.breakers.acquire("flaky")
        assert isinstance(probe, Permit) and probe.probe
    async with make_gen(settings_factory, db_url=db_url, breaker_clock=lambda: now[0]) as other:
        assert other.breakers.lease_s("flaky") == 30.0
        now[0] += 29
        assert (await other.generate({"prompt": "p"})).provider == "backup"  # the slot is still held
        now[0] += 2
        assert (await other.generate({"prompt": "p"})).provider == "flaky"  # its lease ran out: probed


async def test_secrets_never_reach_results_or_the_log(settings_factory: Any, db_url: str) -> None:
    from imagegen_core.errors import FailureClass, ProviderError
    from imagegen_core.providers.fake import FakeProvider

    secret = "sk-very-secret-token-123"

    class Leaky(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            raise ProviderError(f"leaky: bad key {secret}", failure_class=FailureClass.AUTH)

    settings = settings_factory(FAL_KEY=secret, IMAGEGEN_DATABASE_URL=db_url)
    gen = ImageGen.from_settings(settings, providers={"leaky": Leaky(name="leaky")})
    gen.set_config({"providers": {**NETWORKED_OFF, "leaky": {"type": "fake", "priority": 1}}})
    async with gen:
        result = await gen.generate({"prompt": "p"})
        await gen.flush()
        assert secret not in result.model_dump_json()
        dump = json.dumps(dump_rows(gen.log))  # every row of every table
        assert secret not in dump and "leaky: bad key ***" in dump


def test_generate_sync_works_in_a_script_and_inside_a_running_loop(settings_factory: Any) -> None:
    with make_gen(settings_factory, fakes(f={"latencyMs": 1})) as gen:
        assert gen.generate_sync({"prompt": "from a script"}).success

        async def notebook_cell() -> bool:  # Jupyter runs cells inside a running loop
            return gen.generate_sync({"prompt": "from a notebook"}).success

        assert asyncio.run(notebook_cell())


@pytest.mark.looptime
async def test_a_request_cancelled_midway_is_logged_as_cancelled(settings_factory: Any) -> None:
    doc = fakes(h={"hang": True})
    doc["providers"]["h"]["costPerImage"] = 0.02
    async with make_gen(settings_factory, doc) as gen:
        task = asyncio.create_task(gen.generate({"prompt": "p"}))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.flush()
        row = recent_requests(gen.log)[0]
        assert row["status"] == "cancelled"
        attempts = attempts_for(gen.log, row["id"])
        assert [a["outcome"] for a in attempts] == ["cancelled"]
        # the provider worked (and bills) for the cancelled attempt: the request's cost says so too
        assert attempts[0]["cost_usd"] == pytest.approx(0.02) and row["cost_usd"] == pytest.approx(0.02)


async def test_a_request_cancelled_while_admitted_is_logged_as_cancelled_under_its_id(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that cancels a generate while it reads the config (the HTTP API's, when its client closed with
    the request) left no row at all: the request, and the id the API had already answered with, were lost."""
    async with make_gen(settings_factory, fakes(a={})) as gen:
        reading, never = asyncio.Event(), asyncio.Event()

        async def slow_config_read(**kwargs: Any) -> Any:
            reading.set()
            await never.wait()

        monkeypatch.setattr(gen, "_fresh_config", slow_config_read)
        request_id = gen.new_request_id()
        task = asyncio.create_task(gen.generate({"prompt": "left at once", "width": 64}, request_id=request_id))
        await reading.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.flush()
        [row] = recent_requests(gen.log)
        assert (row["id"], row["status"], row["prompt"], row["width"]) == (request_id, "cancelled", "left at once", 64)
        assert row["error"] == "cancelled by its caller before its race began"
        assert attempts_for(gen.log, request_id) == []
        with pytest.raises(DuplicateRequestIdError):  # the id is the logged request's now
            await gen.generate({"prompt": "again"}, request_id=request_id)


async def test_a_raising_on_event_is_logged_and_the_request_goes_on(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: an exception in the caller's ``on_event`` came out of ``generate``: the request was logged as
    cancelled though nobody cancelled it, and its attempt stayed ``running`` for ever."""

    def broken_listener(event: Any) -> None:
        raise ZeroDivisionError("the caller's bug")

    async with make_gen(settings_factory, fakes(f={"latencyMs": 20})) as gen:
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            result = await gen.generate({"prompt": "p"}, on_event=broken_listener)
        assert result.success and result.provider == "f"
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
        assert row["status"] == "success"
        assert [a["outcome"] for a in attempts_for(gen.log, row["id"])] == ["success"]
    assert any("on_event callback raised" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_winner_is_stored_with_cache_control_and_metadata(settings_factory: Any) -> None:
    async with make_gen(settings_factory, fakes(f={"latencyMs": 1})) as gen:
        result = await gen.generate({"prompt": "p", "articleId": "story-42", "width": 640, "height": 480})
        assert result.key and result.key.startswith(f"ai/{time.strftime('%Y/%m')}/")
        assert isinstance(gen.store, LocalStore)
        meta = await gen.store.read_meta(result.key)
        assert meta["cache_control"] == "public, max-age=31536000, immutable"
        assert meta["metadata"]["article-id"] == "story-42" and len(meta["metadata"]["prompt-sha256"]) == 64


async def test_an_integer_article_id_is_kept_as_its_decimal_text(settings_factory: Any) -> None:
    """CMSes often send numeric ids as JSON numbers (as they send "800" for a width): 42 is "42" everywhere."""
    async with make_gen(settings_factory, fakes(f={"latencyMs": 1})) as gen:
        result = await gen.generate({"prompt": "p", "articleId": 42})
        assert result.success and result.key
        assert isinstance(gen.store, LocalStore)
        assert (await gen.store.read_meta(result.key))["metadata"]["article-id"] == "42"
        assert GenerateRequest.parse({"prompt": "p", "article_id": 1234567890123}).article_id == "1234567890123"
        await gen.flush()
        assert recent_requests(gen.log, limit=1)[0]["article_id"] == "42"


@pytest.mark.parametrize("article_id", [True, 4.2, 42.0, [42], {"id": 42}])
async def test_an_article_id_that_is_no_string_or_integer_is_refused(settings_factory: Any, article_id: Any) -> None:
    async with make_gen(settings_factory, fakes(f={"latencyMs": 1})) as gen:
        with pytest.raises(InvalidRequestError) as info:
            await gen.generate({"prompt": "p", "articleId": article_id})
    assert (info.value.field, info.value.reason) == ("articleId", "Input should be a string or an integer")


async def test_a_breaker_forced_open_by_another_instance_is_skipped_by_the_next_request(
    settings_factory: Any, db_url: str
) -> None:
    """On both log backends: SQLite's change stamp, PostgreSQL's read per request."""
    doc = fakes(primary={"latencyMs": 1}, backup={"latencyMs": 1})
    async with make_gen(settings_factory, doc, db_url=db_url) as gen:
        assert (await gen.generate({"prompt": "p"})).provider == "primary"
        other = make_gen(settings_factory, db_url=db_url)
        other.breakers.force_open("primary", "forced open by the console")
        other.close()
        result = await gen.generate({"prompt": "p"})
        assert result.provider == "backup"
        assert next((a.provider, a.outcome) for a in result.attempts) == ("primary", "skipped")


async def test_on_sqlite_requests_read_the_config_version_only_after_the_stamp_moved(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_gen(settings_factory, fakes(first={"latencyMs": 1})) as gen:
        reads: list[int | None] = []
        real = gen.log.latest_config_id

        def counted() -> int | None:
            reads.append(real())
            return reads[-1]

        monkeypatch.setattr(gen.log, "latest_config_id", counted)
        for _ in range(5):
            assert (await gen.generate({"prompt": "p"})).provider == "first"
        assert len(reads) <= 1  # at most the first request's (the stamp moved when the test saved the config)
        other = make_gen(settings_factory)
        other.set_config(fakes(second={"latencyMs": 1}), source="other process")
        other.close()
        reads.clear()
        assert (await gen.generate({"prompt": "p"})).provider == "second"
        assert (await gen.generate({"prompt": "p"})).provider == "second"
        assert len(reads) == 1


def test_a_process_starting_on_an_invalid_newest_config_uses_the_newest_valid_one(settings_factory: Any) -> None:
    """E.g. a newer imagegen stored a key this one refuses, in the log DB both share: the next valid version
    down is in force, not the built-in defaults; a process that already runs keeps what it has."""
    with make_gen(settings_factory, {"race": {"mode": "parallel"}}) as running:
        running.log.save_config({"race": {"mode": "warp-speed"}}, source="a newer imagegen")
        assert running.reload_config().race.mode == "parallel"
        with make_gen(settings_factory) as starting:
            assert starting.config.race.mode == "parallel"


def test_an_edit_based_on_a_version_never_stored_is_a_version_error_not_a_conflict(settings_factory: Any) -> None:
    """A conflict means "read again and re-apply"; for a version that was never stored that advice loops
    forever. Only HTTP told them apart (422 against 409); embedding code got ConfigConflictError for both."""
    from imagegen_core import ConfigConflictError, ConfigVersionError

    with make_gen(settings_factory) as gen:
        with pytest.raises(ConfigVersionError, match=r"^3 does not exist \(none is stored yet\)") as empty:
            gen.set_config({"defaults": {"timeout": 9000}}, source="test", based_on=3)
        assert not isinstance(empty.value, ConfigConflictError) and empty.value.field == "version"
        first = gen.set_config({"defaults": {"timeout": 9000}}, source="test", based_on=0)
        second = gen.set_config({"defaults": {"timeout": 8000}}, source="test", based_on=gen.config_version)
        for never in (999, -1):
            with pytest.raises(ConfigVersionError, match=rf"^{never} does not exist \(the latest is 2\)"):
                gen.set_config({"defaults": {"timeout": 7000}}, source="test", based_on=never)
        with pytest.raises(ConfigConflictError, match="changed since version 1, now version 2: "):
            gen.set_config({"defaults": {"timeout": 7000}}, source="test", based_on=1)
        assert (first.defaults.timeout, second.defaults.timeout, gen.config.defaults.timeout) == (9000, 8000, 8000)
        assert gen.config_version == 2, "nothing stored by the refused edits"


async def test_a_request_id_given_by_the_caller_names_the_row_and_a_malformed_one_is_refused(
    settings_factory: Any,
) -> None:
    async with make_gen(settings_factory) as gen:
        given = "0123456789abcdef0123456789abcdef"
        result = await gen.generate({"prompt": "p", "width": 64, "height": 64}, request_id=given)
        assert result.request_id == given
        for bad in ("short", given.upper(), given + "0", "../" + given[3:], 12):
            # QA: a bare ValueError, outside the tree every other bad request raises from
            with pytest.raises(InvalidRequestError, match=r"^requestId: must be 32 lower-case hex digits") as caught:
                await gen.generate({"prompt": "p"}, request_id=bad)  # type: ignore[arg-type]
            assert caught.value.field == "requestId"
        await gen.flush()
        assert [row["id"] for row in recent_requests(gen.log, limit=10)] == [given]


def test_generate_sync_takes_a_request_id_as_generate_does(settings_factory: Any) -> None:
    """QA: the README's "a malformed `request_id=` too" follows the sentence on generate_sync, which had no
    such argument (a TypeError)."""
    with ImageGen.from_settings(settings_factory()) as gen:
        given = "fedcba9876543210fedcba9876543210"
        assert gen.generate_sync({"prompt": "p", "width": 64, "height": 64}, request_id=given).request_id == given
        with pytest.raises(InvalidRequestError, match=r"^requestId: must be 32 lower-case hex digits"):
            gen.generate_sync({"prompt": "p"}, request_id="short")


async def test_a_request_id_already_used_is_refused_at_once_and_no_row_is_lost(
    settings_factory: Any, db_url: str
) -> None:
    """QA: a caller's id already used was taken: the second request's row was lost (the insert skipped the id)
    and its end overwrote the first's URL. Now it is refused before anything is logged or called, whether the
    first request is in flight, its row still queued, written, or a rejected one; on both log backends."""
    async with make_gen(settings_factory, fakes(a={"latencyMs": 300}), db_url=db_url) as gen:
        racing = asyncio.Event()
        in_flight = asyncio.ensure_future(
            gen.generate({"prompt": "slow", "width": 64, "height": 64}, request_id=ID1, on_event=lambda _: racing.set())
        )
        await racing.wait()  # admitted, its provider still working
        with pytest.raises(DuplicateRequestIdError, match="already used by another request"):
            await gen.generate({"prompt": "second", "width": 96, "height": 96}, request_id=ID1)
        first = await in_flight
        with pytest.raises(ValueError, match="already used"):  # a ValueError, as a malformed id is
            await gen.generate({"prompt": "third"}, request_id=first.request_id)
        minted = await gen.generate({"prompt": "made its own id", "width": 64, "height": 64})
        with pytest.raises(DuplicateRequestIdError):  # its row may still wait in the writer's queue
            await gen.generate({"prompt": "reuse"}, request_id=minted.request_id)
        with pytest.raises(InvalidRequestError):
            await gen.generate({"prompt": "p", "width": 1}, request_id=ID2)  # logged as rejected under ID2
        with pytest.raises(DuplicateRequestIdError):
            await gen.generate({"prompt": "p"}, request_id=ID2)
        await gen.flush()
        rows = {row["id"]: row for row in recent_requests(gen.log, limit=10)}
        assert len(rows) == 3
        assert (rows[ID1]["prompt"], rows[ID1]["status"], rows[ID1]["url"]) == ("slow", "success", first.url)
        assert rows[ID2]["status"] == "rejected" and rows[minted.request_id]["prompt"] == "made its own id"
        assert len(attempts_for(gen.log, ID1)) == 1
    async with make_gen(settings_factory, fakes(a={"latencyMs": 1}), db_url=db_url) as other:
        with pytest.raises(DuplicateRequestIdError):  # another ImageGen (process) on the same log: the log says
            await other.generate({"prompt": "p"}, request_id=ID1)
        fresh = other.new_request_id()
        assert (await other.generate({"prompt": "p", "width": 64, "height": 64}, request_id=fresh)).success


async def test_a_defect_that_ends_a_request_is_logged_as_failed_not_as_cancelled(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: an exception inside the race (an infinite Retry-After's conversion, since fixed) reached the caller,
    and the request was logged ``cancelled`` with "request cancelled before it finished", as if the caller had
    left. Now such a defect is ``failed`` and names the exception."""

    async def broken_answer(*args: Any, **kwargs: Any) -> Any:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(ImageGen, "_answer", broken_answer)
    async with make_gen(settings_factory, fakes(a={"latencyMs": 1})) as gen:
        with pytest.raises(OverflowError):
            await gen.generate({"prompt": "p", "width": 300, "height": 200})
        await gen.flush()
        row = recent_requests(gen.log, limit=1)[0]
    assert (row["status"], row["error"]) == (
        "failed",
        "internal error (OverflowError: cannot convert float infinity to integer)",
    )


async def test_a_breaker_that_opens_says_so_in_the_process_log(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a provider whose key was refused opened its breaker for an hour, and the server's log showed only
    "outcome: failed" per request: no reason, no breaker, nothing to fix. The opening is now a WARNING saying
    until when, why and how to reset it; the reset an INFO line."""
    doc = fakes(a={"failureRate": 1.0, "failureClass": "auth"}, b={"latencyMs": 1})
    async with make_gen(settings_factory, doc) as gen:
        with caplog.at_level(logging.INFO, logger="imagegen"):
            result = await gen.generate({"prompt": "p", "width": 300, "height": 200})
            gen.breakers.reset("a")
    assert result.success and result.provider == "b"
    opened = [r for r in caplog.records if r.levelno == logging.WARNING and "circuit breaker open" in r.getMessage()]
    assert len(opened) == 1
    message = opened[0].getMessage()
    assert message.startswith("a: circuit breaker open until ") and " UTC (auth failure: a: injected auth" in message
    assert message.endswith(
        "; once the cause is fixed, reset it (imagegen breakers reset a, or the console's Admin page)"
    )
    assert any(r.getMessage() == "circuit breaker a: open -> closed (reset by admin)" for r in caplog.records)


async def test_inline_bytes_of_any_provider_are_held_to_max_download_bytes(settings_factory: Any) -> None:
    """Regression (QA): the race's fetch step returned a provider's inline bytes (OpenAI ``b64_json``, a plugin's
    ``data``) without applying ``limits.maxDownloadBytes``. A provider that does not check them itself (this
    one) now fails the attempt as a too-large download does: transient, the same message."""
    import random

    from imagegen_core.providers.base import ProviderOutput
    from imagegen_core.providers.fake import FakeProvider

    buf = io.BytesIO()
    Image.frombytes("RGB", (48, 48), random.Random(3).randbytes(48 * 48 * 3)).save(buf, format="PNG")
    big = buf.getvalue()

    class Inline(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            return ProviderOutput(data=big, content_type="image/png")

    gen = ImageGen.from_settings(settings_factory(), providers={"inline": Inline(name="inline")})
    document = {"providers": {**NETWORKED_OFF, "inline": {"type": "fake", "priority": 1, "retries": 0}}}
    gen.set_config({**document, "limits": {"maxDownloadBytes": len(big) - 1}})
    async with gen:
        refused = await gen.generate({"prompt": "p", "width": 64, "height": 64})
        gen.set_config({"limits": {"maxDownloadBytes": len(big)}}, merge=True)
        taken = await gen.generate({"prompt": "p", "width": 64, "height": 64})
    assert not refused.success
    [attempt] = [a for a in refused.attempts if a.provider == "inline"]
    assert (attempt.outcome, attempt.failure_class) == ("failed", "invalid_request")
    assert attempt.error == f"inline: image larger than {len(big) - 1} bytes, over limits.maxDownloadBytes"
    assert taken.success and taken.provider == "inline", taken.error


async def test_sizes_stop_at_what_webp_can_hold_before_any_provider_is_paid(settings_factory: Any) -> None:
    """Regression (QA): ``limits.maxSize`` accepted 16384 but WebP holds at most 16383 per side
    (``images.WEBP_MAX_SIDE``): a request 16384 wide paid a provider, then failed as ``transient`` against it
    and answered a default-image URL that 404s. Now the config refuses such a limit, and a request past the
    highest limit there can be is a 4xx before any provider runs."""
    from imagegen_core.errors import ConfigError
    from imagegen_core.images import WEBP_MAX_SIDE
    from imagegen_core.providers.fake import FakeProvider

    fake = FakeProvider(name="f")
    gen = make_gen(settings_factory, fakes(f={}), providers={"f": fake})
    with pytest.raises(ConfigError) as refused:
        gen.set_config({"limits": {"maxSize": WEBP_MAX_SIDE + 1}}, merge=True)
    assert refused.value.field == "limits.maxSize" and f"less than or equal to {WEBP_MAX_SIDE}" in str(refused.value)
    gen.set_config({"limits": {"maxSize": WEBP_MAX_SIDE}}, merge=True)
    async with gen:
        for field in ("width", "height"):
            with pytest.raises(InvalidRequestError) as info:
                await gen.generate({"prompt": "p", field: WEBP_MAX_SIDE + 1})
            assert info.value.field == field
            assert f"between 64 and {WEBP_MAX_SIDE} pixels" in str(info.value)
    assert fake.calls == []


async def test_a_size_of_more_pixels_than_any_image_may_have_is_refused_before_any_provider_is_paid(
    settings_factory: Any,
) -> None:
    """QA (embedding): with ``limits.maxSize`` raised to 16383, a request of 12000x12000 was raced, though no image of
    more than 50 million pixels is ever decoded (the offline provider's own drawing was refused as "a decompression
    bomb?"), and its default image took 45 s and 6 GB at 16383x16383. It is a 4xx naming the size now."""
    from imagegen_core.images import DEFAULT_MAX_PIXELS, WEBP_MAX_SIDE
    from imagegen_core.providers.fake import FakeProvider

    fake = FakeProvider(name="f")
    gen = make_gen(settings_factory, fakes(f={}), providers={"f": fake})
    gen.set_config({"limits": {"maxSize": WEBP_MAX_SIDE}}, merge=True)
    async with gen:
        for width, height, field in ((12000, 12000, "width"), (4000, 12501, "height")):
            with pytest.raises(InvalidRequestError, match=r"pixels; at most 50,000,000 are made") as info:
                await gen.generate({"prompt": "p", "width": width, "height": height})
            assert info.value.field == field and f"{width}x{height} is {width * height:,} pixels" in str(info.value)
        assert (await gen.generate({"prompt": "p", "width": WEBP_MAX_SIDE, "height": 64})).success  # a banner
    assert len(fake.calls) == 1 and WEBP_MAX_SIDE**2 > DEFAULT_MAX_PIXELS


def test_the_config_in_force_is_kept_when_the_log_file_is_deleted_under_the_process(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """QA chaos: the log moved away under a running server, which made a new, empty one, turned its stored config
    back to the built-in defaults at the next reload: providers it had switched off raced again, and the deadline
    went from 2 s to 30 s. The config in force stays, with one warning, and an edit merges over it."""
    import imagegen_core.log.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    gen = make_gen(settings_factory, {**fakes(painter={"latencyMs": 1}), "defaults": {"timeout": 2000}})
    try:
        in_force = gen.config_in_force_version
        assert in_force is not None and gen.log.path is not None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{gen.log.path}{suffix}").unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            config = gen.reload_config()
            gen.reload_config()
        assert config.defaults.timeout == 2000 and "painter" in config.providers
        assert not config.providers["replicate"].enabled
        assert gen.config_in_force_version == in_force and gen.config_version is None
        (warning,) = [r.getMessage() for r in caplog.records if "no config version" in r.getMessage()]
        assert f"keeping version {in_force} in force, not the defaults" in warning
        edited = gen.set_config({"defaults": {"timeout": 3000}}, merge=True)
        assert edited.defaults.timeout == 3000 and "painter" in edited.providers
        assert gen.log.latest_config_id() == gen.config_in_force_version == 1
    finally:
        gen.close()


async def test_a_request_under_way_when_the_log_file_is_deleted_lands_whole_in_the_new_file(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: the log file deleted under a running server while a request was under way (its row, a failed attempt
    and a running one already written to the old file), that request's later rows were lost: a new attempt failed
    with "FOREIGN KEY constraint failed", an error line, and the ends of the attempt and of the request updated
    no row. Now its rows are written again to the new file before its next one: the request is there whole (its
    three attempts, its end), with no error."""
    import imagegen_core.log.sqlite as sqlite_backend
    from imagegen_core.providers.fake import FakeProvider

    monkeypatch.setattr(sqlite_backend, "FILE_CHECK_EVERY_S", 0.0)
    started, release = asyncio.Event(), asyncio.Event()

    class Held(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            started.set()
            await release.wait()
            return await super().generate(job, ctx)

    failing = {"failureRate": 1.0, "failureClass": "transient"}
    document = {**fakes(failing=failing, held=failing, painter={}), "race": {"mode": "sequential"}}
    held = Held(name="held", options=failing)
    gen = make_gen(settings_factory, document, providers={"held": held})
    async with gen:
        task = asyncio.ensure_future(gen.generate({"prompt": "under way", "width": 64, "height": 64}))
        await asyncio.wait_for(started.wait(), 30)
        await gen.flush()  # its row, its first (failed) attempt and the running one are in the file deleted now
        [written] = recent_requests(gen.log, limit=10)
        task_id = written["id"]
        assert gen.log.path is not None and len(attempts_for(gen.log, task_id)) == 2
        for suffix in ("", "-wal", "-shm"):
            Path(f"{gen.log.path}{suffix}").unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING, logger="imagegen"):
            release.set()
            result = await asyncio.wait_for(task, 30)
            await gen.flush()
        assert result.success and result.provider == "painter" and result.request_id == task_id
        [row] = recent_requests(gen.log, limit=10)
        assert (row["id"], row["status"], row["prompt"], row["url"]) == (task_id, "success", "under way", result.url)
        attempts = sorted((a["provider"], a["outcome"]) for a in attempts_for(gen.log, task_id))
        assert attempts == [("failing", "failed"), ("held", "failed"), ("painter", "success")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "FOREIGN KEY" not in caplog.text

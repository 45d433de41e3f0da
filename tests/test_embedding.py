"""imagegen_core as a developer embeds it: its types reach their type checker, wrong arguments get the
documented errors (and a log row), and a closed ImageGen says so instead of failing somewhere inside."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from imagegen_core import (
    AttemptEvent,
    AttemptOutcome,
    ConfigError,
    ImageGen,
    ImageGenError,
    InvalidRequestError,
    service,
)
from imagegen_core.log import LogDB, attempts_for, recent_requests
from imagegen_core.providers.base import ProviderOutput
from imagegen_core.providers.fake import FakeProvider
from imagegen_core.storage.local import LocalStore
from tests.children import child_exit_code, generate_in_child
from tests.faults.harness import NETWORKED_OFF, db_file, png_bytes, read_db
from tests.realserver import ScriptedServer, hang, send_bytes, send_json

EMBEDDING_PROGRAM = """\
from imagegen_core import GenerateRequest, ImageGen


def url_of(gen: ImageGen) -> str:
    return gen.generate_sync(GenerateRequest(prompt="a lighthouse", width=320, height=200)).url


def wrong(gen: ImageGen) -> int:
    return gen.generate_sync({"prompt": "x"}).url


def typo(gen: ImageGen) -> None:
    gen.generate_sync(GenerateRequest(prompt=42, widht=800), timeout=5)


def compared(gen: ImageGen) -> None:
    gen.compare_sync({"prompt": "x"}, on_updat=print)


def opened() -> ImageGen:
    return ImageGen.from_settings(sorce="cms")
"""


def test_the_package_ships_its_types_to_the_developer_s_type_checker(tmp_path: Path) -> None:
    """``mypy --strict`` on a program outside the project sees imagegen_core's hints (py.typed): it finds
    the deliberate mistakes (a request's field names and types included), and nothing about missing stubs."""
    (tmp_path / "program.py").write_text(EMBEDDING_PROGRAM)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "program.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert errors == [
        'program.py:9: error: Incompatible return value type (got "str", expected "int")  [return-value]',
        'program.py:13: error: Unexpected keyword argument "timeout" for "generate_sync" of "ImageGen"  [call-arg]',
        'program.py:13: error: Unexpected keyword argument "widht" for "GenerateRequest"; did you mean "width"?'
        "  [call-arg]",
        'program.py:13: error: Argument "prompt" to "GenerateRequest" has incompatible type "int"; expected "str"'
        "  [arg-type]",
        # compare took **kwargs: a typo passed the type checker (QA)
        'program.py:17: error: Unexpected keyword argument "on_updat" for "compare_sync" of "ImageGen"; did you mean'
        ' "on_update"?  [call-arg]',
        # from_settings took **kwargs and passed them on: a typo passed the type checker (QA)
        'program.py:21: error: Unexpected keyword argument "sorce" for "from_settings" of "ImageGen"; did you mean'
        ' "source"?  [call-arg]',
    ], proc.stdout


def test_the_package_docstring_s_example_runs_and_leaves_nothing_open(tmp_path: Path) -> None:
    """The example a developer first reads (``help(imagegen_core)``) runs as written, offline, and under
    ``-X dev`` warns of nothing: it did not close its ImageGen (QA: ``ResourceWarning: unclosed ImageGen``)."""
    import imagegen_core

    doc = imagegen_core.__doc__ or ""
    example = "\n".join(line[4:] for line in doc.splitlines() if line.startswith("    "))
    assert "ImageGen.from_settings" in example, doc
    keys = ("REPLICATE_API_TOKEN", "FAL_KEY", "UNSPLASH_ACCESS_KEY", "OPENAI_API_KEY")  # no key: offline only
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEGEN_", "R2_")) and k not in keys}
    env["IMAGEGEN_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", example + "\nprint(result.success)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True", proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("body", [[1, 2], "a lighthouse", None, 5])
def test_a_request_that_is_not_an_object_is_refused_and_logged(settings_factory: Any, body: Any) -> None:
    with (
        ImageGen.from_settings(settings_factory()) as gen,
        pytest.raises(InvalidRequestError, match=r"^body: Input should be a valid dictionary"),
    ):
        gen.generate_sync(body)
    with ImageGen.from_settings(settings_factory()) as gen:
        rows = recent_requests(gen.log)
    assert [(r["status"], r["error"].split(":")[0]) for r in rows] == [("rejected", "body")]


def _nested(levels: int, inner: Any = "x") -> Any:
    for _ in range(levels):
        inner = [inner]
    return inner


def test_a_field_nested_thousands_deep_is_refused_and_logged_in_short(settings_factory: Any) -> None:
    # str() of such a value runs out of stack: the refusal used to end in a RecursionError, with no row.
    refused = [{"prompt": "x", "keyword": _nested(3000)}, {"prompt": list(range(100_000))}]
    with ImageGen.from_settings(settings_factory()) as gen:
        for body in refused:
            with pytest.raises(InvalidRequestError, match=r"Input should be a valid string"):
                gen.generate_sync(body)
    with ImageGen.from_settings(settings_factory()) as gen:
        rows = recent_requests(gen.log)
    assert sorted((r["status"], r["prompt"], r["keyword"]) for r in rows) == [
        ("rejected", "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...]", None),
        ("rejected", "x", "[[[[[...]]]]]"),
    ]


def test_a_config_nested_thousands_deep_is_a_config_error(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(ConfigError, match=r"^config document is nested too deeply \(over 64 levels\)$"):
            gen.set_config({"providers": {"fal": {"options": {"a": _nested(3000)}}}})
        assert gen.config_version is None  # nothing stored


def test_a_closed_imagegen_says_so_and_starts_nothing_again(settings_factory: Any) -> None:
    gen = ImageGen.from_settings(settings_factory())
    assert gen.generate_sync({"prompt": "before", "width": 320, "height": 200}).success
    gen.close()
    gen.close()  # twice is fine
    threads = {t.name for t in threading.enumerate()}
    for use in (
        lambda: gen.generate_sync({"prompt": "after"}),
        lambda: gen.compare_sync({"prompt": "after"}),
        lambda: gen.set_config({"defaults": {"width": 640}}),
    ):
        with pytest.raises(ImageGenError, match="this ImageGen is closed: make a new one"):
            use()
    assert {t.name for t in threading.enumerate()} == threads  # no portal thread started again
    with ImageGen.from_settings(settings_factory()) as fresh:
        assert len(fresh.log.config_history()) == 0  # set_config after close stored nothing


def _files_open_under(folder: Path) -> list[str]:
    """The files this process holds open under ``folder`` (Linux's /proc)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(name for name in names if name.startswith(str(folder)))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files through /proc")
def test_every_public_method_of_a_closed_imagegen_says_so_and_reopens_nothing(settings_factory: Any) -> None:
    """QA: after ``close()``, ``log_call``, ``log_call_sync`` and ``flush`` raised a bare RuntimeError, while
    ``reload_config``, ``provider_status``, ``latest_config`` and ``warm_up`` answered and reopened the log
    database (five files held until garbage collection), and ``with gen:`` took the closed instance. Each now
    raises the ImageGenError that ``generate`` does, and opens nothing."""
    settings = settings_factory()
    gen = ImageGen.from_settings(settings)
    assert gen.generate_sync({"prompt": "before", "width": 64, "height": 64}).success
    gen.close()
    held = _files_open_under(settings.home)

    async def entered_async() -> None:
        async with gen:
            pass

    def entered() -> None:
        with gen:
            pass

    uses: dict[str, Callable[[], object]] = {
        "reload_config": gen.reload_config,
        "latest_config": gen.latest_config,
        "chaos_active": gen.chaos_active,
        "entrants": gen.entrants,
        "provider_status": gen.provider_status,
        "log_call_sync": lambda: gen.log_call_sync(lambda: 1),
        "reject_unreadable": lambda: gen.reject_unreadable("not JSON"),
        "warm_up_sync": gen.warm_up_sync,
        "with": entered,
        "warm_up": lambda: asyncio.run(gen.warm_up()),
        "current_config": lambda: asyncio.run(gen.current_config()),
        "log_call": lambda: asyncio.run(gen.log_call(lambda: 1)),
        "flush": lambda: asyncio.run(gen.flush()),
        "resume_spool_retry": lambda: asyncio.run(gen.resume_spool_retry()),
        "async with": lambda: asyncio.run(entered_async()),
    }
    raised = {}
    for name, use in uses.items():
        try:
            use()
        except Exception as exc:
            raised[name] = f"{type(exc).__name__}: {exc}"
    closed = "ImageGenError: this ImageGen is closed: make a new one with ImageGen.from_settings()"
    assert raised == {name: closed for name in uses}
    assert _files_open_under(settings.home) == held


async def test_aclose_twice_and_generate_after_aclose(settings_factory: Any) -> None:
    async with ImageGen.from_settings(settings_factory()) as gen:
        await gen.generate({"prompt": "p", "width": 320, "height": 200})
    await gen.aclose()  # after the `async with` closed it already
    with pytest.raises(ImageGenError, match="closed"):
        await gen.generate({"prompt": "p"})


def test_set_config_none_is_refused_instead_of_resetting_everything(settings_factory: Any) -> None:
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config({"defaults": {"width": 640}}, source="test")
        with pytest.raises(ConfigError, match="config document must be a JSON object") as refused:
            gen.set_config(None)  # type: ignore[arg-type]
        assert refused.value.field == "(root)"  # QA: None, where the README promises every such error names one
        assert gen.reload_config().defaults.width == 640 and len(gen.log.config_history()) == 1


@pytest.mark.parametrize("name", ["", "a/b", "fal-flux", "with space", "x" * 65])
def test_an_entry_name_that_cannot_name_its_base_url_variable_is_refused(settings_factory: Any, name: str) -> None:
    """QA: entries named ``""`` and ``"a/b"`` were stored; the answers then named provider ``""``, and no
    ``IMAGEGEN_<NAME>_BASE_URL`` can point such an entry elsewhere."""
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(ConfigError, match="an entry name is 1 to 64 letters, digits or _") as caught:
            gen.set_config({"providers": {name: {"type": "fake"}}}, source="test")
        assert caught.value.field == f"providers.{name}"
        assert gen.log.config_history() == []
        gen.set_config({"providers": {"Fal_2": {"type": "fake"}}}, source="test")  # what the rule allows


def test_a_merge_that_changes_nothing_leaves_the_versions_in_force_as_they_are(
    settings_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (embedding): ``set_config({}, merge=True)`` on a log with no version stored called the defaults "version
    0", in force, and the next request warned that the log database had been deleted or replaced; over an invalid
    newest version (ignored) it called that version the one in force."""
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config({}, merge=True)
        assert (gen.config_version, gen.config_in_force_version) == (None, None)
        assert gen.generate_sync({"prompt": "x", "width": 64, "height": 64}).success
        assert "deleted or replaced" not in caplog.text
        gen.set_config({"defaults": {"width": 640}}, merge=True)
        with gen.log.transaction() as tx:  # a row written by hand: version 2, ignored
            tx.execute(
                "INSERT INTO config_versions (created_at, source, document) VALUES (?, ?, ?)", (1.0, "x", "not json")
            )
        assert gen.set_config({}, merge=True).defaults.width == 640
        assert (gen.config_version, gen.config_in_force_version) == (2, 1)
        assert [(info.version, info.in_force) for info in gen.config_history()] == [(2, False), (1, True)]


@pytest.mark.parametrize("source", ["", "\ud800", "\x1b[2Jforged\nline", "x" * 65, ["cms"], None])
def test_a_config_source_that_cannot_name_a_version_is_a_config_error(settings_factory: Any, source: Any) -> None:
    """QA (embedding): ``set_config(source=...)`` took anything: a lone surrogate raised UnicodeEncodeError, a list
    blamed the log database ("write failed"), and ESC sequences and a line break were stored and printed as they
    were by ``imagegen config history``. A source is checked as a request's is; nothing is stored."""
    with ImageGen.from_settings(settings_factory()) as gen:
        gen.set_config({"defaults": {"width": 640}}, source="test")
        for refused in (
            lambda: gen.set_config({"defaults": {"width": 320}}, source=source),
            lambda: gen.rollback_config(1, source=source),
        ):
            with pytest.raises(ConfigError, match=r"^source: must be 1 to 64 printable characters") as caught:
                refused()
            assert caught.value.field == "source"
        assert [row[2] for row in gen.log.config_history()] == ["test"]
        gen.set_config({"defaults": {"width": 320}}, source="x" * 64)  # the longest a source may be
        assert gen.rollback_config(1, source="x" * 64).defaults.width == 640
        assert gen.log.config_history()[0][2] == "x" * 64 + " (rollback to 1)"


def test_a_based_on_that_is_not_a_version_number_is_a_config_error(settings_factory: Any) -> None:
    """QA: ``based_on="1"`` raised a raw TypeError from deep in the version check."""
    with ImageGen.from_settings(settings_factory()) as gen:
        for bad in ("1", 1.0, True):
            with pytest.raises(ConfigError, match="based_on must be a version number") as refused:
                gen.set_config({"defaults": {"width": 640}}, based_on=bad)  # type: ignore[arg-type]
            assert refused.value.field == "based_on"  # QA: None, where the README promises a field
        assert gen.log.config_history() == []


def test_from_settings_names_what_it_takes() -> None:
    with pytest.raises(TypeError, match=r"from_settings\(\) takes a Settings, not dict"):
        ImageGen.from_settings({"IMAGEGEN_HOME": "/tmp/x"})  # type: ignore[arg-type]


def test_the_constructor_names_the_argument_it_cannot_take(settings_factory: Any, tmp_path: Path) -> None:
    """QA (embedding): ``ImageGen(log="path.db", ...)`` raised AttributeError "'str' object has no attribute 'label'",
    and ``breaker_clock=5`` was taken, then failed every request (a TypeError, logged as an internal error)."""
    settings = settings_factory()
    store = LocalStore(tmp_path / "images")
    with pytest.raises(TypeError, match=r"^ImageGen\(\): log= takes a LogDB \(LogDB\(path\) or LogDB\.from_url"):
        ImageGen(settings=settings, log=str(tmp_path / "x.db"), store=store)  # type: ignore[arg-type]
    with LogDB(tmp_path / "x.db") as log:
        with pytest.raises(TypeError, match="settings= takes a Settings, not dict; breaker_clock= takes a function"):
            ImageGen(settings={}, log=log, store=store, breaker_clock=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"http_client= takes an httpx\.AsyncClient or None, not str"):
            ImageGen(settings=settings, log=log, store=store, http_client="x")  # type: ignore[arg-type]
        with ImageGen(settings=settings, log=log, store=store) as gen:  # what it takes
            assert gen.generate_sync({"prompt": "x", "width": 64, "height": 64}).success


# -- connections and clean-up across event loops, against a real fal-shaped server on 127.0.0.1 ----------

FAL_APP = "/fal-ai/flux/schnell"
FAL_REQUEST = "/fal-ai/flux/requests/r-1"


class FakeFal:
    """fal's queue API on a ScriptedServer: submit answers with status/cancel URLs on this server, the status
    poll hangs when ``hang`` is set (else COMPLETED), the result points at a PNG here; cancels are counted."""

    def __init__(self, *, hang: bool) -> None:
        self.hang_polls = hang
        self.cancels = 0
        self.polls = 0
        self.server = ScriptedServer(self.handle)

    async def handle(self, method: str, path: str, writer: asyncio.StreamWriter) -> None:
        base = self.server.base_url
        if method == "POST" and path == FAL_APP:
            await send_json(
                writer,
                200,
                {
                    "request_id": "r-1",
                    "status_url": f"{base}{FAL_REQUEST}/status",
                    "response_url": f"{base}{FAL_REQUEST}",
                    "cancel_url": f"{base}{FAL_REQUEST}/cancel",
                },
            )
        elif path == f"{FAL_REQUEST}/status":
            self.polls += 1
            if self.hang_polls:
                await hang(writer)
            await send_json(writer, 200, {"status": "COMPLETED"})
        elif method == "PUT" and path == f"{FAL_REQUEST}/cancel":
            self.cancels += 1
            await send_json(writer, 200, {"status": "CANCELLATION_REQUESTED"})
        elif path == FAL_REQUEST:
            await send_json(writer, 200, {"images": [{"url": f"{base}/img.png", "content_type": "image/png"}]})
        else:
            await send_bytes(writer, 200, PNG, content_type="image/png")


PNG = png_bytes()
FAL_ONLY = {
    "providers": {
        "replicate": {"enabled": False},
        "unsplash": {"enabled": False},
        "fal": {"enabled": True, "retries": 0, "options": {"mode": "queue", "poll_interval_s": 0.05}},
    }
}


def fal_settings(settings_factory: Any, fal: FakeFal) -> Any:
    return settings_factory(FAL_KEY="fal-test-key", provider_base_urls={"fal": fal.server.base_url})


def test_every_event_loop_s_http_client_is_closed_with_it(settings_factory: Any) -> None:
    """A script calling ``asyncio.run(gen.generate(...))`` twice, then ``close()``: each run's loop had its
    own client, and none is left open (no ``Unclosed client session``)."""
    fal = FakeFal(hang=False)
    gc.collect()  # earlier tests' garbage (their event loops) must not be counted here
    with fal.server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = ImageGen.from_settings(fal_settings(settings_factory, fal))
        gen.set_config(FAL_ONLY, source="test")
        for _ in range(2):
            result = asyncio.run(gen.generate({"prompt": "p", "width": 64, "height": 64}))
            assert result.success and result.provider == "fal", result.error
        gen.close()
        del gen
        gc.collect()  # an unclosed aiohttp session says so when it is collected
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_an_embedding_program_on_uvloop_races_real_http_and_closes_cleanly(settings_factory: Any) -> None:
    """The README suggests ``uvloop.run(main())`` to embedding code (``imagegen serve`` runs on uvloop): the
    whole path works there, a provider over real HTTP, the image stored and logged, and no client left open."""
    import uvloop

    fal = FakeFal(hang=False)
    gc.collect()

    async def main() -> tuple[Any, str]:
        async with ImageGen.from_settings(fal_settings(settings_factory, fal)) as gen:
            gen.set_config(FAL_ONLY, source="test")
            result = await gen.generate({"prompt": "p", "width": 64, "height": 64})
            await gen.flush()
            return result, type(asyncio.get_running_loop()).__module__

    with fal.server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, loop_module = uvloop.run(main())
        gc.collect()
    assert loop_module.startswith("uvloop")
    assert result.success and result.provider == "fal", result.error
    with ImageGen.from_settings(fal_settings(settings_factory, fal)) as gen:
        assert [row["status"] for row in recent_requests(gen.log, limit=5)] == ["success"]
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_closing_right_after_cancelling_a_request_still_cancels_the_provider_s_job(
    settings_factory: Any,
) -> None:
    """A server shutting down cancels its requests and closes at once (uvicorn does): the cancelled request's
    fal job is still cancelled on fal's side before the connections go."""
    fal = FakeFal(hang=True)
    with fal.server:
        gen = ImageGen.from_settings(fal_settings(settings_factory, fal))
        gen.set_config(FAL_ONLY, source="test")
        tasks = [asyncio.create_task(gen.generate({"prompt": "p", "width": 64, "height": 64})) for _ in range(20)]
        while fal.polls < len(tasks):
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await gen.aclose()  # no await of the tasks first
        assert all(task.cancelled() for task in tasks)
        assert fal.cancels == len(tasks)


def test_close_right_after_generate_sync_lets_background_work_use_the_client_first(settings_factory: Any) -> None:
    """The winner's clean-up (Unsplash's download ping) still runs when it needs a moment to connect: the
    sync side's client closes after its background work, not before."""

    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> None:
        await send_json(writer, 200, {"ok": True})

    with ScriptedServer(answer) as server:

        class Pinging(FakeProvider):
            async def confirm_use(self, output: Any, ctx: Any) -> None:
                await asyncio.sleep(0.05)  # connecting
                await ctx.client.get(server.base_url + "/ping")

        gen = ImageGen.from_settings(settings_factory(), providers={"pinging": Pinging(name="pinging")})
        gen.set_config({"providers": {**NETWORKED_OFF, "pinging": {"type": "fake", "priority": 1}}}, source="test")
        assert gen.generate_sync({"prompt": "p", "width": 64, "height": 64}).provider == "pinging"
        gen.close()
        assert ("GET", "/ping") in server.requests


async def test_a_winner_that_confirms_nothing_spawns_no_background_task(settings_factory: Any) -> None:
    """ProviderBase's confirm_use does nothing: running it cost a task per answer (issue 7's loop time). A
    provider that overrides it gets its call (the test above), one that does not gets none."""

    class Confirming(FakeProvider):
        async def confirm_use(self, output: Any, ctx: Any) -> None:
            confirmed.append(output)

    confirmed: list[Any] = []
    spawned: list[str] = []
    gen = ImageGen.from_settings(
        settings_factory(), providers={"plain": FakeProvider(name="plain"), "confirming": Confirming(name="confirming")}
    )
    real_spawn = gen._spawn
    gen._spawn = lambda coro: (spawned.append(coro.__qualname__), real_spawn(coro))[1]  # type: ignore[method-assign]
    async with gen:
        for first in ("plain", "confirming"):
            other = "confirming" if first == "plain" else "plain"
            gen.set_config(
                {
                    "providers": {
                        **NETWORKED_OFF,
                        first: {"type": "fake", "priority": 1},
                        other: {"type": "fake", "priority": 2},
                    }
                },
                source="test",
            )
            result = await gen.generate({"prompt": "p", "width": 64, "height": 64})
            assert result.success and result.provider == first
        await asyncio.sleep(0)
    assert [name.rsplit(".", 2)[-2:] for name in spawned] == [["Confirming", "confirm_use"]]
    assert len(confirmed) == 1


async def test_aclose_waits_for_the_generate_call_not_for_the_task_that_made_it(settings_factory: Any) -> None:
    gen = ImageGen.from_settings(settings_factory())
    gen.set_config(
        {"providers": {**NETWORKED_OFF, "slow": {"type": "fake", "priority": 1, "options": {"latencyMs": 300}}}},
        source="test",
    )
    answered = asyncio.Event()

    async def worker() -> None:
        await gen.generate({"prompt": "p", "width": 64, "height": 64})
        answered.set()
        await asyncio.sleep(60)  # waiting for its next job

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.1)  # the generate call is under way
    started = time.monotonic()
    await gen.aclose()
    took = time.monotonic() - started
    assert answered.is_set() and took < 3, took  # the call's 0.3 s, not the 10 s close timeout
    with pytest.raises(ImageGenError, match="closed"):
        await gen.generate({"prompt": "after"})  # refused from the moment closing began
    task.cancel()


def test_an_event_loop_that_used_an_imagegen_is_freed_once_it_ends(settings_factory: Any) -> None:
    """QA: a worker calling ``asyncio.run(gen.generate(...))`` per job grew by ~0.8 MB a job (559 MB after 600):
    the ImageGen kept each finished loop with its closed HTTP client. Now a loop ended by ``asyncio.run`` is
    let go at once, and one closed with ``loop.close()`` alone when the next loop makes its client."""
    ended: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one_job(gen: ImageGen) -> bool:
        ended.append(weakref.ref(asyncio.get_running_loop()))
        return (await gen.generate({"prompt": "p", "width": 64, "height": 64})).success

    with ImageGen.from_settings(settings_factory()) as gen, warnings.catch_warnings():
        # The loop closed without finalising its async generators never closed its client: aiohttp says so.
        warnings.simplefilter("ignore", ResourceWarning)
        manual = asyncio.new_event_loop()
        assert manual.run_until_complete(one_job(gen))
        manual.close()
        del manual
        for _ in range(3):
            assert asyncio.run(one_job(gen))
        gc.collect()
        assert [ref() is None for ref in ended] == [True] * 4


def test_a_provider_and_a_store_of_one_s_own_need_only_public_names(settings_factory: Any, tmp_path: Path) -> None:
    """QA: implementing ``Provider`` or ``Store`` needed ProviderJob, ProviderOutput, StoredObject and the like
    from internal modules. Every name these protocols use is importable from ``imagegen_core`` itself."""
    from imagegen_core import ProviderBase, ProviderContext, ProviderJob, ProviderOutput, StoredObject
    from imagegen_core.images import draw_prompt_image

    class Painter(ProviderBase):
        kind = "painter"
        requires_key = False

        async def generate(self, job: ProviderJob, ctx: ProviderContext) -> ProviderOutput:
            return ProviderOutput(data=draw_prompt_image(job.prompt, job.width, job.height), model="brush-1")

    class Shelf:
        """A Store keeping objects in a dict."""

        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}

        def url_for(self, key: str) -> str:
            return f"https://shelf.example/{key}"

        async def put(self, key: str, data: bytes, *, content_type: str, **kwargs: Any) -> StoredObject:
            self.objects[key] = data
            return StoredObject(key=key, url=self.url_for(key), size=len(data), content_type=content_type)

        async def exists(self, key: str) -> bool:
            return key in self.objects

    shelf = Shelf()
    with ImageGen.from_settings(settings_factory(), providers={"painter": Painter(name="painter")}, store=shelf) as gen:  # type: ignore[arg-type]
        gen.set_config({"providers": {**NETWORKED_OFF, "painter": {"type": "painter", "priority": 1}}}, source="test")
        result = gen.generate_sync({"prompt": "a lighthouse", "width": 64, "height": 64})
    assert (result.success, result.provider, result.model) == (True, "painter", "brush-1"), result.error
    assert result.key in shelf.objects and result.url == shelf.url_for(result.key or "")


def test_an_http_client_given_serves_its_first_event_loop_only_and_says_so(settings_factory: Any) -> None:
    """QA: with ``http_client=`` given, a second ``asyncio.run`` failed every call with "Event loop is closed",
    counted as the provider's failures (its breaker opened). Now the misuse is the caller's error, at once."""
    import httpx

    client = httpx.AsyncClient()
    with ImageGen.from_settings(settings_factory(), http_client=client) as gen:
        request = {"prompt": "p", "width": 64, "height": 64}
        assert asyncio.run(gen.generate(request)).success
        with pytest.raises(ImageGenError, match="belongs to the event loop it was first used on"):
            asyncio.run(gen.generate(request))
    asyncio.run(client.aclose())  # (the offline provider opened no connection with it)
    with ImageGen.from_settings(settings_factory()) as reader:  # closed above: every row is written
        assert len(recent_requests(reader.log, limit=10)) == 1  # the refused call left no row


def test_a_blocking_call_inside_a_callback_of_another_is_refused_instead_of_deadlocking(settings_factory: Any) -> None:
    """QA: ``generate_sync`` from an ``on_event`` callback of another ``generate_sync`` waited for the portal's
    loop, which its own thread was running, for ever. It now says what to do instead, and the outer call goes
    on."""
    gen = ImageGen.from_settings(settings_factory())
    nested: list[BaseException] = []

    def on_event(event: AttemptEvent) -> None:
        if event.outcome is AttemptOutcome.SUCCESS and not nested:
            try:
                gen.generate_sync({"prompt": "inner", "width": 64, "height": 64})
            except BaseException as exc:
                nested.append(exc)

    outer: list[Any] = []
    thread = threading.Thread(
        target=lambda: outer.append(
            gen.generate_sync({"prompt": "outer", "width": 64, "height": 64}, on_event=on_event)
        ),
        daemon=True,
    )
    thread.start()
    thread.join(60)  # generous: the whole call takes well under a second
    assert not thread.is_alive(), "generate_sync inside on_event deadlocked"
    gen.close()
    assert [type(exc) for exc in nested] == [ImageGenError]
    assert "await gen.generate(" in str(nested[0]) and "\n" not in str(nested[0])
    assert outer[0].success


def test_close_inside_a_callback_of_a_blocking_call_is_refused_and_changes_nothing(settings_factory: Any) -> None:
    """QA (embedding): ``gen.close()`` from an ``on_event`` callback of ``generate_sync`` cancelled that call (a bare
    CancelledError), then failed with the nested-call message and left the ImageGen half-closed: a later close()
    returned at once and its threads ran for good. It is refused before anything changes; the call goes on."""
    before = set(threading.enumerate())
    gen = ImageGen.from_settings(settings_factory())
    refused: list[BaseException] = []

    def on_event(event: AttemptEvent) -> None:
        if not refused:
            try:
                gen.close()
            except BaseException as exc:
                refused.append(exc)

    result = gen.generate_sync({"prompt": "x", "width": 64, "height": 64}, on_event=on_event)
    assert result.success
    assert [type(exc) for exc in refused] == [ImageGenError] and "close() cannot run inside a callback" in str(
        refused[0]
    )
    gen.close()
    give_up = time.monotonic() + 10  # closing joins its threads; a thread pool's may take a moment to end
    own = ("imagegen-sync", "imagegen-log-writer", "imagegen-log-call")  # the image threads are the process's

    def left() -> list[str]:
        return [t.name for t in set(threading.enumerate()) - before if t.name.startswith(own)]

    while left() and time.monotonic() < give_up:
        time.sleep(0.02)
    assert left() == []
    assert read_db(db_file(gen), "SELECT status FROM requests") == [("success",)]


HANGING = {
    "providers": {
        **NETWORKED_OFF,
        "stuck": {"type": "fake", "priority": 1, "timeout": 60000, "options": {"hang": True}},
    },
    "defaults": {"timeout": 60000},
}


async def _a_hanging_request(gen: ImageGen) -> asyncio.Task[Any]:
    """A generate whose only provider never answers, once its attempt is under way."""
    gen.set_config(HANGING, source="test")
    running = asyncio.Event()

    def on_event(event: AttemptEvent) -> None:
        if event.outcome is AttemptOutcome.RUNNING:
            running.set()

    task = asyncio.create_task(gen.generate({"prompt": "p", "width": 64, "height": 64}, on_event=on_event))
    await asyncio.wait_for(running.wait(), 30)
    return task


def _rows_of(settings: Any) -> list[tuple[str, str | None, list[str]]]:
    """Each request's status and error, with its attempts' outcomes, as another process reads them."""
    with ImageGen.from_settings(settings) as reader:
        return [
            (row["status"], row["error"], [a["outcome"] for a in attempts_for(reader.log, row["id"])])
            for row in recent_requests(reader.log, limit=10)
        ]


async def test_aclose_cancels_a_request_that_outlives_its_wait_and_logs_it_cancelled(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: ``aclose()`` under a generate needing longer than closing's wait returned after it; the generate then
    raised a bare RuntimeError ("the log writer is closed") and its row stayed ``running`` for ever. Past the
    wait it is now cancelled, and its row and attempt end as ``cancelled`` before the writer closes."""
    monkeypatch.setattr(service, "_REQUESTS_END_S", 0.5)  # the wait itself is not what is tested
    settings = settings_factory()
    gen = ImageGen.from_settings(settings)
    task = await _a_hanging_request(gen)
    await asyncio.wait_for(gen.aclose(), 30)  # generous: 0.5 s and the cancellation's milliseconds
    done, _ = await asyncio.wait({task}, timeout=30)
    assert done and task.cancelled()
    assert _rows_of(settings) == [("cancelled", "request cancelled before it finished", ["cancelled"])]


def test_close_waits_for_a_request_on_another_thread_s_loop(settings_factory: Any) -> None:
    """QA: ``close()`` while another thread ran ``asyncio.run(gen.generate(...))`` returned at once; that
    generate then raised a bare RuntimeError ("the log writer is closed") and its row stayed ``running``. Closing
    now waits for it (cancelling it past the wait, on its own loop), and its row ends."""
    started, release = threading.Event(), threading.Event()

    class Held(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            started.set()
            await asyncio.to_thread(release.wait, 60)
            return await super().generate(job, ctx)

    settings = settings_factory()
    gen = ImageGen.from_settings(settings, providers={"held": Held(name="held")})
    gen.set_config({"providers": {**NETWORKED_OFF, "held": {"type": "fake", "priority": 1}}}, source="test")
    outcome: list[Any] = []

    def request() -> None:
        try:
            outcome.append(asyncio.run(gen.generate({"prompt": "p", "width": 64, "height": 64})))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    assert started.wait(30)
    closer = threading.Thread(target=gen.close, daemon=True)
    closer.start()
    deadline = time.monotonic() + 30
    while not gen._closing and time.monotonic() < deadline:  # a flag, not an event: polled until closing began
        time.sleep(0.01)
    assert gen._closing  # so the request is still under way while closing runs
    release.set()
    closer.join(30)
    worker.join(30)
    assert not closer.is_alive() and not worker.is_alive()
    assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
    assert outcome[0].success and outcome[0].provider == "held"
    assert _rows_of(settings) == [("success", None, ["success"])]


async def test_close_on_the_loop_of_a_request_under_way_cancels_it_and_ends_its_rows(settings_factory: Any) -> None:
    """``close()`` (not ``aclose``) in a coroutine or a notebook cell, with a request under way on that same loop:
    closing cannot wait for it (it blocks its loop), so it cancels it and ends its row and attempt as
    ``cancelled`` itself; the request, resumed after, raises CancelledError, not an error of the closed writer."""
    settings = settings_factory()
    gen = ImageGen.from_settings(settings)
    task = await _a_hanging_request(gen)
    gen.close()
    done, _ = await asyncio.wait({task}, timeout=30)
    assert done and task.cancelled()
    closed = "the ImageGen was closed while the request was under way"
    assert _rows_of(settings) == [("cancelled", closed, ["cancelled"])]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("child_calls", ["generate_sync", "generate"])
def test_an_imagegen_used_before_a_fork_works_in_the_child_and_logs_its_request(
    settings_factory: Any, db_url: str, child_calls: str
) -> None:
    """QA: a pre-fork server builds and warms up its ImageGen, then forks. In the child, ``generate_sync`` and
    ``close`` waited for ever for the parent's portal thread, and an async ``generate`` answered but its row was
    never written (the writer's thread, gone, was still counted). The child now starts threads of its own, and
    connections of its own to the log database."""
    settings = settings_factory(IMAGEGEN_DATABASE_URL=db_url)
    gen = ImageGen.from_settings(settings)
    gen.warm_up_sync()  # the portal's loop and thread
    assert gen.generate_sync({"prompt": "parent, sync", "width": 64, "height": 64}).success  # the log writer too
    assert asyncio.run(gen.generate({"prompt": "parent, async", "width": 64, "height": 64})).success
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, leave without pytest's clean-up
        generate_in_child(gen, calls=child_calls)  # type: ignore[arg-type]
    code = child_exit_code(pid, timeout_s=60, what="the forked child hung")  # it needs well under a second
    gen.close()
    assert code == 0
    # A LogDB alone: an ImageGen would write back what the child kept in its spill (a database it found locked,
    # see tests/test_forking.py), hiding that at times, and failing at others.
    with LogDB.from_url(db_url) as log:
        rows = sorted((row["prompt"], row["status"]) for row in recent_requests(log, limit=10))
    assert rows == [("child", "success"), ("parent, async", "success"), ("parent, sync", "success")]


def test_an_imagegen_never_used_nor_closed_lets_its_threads_end_when_collected(
    settings_factory: Any, db_url: str
) -> None:
    """Dropped before its first request (its log writer never started, so nothing of it would close the log),
    an ImageGen still lets the threads of its log end: PostgreSQL's connection pool has some from the start."""
    gc.collect()  # earlier tests' garbage must not be collected with it below
    before = set(threading.enumerate())
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=db_url))
    started = [t for t in set(threading.enumerate()) - before if not t.name.startswith("imagegen-image")]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        del gen
        gc.collect()
    for thread in started:
        thread.join(30)  # generous: they end in milliseconds
    assert [t.name for t in started if t.is_alive()] == []


def test_an_imagegen_never_closed_warns_when_collected_and_lets_its_threads_end(
    settings_factory: Any, db_url: str
) -> None:
    """QA: ImageGens dropped without ``close()`` left their threads (and connections) for as long as the process
    lived, saying nothing: 30 of them, 93 threads and ~300 files. Collected, one now warns as an unclosed file
    does (ResourceWarning, naming what to do), and its threads end — on PostgreSQL too, whose connection pool
    has threads of its own (its scheduler lived on)."""
    gc.collect()  # earlier tests' garbage (their unclosed loops) must not be collected with it below
    before = set(threading.enumerate())
    gen = ImageGen.from_settings(settings_factory(IMAGEGEN_DATABASE_URL=db_url))
    assert gen.generate_sync({"prompt": "sync", "width": 64, "height": 64}).success
    assert asyncio.run(gen.generate({"prompt": "async", "width": 64, "height": 64})).success
    # Its own threads: not the image threads, which every ImageGen of the process shares.
    started = [t for t in set(threading.enumerate()) - before if not t.name.startswith("imagegen-image")]
    assert {t.name for t in started} >= {"imagegen-sync", "imagegen-log-writer_0"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del gen
        gc.collect()
    warned = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    unclosed = [message for message in warned if message.startswith("unclosed ImageGen")]
    assert len(unclosed) == 1, warned
    assert "close()" in unclosed[0] and "async with" in unclosed[0]
    for thread in started:
        thread.join(30)  # generous: they end in milliseconds
    assert [t.name for t in started if t.is_alive()] == []


@pytest.mark.parametrize(
    "then", ["", "gen.set_config({'race': {'hedgeDelay': 900}}, merge=True); gen.provider_status()"]
)
def test_a_script_that_never_closes_its_imagegen_still_exits(tmp_path: Path, then: str) -> None:
    """QA: built and never closed, it was collected as the interpreter ended, and closing it started a thread,
    which can no longer start then: the script printed its last line and never exited. It says so (a
    ResourceWarning) and ends."""
    script = (
        "from imagegen_core import ImageGen\n"
        "from imagegen_core.settings import Settings\n"
        f"gen = ImageGen.from_settings(Settings(_env_file=None, IMAGEGEN_HOME={str(tmp_path)!r}))\n"
        f"{then}\n"
        "print('end of script')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, "end of script\n"), proc.stderr
    assert "ResourceWarning: unclosed ImageGen" in proc.stderr


async def test_a_provider_that_raises_cancelled_error_itself_is_a_failed_attempt_and_the_backup_answers(
    settings_factory: Any,
) -> None:
    """QA: a plugin whose generate raised CancelledError (nothing had cancelled it) made every request raise it to
    a caller that had cancelled nothing, the backup never tried. It is the provider's defect, like any other."""

    class CancelsItself(FakeProvider):
        async def generate(self, job: Any, ctx: Any) -> Any:
            raise asyncio.CancelledError()

    async with ImageGen.from_settings(
        settings_factory(), providers={"selfcancel": CancelsItself(name="selfcancel")}
    ) as gen:
        gen.set_config(
            {
                "providers": {
                    **NETWORKED_OFF,
                    "selfcancel": {"type": "fake", "priority": 0, "retries": 0},
                    "backup": {"type": "fake", "priority": 1, "options": {"latencyMs": 1}},
                }
            },
            source="test",
        )
        for _ in range(2):  # and the next request alike
            result = await gen.generate({"prompt": "p", "width": 64, "height": 64})
            assert (result.success, result.provider) == (True, "backup"), result.error
        await gen.flush()
        rows = attempts_for(gen.log, result.request_id)
    first = next(r for r in rows if r["provider"] == "selfcancel")
    assert (first["outcome"], first["failure_class"]) == ("failed", "transient")
    assert "raised CancelledError though nothing cancelled it" in first["error"]


class IgnoresCancellation(FakeProvider):
    """A badly written plugin: it catches every CancelledError and goes on, answering a real image the next of
    ``late_s`` seconds after each call (or once ``stop_at``, monotonic time, passes: a test's clean-up)."""

    def __init__(self, *, late_s: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.late_s = late_s
        self.stop_at = math.inf
        self.answered = 0

    async def generate(self, job: Any, ctx: Any) -> Any:
        self.calls.append(job)
        until = time.monotonic() + self.late_s.pop(0)
        while (left := min(until, self.stop_at) - time.monotonic()) > 0:
            try:
                await asyncio.sleep(min(left, 0.05))
            except asyncio.CancelledError:
                self.cancelled += 1
        self.answered += 1
        return ProviderOutput(data=png_bytes(), content_type="image/png", model="fake")


async def test_a_provider_that_ignores_its_cancellation_has_its_rows_ended_on_time_and_closing_does_not_wait_for_it(
    settings_factory: Any,
) -> None:
    """QA: a plugin that caught CancelledError and went on left its attempt's row ``running`` past its timeout and
    the request's deadline, and its late image was logged a success. Its row now ends at its timeout (the backup
    answering) or at the deadline (cut), its late answers change no row, and closing cancels it again rather than
    wait for it."""
    stubborn = IgnoresCancellation(name="stubborn", late_s=[1.5, 1.5, 60])
    entry = {"type": "fake", "priority": 0, "retries": 0}
    request = {"prompt": "p", "width": 64, "height": 64}
    gen = ImageGen.from_settings(settings_factory(), providers={"stubborn": stubborn})
    try:
        gen.set_config(
            {
                "race": {"mode": "sequential"},
                "providers": {
                    **NETWORKED_OFF,
                    "stubborn": {**entry, "timeout": 300},
                    "backup": {"type": "fake", "priority": 1, "options": {"latencyMs": 1}},
                },
            },
            source="test",
        )
        started = time.perf_counter()
        timed_out = await gen.generate(request, deadline_s=10)
        assert time.perf_counter() - started < 1.2, "waited for the plugin, not its 300 ms timeout"
        assert (timed_out.success, timed_out.provider) == (True, "backup"), timed_out.error

        gen.set_config({"providers": {**NETWORKED_OFF, "stubborn": {**entry, "timeout": 20_000}}}, source="test")
        started = time.perf_counter()
        cut = await gen.generate(request, deadline_s=1.0)
        assert time.perf_counter() - started < 1.0 + 0.5, "answered past its deadline"
        assert cut.provider != "stubborn"

        expected = {
            timed_out.request_id: [("stubborn", "failed", "timeout", "stubborn: no image within 300 ms")],
            cut.request_id: [("stubborn", "cancelled", "timeout", "stubborn: no image before the request's deadline")],
        }

        async def stubborn_rows() -> dict[str, list[tuple[Any, ...]]]:
            await gen.flush()
            sql = "SELECT provider, outcome, failure_class, error FROM attempts WHERE request_id = ? AND provider = ?"
            return {rid: read_db(db_file(gen), sql, (rid, "stubborn")) for rid in expected}

        assert await stubborn_rows() == expected
        assert stubborn.answered == 0  # both calls still running in the plugin
        (row,) = [r for r in attempts_for(gen.log, timed_out.request_id) if r["provider"] == "stubborn"]
        assert 300 <= row["duration_ms"] <= 800, row  # ended at its timeout (plus the grace), not at 1.5 s

        waited = time.perf_counter()
        while stubborn.answered < 2 and time.perf_counter() - waited < 10:  # its late answers (bounded)
            await asyncio.sleep(0.05)
        assert stubborn.answered == 2
        assert await stubborn_rows() == expected  # no late success, no second end

        await gen.generate(request, deadline_s=1.0)  # its call runs on, for 60 s
        cancelled = stubborn.cancelled
        started = time.perf_counter()
        await gen.aclose()
        assert time.perf_counter() - started < 2.0, "closing waited for the plugin"
        assert stubborn.cancelled == cancelled + 1, "closing did not cancel the plugin's call again"
        assert stubborn.answered == 2
    finally:
        stubborn.stop_at = 0  # let its call end: the test's loop would wait for it
        await gen.aclose()


@pytest.mark.parametrize("wait_s", [math.nan, 0, -1, math.inf, "2", True, 601])
def test_a_log_call_s_wait_that_is_not_a_time_is_refused_naming_it(settings_factory: Any, wait_s: Any) -> None:
    """QA: ``wait_s=nan`` or ``0`` said the database "did not answer within nan s" and marked the call overdue, so
    the calls after it were refused too; ``-1`` ran the call unbounded; ``"2"`` a TypeError; ``inf`` an
    OverflowError. Each is now refused naming ``wait_s``, the call not run, and the next call still answers."""
    ran: list[str] = []
    with ImageGen.from_settings(settings_factory()) as gen:
        with pytest.raises(InvalidRequestError, match=r"^wait_s: must be a number of seconds above 0") as refused:
            gen.log_call_sync(lambda: ran.append("sync"), wait_s=wait_s)
        assert refused.value.field == "wait_s"
        with pytest.raises(InvalidRequestError, match=r"^wait_s: "):
            asyncio.run(gen.log_call(lambda: ran.append("async"), wait_s=wait_s))
        assert ran == [] and gen.log_call_sync(lambda: 42, wait_s=5) == 42


def test_a_request_given_as_any_mapping_reads_image_url_as_a_dict_does(settings_factory: Any) -> None:
    """QA (embedding): ``generate`` takes any Mapping, but a ``MappingProxyType`` (or any non-dict mapping) with
    ``imageUrl: None`` was refused as an extra input, where a dict's is read as absent; and a set one got pydantic's
    "Extra inputs are not permitted" instead of saying that re-hosting is not supported."""
    with ImageGen.from_settings(settings_factory()) as gen:
        served = gen.generate_sync(MappingProxyType({"prompt": "x", "width": 64, "height": 64, "imageUrl": None}))
        assert served.success
        with pytest.raises(InvalidRequestError, match=r"^imageUrl: is not supported: imagegen makes a new image"):
            gen.generate_sync(MappingProxyType({"prompt": "x", "imageUrl": "https://a.example/b.jpg"}))


async def _async_callback(value: object) -> None:
    """An ``async def`` callback: its coroutine is never awaited by a progress callback's caller."""


@pytest.mark.parametrize("callback", [5, _async_callback])
def test_a_callback_that_could_never_run_is_refused_before_anything_is_logged(
    settings_factory: Any, callback: Any
) -> None:
    """QA (embedding): ``on_event=async_fn`` did nothing but a "coroutine was never awaited" warning per event, and
    ``on_event=5`` logged a traceback per event; the request itself was served as if nothing was wrong."""
    with ImageGen.from_settings(settings_factory()) as gen:
        request = {"prompt": "x", "width": 64, "height": 64}
        for name, call in (
            ("on_event", lambda: gen.generate_sync(request, on_event=callback)),
            ("on_event", lambda: asyncio.run(gen.generate(request, on_event=callback))),
            ("on_update", lambda: gen.compare_sync(request, on_update=callback)),
            ("on_start", lambda: gen.compare_sync(request, on_start=callback)),
        ):
            with pytest.raises(InvalidRequestError) as refused:
                call()
            assert refused.value.field == name and refused.value.request_id is None
        assert read_db(db_file(gen), "SELECT COUNT(*) FROM requests") == [(0,)]

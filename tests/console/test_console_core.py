"""The console's decisions, tested without Streamlit: background jobs, requests from form fields, progress
lines, config edits, history search, reuse, and reading stored images back safely."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from console_helpers import core, fake_config

from imagegen_core import ConfigError, InvalidRequestError
from imagegen_core.config import changed_keys
from imagegen_core.console_data import (
    NO_STYLE,
    Job,
    JobShelf,
    compare,
    describe_attempt,
    download_name,
    editable_config,
    generate,
    human_bytes,
    make_request,
    pick,
    save_config_text,
    style_choices,
)
from imagegen_core.errors import FailureClass
from imagegen_core.history import image_bytes, image_source, local_path, reuse, search
from imagegen_core.log.queries import provider_stats
from imagegen_core.models import AttemptOutcome, GenerateResult
from imagegen_core.race import AttemptEvent


def test_a_job_hands_over_its_events_in_order_then_its_result_on_the_callers_thread() -> None:
    workers = []

    def work(emit: object) -> str:
        workers.append(threading.current_thread().name)
        for n in range(3):
            emit(n)  # type: ignore[operator]
        return "done"

    job = Job(work).start()
    assert list(job.events(poll_s=0.01)) == [0, 1, 2]
    assert job.result() == "done"
    assert workers == ["imagegen-console-job"]


def test_a_job_outlives_its_reader_a_later_reader_sees_every_event_and_the_same_result() -> None:
    """A page left mid-request stops reading; the page drawn again reads the same job from its first event
    (and a job that has finished is ``done``, its result the same on every call): the work runs once."""
    calls = []
    release = threading.Event()

    def work(emit: object) -> str:
        calls.append(1)
        emit("queued")  # type: ignore[operator]
        release.wait(5)
        emit("finished")  # type: ignore[operator]
        return "image"

    job = Job(work).start()
    first = job.events(poll_s=0.01)
    assert next(first) == "queued"
    first.close()  # the reader went away while the work goes on
    assert not job.done and job.started_at is not None
    release.set()
    assert list(job.events(poll_s=0.01)) == ["queued", "finished"]
    assert job.done
    assert (job.result(), job.result()) == ("image", "image")
    assert list(job.events(poll_s=0.01, ticks=True)) == ["queued", "finished"], "no tick once it is done"
    assert calls == [1]


def test_a_job_raises_its_error_in_the_caller() -> None:
    def work(emit: object) -> None:
        raise InvalidRequestError("prompt", "must not be empty")

    job = Job(work).start()
    assert list(job.events(poll_s=0.01)) == []
    with pytest.raises(InvalidRequestError, match="prompt: must not be empty"):
        job.result()


def test_the_job_shelf_finds_a_job_by_token_for_its_own_page_only_and_keeps_the_latest() -> None:
    shelf = JobShelf(capacity=2)
    jobs = [Job(lambda emit, n=n: n) for n in range(3)]
    entries = [shelf.put("generate", job, form={"generate_prompt": f"p{n}"}, n=n) for n, job in enumerate(jobs)]

    assert len({entry.token for entry in entries}) == 3 and all(len(entry.token) >= 16 for entry in entries)
    assert shelf.find("generate", entries[0].token) is None, "the oldest went when the shelf was full"
    found = shelf.find("generate", entries[2].token)
    assert found is not None and found.job is jobs[2]
    assert (found.form, found.meta) == ({"generate_prompt": "p2"}, {"n": 2})
    assert shelf.find("compare", entries[2].token) is None, "another page's job is not this page's"
    assert shelf.find("generate", "guess") is None


def test_form_fields_become_a_request_with_blanks_left_out() -> None:
    req = make_request(prompt="harbour", keyword="  ", article_id=" a-1 ", size=(1200, 630), style=NO_STYLE)
    assert (req.keyword, req.article_id, req.width, req.height, req.style) == (None, "a-1", 1200, 630, None)
    assert make_request(prompt="x", style="photo").style == "photo"


def test_progress_lines_say_what_each_attempt_did() -> None:
    base = AttemptEvent(attempt_id="a", provider="fal", attempt=1, hedged=False, started_at=0.0)
    assert describe_attempt(base) == "fal: running"
    failed = AttemptEvent(
        attempt_id="a", provider="fal", attempt=2, hedged=True, started_at=0.0,
        outcome=AttemptOutcome.FAILED, duration_ms=15000, failure_class=FailureClass.TIMEOUT,
    )  # fmt: skip
    assert describe_attempt(failed) == "fal: failed (timeout) after 15000 ms, attempt 2"


def test_download_names_use_the_article_id_safely() -> None:
    result = GenerateResult(
        url="file:///x.webp", provider="p", elapsed_ms=1, success=True, request_id="abcdef0123", width=1, height=1
    )
    assert download_name(result, "news/2026 lighthouse") == "news-2026-lighthouse-abcdef01.webp"
    assert download_name(result) == "image-abcdef01.webp"
    # QA run: a blank id gave "----abcdef01.webp", a path "------etc-passwd-…"
    assert download_name(result, "   ") == "image-abcdef01.webp"
    assert download_name(result, "../../etc/passwd") == "etc-passwd-abcdef01.webp"
    assert download_name(result, " Café élection ") == "Café-élection-abcdef01.webp"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(10) == "10 B"


def test_a_page_does_not_wait_long_for_a_log_another_process_holds_locked(caplog: pytest.LogCaptureFixture) -> None:
    """QA: with another process holding the SQLite log's write lock, Generate's answer (ready in 186 ms) showed
    after 60-100 s, when the lock went: the page waited for the writer's two minutes of retries. It waits
    LOG_FLUSH_WAIT_S now, and the rows are written once the lock goes."""
    from imagegen_core.console_data import LOG_FLUSH_WAIT_S

    with core() as gen:
        gen.set_config(fake_config(quick={"options": {"latencyMs": 5}}))
        gen.generate_sync({"prompt": "first", "width": 64, "height": 64})  # the log exists, its tables made
        holder = sqlite3.connect(gen.settings.home / "imagegen.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            result = generate(gen, make_request(prompt="held", size=(64, 64)), emit=lambda event: None)
            waited = time.monotonic() - started
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert result.success and waited < LOG_FLUSH_WAIT_S + 2.0, waited
        assert any("has not taken this request's rows" in r.getMessage() for r in caplog.records)
        assert gen._writer.flush_sync(timeout_s=30)
        (row,) = gen.log.query("SELECT prompt FROM requests WHERE prompt = 'held'")
        assert row["prompt"] == "held"


def test_a_config_edit_is_validated_whole_and_a_bad_one_names_the_field() -> None:
    with core() as gen:
        versions = len(gen.log.config_history())
        with pytest.raises(ConfigError) as bad_json:
            save_config_text(gen, '{"providers": ')
        assert bad_json.value.field == "(document)"
        with pytest.raises(ConfigError) as not_object:
            save_config_text(gen, "[]")
        assert not_object.value.field == "(root)"
        with pytest.raises(ConfigError) as invalid:
            save_config_text(gen, json.dumps({"race": {"mode": "fastest"}}))
        assert invalid.value.field == "race.mode"
        with pytest.raises(ConfigError, match=r"^the JSON document is nested too deeply \(over 64 levels\)$") as deep:
            save_config_text(gen, "[" * 5000 + "]" * 5000)  # was a RecursionError traceback on the page
        assert deep.value.field == "(document)"
        with pytest.raises(ConfigError, match=r"^the key 'race' is given twice in one object") as twice:
            save_config_text(gen, '{"race": {}, "race": {}}')  # QA: the last one won silently
        assert twice.value.field == "(document)"
        with pytest.raises(ConfigError, match=r"^a number in the document has too many digits$") as digits:
            save_config_text(gen, '{"defaults": {"timeout": ' + "9" * 5000 + "}}")  # was a ValueError traceback
        assert digits.value.field == "(document)"
        with pytest.raises(ConfigError, match=r"^NaN is not a JSON number$") as nan:
            save_config_text(gen, '{"defaults": {"timeout": NaN}}')  # refused as the API refuses it
        assert nan.value.field == "(document)"
        assert len(gen.log.config_history()) == versions
        document = json.loads(editable_config(gen)[0])
        document["defaults"]["timeout"] = 9000
        version = save_config_text(gen, json.dumps(document))
        assert gen.config.defaults.timeout == 9000 and gen.log.latest_config_id() == version


def test_a_config_edit_that_leaves_keys_out_is_refused_as_they_would_come_back() -> None:
    """Regression: the Admin editor holds the whole document, but a style deleted from it came back on save
    (documents merge over the built-in defaults), and ``{}`` quietly reset every setting."""
    with core() as gen:
        document = json.loads(editable_config(gen)[0])
        del document["styles"]["3d"]
        document["styles"]["noir"] = "{prompt}, film noir"
        versions = len(gen.log.config_history())
        with pytest.raises(ConfigError, match="missing from the document: the editor holds the whole") as left_out:
            save_config_text(gen, json.dumps(document))
        assert left_out.value.field == "styles.3d"
        with pytest.raises(ConfigError, match=r"missing from the document \(and \d+ more\)") as empty:
            save_config_text(gen, "{}")
        assert empty.value.field == "providers"
        assert len(gen.log.config_history()) == versions  # nothing stored
        document["styles"]["3d"] = None  # removing a built-in style, as the message says
        save_config_text(gen, json.dumps(document))
        assert "3d" not in gen.config.styles and "noir" in gen.config.styles
        assert changed_keys(json.loads(editable_config(gen)[0]), document) == []  # stored as edited


def test_history_search_takes_like_wildcards_literally() -> None:
    with core() as gen:
        for prompt in ("100% sure", "1000 sure", "snake_case", "snakeXcase"):
            gen.log.start_request(
                prompt, created_at=1.0, prompt=prompt, keyword=None, article_id=None, width=64, height=64,
                style=None, source="test",
            )  # fmt: skip
        assert [r["prompt"] for r in search(gen, "100%")[0]] == ["100% sure"]
        assert [r["prompt"] for r in search(gen, "snake_")[0]] == ["snake_case"]
        assert search(gen, "SURE")[1] == 2


def test_a_reuse_is_a_new_history_row_that_moves_no_provider_statistic() -> None:
    with core() as gen:
        request = make_request(prompt="a lighthouse", article_id="a-1", size=(320, 180))
        result = generate(gen, request, emit=lambda event: None)  # returns with the log written
        before = provider_stats(gen.log, since=0)
        row = reuse(gen, result.request_id, "  a-2 ")
        assert (row["status"], row["article_id"], row["url"], row["storage_key"]) == (
            "reused",
            "a-2",
            result.url,
            result.key,
        )
        assert (row["cost_usd"], row["elapsed_ms"]) == (0, 0)
        assert provider_stats(gen.log, since=0) == before
        assert [r["article_id"] for r in search(gen, "lighthouse")[0]] == ["a-2", "a-1"]
        with pytest.raises(InvalidRequestError, match="articleId"):
            reuse(gen, result.request_id, "   ")
        with pytest.raises(InvalidRequestError, match="no image to reuse"):
            reuse(gen, "no-such-request", "a-3")


def test_an_image_gone_from_the_store_is_not_reused() -> None:
    """QA: History's "Reuse for an article" of an image whose file was deleted recorded the reuse and handed the
    editor its dead file:// URL, though the Generate page hides such URLs."""
    with core() as gen:
        result = generate(gen, make_request(prompt="a pier", size=(320, 180)), emit=lambda event: None)
        path = local_path(gen, result.url)
        assert path is not None
        path.unlink()
        with pytest.raises(InvalidRequestError) as info:
            reuse(gen, result.request_id, "a-9")
        assert info.value.field == "requestId"
        assert f"the image of request {result.request_id!r} is no longer in the store (its file is missing)" in str(
            info.value
        )
        assert [r["status"] for r in search(gen, "pier")[0]] == ["success"]  # no reuse recorded


def test_a_damaged_image_file_is_not_reused() -> None:
    """QA in Chromium: History's "Reuse for an article" of an image whose file was since cut short or overwritten
    recorded the reuse and handed the editor a URL serving bytes no browser can show (only a missing file was
    refused)."""
    with core() as gen:
        result = generate(gen, make_request(prompt="a pier", size=(320, 180)), emit=lambda event: None)
        path = local_path(gen, result.url)
        assert path is not None
        for damage in (path.read_bytes()[:100], b"not an image"):
            path.write_bytes(damage)
            with pytest.raises(InvalidRequestError) as info:
                reuse(gen, result.request_id, "a-9")
            assert info.value.field == "requestId"
            assert (
                f"the image of request {result.request_id!r} is damaged in the store (its file no longer reads as"
                in str(info.value)
            )
        assert [r["status"] for r in search(gen, "pier")[0]] == ["success"]  # no reuse recorded


def test_a_stock_photo_without_a_recorded_credit_is_flagged_whatever_its_entry_is_called_now() -> None:
    """Rows logged before credits were kept hold none: a stock provider's photo is flagged ``credit_missing``,
    by its entry's type (an entry "photodesk" of type unsplash); a generated image, a failed request and a
    provider the config does not know are not."""
    with core() as gen:
        gen.set_config({"providers": {"photodesk": {"type": "unsplash", "enabled": False}}})
        for provider, status in (
            ("unsplash", "success"), ("photodesk", "success"), ("offline", "success"),
            ("gone_plugin", "success"), ("unsplash", "failed"),
        ):  # fmt: skip
            request_id = f"{provider}-{status}"
            gen.log.start_request(
                request_id, created_at=1.0, prompt=request_id, keyword=None, article_id=None, width=64,
                height=64, style=None, source="test",
            )  # fmt: skip
            gen.log.finish_request(
                request_id, finished_at=2.0, status=status, provider=provider, url="https://images.unsplash.com/x",
                elapsed_ms=5,
            )  # fmt: skip
        rows, _, _ = search(gen)
        assert {row["id"]: row["credit_missing"] for row in rows} == {
            "unsplash-success": True,
            "photodesk-success": True,
            "offline-success": False,
            "gone_plugin-success": False,
            "unsplash-failed": False,
        }
        assert reuse(gen, "photodesk-success", "a-1")["credit_missing"] is True
        assert reuse(gen, "offline-success", "a-2")["credit_missing"] is False


def test_stored_images_are_read_back_but_never_a_file_outside_the_store(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not an image")
    with core() as gen:
        result = gen.generate_sync({"prompt": "a lighthouse", "width": 320, "height": 180})
        data = image_bytes(gen, url=result.url, key=result.key)
        assert data is not None and data[:4] == b"RIFF"
        assert image_source(gen, url=result.url) == data  # a browser cannot load file:// URLs: bytes instead
        assert image_source(gen, url="https://images.example.com/a.webp") == "https://images.example.com/a.webp"
        assert local_path(gen, outside.as_uri()) is None
        root = gen.store.root  # type: ignore[attr-defined]
        assert local_path(gen, (root / ".." / ".." / "secret.txt").as_uri()) is None
        assert image_bytes(gen, url=outside.as_uri()) is None
        assert image_bytes(gen, url=None, key="ai/2026/01/missing.webp") is None


def test_short_lived_threads_do_not_pile_up_open_database_connections(tmp_path: Path) -> None:
    """Streamlit runs every script run (and every fragment refresh) in a new thread; the console must not
    leave one open SQLite connection behind per run."""
    import os

    from imagegen_core.log.db import LogDB

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    with LogDB(tmp_path / "log.db") as db:
        before = open_files()
        for _ in range(50):
            thread = threading.Thread(target=db.latest_config_id)
            thread.start()
            thread.join()
        assert open_files() - before <= 6  # a connection or two (each with its WAL files), not fifty


def test_the_style_list_offers_no_style_once() -> None:
    """The built-in ``none`` style leaves the prompt as it is: the "(no style)" choice already does that."""
    with core() as gen:
        choices = style_choices(gen.config)
    assert next(iter(choices)) == NO_STYLE and "none" not in choices
    assert list(choices).count(NO_STYLE) == 1 and "{prompt}" not in list(choices.values())[1:]


def test_two_simultaneous_picks_of_one_comparison_store_one_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: two tabs (or two editors with its link) show one comparison and click "Use this image" at
    once: both picks passed the core's "nothing picked yet" check before either upload ended, so two images
    were stored for one article and two wins counted. Now the second click is refused."""
    import asyncio

    with core() as gen:
        gen.set_config(fake_config(alpha={"options": {"latencyMs": 20}}, beta={"options": {"latencyMs": 20}}))
        comparison = compare(gen, make_request(prompt="harbour at dawn"), emit=lambda view: None)
        put = gen.store.put

        async def slow_put(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.3)  # an upload to R2 takes as long, or longer
            return await put(*args, **kwargs)

        monkeypatch.setattr(gen.store, "put", slow_put)
        outcomes: list[str] = []

        def click(provider: str) -> None:
            try:
                outcomes.append(pick(gen, comparison, provider).url)
            except InvalidRequestError as exc:
                outcomes.append(f"refused: {exc}")

        clicks = [threading.Thread(target=click, args=(name,)) for name in ("alpha", "beta")]
        for thread in clicks:
            thread.start()
        for thread in clicks:
            thread.join()
        picks = gen.log.query("SELECT provider FROM picks")
    assert len(picks) == 1, picks
    assert sorted(outcome.startswith("refused: ") for outcome in outcomes) == [False, True], outcomes


def test_a_candidate_announces_its_image_while_other_providers_still_run() -> None:
    """QA: a card said "done" at 0.5 s, but its image (and pick button) came only at 10.7 s, when the
    provider that hung gave up: the image was attached to the candidate once every provider had finished."""
    with core() as gen:
        gen.set_config(fake_config(fast={"options": {"latencyMs": 20}}, slow={"options": {"latencyMs": 3000}}))
    views: list[Any] = []
    with core() as gen:
        compare(gen, make_request(prompt="harbour cranes at dawn", size=(1200, 630)), emit=views.append)
    first_image = next(i for i, view in enumerate(views) if view.provider == "fast" and view.image is not None)
    slow_then = [view.status for view in views[:first_image] if view.provider == "slow"]
    assert slow_then[-1] == "running", slow_then
    shown = views[first_image]
    assert (shown.status, shown.picture, (shown.width, shown.height)) == ("done", shown.image, (1200, 630))


def test_a_custom_style_left_out_of_the_config_edit_is_refused_not_deleted() -> None:
    """QA: a custom style left out of the Admin document was deleted, the save saying only "changed:
    styles.weird"; the page promises that a key left out is refused (a style is removed with null)."""
    with core() as gen:
        document = json.loads(editable_config(gen)[0])
        document["styles"]["weird"] = "{prompt}, weird"
        save_config_text(gen, json.dumps(document))
        text, version = editable_config(gen)
        document = json.loads(text)
        del document["styles"]["weird"]
        with pytest.raises(ConfigError, match="missing from the document: ") as left_out:
            save_config_text(gen, json.dumps(document), based_on=version)
        assert left_out.value.field == "styles.weird"
        assert gen.reload_config().styles["weird"] == "{prompt}, weird"  # nothing stored
        document["styles"]["weird"] = None
        save_config_text(gen, json.dumps(document), based_on=version)
        assert "weird" not in gen.reload_config().styles

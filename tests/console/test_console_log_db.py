"""The console over a PostgreSQL log that stops answering (a server that hangs, or a network that drops packets;
played by a stalling TCP proxy on 127.0.0.1): a page that reads the log says so in one line within the read's
wait, instead of spinning for as long as TCP takes to give up (many minutes) and then showing a traceback."""

from __future__ import annotations

import time

import pytest
from console_helpers import open_page, rendered

from imagegen_core.log import postgres as pg
from imagegen_core.log.backend import safe_url
from tests.pgcluster import PostgresCluster
from tests.tcpproxy import StallingProxy


def test_pages_say_in_one_line_that_the_log_database_does_not_answer(
    postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg, "QUERY_WAIT_S", 1.0)
    url = postgres.url(postgres.create_database())
    with StallingProxy(("127.0.0.1", postgres.port)) as proxy:
        monkeypatch.setenv("IMAGEGEN_DATABASE_URL", url.replace(f":{postgres.port}/", f":{proxy.port}/"))
        at = open_page("app").run()
        assert not at.exception and not at.error
        at.switch_page("views/history.py").run()
        assert not at.exception and not at.error
        proxy.stall()
        try:
            started = time.monotonic()
            at.switch_page("views/stats.py").run()
            took = time.monotonic() - started
            first = [rendered(error.value) for error in at.error]
            at.switch_page("views/history.py").run()  # the stuck read has not ended: no second wait
            again = [rendered(error.value) for error in at.error]
        finally:
            proxy.resume()
    assert not at.exception, "\n".join(at.exception[0].stack_trace)
    # The sidebar's read (of the newest config) met the hang first, gave up after 1 s and shows the config in
    # force; the page's own read then said at once that the log database has not answered.
    for errors in (first, again):
        assert errors == [
            f"the log database {safe_url(url.replace(f':{postgres.port}/', f':{proxy.port}/'))} has not answered "
            "an earlier read yet (a server that hangs, or a network that drops packets?)"
        ]
    assert 1.0 <= took < 10, took
    assert rendered(at.sidebar.caption[0].value) == "Racing: offline"


def test_an_admin_save_while_the_log_database_hangs_gives_up_in_bounded_time_and_keeps_the_edits(
    postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, "Validate and save" waited for TCP to give up (many minutes) with the page spinning: only reads
    were bounded. Now the save gives up after the log calls' wait, the page says so in one line, and the
    edits are still in the editor once the database answers."""
    import json

    from imagegen_core import service

    monkeypatch.setattr(pg, "QUERY_WAIT_S", 1.0)
    monkeypatch.setattr(service, "LOG_CALL_WAIT_S", 1.0)
    url = postgres.url(postgres.create_database())
    with StallingProxy(("127.0.0.1", postgres.port)) as proxy:
        monkeypatch.setenv("IMAGEGEN_DATABASE_URL", url.replace(f":{postgres.port}/", f":{proxy.port}/"))
        at = open_page("app").run()  # through app.py, as the console runs every page
        at.switch_page("views/admin.py").run()
        assert not at.exception and not at.error
        document = json.loads(at.text_area(key="admin_config").value)
        document["styles"]["noir"] = "{prompt}, film noir"
        at.text_area(key="admin_config").input(json.dumps(document))
        proxy.stall()
        try:
            started = time.monotonic()
            at.button(key="admin_config_save").click().run()
            took = time.monotonic() - started
            errors = [rendered(error.value) for error in at.error]
        finally:
            proxy.resume()
        assert not at.exception, "\n".join(at.exception[0].stack_trace)
        assert took < 10, took  # the save's 1 s, then the page's first read's 1 s; each at once after that
        assert len(errors) == 1 and "\n" not in errors[0] and "has not answered an earlier" in errors[0], errors
        give_up = time.monotonic() + 30
        while True:  # once the hung calls end, the page draws again, with the edits still in the editor
            at.run()
            if not at.exception and any(area.key == "admin_config" for area in at.text_area):
                break
            assert time.monotonic() < give_up, [rendered(error.value) for error in at.error]
            time.sleep(0.2)
        assert json.loads(at.text_area(key="admin_config").value)["styles"]["noir"] == "{prompt}, film noir"
        # The save's outcome stays said until the next one: it may have landed once the server answered.
        assert [rendered(error.value) for error in at.error] == [
            "Maybe not saved: the log database did not answer within 1 s (a server that hangs, or a network that "
            "drops packets?). Your edits are still in the editor; once the database answers, the page shows which "
            "version is in force."
        ]

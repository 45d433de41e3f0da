"""The Admin page: breaker resets reach the shared breaker state; an invalid config edit is shown next to
the document and stores nothing; storage usage is shown."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from console_helpers import core, fake_config, open_page, rendered, texts

from imagegen_core.breaker import BreakerState


def test_reset_closes_a_breaker_that_was_forced_open() -> None:
    with core() as gen:
        gen.breakers.force_open("fal", reason="drill")
    at = open_page("admin").run()
    assert ":red-badge[forced_open]" in texts(at)

    at.button(key="admin_reset_fal").click().run()

    assert not at.exception
    with core() as gen:
        record = gen.breakers.state("fal")
    assert (record.state, record.last_reason) == (BreakerState.CLOSED, "reset from the console")
    assert at.button(key="admin_reset_fal").disabled  # nothing left to reset


def test_reset_all_closes_every_breaker() -> None:
    with core() as gen:
        gen.breakers.force_open("fal")
        gen.breakers.force_open("replicate")
    at = open_page("admin").run()
    at.button(key="admin_reset_all").click().run()
    with core() as gen:
        assert {name: str(rec.state) for name, rec in gen.breakers.snapshot().items()} == {
            "fal": "closed",
            "replicate": "closed",
        }


def test_an_invalid_config_edit_names_the_field_and_stores_nothing() -> None:
    at = open_page("admin").run()
    with core() as gen:
        versions = len(gen.log.config_history())
        before = gen.reload_config().to_document()
    document = json.loads(at.text_area(key="admin_config").value)
    document["providers"]["fal"]["timeout"] = -5
    at.text_area(key="admin_config").input(json.dumps(document, indent=2))
    at.button(key="admin_config_save").click().run()

    assert not at.exception
    (error,) = at.error
    assert rendered(error.value) == "**providers.fal.timeout** — Input should be greater than 0"
    assert json.loads(at.text_area(key="admin_config").value) == document, "the edit is kept for fixing"
    with core() as gen:
        assert len(gen.log.config_history()) == versions
        assert gen.reload_config().to_document() == before

    at.text_area(key="admin_config").input("{ not json")
    at.button(key="admin_config_save").click().run()
    assert rendered(at.error[0].value).startswith("**(document)** — not valid JSON: line 1 column 3")
    with core() as gen:
        assert len(gen.log.config_history()) == versions


def test_a_config_error_says_its_field_once() -> None:
    """Regression: the page put the error's field before a message that starts with that field again
    ("**race.hedgeDelay** — invalid config: race.hedgeDelay: Input should be …")."""
    at = open_page("admin").run()
    original = json.loads(at.text_area(key="admin_config").value)

    def save(change: Callable[[dict[str, Any]], object]) -> str:
        document = json.loads(json.dumps(original))
        change(document)
        at.text_area(key="admin_config").input(json.dumps(document)).run()
        at.button(key="admin_config_save").click().run()
        (error,) = at.error
        return rendered(error.value)

    hedge = save(lambda d: d["race"].update(hedgeDelay="soon"))
    assert hedge == "**race.hedgeDelay** — Input should be a valid integer"
    unknown = save(lambda d: d["providers"]["fal"].update(type="nope"))
    assert unknown.startswith("**providers.fal** — unknown provider type 'nope' (known: ")
    # Several problems: the first one's field heads the message, the others keep theirs; each said once.
    both = save(lambda d: (d["providers"]["fal"].update(timeout=-5), d["providers"]["replicate"].update(retries=-1)))
    for field in ("providers.fal.timeout", "providers.replicate.retries"):
        assert both.count(field) == 1, both
    cross = save(lambda d: d["limits"].update(minSize=5000))
    assert cross == "**limits.minSize** — must not exceed limits.maxSize (4096)"


def test_a_valid_config_edit_is_stored_and_used() -> None:
    at = open_page("admin").run()
    document = json.loads(at.text_area(key="admin_config").value)
    document["styles"]["noir"] = "{prompt}, film noir, black and white"
    document["race"]["hedgeDelay"] = 750
    at.text_area(key="admin_config").input(json.dumps(document))
    at.button(key="admin_config_save").click().run()

    assert not at.exception and not at.error
    success = at.success[0].value.replace("\\", "")  # as shown: markdown escapes dropped
    assert success.startswith("Config version ") and "(changed: race.hedgeDelay, styles.noir)" in success
    with core() as gen:
        assert gen.reload_config().styles["noir"] == "{prompt}, film noir, black and white"
        (_, _, source) = gen.log.config_history(1)[0]
    assert source == "console"
    assert json.loads(at.text_area(key="admin_config").value)["styles"]["noir"]  # the editor shows what is in force
    # The new style is offered on the Generate page.
    generate = open_page("generate").run()
    assert "noir" in generate.selectbox(key="generate_style").options


def test_saving_the_config_in_force_says_that_nothing_was_stored() -> None:
    """QA: "Config version 1 stored (the same settings as before)", though no version was stored."""
    with core() as gen:
        gen.set_config({"race": {"hedgeDelay": 900}}, source="cli")  # version 1
        versions = len(gen.log.config_history())
    at = open_page("admin").run()
    document = json.loads(at.text_area(key="admin_config").value)
    at.text_area(key="admin_config").input(json.dumps(document, indent=4))  # the same document, spaced otherwise
    at.button(key="admin_config_save").click().run()

    assert not at.exception and not at.error
    (said,) = [element.value for element in at.success]
    assert said.startswith("Nothing to save: the document is the config in force (version ")
    with core() as gen:
        assert len(gen.log.config_history()) == versions


def test_a_key_left_out_of_the_document_is_refused_not_quietly_brought_back() -> None:
    at = open_page("admin").run()
    document = json.loads(at.text_area(key="admin_config").value)
    del document["styles"]["3d"]
    at.text_area(key="admin_config").input(json.dumps(document))
    at.button(key="admin_config_save").click().run()
    assert not at.exception and not at.success
    shown = at.error[0].value.replace("\\", "")  # as shown: markdown escapes dropped
    assert shown.startswith("**styles.3d** — missing from the document: the editor holds the whole config")
    assert "3d" not in json.loads(at.text_area(key="admin_config").value)["styles"], "the edit is kept for fixing"


def test_storage_statistics_show_the_stored_images_and_the_spool() -> None:
    with core() as gen:
        gen.generate_sync({"prompt": "a lighthouse", "width": 320, "height": 180})
    at = open_page("admin").run()
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Store"], metrics["Images"], metrics["Waiting in spool"]) == ("local", "1", "0")


def test_the_spool_s_images_kept_for_another_store_are_said_apart() -> None:
    """QA: "Waiting in spool 2" for two images this console never uploads (kept for other stores)."""
    other = "r2 bucket news-images at http://127.0.0.1:18620"
    with core() as gen:
        gen.spool.keep(
            "ai/2026/11/r2.webp", b"x", content_type="image/webp", cache_control="c", metadata={}, destination=other
        )
    at = open_page("admin").run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Waiting in spool"] == "0"  # none that this console uploads
    # (md() breaks "http://" with a zero-width space: Markdown would make the text a link)
    said = [rendered(c.value).replace("\u200b", "") for c in at.caption if "another store" in c.value]
    assert said == [
        f"The spool also holds 1 image kept for another store ({other}): a process configured for that "
        "store uploads it."
    ], said


def test_the_sidebar_warns_while_fault_injection_is_on() -> None:
    at = open_page("app").run()
    assert not [w for w in at.sidebar.warning if "Fault injection" in w.value]
    with core() as gen:
        gen.set_config({"chaos": {"enabled": True, "providers": {"offline": {"errorRate": 0.5}}}}, merge=True)
    at = open_page("app").run()
    assert not at.exception
    warnings = [w.value for w in at.sidebar.warning]
    assert warnings == ["Fault injection is ON for offline (runtime config `chaos`)."]


def test_the_config_says_why_a_disabled_offline_provider_races() -> None:
    """With no key set, offline races though the document says ``enabled: false``: the page says why."""
    at = open_page("admin").run()
    assert json.loads(at.text_area(key="admin_config").value)["providers"]["offline"]["enabled"] is False
    notes = [rendered(i.value) for i in at.info]
    assert notes == [
        "offline races although its `enabled` is false below: no other provider has its key, so the offline "
        "renderer stands in. Set a provider's key (see the README) to race that provider."
    ]
    with core() as gen:  # a provider that races on its own: offline stays out, and so does the note
        gen.set_config(fake_config(fake={"options": {"latencyMs": 1}}), source="test")
    assert not open_page("admin").run().info


def edit_styles(at: Any, **styles: str) -> dict[str, Any]:
    """Add ``styles`` to the document in the editor (not saved); returns the edited document."""
    document = json.loads(at.text_area(key="admin_config").value)
    document["styles"].update(styles)
    at.text_area(key="admin_config").input(json.dumps(document, indent=2))
    return document


def test_a_save_over_a_config_stored_meanwhile_is_refused_as_a_conflict_and_the_newest_can_be_loaded() -> None:
    """Regression: with the editor open, a config stored elsewhere (``imagegen config set``, the API, another
    editor) was silently overwritten by "Validate and save", which stored the stale text plus the edit. The
    save is now based on the version the editor loaded and refused when a newer one was stored; the edits
    stay in the editor, and the newest version can be loaded."""
    with core() as gen:
        gen.set_config({"styles": {"first": "{prompt}, first"}}, merge=True, source="test")
    at = open_page("admin").run()
    with core() as gen:  # meanwhile, elsewhere
        gen.set_config({"styles": {"other": "{prompt}, from the shell"}}, merge=True, source="cli")
        versions = len(gen.log.config_history())

    edited = edit_styles(at, noir="{prompt}, film noir")
    at.button(key="admin_config_save").click().run()

    assert not at.exception
    (error,) = [rendered(e.value) for e in at.error]
    assert error.startswith("Not saved: config version 2 was stored after this editor loaded version 1")
    assert json.loads(at.text_area(key="admin_config").value) == edited, "the edits are kept"
    (warning,) = [rendered(w.value) for w in at.warning]
    assert warning.startswith("Config version 2 was stored (by cli, ")
    with core() as gen:
        assert len(gen.log.config_history()) == versions
        styles = gen.reload_config().styles
    assert "other" in styles and "noir" not in styles, "the change made elsewhere is still in force"

    at.button(key="admin_config_load_newest").click().run()
    assert not at.error and not at.warning
    assert "other" in json.loads(at.text_area(key="admin_config").value)["styles"]
    edit_styles(at, noir="{prompt}, film noir")
    at.button(key="admin_config_save").click().run()
    assert not at.error and at.success[0].value.startswith("Config version 3 stored")
    with core() as gen:
        assert {"first", "other", "noir"} <= set(gen.reload_config().styles)


def test_an_editor_without_edits_follows_a_config_stored_elsewhere() -> None:
    at = open_page("admin").run()
    with core() as gen:
        gen.set_config({"styles": {"other": "{prompt}, from the shell"}}, merge=True, source="cli")
    at.run()
    assert not at.warning
    assert "other" in json.loads(at.text_area(key="admin_config").value)["styles"]


def test_unsaved_config_edits_survive_a_page_switch_until_discarded() -> None:
    """Regression: edits in the config editor were lost without a word on switching to another page and back.
    They now stay for the session, until saved or discarded."""
    at = open_page("app").run()
    at.switch_page("views/admin.py").run()
    edited = edit_styles(at, noir="{prompt}, film noir")
    at.run()
    at.switch_page("views/history.py").run()
    assert not at.exception and not at.text_area
    at.switch_page("views/admin.py").run()

    assert not at.exception
    assert json.loads(at.text_area(key="admin_config").value) == edited
    with core() as gen:
        assert "noir" not in gen.reload_config().styles, "kept, not saved"
    at.button(key="admin_config_reload").click().run()
    assert "noir" not in json.loads(at.text_area(key="admin_config").value)["styles"]


def test_log_rows_kept_through_an_outage_are_announced_until_written() -> None:
    """Rows the log database did not take (an outage longer than the writer's retries) wait on this machine:
    the Admin page says how many, while the database still cannot take them, and nothing once they are in."""
    import sqlite3

    from imagegen_core.log.spill import LogSpill, spill_folder
    from imagegen_core.settings import Settings

    settings = Settings()
    with core() as gen:
        spill = LogSpill(spill_folder(settings.home, gen.log.label), gen.log)
        path = gen.log.path
    start = {"created_at": 1.0, "prompt": "kept", "keyword": None, "article_id": None, "width": 64, "height": 64}
    spill.keep([("start_request", ["kept-1"], {**start, "style": None, "source": "api"})])
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the log's write lock: nothing is written back
        at = open_page("admin").run()
        assert not at.exception
        assert [rendered(w.value) for w in at.warning][:1] == [
            "1 log row(s) were kept on this machine while the log database did not answer, and wait to be written "
            "to it: the console writes them within seconds of the database answering again (so does any "
            "`imagegen` command started here). Until then, History and Provider stats do not show them."
        ]
    finally:
        other.execute("ROLLBACK")
        other.close()
    with core() as gen:  # a process started here writes them
        gen.generate_sync({"prompt": "after", "width": 64, "height": 64})
    assert spill.waiting() == 0
    at = open_page("admin").run()
    assert not [w for w in at.warning if "log row(s) were kept" in w.value]


def test_a_breaker_s_reason_shows_as_literal_text_not_markdown() -> None:
    """A breaker's reason quotes a provider's error body (an auth failure opens it with the 401's text), which the
    provider, or anything between it and us, writes: QA had a fake upstream answer 401 with a Markdown link and
    image, and the Admin page rendered them (a phishing link beside the Reset button, an image fetched from the
    upstream's choice of host by every editor who opened the page)."""
    hostile = (
        "auth failure: fal: HTTP 401 **URGENT** [reset your key](https://evil.example/login) "
        "![t](https://evil.example/t.png)"
    )
    with core() as gen:
        gen.breakers.force_open("fal", reason=hostile)
    at = open_page("admin").run()
    assert not at.exception
    (reason,) = [c.value for c in at.caption if "URGENT" in c.value]
    assert "](" not in reason.replace("\\]\\(", ""), reason  # no link or image syntax left unescaped
    assert rendered(reason).startswith(
        "auth failure: fal: HTTP 401 **URGENT** [reset your key](https\u200b://evil.example/login)"
    )


def test_a_break_begun_before_the_clock_stepped_back_is_shown_over_not_running_until_an_hour_ahead() -> None:
    """QA: once a clock that ran an hour fast was set right, admission counted the break it had opened as over
    (the next call probed) while the Admin page showed it open "until" an hour ahead. A running break shows its
    end; a break whose end passed says so too, instead of "until" a past time."""
    from imagegen_core.breaker import BreakerRecord

    def opened(provider: str, start_s: float, break_s: float) -> None:
        def step(record: BreakerRecord | None) -> tuple[BreakerRecord, list[Any]]:
            start = time.time() + start_s
            rec = BreakerRecord(provider=provider, state=BreakerState.OPEN, updated_at=start, last_reason="5 failures")
            rec.opened_at, rec.opened_until = start, start + break_s
            return rec, []

        gen.breakers.store.update(provider, step)

    with core() as gen:
        opened("fal", 3600, 30)  # stamped by the clock before it stepped back an hour
        opened("replicate", 0, 600)  # running
        opened("unsplash", -3600, 30)  # long over
    at = open_page("admin").run()
    assert not at.exception
    shown = [c.value for c in at.caption if c.value.startswith("5 failures")]
    assert len(shown) == 3, shown
    fal, replicate, unsplash = shown  # sorted by provider name: fal, replicate, unsplash
    assert fal == "5 failures · its break is over: the next call probes", fal
    assert re.fullmatch(r"5 failures until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", replicate), replicate
    assert re.fullmatch(
        r"5 failures · its break ended at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: the next call probes", unsplash
    ), unsplash

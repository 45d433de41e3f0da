"""The history search and the analyst row queries on both backends: where their SQL differs (case-blind
LIKE, insertion-order tiebreaks, the catalog) the answers must not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegen_core.errors import InvalidRequestError
from imagegen_core.log import LogDB
from imagegen_core.log.analysis_queries import attempt_rows, has_table, pick_rows, request_rows
from imagegen_core.log.dialect import POSTGRES_UNACCENT
from imagegen_core.log.history import (
    MAX_SEARCH_CHARS,
    count_requests,
    get_request,
    logged_providers,
    record_reuse,
    search_requests,
)
from tests.pgcluster import PostgresCluster

T0 = 1_700_000_000.0


def seed(db: LogDB) -> None:
    for i, (prompt, keyword, article) in enumerate(
        [
            ("Harbour cranes at dawn", "harbour", "art-1"),
            ("a lighthouse at dusk", None, "art-2"),
            ("100% renewable_city", "politics", "art-3"),
        ]
    ):
        rid = f"r{i}"
        db.start_request(
            rid, created_at=T0 + i, prompt=prompt, keyword=keyword, article_id=article, width=64, height=64,
            style=None, source="python",
        )  # fmt: skip
        db.start_attempt(f"a{i}", request_id=rid, provider=["fal", "replicate"][i % 2], attempt=1, hedged=False,
                         started_at=T0 + i)  # fmt: skip
        db.finish_attempt(f"a{i}", finished_at=T0 + i + 1, outcome="success", duration_ms=1000)
        db.finish_request(rid, finished_at=T0 + i + 1, status="success", provider="fal", url=f"https://x/{i}.webp")


def test_search_ignores_case_and_takes_wildcards_literally(logdb: LogDB) -> None:
    seed(logdb)
    assert [r["id"] for r in search_requests(logdb, text="HARBOUR")] == ["r0"]
    assert [r["id"] for r in search_requests(logdb, text="LightHouse")] == ["r1"]
    assert [r["id"] for r in search_requests(logdb, text="100%")] == ["r2"]
    assert [r["id"] for r in search_requests(logdb, text="e_c")] == ["r2"]  # "_" is not "any character"
    assert search_requests(logdb, text="100%x") == []
    assert [r["id"] for r in search_requests(logdb, text="art")] == ["r2", "r1", "r0"]  # newest first
    assert count_requests(logdb, text="art") == 3 and count_requests(logdb, text="r1") == 1


def test_a_search_longer_than_the_limit_is_refused_saying_the_limit_not_a_database_error(logdb: LogDB) -> None:
    """QA: a History search of more than 50,000 characters failed as a log database error (SQLite: "LIKE or
    GLOB pattern too complex"). Runs of whitespace count as one space, as in the search itself."""
    seed(logdb)
    assert MAX_SEARCH_CHARS == 500
    for text in ("x" * 50_001, "é" * (MAX_SEARCH_CHARS + 1)):
        for query in (search_requests, count_requests):
            with pytest.raises(InvalidRequestError) as info:
                query(logdb, text=text)
            assert info.value.field == "search"
            assert f"is {len(text):,} characters; the limit is 500" in info.value.reason
    assert search_requests(logdb, text="Harbour" + "n" * (MAX_SEARCH_CHARS - 7)) == []  # at the limit: searched
    assert [r["id"] for r in search_requests(logdb, text="  Harbour" + " \n" * 5_000 + "cranes  ")] == ["r0"]


def test_search_ignores_case_beyond_ascii(logdb: LogDB) -> None:
    """SQLite's LIKE alone ignores the case of ASCII letters only. (PostgreSQL's ILIKE folds with the server's
    locale: any letter under a UTF-8 locale; "STRASSE" would find "Straße" on SQLite only.)"""
    logdb.start_request(
        "accents", created_at=T0, prompt="Naïve ÉTÉ à Łódź", keyword="Straße", article_id=None, width=64,
        height=64, style=None, source="python",
    )  # fmt: skip
    for query in ("NAÏVE", "été", "łÓDŹ", "straße", "STRAẞE"):
        assert [r["id"] for r in search_requests(logdb, text=query)] == ["accents"], query


def test_search_ignores_how_much_space_separates_words(logdb: LogDB) -> None:
    """QA: "harbour  cranes" (two spaces) found no row where "harbour cranes" found it. Each run of whitespace
    counts as one space, in the query and in the texts searched: History shows a prompt's line breaks, tabs and
    runs of spaces as one space, so an editor types what they see."""
    seed(logdb)
    logdb.start_request(
        "spaced", created_at=T0 + 5, prompt="Ferry\n\tat   the  pier", keyword=None, article_id="art 9", width=64,
        height=64, style=None, source="python",
    )  # fmt: skip
    for query in ("harbour  cranes", " harbour\tcranes ", "HARBOUR \n CRANES", "cranes  at   dawn"):
        assert [r["id"] for r in search_requests(logdb, text=query)] == ["r0"], query
        assert count_requests(logdb, text=query) == 1, query
    for query in ("ferry at the pier", "Ferry  at the\npier", "at the pier", "art  9"):
        assert [r["id"] for r in search_requests(logdb, text=query)] == ["spaced"], query
    assert search_requests(logdb, text="harbourcranes") == [], "words stay apart"


def test_reuse_is_a_new_row_and_equal_times_are_ordered_deterministically(logdb: LogDB) -> None:
    """Same ``created_at``: SQLite breaks the tie by insertion (rowid), PostgreSQL by id; here both agree."""
    seed(logdb)
    original = get_request(logdb, "r1")
    assert original is not None
    record_reuse(logdb, original, request_id="z-reuse", article_id="art-9", at=T0 + 2)  # same time as r2
    newest = search_requests(logdb, with_image=True, limit=2)
    assert [r["id"] for r in newest] == ["z-reuse", "r2"]
    reused = get_request(logdb, "z-reuse")
    assert reused is not None and reused["status"] == "reused" and reused["url"] == "https://x/1.webp"
    assert logged_providers(logdb) == ["fal", "replicate"]


def test_analyst_rows_and_the_picks_table(logdb: LogDB) -> None:
    seed(logdb)
    assert [r["id"] for r in request_rows(logdb, since=T0 + 1, until=None, providers=None)] == ["r1", "r2"]
    assert [r["id"] for r in request_rows(logdb, since=None, until=None, providers=["replicate"])] == ["r1"]
    rows = attempt_rows(logdb, since=None, until=T0 + 2, providers=["fal"])
    assert [(r["id"], r["duration_ms"]) for r in rows] == [("a0", 1000)]
    assert has_table(logdb, "picks") and not has_table(logdb, "nonexistent")
    logdb.record_pick("r0", provider="fal", offered=["fal", "replicate"], article_id="art-1", url=None,
                      storage_key=None, picked_at=T0 + 5)  # fmt: skip
    [pick] = pick_rows(logdb, since=T0, until=None, providers=None)
    assert pick["provider"] == "fal" and json.loads(pick["offered"]) == ["fal", "replicate"]


ACCENTED = [("cafe", "Café de Flore at night"), ("LODZ", "Łódź tram depot"), ("cafe", "CAFÉ racer")]


def accent_blind_search_works(db: LogDB) -> bool:
    for i, (_, prompt) in enumerate(ACCENTED):
        db.start_request(
            f"x{i}", created_at=T0 + i, prompt=prompt, keyword=None, article_id=None, width=64, height=64,
            style=None, source="python",
        )  # fmt: skip
    found = {query: {r["prompt"] for r in search_requests(db, text=query)} for query, _ in ACCENTED}
    # Accents and runs of spaces fold together ("café  de" is "cafe de").
    spaced = {r["prompt"] for r in search_requests(db, text="CAFE  de\tflore")}
    return spaced == {"Café de Flore at night"} and found == {
        "cafe": {"Café de Flore at night", "CAFÉ racer"},
        "LODZ": {"Łódź tram depot"},
    }


def test_search_ignores_accents_on_sqlite(tmp_path: Path) -> None:
    with LogDB(tmp_path / "log.db") as db:
        assert accent_blind_search_works(db)


def test_search_ignores_accents_on_a_postgresql_database_of_its_own(postgres: PostgresCluster) -> None:
    """Migrating a fresh database installs the ``unaccent`` extension (a trusted one: the database's owner may),
    and search folds both sides through it; before, "cafe" did not find "Café" on PostgreSQL."""
    name = postgres.create_database()
    try:
        with LogDB(postgres.url(name)) as db:
            assert db.dialect is POSTGRES_UNACCENT
            assert accent_blind_search_works(db)
        with LogDB(postgres.url(name)) as again:  # a later process finds it installed
            assert again.query("SELECT 1 AS one")[0]["one"] == 1 and again.dialect is POSTGRES_UNACCENT
    finally:
        postgres.drop_database(name)

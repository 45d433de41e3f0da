"""A stock photo's credit is kept in the log (schema v4: ``requests.attribution``), on both backends: a log
written before it migrates with its rows intact, a credit comes back as it was written, and a reuse of the
image carries it (Unsplash's terms require it wherever the photo is published)."""

from __future__ import annotations

from imagegen_core import Attribution
from imagegen_core.log import MIGRATIONS, LogDB
from imagegen_core.log.catalog import table_columns
from imagegen_core.log.history import get_request, record_reuse, search_requests
from tests.log.rows import apply_migrations_up_to

T0 = 1_700_000_000.0
CREDIT = Attribution(
    photographer_name="Ada Lens",
    photographer_url="https://unsplash.com/@adalens?utm_source=imagegen&utm_medium=referral",
    source_name="Unsplash",
    source_url="https://unsplash.com/?utm_source=imagegen&utm_medium=referral",
    photo_url="https://unsplash.com/photos/Abc123xyz?utm_source=imagegen&utm_medium=referral",
)
#: The last schema without credits.
BEFORE_CREDITS = 3


def log_at_version(url: str, version: int) -> None:
    """A log database at schema ``version`` as that imagegen left it (migrations 1..version applied and
    recorded), holding one stock photo and one failed request written with that schema's columns."""
    db = LogDB(url, migrate=False)
    try:
        with db.backend.transaction() as tx:
            apply_migrations_up_to(db, tx, version, recorded_at=T0)
            insert = (
                "INSERT INTO requests (id, created_at, finished_at, status, prompt, keyword, article_id, width,"
                " height, style, provider, url, storage_key, elapsed_ms, error, cost_usd, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            tx.execute(
                insert,
                ("old-photo", T0, T0 + 1, "success", "a lighthouse", "coast", "art-1", 800, 450, None, "unsplash",
                 "https://images.unsplash.com/photo-1?w=800&h=450", None, 900, None, 0.0, "api"),
            )  # fmt: skip
            tx.execute(
                insert,
                ("old-failed", T0 + 2, T0 + 3, "failed", "a harbour", None, None, 800, 450, None, "default",
                 "file:///default.webp", None, 5000, "every provider failed", 0.0, "api"),
            )  # fmt: skip
    finally:
        db.close()


def test_a_log_from_before_credits_migrates_and_its_rows_keep_working(db_url: str) -> None:
    """Opening a v3 log that holds rows adds the column (v4) and changes no row: the old stock photo has no
    credit (None, not an error), is still found and can still be reused; new rows can carry one."""
    log_at_version(db_url, BEFORE_CREDITS)
    with LogDB(db_url) as db:
        assert db.applied_versions() == [v for v, _, _ in MIGRATIONS]
        assert ("attribution", False) in table_columns(db, "requests")
        rows = {row["id"]: row for row in search_requests(db)}
        assert set(rows) == {"old-photo", "old-failed"}
        assert rows["old-photo"]["attribution"] is None and rows["old-failed"]["attribution"] is None
        assert rows["old-photo"]["url"] == "https://images.unsplash.com/photo-1?w=800&h=450"
        assert (rows["old-failed"]["status"], rows["old-failed"]["error"]) == ("failed", "every provider failed")
        original = get_request(db, "old-photo")
        assert original is not None
        record_reuse(db, original, request_id="reuse-1", article_id="art-2", at=T0 + 10)
        reused = get_request(db, "reuse-1")
        assert reused is not None and reused["status"] == "reused" and reused["attribution"] is None
        assert Attribution.from_log(reused["attribution"]) is None


def test_a_credit_round_trips_through_the_log_and_a_reuse_carries_it(logdb: LogDB) -> None:
    logdb.start_request(
        "photo", created_at=T0, prompt="a lighthouse", keyword="coast", article_id="art-1", width=800,
        height=450, style=None, source="api",
    )  # fmt: skip
    logdb.finish_request(
        "photo", finished_at=T0 + 1, status="success", provider="unsplash",
        url="https://images.unsplash.com/photo-1?w=800&h=450", elapsed_ms=900, attribution=CREDIT.to_log(),
    )  # fmt: skip
    original = get_request(logdb, "photo")
    assert original is not None
    assert Attribution.from_log(original["attribution"]) == CREDIT
    record_reuse(logdb, original, request_id="reuse-1", article_id="art-2", at=T0 + 10)
    reused = get_request(logdb, "reuse-1")
    assert reused is not None and Attribution.from_log(reused["attribution"]) == CREDIT
    assert [Attribution.from_log(r["attribution"]) for r in search_requests(logdb)] == [CREDIT, CREDIT]


def test_a_credit_column_that_is_not_a_credit_reads_as_none() -> None:
    """A row written by hand or another tool must not break the History page that reads it."""
    for text in (None, "", "not json", "[]", '{"photographerName": "Ada"}', 42):
        assert Attribution.from_log(text) is None
    assert Attribution.from_log(CREDIT.to_log()) == CREDIT

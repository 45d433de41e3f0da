"""The request history (the console's History page): search, look-up, and the reuse of an earlier image.

**Reuse.** Giving an article an image that already exists is recorded as a *new* ``requests`` row with
status ``reused`` (source ``console`` by default): the original's prompt, keyword, size, style, provider,
URL, storage key and stock-photo credit (``attribution``: the new article must publish it too), the new
article id, no attempts, zero cost and zero elapsed time. So the history
(searchable by the new article id, newest first) says which image each article got and when, and no
provider statistic moves: success rates, win rates and cost per winning image count attempts and
``success`` requests only, and a reuse is neither. The original is found again by its storage key or URL.

SQL stays in this package; rows come back as plain dicts.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import InvalidRequestError
from .db import LogDB
from .dialect import fold_spaces

#: Longest search text (after runs of whitespace become one space): a part of a prompt finds it. QA: a search
#: of 50,000 characters failed as a log database error (SQLite: "LIKE or GLOB pattern too complex"), and a long
#: pattern costs its length times each text's on every row.
MAX_SEARCH_CHARS = 500

#: Status of a row that gave an article an image from an earlier request.
REUSED = "reused"
#: Statuses whose ``url`` is an image a provider produced (a failed request's URL is the default image).
WITH_IMAGE = ("success", REUSED)

HISTORY_COLUMNS = (
    "id",
    "created_at",
    "finished_at",
    "status",
    "prompt",
    "keyword",
    "article_id",
    "width",
    "height",
    "style",
    "provider",
    "url",
    "storage_key",
    "elapsed_ms",
    "cost_usd",
    "source",
    "error",
    "attribution",
)
_SELECT = f"SELECT {', '.join(HISTORY_COLUMNS)} FROM requests"


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(db: LogDB, text: str | None, with_image: bool) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    # Runs of whitespace count as one space, in the term and (for a term of several words) in the texts:
    # History shows a prompt's line breaks and runs of spaces as one space, and that is what editors type.
    needle = fold_spaces(text or "")
    if len(needle) > MAX_SEARCH_CHARS:
        raise InvalidRequestError(
            "search",
            f"is {len(needle):,} characters; the limit is {MAX_SEARCH_CHARS}: search for a part of the text",
        )
    if needle:
        # A search box ignores case in any script, and accents ("cafe" finds "Café"): SQLite's LIKE does
        # neither beyond ASCII case, hence the fold on both sides. PostgreSQL's ILIKE ignores case, and
        # unaccent() folds accents where the extension is installed (see the dialect).
        dialect = db.dialect
        pattern = _like(dialect.fold_text(needle))
        spaces = " " in needle
        like = " OR ".join(
            f"{dialect.case_fold(column, spaces=spaces)} {dialect.ilike} {dialect.search_term()} ESCAPE '\\'"
            for column in ("prompt", "keyword", "article_id")
        )
        clauses.append(f"({like} OR id = ?)")
        params += [pattern, pattern, pattern, needle]
    if with_image:
        clauses.append(f"url IS NOT NULL AND status IN ({', '.join('?' for _ in WITH_IMAGE)})")
        params += list(WITH_IMAGE)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def search_requests(
    db: LogDB, *, text: str | None = None, with_image: bool = False, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Requests newest first whose prompt, keyword or article id contains ``text`` (any case; any accents
    too, on PostgreSQL where ``unaccent`` is installed), or whose id is ``text``; with ``with_image``, only
    those that delivered a provider's image (or reused one). InvalidRequestError when ``text`` is longer than
    :data:`MAX_SEARCH_CHARS`."""
    where, params = _where(db, text, with_image)
    order = f"created_at DESC, {db.dialect.insertion_order} DESC"
    return db.query(f"{_SELECT}{where} ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit, offset])


def count_requests(db: LogDB, *, text: str | None = None, with_image: bool = False) -> int:
    """How many requests :func:`search_requests` would find without a limit."""
    return count_rows(db, text=text, with_image=with_image)[0]


def count_rows(db: LogDB, *, text: str | None = None, with_image: bool = False) -> tuple[int, int]:
    """How many rows :func:`search_requests` would find without a limit, and how many of them are reuses
    (``reused`` rows: an earlier image given to another article, which no request total counts), in one scan."""
    where, params = _where(db, text, with_image)
    reused = f"COALESCE(SUM(CASE WHEN status = '{REUSED}' THEN 1 ELSE 0 END), 0)"
    (row,) = db.query(f"SELECT COUNT(*) AS n, {reused} AS reused FROM requests{where}", params)
    return int(row["n"]), int(row["reused"])


def get_request(db: LogDB, request_id: str) -> dict[str, Any] | None:
    """One request row by id, or None."""
    rows = db.query(f"{_SELECT} WHERE id = ?", (request_id,))
    return rows[0] if rows else None


#: Every provider name of ``attempts``, found by a skip scan: each step one look-up in the ``(provider,
#: started_at)`` index for the next name after the last, so a log of a few providers costs a few look-ups,
#: however many attempts it holds. ``SELECT DISTINCT provider`` read the whole index: 0.35 s on a year of log
#: (four million attempts), on every redraw of the console's provider filter (bench/log_scale.py).
_PROVIDERS_SKIP_SCAN = (
    "WITH RECURSIVE names (provider) AS ("
    " SELECT MIN(provider) FROM attempts"
    " UNION ALL SELECT (SELECT MIN(provider) FROM attempts WHERE attempts.provider > names.provider)"
    " FROM names WHERE names.provider IS NOT NULL"
    ") SELECT provider FROM names WHERE provider IS NOT NULL ORDER BY provider"
)


def logged_providers(db: LogDB) -> list[str]:
    """Every provider that has an attempt in the log, sorted (for the statistics' provider filter)."""
    return [str(r["provider"]) for r in db.query(_PROVIDERS_SKIP_SCAN)]


def record_reuse(
    db: LogDB,
    original: dict[str, Any],
    *,
    request_id: str,
    article_id: str,
    source: str = "console",
    at: float | None = None,
) -> None:
    """Record that ``article_id`` now uses the image of ``original`` (a row from :func:`get_request`)."""
    now = time.time() if at is None else at
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO requests (id, created_at, finished_at, status, prompt, keyword, article_id, width, height,"
            " style, provider, url, storage_key, elapsed_ms, error, cost_usd, source, attribution)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, 0, ?, ?)",
            (
                request_id,
                now,
                now,
                REUSED,
                original["prompt"],
                original.get("keyword"),
                article_id,
                original.get("width"),
                original.get("height"),
                original.get("style"),
                original.get("provider"),
                original["url"],
                original.get("storage_key"),
                source,
                original.get("attribution"),
            ),
        )

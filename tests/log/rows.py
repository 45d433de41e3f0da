"""Log rows for tests: a request as the service starts it, optionally finished."""

from __future__ import annotations

from imagegen_core.log import LogDB


def add_request(db: LogDB, request_id: str, created_at: float, status: str | None = None, *, prompt: str = "p") -> None:
    db.start_request(
        request_id,
        created_at=created_at,
        prompt=prompt,
        keyword=None,
        article_id=None,
        width=512,
        height=512,
        style=None,
        source="python",
    )
    if status is not None:
        db.finish_request(request_id, finished_at=created_at + 1, status=status, cost_usd=0.5)


def add_rejected(db: LogDB, request_id: str, created_at: float, error: str = "prompt: must not be empty") -> None:
    """A request refused by validation, as the service logs it (one finished ``rejected`` row)."""
    db.reject_request(
        request_id,
        created_at=created_at,
        prompt="",
        keyword=None,
        article_id=None,
        width=None,
        height=None,
        style=None,
        source="api",
        error=error,
    )

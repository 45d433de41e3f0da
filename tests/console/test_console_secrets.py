"""No page ever shows a secret: every page is rendered with fake keys set, and every element is scanned."""

from __future__ import annotations

from typing import Any

import pytest
from console_helpers import core, open_page

SECRETS = {
    "REPLICATE_API_TOKEN": "r8_SECRETreplicate0123456789",
    "FAL_KEY": "fal-SECRET-key-0123456789",
    "UNSPLASH_ACCESS_KEY": "unsplash-SECRET-0123456789",
    "OPENAI_API_KEY": "sk-SECRET-openai-0123456789",
    "IMAGEGEN_ADMIN_TOKEN": "admin-SECRET-0123456789",
    "IMAGEGEN_API_TOKEN": "api-SECRET-0123456789",
}


def everything_shown(node: Any) -> str:
    """The text of every element and block in the page tree (labels, values, markdown, chart specs)."""
    parts = [str(node.proto)] if getattr(node, "proto", None) is not None else []
    for child in getattr(node, "children", {}).values():
        parts.append(everything_shown(child))
    return "\n".join(parts)


#: The log database's password, on PostgreSQL (the test cluster trusts local connections, so any works).
DB_PASSWORD = "pg-SECRET-password-0123456789"


@pytest.fixture(params=["sqlite", "postgres"])
def log_url(request: pytest.FixtureRequest) -> str | None:
    """The console's log: the default SQLite file, or PostgreSQL through a URL that holds a password."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{DB_PASSWORD}@", 1)


def test_no_page_shows_a_secret(monkeypatch: pytest.MonkeyPatch, log_url: str | None) -> None:
    secrets = dict(SECRETS)
    if log_url is not None:
        monkeypatch.setenv("IMAGEGEN_DATABASE_URL", log_url)
        secrets["IMAGEGEN_DATABASE_URL password"] = DB_PASSWORD
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    leak = f"key {SECRETS['FAL_KEY']} leaked"
    with core() as gen:  # texts that hold a secret, written around the service's own redaction
        gen.breakers.force_open("fal", reason=f"drill: {leak}")
        gen.log.start_request(
            "r1", created_at=1.0, prompt=leak, keyword=None, article_id=None, width=64, height=64, style=None,
            source="test",
        )  # fmt: skip
        gen.log.finish_request("r1", finished_at=2.0, status="failed", provider="fal", error=leak)
    at = open_page("app").run()
    rendered = []
    for page in ("generate", "compare", "history", "stats", "admin"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, page
        rendered.append(everything_shown(at._tree))
    text = "\n".join(rendered)
    assert "Racing: replicate, fal, unsplash, openai" in text  # the keys are really in use
    # The planted texts were shown, redacted: read from the log under test (on PostgreSQL they exist nowhere else).
    # (as literal Markdown: each "*" escaped, which the browser shows as "key *** leaked"; the element protos
    # print a backslash doubled)
    assert "key \\\\*\\\\*\\\\* leaked" in text, [line for line in text.splitlines() if "leaked" in line]
    for name, value in secrets.items():
        assert value not in text, name

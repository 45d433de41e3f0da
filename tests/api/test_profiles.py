"""Deployment profiles (``IMAGEGEN_ENV``): which env files are read, and production refusing to start — with
one line per reason and exit 2 — rather than run open or half-configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from imagegen_core.service import ImageGen
from imagegen_core.settings import Settings

from .conftest import ADMIN, ADMIN_TOKEN, api_client
from .serve_process import run_serve, serve, serve_env, start_warnings

#: A networked provider with a key: production has a real image source (never called in these tests).
WITH_A_PROVIDER = {"FAL_KEY": "fal-test-key"}
#: Where clients reach the local store's images (/files), so that answers are not file:// URLs.
PUBLIC = {"IMAGEGEN_PUBLIC_BASE_URL": "https://images.example/files"}


def test_profile_env_files_layer_over_dotenv_and_real_variables_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("IMAGEGEN_APP_NAME=base\nIMAGEGEN_MAX_BODY_BYTES=2048\n")
    (tmp_path / ".env.staging").write_text("IMAGEGEN_APP_NAME=staging\n")
    assert Settings().app_name == "base"  # development reads .env only (.env.development is absent)
    monkeypatch.setenv("IMAGEGEN_ENV", "staging")
    staged = Settings()
    assert (staged.environment, staged.app_name, staged.max_body_bytes) == ("staging", "staging", 2048)
    assert staged.env_files_read == (Path(".env"), Path(".env.staging"))
    monkeypatch.setenv("IMAGEGEN_APP_NAME", "from-env")
    assert Settings().app_name == "from-env"
    (tmp_path / "only.env").write_text("IMAGEGEN_APP_NAME=only\n")
    monkeypatch.delenv("IMAGEGEN_APP_NAME")
    monkeypatch.setenv("IMAGEGEN_ENV_FILE", str(tmp_path / "only.env"))
    assert Settings().app_name == "only" and Settings().max_body_bytes != 2048


def test_production_turns_the_api_docs_off_unless_asked() -> None:
    assert Settings(_env_file=None).api_docs_enabled
    assert not Settings(_env_file=None, IMAGEGEN_ENV="production").api_docs_enabled
    assert Settings(_env_file=None, IMAGEGEN_ENV="production", IMAGEGEN_API_DOCS="1").api_docs_enabled


@pytest.mark.parametrize(
    ("env", "env_file", "reason"),
    [
        ({**WITH_A_PROVIDER, **PUBLIC}, None, "IMAGEGEN_ADMIN_TOKEN is not set"),
        ({**WITH_A_PROVIDER, **PUBLIC, "IMAGEGEN_ADMIN_TOKEN": "short"}, None, "has under 16 characters"),
        (
            {**WITH_A_PROVIDER, **PUBLIC, "IMAGEGEN_ADMIN_TOKEN": ADMIN_TOKEN, "IMAGEGEN_API_TOKEN": "provider"},
            None,
            "IMAGEGEN_API_TOKEN has under 16 characters; use a random one (openssl rand -hex 24)",
        ),
        (
            {**WITH_A_PROVIDER, **PUBLIC},
            f"IMAGEGEN_ADMIN_TOKEN={ADMIN_TOKEN}\n",
            "secrets file .env.production is readable by every user (mode 0644); run chmod 600 .env.production",
        ),
        ({**PUBLIC, "IMAGEGEN_ADMIN_TOKEN": ADMIN_TOKEN}, None, "only the offline provider would answer"),
        (
            {**WITH_A_PROVIDER, "IMAGEGEN_ADMIN_TOKEN": ADMIN_TOKEN},
            None,
            "images would be answered as file:// URLs that only this machine can open; set "
            "IMAGEGEN_PUBLIC_BASE_URL to the address the API's /files is reached at",
        ),
    ],
    ids=[
        "no-admin-token",
        "short-admin-token",
        "short-api-token",
        "world-readable-env-file",
        "offline-only",
        "file-urls",
    ],
)
def test_production_refuses_to_start_with_a_one_line_reason(
    tmp_path: Path, env: dict[str, str], env_file: str | None, reason: str
) -> None:
    if env_file is not None:
        path = tmp_path / ".env.production"
        path.write_text(env_file)
        path.chmod(0o644)
    proc = run_serve(cwd=tmp_path, env=serve_env(tmp_path / "home", IMAGEGEN_ENV="production", **env))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # exactly one line
    assert proc.stderr.startswith("imagegen: refusing to start in production: ") and reason in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_problem_gets_its_own_line() -> None:
    """With several problems at once, the operator sees them all (one line each), not one per attempt."""
    proc = run_serve(cwd=Path.cwd(), env=serve_env(Path.cwd() / "home", IMAGEGEN_ENV="production"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 3
    assert all(line.startswith("imagegen: refusing to start in production: ") for line in lines)


def test_production_starts_when_configured_and_hides_the_docs(tmp_path: Path) -> None:
    path = tmp_path / ".env.production"
    path.write_text(
        f"IMAGEGEN_ADMIN_TOKEN={ADMIN_TOKEN}\nIMAGEGEN_ALLOW_OFFLINE_ONLY=1\n"
        "IMAGEGEN_PUBLIC_BASE_URL=https://images.example/files\n"
    )
    path.chmod(0o600)
    with serve(cwd=tmp_path, env=serve_env(tmp_path / "home", IMAGEGEN_ENV="production")) as server:
        assert httpx.get(f"{server.base_url}/docs").status_code == 404
        assert httpx.get(f"{server.base_url}/openapi.json").status_code == 404
        status = httpx.get(f"{server.base_url}/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status.status_code == 200  # the token came from .env.production
    assert "no /docs in production" in server.log.read_text()
    assert start_warnings(server.log) == []  # no file:// URLs: IMAGEGEN_PUBLIC_BASE_URL is set


def test_outside_production_a_short_admin_token_is_served_with_a_warning(tmp_path: Path) -> None:
    """QA run: `IMAGEGEN_ADMIN_TOKEN=abc` turned admin on in development without a word; production refuses
    it. Now serve says so at start (the token still works: a developer's machine may want it short)."""
    env = serve_env(tmp_path / "home", IMAGEGEN_ADMIN_TOKEN="abc", **PUBLIC)
    with serve(cwd=tmp_path, env=env) as server:
        status = httpx.get(f"{server.base_url}/admin/status", headers={"Authorization": "Bearer abc"})
        assert status.status_code == 200
    assert start_warnings(server.log) == [
        "IMAGEGEN_ADMIN_TOKEN has under 16 characters; use a random one (openssl rand -hex 24)"
    ]


@pytest.mark.parametrize("allowed", [False, True])
async def test_in_production_a_config_edit_never_lets_offline_drawings_pass_for_article_images(
    make_gen: Callable[..., ImageGen], allowed: bool
) -> None:
    """QA: production refuses to start with only the offline provider, but a PATCH disabling the one networked
    provider got there while serving: generate then answered procedural drawings with ``success: true``. Now
    the default image answers, saying why; with ``IMAGEGEN_ALLOW_OFFLINE_ONLY=1`` the drawing, as asked."""
    env = {"IMAGEGEN_ALLOW_OFFLINE_ONLY": "1"} if allowed else {}
    gen = make_gen(None, IMAGEGEN_ENV="production", **WITH_A_PROVIDER, **env)
    async with api_client(gen) as client:
        patched = await client.patch("/admin/config", json={"providers": {"fal": {"enabled": False}}}, headers=ADMIN)
        assert patched.status_code == 200
        body = (await client.post("/images/generate", json={"prompt": "x", "width": 64, "height": 64})).json()
    if allowed:
        assert (body["success"], body["provider"], body["notes"]) == (True, "offline", [])
    else:
        assert (body["success"], body["provider"]) == (False, "default")
        assert body["notes"] == [
            "no provider raced in production: only the offline provider would answer (no provider key set, or "
            "every networked provider disabled); configure a provider or set IMAGEGEN_ALLOW_OFFLINE_ONLY=1"
        ]

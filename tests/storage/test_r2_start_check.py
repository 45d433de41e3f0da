"""``imagegen serve`` looks at R2 once before serving, against a real S3 server (SeaweedFS ``weed mini``, which
checks SigV4 signatures). QA: production started silently with a wrong secret or a bucket that does not exist,
then answered every request with a default image URL not in the bucket (/health 503), while an unreachable
PostgreSQL was refused at start. Now a setup R2 refuses is refused at start (exit 2, one line naming the
variable, no secret); an endpoint that does not answer is one warning line, and the server starts (the spool
keeps the images of an outage)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ADMIN_TOKEN
from tests.api.serve_process import run_serve, serve, serve_env, start_warnings
from tests.s3server import ACCESS_KEY, SECRET_KEY, WeedServer, weed

__all__ = ["weed"]  # the module-scoped server fixture

WRONG_SECRET = "wrong-secret-0123456789abcdefghij"


def production(home: Path, endpoint: str, bucket: str, *, secret: str = SECRET_KEY) -> dict[str, str]:
    """A production setup with nothing else to refuse: a provider key, an admin token, R2 for the images."""
    return serve_env(
        home,
        IMAGEGEN_ENV="production",
        FAL_KEY="fal-test-key",
        IMAGEGEN_ADMIN_TOKEN=ADMIN_TOKEN,
        R2_ENDPOINT_URL=endpoint,
        R2_ACCESS_KEY_ID=ACCESS_KEY,
        R2_SECRET_ACCESS_KEY=secret,
        R2_BUCKET=bucket,
        R2_PUBLIC_BASE_URL=f"https://images.example/{bucket}",
    )


@pytest.mark.parametrize(
    ("case", "variable"),
    [("wrong-secret", "R2_SECRET_ACCESS_KEY"), ("missing-bucket", "R2_BUCKET")],
)
def test_production_refuses_to_start_with_an_r2_setup_the_server_refuses(
    weed: WeedServer, tmp_path: Path, case: str, variable: str
) -> None:
    bucket = weed.create_bucket() if case == "wrong-secret" else "no-such-bucket-here"
    secret = WRONG_SECRET if case == "wrong-secret" else SECRET_KEY
    started = time.monotonic()
    proc = run_serve(cwd=tmp_path, env=production(tmp_path / "home", weed.endpoint, bucket, secret=secret))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("imagegen: refusing to start in production: R2 ") and variable in proc.stderr
    assert WRONG_SECRET not in proc.stderr and SECRET_KEY not in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30  # (the interpreter and imports included)


def test_an_r2_endpoint_that_does_not_answer_is_a_warning_and_production_starts(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with serve(cwd=tmp_path, env=production(tmp_path / "home", closed, "images")) as server:
        live = httpx.get(f"{server.base_url}/health/live")
    assert live.status_code == 200
    warnings = start_warnings(server.log)
    assert len(warnings) == 1, server.log.read_text()
    assert f"cannot reach R2 at {closed}" in warnings[0] and "starting anyway" in warnings[0]


def test_production_starts_quietly_with_a_good_r2_setup(weed: WeedServer, tmp_path: Path) -> None:
    bucket = weed.create_bucket()
    with serve(cwd=tmp_path, env=production(tmp_path / "home", weed.endpoint, bucket)) as server:
        health = httpx.get(f"{server.base_url}/health")
    assert health.status_code == 200, health.text
    assert start_warnings(server.log) == []

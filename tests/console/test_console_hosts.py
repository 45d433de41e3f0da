"""DNS rebinding (QA): ``imagegen console`` bound 127.0.0.1 but checked no ``Host`` header, so a page whose
host name rebinds to 127.0.0.1 opened a session (``/_stcore/stream`` with ``Host: rebind.attacker.example:PORT``
and a matching Origin answered 101, ``/_stcore/health`` 200) and then read History and used Admin. Now only
loopback, ``localhost`` and the hosts of ``IMAGEGEN_CONSOLE_HOSTS`` get an answer, over HTTP and websocket."""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from test_console_browser import serve_console

from imagegen_core import Settings
from imagegen_core.errors import ConfigError
from imagegen_core.web_hosts import host_allowed, normalised_host

FOREIGN = "rebind.attacker.example"


def http_get(port: int, path: str, host: str) -> tuple[int, bytes]:
    """Status and body of ``GET path`` sent to 127.0.0.1:port with this ``Host`` header (as a rebound page's
    browser sends it: the connection goes to loopback, the header names the attacker's host)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def websocket_upgrade(port: int, host: str) -> int:
    """The status a websocket upgrade of ``/_stcore/stream`` gets with this Host and a matching Origin (101:
    a session is open)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: streamlit\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    return int(data.split()[1])


def test_the_console_answers_loopback_and_listed_hosts_and_refuses_any_other_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``imagegen console``: a foreign Host gets 403 on ``/_stcore/health``, on the page and on the
    websocket upgrade; ``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT`` and a host listed in
    ``IMAGEGEN_CONSOLE_HOSTS`` get their usual answers (200, 101)."""
    monkeypatch.setenv("IMAGEGEN_CONSOLE_HOSTS", "Console.Example.com, proxy.internal")
    with serve_console(tmp_path) as base:
        port = urlsplit(base).port
        assert port is not None
        for host in (f"{FOREIGN}:{port}", FOREIGN, f"127.0.0.1.{FOREIGN}:{port}", f"localhost.{FOREIGN}:{port}"):
            status, body = http_get(port, "/_stcore/health", host)
            assert (status, host) == (403, host)
            assert b"IMAGEGEN_CONSOLE_HOSTS" in body
            assert http_get(port, "/", host)[0] == 403
            assert websocket_upgrade(port, host) == 403
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "console.example.com",
            "proxy.internal:443",
        ):
            assert (http_get(port, "/_stcore/health", host), host) == ((200, b"ok"), host)
            assert (websocket_upgrade(port, host), host) == (101, host)


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("127.0.0.1:8501", True),
        ("127.0.0.1", True),
        ("127.1.2.3:8501", True),
        ("localhost:8501", True),
        ("LOCALHOST.:8501", True),
        ("[::1]:8501", True),
        ("rebind.attacker.example:8501", False),
        ("localhost.attacker.example", False),
        ("127.0.0.1.nip.io:8501", False),
        ("0.0.0.0:8501", False),
        ("192.168.1.10:8501", False),
        ("[::ffff:7f00:1]:8501", False),
        ("localhost:notaport", False),
        ("user@localhost:8501", False),
        ("localhost/x", False),
        ("", False),
        (None, False),
        ("cms.example.com", True),
        ("CMS.example.com.:443", True),
    ],
)
def test_only_loopback_localhost_and_listed_hosts_are_allowed(header: str | None, allowed: bool) -> None:
    assert host_allowed(header, ["cms.example.com"]) is allowed


def test_console_hosts_are_read_comma_separated_and_lower_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_CONSOLE_HOSTS", " Console.Example.com., 10.0.0.5 ,[::1],console.example.com")
    assert Settings().console_hosts == ["console.example.com", "10.0.0.5", "::1"]
    assert Settings(IMAGEGEN_CONSOLE_HOSTS="").console_hosts == []


def test_an_international_console_host_is_kept_in_the_ascii_form_browsers_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: `Bücher.example`, as the address bar shows it, was refused as "not a host name"; a browser sends it as
    `xn--bcher-kva.example` in the Host header."""
    monkeypatch.setenv("IMAGEGEN_CONSOLE_HOSTS", "Bücher.example")
    assert Settings().console_hosts == ["xn--bcher-kva.example"]
    assert host_allowed("xn--bcher-kva.example:8501", Settings().console_hosts)


@pytest.mark.parametrize("entry", ["https://console.example.com", "console.example.com:8501", "*.example.com", "a b"])
def test_a_console_host_that_is_not_a_host_name_is_refused_saying_what_to_write(
    entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGEN_CONSOLE_HOSTS", entry)
    with pytest.raises(ConfigError, match=r"IMAGEGEN_CONSOLE_HOSTS.*is not a host name.*without scheme, port"):
        Settings()
    with pytest.raises(ValueError, match=r"console\.example\.com"):
        normalised_host(entry)


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["from a terminal", "started with SIGINT ignored"])
def test_ctrl_c_stops_the_console_with_status_130_and_no_aborted(tmp_path: Path, sigint_ignored: bool) -> None:
    """QA: a terminal's Ctrl+C (SIGINT to the whole process group) made the console print Click's "Aborted!"
    and exit 1, where every other command ends 130 when interrupted. Started by a script in the background
    (SIGINT ignored, which an exec keeps), SIGINT stopped it with status 0."""
    import signal
    import subprocess
    import sys

    from test_console_browser import free_port, wait_healthy

    from tests.api.serve_process import with_sigint_ignored

    port, log = free_port(), tmp_path / "console.log"
    command = [str(Path(sys.executable).parent / "imagegen"), "console", "--port", str(port)]
    if sigint_ignored:
        command = with_sigint_ignored(command)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=15) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Aborted" not in log.read_text()

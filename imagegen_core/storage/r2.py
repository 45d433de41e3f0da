"""The R2 store: Cloudflare R2, or any S3-compatible server, through boto3 (providers.md §5).

boto3 is imported on first use, inside a worker thread, so ``import imagegen_core`` stays cheap and the
event loop never waits for boto3's import (~0.4 s) or for any S3 call. Those threads are the store's own
daemon threads (:mod:`.workers`), not the loop's small default executor: an S3 server that hangs must not
freeze the rest of the process, nor keep a command alive after it has answered. The client is built once
per store:

* endpoint ``https://<R2_ACCOUNT_ID>.r2.cloudflarestorage.com``, or ``R2_ENDPOINT_URL`` (any S3-compatible
  server; then path-style addressing, since such servers rarely have per-bucket DNS names);
* region ``auto`` and SigV4, as R2 requires;
* ``request_checksum_calculation`` / ``response_checksum_validation`` = ``when_required``: botocore ≥ 1.36
  adds CRC32 checksums (and aws-chunked trailers) to every upload by default, which R2 has answered with
  501/401 errors;
* botocore's ``standard`` retry mode: bounded attempts with exponential backoff and full jitter on
  throttling (1 s × 2ⁿ scale), 5xx and connection errors (50 ms × 2ⁿ scale) — a maintained implementation
  rather than a loop of our own. The service's deadline bounds the whole upload anyway, and an upload
  that still fails leaves the image in the spool (``storage/spool.py``).

Reads someone waits for without a deadline of their own — the health check (:meth:`R2Store.check`) and the
usage listing (:meth:`R2Store.stats`) — go through a second client that tries once and waits ``check_wait_s``
/ ``list_wait_s`` for an answer: against a server that accepts connections and never answers, the default
client's 4 attempts × 30 s read timeout held ``/health`` for a minute and ``imagegen storage stats`` for two,
whose message then named one 30 s wait.

Every botocore error is translated here, and only here, into a one-line :class:`StorageError` that says
what to fix; no message ever contains the access key or the secret.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from ..errors import StorageError, StoreSetupError, clip, redact
from ..forking import renew_after_fork
from ..workers import DaemonWorkers
from .base import StoredObject, bucket_destination, safe_key
from .stats import StorageStats, listing_prefix, tally

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

#: R2 refuses objects whose user metadata (keys + values, UTF-8) exceeds this many bytes.
MAX_METADATA_BYTES = 8192
#: Attempts per S3 call, the first included (botocore ``standard`` mode ``total_max_attempts``).
DEFAULT_MAX_ATTEMPTS = 4
#: Concurrent S3 calls per store: worker threads, and connections in botocore's pool (one each).
MAX_CONCURRENT_CALLS = 32
#: How long :meth:`R2Store.check` waits for its one try: a load balancer's health check gives up in seconds.
CHECK_WAIT_S = 2.0
#: How long :meth:`R2Store.stats` waits for each page of the listing (one try each).
LIST_WAIT_S = 10.0
#: How long what a failed try met stays the likely reason of a call cut short (s): a few retries' backoff.
TROUBLE_MEMORY_S = 60.0

_CREDENTIAL_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "Unauthorized"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded"}


class R2Store:
    """A :class:`~imagegen_core.storage.base.Store` over an R2 (or S3-compatible) bucket.

    Objects are served from ``public_base_url`` (an R2 custom domain or the bucket's ``r2.dev`` URL),
    never from the S3 endpoint, which is not public.
    """

    name = "r2"

    def __init__(
        self,
        *,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        public_base_url: str,
        account_id: str | None = None,
        endpoint_url: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        check_wait_s: float = CHECK_WAIT_S,
        list_wait_s: float = LIST_WAIT_S,
    ) -> None:
        if not (account_id or endpoint_url):
            raise StorageError("R2 needs R2_ACCOUNT_ID (or R2_ENDPOINT_URL for another S3-compatible server)")
        self.bucket = bucket
        self.endpoint_url = r2_endpoint(account_id, endpoint_url)
        #: Path-style (``endpoint/bucket/key``) for custom endpoints; R2's own endpoint takes either.
        self.path_style = bool(endpoint_url)
        self.public_base_url = public_base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.check_wait_s = check_wait_s
        self.list_wait_s = list_wait_s
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._endpoint_vars = "R2_ENDPOINT_URL" if endpoint_url else "R2_ACCOUNT_ID"
        self._client: S3Client | None = None
        #: Clients that try once and wait the given seconds for an answer (:meth:`client_for`), by that wait.
        self._bounded_clients: dict[float, S3Client] = {}
        self._client_lock = threading.Lock()
        self._workers = DaemonWorkers(MAX_CONCURRENT_CALLS, name="imagegen-r2")
        #: The last failed try botocore retried (``time.monotonic()``, what it was), cleared by a try that
        #: succeeded: what a call the deadline cut short met (see :meth:`recent_trouble`).
        self._last_trouble: tuple[float, str] | None = None
        #: In a forked child, the parent's clients (see :meth:`renew_after_fork`).
        self._parents: list[object] = []
        renew_after_fork(self)

    def renew_after_fork(self) -> None:
        """In a forked child: clients of its own, built on first use. A boto3 client is not fork-safe: its urllib3
        pool's connections are the parent's sockets (a child's request could go out on one the parent is using,
        or read the parent's answer), and its locks may have been held by a thread that is gone. The parent's
        clients are kept, unused, as :meth:`.ImageGen.renew_after_fork` keeps its HTTP clients: collected, their
        sockets would each warn as unclosed."""
        self._parents.append((self._client, self._bounded_clients))
        self._client = None
        self._bounded_clients = {}
        self._client_lock = threading.Lock()

    @property
    def destination(self) -> str:
        """``r2 bucket <bucket> at <endpoint>`` (no credentials): what the spool records with an image kept for it."""
        return bucket_destination(self.bucket, self.endpoint_url)

    def __repr__(self) -> str:
        return f"R2Store(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r}, public={self.public_base_url!r})"

    # -- client ---------------------------------------------------------------------------------------

    def client_config(self, *, wait_s: float | None = None) -> Config:
        """The botocore configuration (R2 quirks, retries, timeouts); see the module docstring. With ``wait_s``:
        one attempt, answered within ``wait_s`` (connecting included), for reads someone waits for."""
        from botocore.config import Config

        attempts, read_timeout_s = self._limits(wait_s)
        return Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.path_style else "auto"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "total_max_attempts": attempts},
            connect_timeout=min(self.connect_timeout_s, read_timeout_s),
            read_timeout=read_timeout_s,
            max_pool_connections=MAX_CONCURRENT_CALLS,  # one per worker thread: no call waits for a connection
            user_agent_extra="imagegen",
        )

    def _limits(self, wait_s: float | None) -> tuple[int, float]:
        """(attempts, read timeout) of the client for ``wait_s`` (None: the uploads' client)."""
        return (self.max_attempts, self.read_timeout_s) if wait_s is None else (1, wait_s)

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client, created on first use (blocking: call it from a worker thread)."""
        return self.client_for(None)

    def client_for(self, wait_s: float | None) -> S3Client:
        """The uploads' client (``wait_s`` None), or one that tries once and waits ``wait_s``; built on first use
        (blocking: call it from a worker thread)."""
        client = self._client if wait_s is None else self._bounded_clients.get(wait_s)
        if client is None:
            with self._client_lock:  # boto3 sessions are not thread-safe while building a client
                client = self._client if wait_s is None else self._bounded_clients.get(wait_s)
                if client is None:
                    import boto3

                    client = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        region_name="auto",
                        aws_access_key_id=self._access_key_id,
                        aws_secret_access_key=self._secret_access_key,
                        config=self.client_config(wait_s=wait_s),
                    )
                    client.meta.events.register("needs-retry.s3", self._note_try)
                    if wait_s is None:
                        self._client = client
                    else:
                        self._bounded_clients[wait_s] = client
        return client

    def _note_try(self, response: Any = None, caught_exception: Exception | None = None, **kwargs: Any) -> None:
        """botocore's ``needs-retry`` event, after every try of a call (in the call's thread): keep what a failed
        one met. Returns None, so botocore's own retry handler still decides."""
        if caught_exception is not None:
            reason = _try_failure(caught_exception)
            self._last_trouble = (time.monotonic(), "failed: " + clip(redact(reason, self._secrets()), 160))
            return
        if response is None:
            return
        http, parsed = response
        status = int(getattr(http, "status_code", 0) or 0)
        if status < 400:
            self._last_trouble = None  # the store answers: a later timeout is no longer its errors' doing
            return
        code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        self._last_trouble = (time.monotonic(), f"got HTTP {status}" + (f" ({clip(str(code), 60)})" if code else ""))

    def recent_trouble(self, *, within_s: float = TROUBLE_MEMORY_S) -> str | None:
        """What the last failed try met (``got HTTP 500 (InternalError)``, ``failed: EndpointConnectionError: …``),
        when it was within
        ``within_s`` and no try succeeded since; else None. An upload the deadline cut short says it: QA read
        "did not answer in time: check that it is reachable" from a store that answered every try with a 500."""
        trouble = self._last_trouble
        if trouble is None or time.monotonic() - trouble[0] > within_s:
            return None
        return trouble[1]

    def _secrets(self) -> list[str]:
        return [self._access_key_id, self._secret_access_key]

    # -- Store protocol ---------------------------------------------------------------------------------

    def url_for(self, key: str) -> str:
        """``R2_PUBLIC_BASE_URL/<key>`` (percent-encoded; imagegen's own keys need no encoding)."""
        return f"{self.public_base_url}/{quote(safe_key(key), safe='/')}"

    async def put(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, metadata: dict[str, str]
    ) -> StoredObject:
        """Upload ``data`` with its Content-Type, Cache-Control and (sanitised) metadata."""
        safe_key(key)
        meta = r2_metadata(metadata)

        def upload(c: S3Client) -> None:
            answer = c.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                CacheControl=cache_control,
                Metadata=meta,
            )
            self._require_etag(answer, f"upload of {key!r}")

        await self._run("upload", key, upload)
        return StoredObject(key=key, url=self.url_for(key), size=len(data), content_type=content_type)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is stored (a HEAD request; 404 means no)."""
        safe_key(key)

        def head(c: S3Client) -> bool:
            from botocore.exceptions import ClientError

            try:
                answer = c.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
            self._require_etag(answer, f"check of {key!r}")  # else a default image is never stored
            return True

        return await self._run("check", key, head)

    async def get(self, key: str) -> bytes:
        """The stored bytes (StorageError when missing)."""
        safe_key(key)
        return await self._run("download", key, lambda c: c.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    async def head(self, key: str) -> dict[str, Any]:
        """Content type, Cache-Control, size and metadata of ``key``, as the bucket reports them."""
        safe_key(key)
        answer = await self._run("check", key, lambda c: c.head_object(Bucket=self.bucket, Key=key))
        return {
            "content_type": answer.get("ContentType"),
            "cache_control": answer.get("CacheControl"),
            "size": answer.get("ContentLength"),
            "metadata": dict(answer.get("Metadata", {})),
        }

    async def stats(self, *, prefix: str, page_size: int = 1000) -> StorageStats:
        """Usage per month under ``prefix`` from a paginated ``ListObjectsV2`` listing (``page_size`` keys
        per request; S3 caps it at 1000). Each page is tried once and waited for ``list_wait_s``."""

        def listing(c: S3Client) -> list[tuple[str, int]]:
            pages = c.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=listing_prefix(prefix), PaginationConfig={"PageSize": page_size}
            )
            return [(obj["Key"], obj["Size"]) for page in pages for obj in page.get("Contents", [])]

        items = await self._run("list", None, listing, wait_s=self.list_wait_s)
        return tally(items, prefix=prefix, backend=self.name, location=f"bucket {self.bucket} at {self.endpoint_url}")

    async def check(self) -> None:
        """StorageError unless the bucket exists, the credentials are accepted, and the endpoint is an S3
        server: one listing of at most one key. A HEAD of the bucket proved none of the last: any web server at
        a mistyped endpoint answers it 200, and ``/health`` and ``imagegen drill`` called it healthy. A listing
        answers a document only S3 writes (every S3 server, R2 included, states ``IsTruncated``); an object
        Read & Write token, all the store needs, may list the bucket. One try, waited for ``check_wait_s``."""

        from botocore.exceptions import ClientError

        def listing(c: S3Client) -> None:
            try:
                answer = c.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as exc:
                if _no_s3_document(exc):
                    raise StorageError(self._not_s3("check")) from None
                raise
            if "IsTruncated" not in answer:  # well-formed XML, but no listing
                raise StorageError(self._not_s3("check"))

        await self._run("check", None, listing, wait_s=self.check_wait_s)

    # -- plumbing ----------------------------------------------------------------------------------------

    def _require_etag(self, answer: Mapping[str, Any], what: str) -> None:
        """StorageError unless a successful object answer carries the ETag every S3 server (R2 included) sends.
        A web server at a mistyped endpoint answers any PUT with 200: without this, the upload "succeeded",
        the answer's URL served nothing and the paid-for image was gone instead of kept in the spool."""
        if not answer.get("ETag"):
            raise StorageError(self._not_s3(what))

    def _not_s3(self, what: str) -> str:
        return (
            f"{self.endpoint_url} answered the {what} but is not an S3 server: check {self._endpoint_vars} (the "
            "bucket's S3 API endpoint, not its public URL)"
        )

    async def _run(
        self, action: str, key: str | None, call: Callable[[S3Client], T], *, wait_s: float | None = None
    ) -> T:
        """Run ``call(client)`` in one of the store's worker threads, with the client for ``wait_s``
        (:meth:`client_for`); any failure becomes a one-line StorageError. Cancelled (a deadline), the call is
        abandoned in its thread, not waited for."""

        def work() -> T:
            started = time.monotonic()
            try:
                return call(self.client_for(wait_s))
            except StorageError:
                raise
            except Exception as exc:  # botocore's (and urllib3's) exceptions, translated in one place
                waited_s = time.monotonic() - started
                error = StoreSetupError if _setup_refused(exc, key, action) else StorageError
                raise error(self._message(exc, action, key, wait_s=wait_s, waited_s=waited_s)) from None

        return await self._workers.run(work)

    def _message(
        self, exc: Exception, action: str, key: str | None, *, wait_s: float | None = None, waited_s: float = 0.0
    ) -> str:
        text = self._describe(exc, action, key, wait_s=wait_s, waited_s=waited_s)
        # One line, and never a credential, whatever a server or library put in its message.
        flat = " ".join(text.split())
        return redact(flat, self._secrets())

    def _describe(
        self, exc: Exception, action: str, key: str | None, *, wait_s: float | None = None, waited_s: float = 0.0
    ) -> str:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )
        from botocore.parsers import ResponseParserError

        what = f"{action} of {key!r}" if key else action
        attempts_made, read_timeout_s = self._limits(wait_s)
        bucket = self.bucket
        fix_creds = "check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY"
        if isinstance(exc, ClientError):
            status = _status(exc)
            error = exc.response.get("Error", {})
            code = error.get("Code") or str(status)
            attempts = 1 + int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
            if code in _CREDENTIAL_CODES or status == 401:
                return f"R2 rejected the credentials ({code}) on {what}: {fix_creds}"
            if code == "AccessDenied" or status == 403:
                return (
                    f"R2 denied access ({code}) to bucket {bucket!r} on {what}: {fix_creds}, and that the token "
                    f"has Object Read & Write on bucket {bucket!r}"
                )
            # A 404 to an upload cannot mean "no such object": the bucket (or the endpoint) is wrong.
            if code == "NoSuchBucket" or (status == 404 and (key is None or action == "upload")):
                return (
                    f"R2 bucket {bucket!r} does not exist at {self.endpoint_url}: check R2_BUCKET "
                    f"(and {self._endpoint_vars})"
                )
            if code in ("NoSuchKey", "404") or status == 404:
                return f"R2 has no object {key!r} in bucket {bucket!r}"
            # 501 Not Implemented is no outage (QA: a plain web server's PUT said "try again later"): without an
            # S3 error document, not an S3 server; with one (NotImplemented), the refusal below with its message.
            if status == 501 and code.isdigit():
                return self._not_s3(what)
            if (status >= 500 and status != 501) or code in _THROTTLE_CODES:
                tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
                return (
                    f"R2 failed the {what} ({code}, HTTP {status}, {tries}): the service is unavailable or "
                    "throttling; try again later"
                )
            # Redacted before it is cut, so no part of a credential can survive at the cut.
            message = clip(redact(str(error.get("Message", "")), [self._access_key_id, self._secret_access_key]), 200)
            if not message:  # no S3 error document: probably not an S3 server at all
                message = f"the answer had no S3 error; check {self._endpoint_vars}"
            return f"R2 refused the {what} ({code}, HTTP {status}): {message}"
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
            return (
                f"cannot reach R2 at {self.endpoint_url} for the {what} ({type(exc).__name__}, after "
                f"{_tries(attempts_made)}): check {self._endpoint_vars} and the network"
            )
        if isinstance(exc, ReadTimeoutError):
            # The time actually waited: with retries, each attempt waited the read timeout again.
            waited = (
                f"{read_timeout_s:g} s"
                if attempts_made == 1
                else f"{round(waited_s, 1):g} s ({_tries(attempts_made)} of {read_timeout_s:g} s)"
            )
            return f"R2 at {self.endpoint_url} did not answer the {what} in {waited}; try again later"
        if isinstance(exc, ResponseParserError):  # HTML or JSON where S3 answers XML
            return self._not_s3(what)
        if isinstance(exc, ValueError) and self._client is None:
            return f"cannot set up the R2 client for {self.endpoint_url}: {exc}: check {self._endpoint_vars}"
        return f"R2 {what} failed: {type(exc).__name__}: {exc}"


def r2_endpoint(account_id: str | None, endpoint_url: str | None) -> str:
    """The S3 endpoint of an R2 store: ``endpoint_url`` (any S3-compatible server), else R2's for ``account_id``."""
    return (endpoint_url or f"https://{account_id}.r2.cloudflarestorage.com").rstrip("/")


def _setup_refused(exc: Exception, key: str | None, action: str) -> bool:
    """Whether the S3 server refused the setup itself (credentials, access, bucket), which no retry fixes: what
    :meth:`R2Store._describe` tells to check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY or R2_BUCKET for."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = _status(exc)
    code = exc.response.get("Error", {}).get("Code") or str(status)
    no_bucket = code == "NoSuchBucket" or (status == 404 and (key is None or action == "upload"))
    return code in _CREDENTIAL_CODES or code == "AccessDenied" or status in (401, 403) or no_bucket


def _tries(count: int) -> str:
    return f"{count} attempt" + ("s" if count != 1 else "")


def _no_s3_document(exc: Any) -> bool:
    """Whether a botocore ClientError to a listing answered no S3 document at all. botocore turns a 200 whose
    body is not XML (a web page, a JSON API) into a 500 without an error code; S3 servers answer XML, even
    their errors (R2's 500 says ``InternalError``)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return _status(exc) == 500 and code.isdigit() and "xml" not in headers.get("content-type", "")


def _status(exc: Any) -> int:
    """HTTP status of a botocore ClientError (0 when unknown)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def r2_metadata(metadata: Mapping[str, str], *, limit: int = MAX_METADATA_BYTES) -> dict[str, str]:
    """Metadata safe to send as ``x-amz-meta-*`` headers and within R2's ``limit`` (bytes of keys + values).

    Keys become lower-case ``[a-z0-9-]`` tokens; values become printable ASCII (other characters as
    ``\\x..``/``\\u....`` escapes), trimmed of surrounding spaces that HTTP would drop and break the
    signature. If the total is still too large, the longest values are shortened until it fits — the
    image is worth more than a complete metadata value.
    """
    clean: dict[str, str] = {}
    for raw_key, raw_value in metadata.items():
        key = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in raw_key.lower()).strip("-")
        if not key:
            continue
        escaped = str(raw_value).encode("ascii", "backslashreplace").decode("ascii")
        clean[key] = "".join(ch if 32 <= ord(ch) < 127 else f"\\x{ord(ch):02x}" for ch in escaped).strip()
    excess = sum(len(k) + len(v) for k, v in clean.items()) - limit
    for key in sorted(clean, key=lambda k: len(clean[k]), reverse=True):
        if excess <= 0:
            break
        cut = min(excess, len(clean[key]))
        clean[key] = clean[key][: len(clean[key]) - cut]
        excess -= cut
    if excess > 0:
        raise StorageError(f"object metadata keys alone exceed R2's {limit} bytes")
    return clean


def _try_failure(exc: Exception) -> str:
    """A try that got no answer, in a few words: ``EndpointConnectionError: Could not connect to …``."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__

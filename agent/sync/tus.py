"""tus 1.0 client: resumable uploads of vault files over HTTPS.

Protocol: tus 1.0.0 core plus the creation, termination and checksum
extensions (https://tus.io/protocols/resumable-upload).  Works against any
tus server (tusd, @tus/server, scripts/devplatform/tusserver.py).

Invariants:
- TLS certificate verification is always on, against the configured CA
  only (agent.sync.tlsfiles).  Plain ``http://`` only with ``allow_http=True``
  (development).
- Footage and the station's client certificate go only to the endpoint's
  origin (scheme, host, port) or an origin the configuration allows
  (``allowed_origins``): an upload URL elsewhere, from a POST's Location or
  stored by an earlier run, is refused before any byte is sent to it.
- Every request has an overall deadline (``deadline_s``, plus the time a
  PATCH body needs at ``min_rate_bytes_s``), from the first byte sent to
  the last byte of the answer, whatever the server trickles; response
  bodies are read up to ``_MAX_BODY`` bytes only.
- A server offset the client cannot believe (beyond the upload's length,
  behind an offset the server itself confirmed, or a PATCH confirming bytes
  it was not sent) raises OffsetError: the caller starts a fresh upload.
- A PATCH body is read from the file in small pieces just before they go
  out (``_PIECE``, one reused buffer), so memory does not grow with
  ``chunk_size`` (the bytes per PATCH, i.e. the resume granularity) and a
  file is never read whole.
- The offset passed to ``on_progress`` is the one the server confirmed
  (``Upload-Offset`` of the PATCH response).  After any failure the caller
  resumes from the server's ``offset()``, never from its own count.
- Foreign exceptions (requests, ssl, socket; OSError on the local file) are
  converted once, in ``_send`` and ``_read_into``, into TransportError /
  StoreError.
- One TusClient is used by one thread at a time (requests.Session is not
  thread safe); an upload pool makes one client per worker and may share one
  RateLimiter between them for a station-wide bandwidth cap.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from agent import __version__
from agent.errors import ConfigError, IntegrityError, StoreError, TransportError
from agent.sync.deadline import DeadlineAdapter, overall_deadline
from agent.sync.tlsfiles import client_context

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
# 423: tusd's "upload locked" while a dead connection still holds it;
# 460: tus checksum mismatch (the chunk was damaged on the way).
_RETRYABLE_STATUS = frozenset({408, 423, 429, 460})
_MAX_CONFLICTS = 3  # consecutive 409s before giving the problem back to the caller
_THROTTLE_BLOCK = 16 * 1024
# Bytes read from the file per send.  Measured (1 GiB to the development tus server,
# 10 interleaved rounds, medians): sending each 32 MiB chunk from one 32 MiB buffer
# ran at 0.87x curl, 256 KiB pieces at 1.15x; the small buffer stays in the CPU
# cache while it is encrypted, instead of streaming 32 MiB through memory twice.
_PIECE = 256 * 1024
_HASH_BLOCK = 1024 * 1024
# Answers are headers; a body is only an error text, shown cut to 300 characters.
_MAX_BODY = 64 * 1024
# A Location longer than this is not an upload address (it would be stored and logged).
_MAX_URL = 2048
DEFAULT_DEADLINE_S = 60.0
DEFAULT_MIN_RATE = 32 * 1024


class TusStatusError(TransportError):
    """The server answered with an HTTP status the protocol step does not accept.

    ``retry_after_s``: how long the server asked the client to wait
    (Retry-After, RFC 9110 section 10.2.3), when it said so.
    """

    def __init__(self, message: str, *, status: int, retryable: bool,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.retry_after_s = retry_after_s


class UploadGone(TusStatusError):
    """The upload URL no longer exists (404/410): the caller must create a new upload."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, status=status, retryable=True)


class OffsetError(TransportError):
    """The server's offset for an upload cannot be right: the caller starts a fresh upload.

    ``server_offset`` is what the server said; the upload at that URL must
    not be resumed (nor counted as complete).
    """

    def __init__(self, message: str, *, server_offset: int) -> None:
        super().__init__(message, retryable=True)
        self.server_offset = server_offset


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL, with the default port filled in; None if none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default = {"https": 443, "http": 80}.get(scheme)
    if not host or default is None:
        return None
    return scheme, host, port or default


def format_origin(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def origin_problem(text: str, *, allow_http: bool = False) -> str | None:
    """Why ``text`` is not a bare origin (``https://host[:port]``); None if it is one."""
    origin = origin_of(text)
    if origin is None:
        return f"{text!r} is not an https://host[:port] origin"
    parts = urlsplit(text)
    if origin[0] != "https" and not allow_http:
        return f"{text!r} is not https:// (http:// only with platform.insecure = true)"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return f"{text!r} must be an origin only (scheme, host, port), without a path"
    return None


@dataclass(frozen=True)
class _Answer:
    """What the client keeps of an HTTP response: status, headers and at most _MAX_BODY bytes."""

    status_code: int
    reason: str
    headers: requests.structures.CaseInsensitiveDict[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class ServerCaps:
    """What the server advertised in its OPTIONS response."""

    version: str
    extensions: frozenset[str]
    checksum_algorithms: frozenset[str]
    max_size: int | None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date).

    None when the header is absent or malformed; a date in the past is 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone admits "²" and other digits
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): exponential with full jitter.

    Full jitter spreads a fleet of stations that lost the platform at the same
    moment, so they do not all come back in the same second.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    return random.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 64)))


class RateLimiter:
    """A token bucket in bytes per second; thread safe, so uploads can share one cap.

    Debt model: a caller takes what it needs, and sleeps off any deficit
    outside the lock; the next caller inherits the debt, so the long-run rate
    holds across threads.
    """

    def __init__(self, bytes_per_s: int, *, burst: int | None = None) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"bytes_per_s must be > 0, got {bytes_per_s}")
        self.rate = float(bytes_per_s)
        self.capacity = float(burst if burst is not None else max(bytes_per_s // 4, 64 * 1024))
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            deficit = -self._tokens
        if deficit > 0:
            time.sleep(deficit / self.rate)


class _FileBody:
    """``length`` bytes of an open file at ``offset``, as a request body of known length.

    requests sends it with Content-Length (it has ``__len__``) and urllib3
    sends each piece the iterator yields with ``sendall`` before it asks for
    the next, so one buffer is reused for every piece.  With a rate limiter the
    pieces are small and paced, so the cap follows the bytes as they go out.
    """

    def __init__(self, fd: int, path: Path, offset: int, length: int,
                 limiter: RateLimiter | None) -> None:
        self._fd, self._path, self._offset, self._length = fd, path, offset, length
        self._limiter = limiter
        piece = _THROTTLE_BLOCK if limiter is not None else _PIECE
        self._buffer = memoryview(bytearray(max(1, min(piece, length))))

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[memoryview]:
        done = 0
        while done < self._length:
            view = self._buffer[:min(len(self._buffer), self._length - done)]
            _read_into(self._fd, self._path, view, self._offset + done)
            done += len(view)
            if self._limiter is not None:
                self._limiter.consume(len(view))
            yield view


def encode_metadata(metadata: dict[str, str]) -> str:
    """The Upload-Metadata header: ``key base64(utf-8 value)`` pairs joined by commas."""
    pairs = []
    for key, value in metadata.items():
        if not key or not key.isascii() or any(c in key for c in " ,") or not key.isprintable():
            raise ValueError(f"tus metadata key {key!r} must be non-empty printable ASCII "
                             "without spaces or commas")
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        pairs.append(f"{key} {encoded}" if encoded else key)
    return ",".join(pairs)


def _csv(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _describe(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 exception chain, which names the real problem."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        nested = getattr(current, "reason", None)
        if not isinstance(nested, BaseException) and current.args:
            nested = current.args[0]
        if not isinstance(nested, BaseException):
            break
        current = nested
    return f"{type(current).__name__}: {current}"


class TusClient:
    """Creates, resumes and terminates tus uploads at one creation endpoint."""

    def __init__(
        self,
        endpoint: str,
        *,
        ca_file: Path,
        cert: tuple[Path, Path] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        bandwidth_bytes_s: int = 0,
        limiter: RateLimiter | None = None,
        timeout_s: float = 30.0,
        deadline_s: float = DEFAULT_DEADLINE_S,
        min_rate_bytes_s: int = DEFAULT_MIN_RATE,
        allowed_origins: Sequence[str] = (),
        allow_http: bool = False,
    ) -> None:
        scheme = urlsplit(endpoint).scheme
        home = origin_of(endpoint)
        if home is None or (scheme != "https" and not (allow_http and scheme == "http")):
            raise ConfigError(f"platform.upload_url: {endpoint!r} is not an https:// URL")
        if chunk_size <= 0:
            raise ConfigError(f"tus chunk size must be > 0, got {chunk_size}")
        if deadline_s <= 0 or min_rate_bytes_s <= 0:
            raise ConfigError("tus request deadline and minimum rate must be > 0")
        self._origins = {home}
        for i, text in enumerate(allowed_origins):
            problem = origin_problem(text, allow_http=allow_http)
            if problem is not None:
                raise ConfigError(f"platform.upload_origins[{i}]: {problem}")
            self._origins.add(origin_of(text))  # type: ignore[arg-type]
        context = client_context(ca_file, cert[0] if cert else None, cert[1] if cert else None)
        self.endpoint = endpoint
        self.chunk_size = chunk_size
        self._home = home
        self._timeout = timeout_s
        self._deadline_s = deadline_s
        self._min_rate = float(min_rate_bytes_s)
        self._limiter = limiter or (RateLimiter(bandwidth_bytes_s) if bandwidth_bytes_s else None)
        if self._limiter is not None:
            # A capped link is no faster than its cap: the body allowance must not cut it.
            self._min_rate = min(self._min_rate, self._limiter.rate / 2)
        self._caps: ServerCaps | None = None
        self._session = requests.Session()
        adapter = DeadlineAdapter(context)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        # The context holds the CA and the client certificate; the path is given again
        # because requests would otherwise load its own CA bundle (certifi) into it.
        self._session.verify = str(ca_file)
        # trust_env would let REQUESTS_CA_BUNDLE silently replace the configured CA
        # (requests prefers it over session.verify), and pick up proxies and netrc.
        self._session.trust_env = False
        self._session.headers.update({
            "Tus-Resumable": TUS_VERSION,
            "User-Agent": f"bwc-agent/{__version__}",
        })

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> TusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol steps -------------------------------------------------------------

    def options(self) -> ServerCaps:
        """Ask the server what it supports (OPTIONS); cached for checksum decisions."""
        resp = self._send("OPTIONS", self.endpoint)
        if resp.status_code not in (200, 204):
            raise self._status_error(resp, "OPTIONS", self.endpoint)
        versions = _csv(resp.headers.get("Tus-Version"))
        if TUS_VERSION not in versions:
            raise TransportError(f"tus server at {self.endpoint} speaks versions {versions}, "
                                 f"not {TUS_VERSION}", retryable=False)
        max_size = resp.headers.get("Tus-Max-Size")
        self._caps = ServerCaps(
            version=TUS_VERSION,
            extensions=frozenset(e.lower() for e in _csv(resp.headers.get("Tus-Extension"))),
            checksum_algorithms=frozenset(
                a.lower() for a in _csv(resp.headers.get("Tus-Checksum-Algorithm"))),
            max_size=int(max_size) if max_size and max_size.isascii() and max_size.isdigit()
            and len(max_size) <= 19 else None,
        )
        return self._caps

    def create(self, length: int, metadata: dict[str, str]) -> str:
        """Create an upload of ``length`` bytes (POST); returns its absolute URL."""
        if length < 0:
            raise ValueError(f"upload length must be >= 0, got {length}")
        headers = {"Upload-Length": str(length)}
        if metadata:
            headers["Upload-Metadata"] = encode_metadata(metadata)
        resp = self._send("POST", self.endpoint, headers=headers)
        if resp.status_code not in (200, 201):
            raise self._status_error(resp, "POST", self.endpoint)
        location = resp.headers.get("Location")
        if not location:
            raise TransportError(f"tus POST {self.endpoint}: HTTP {resp.status_code} "
                                 "without a Location header", retryable=False)
        if len(location) > _MAX_URL:
            raise TransportError(f"tus POST {self.endpoint}: a Location of {len(location)} "
                                 "characters is not an upload address", retryable=False)
        # Servers may answer with a relative Location (@tus/server relativeLocation).
        url = urljoin(self.endpoint, location)
        self._check_pinned("POST", url)
        log.debug("created tus upload %s (%d bytes)", url, length)
        return url

    def pinned(self, url: str) -> bool:
        """True if footage may go to ``url``: the endpoint's origin or an allowed one."""
        return origin_of(url) in self._origins

    def _check_pinned(self, method: str, url: str) -> None:
        if not self.pinned(url):
            where = origin_of(url)
            raise TransportError(
                f"tus {method}: the upload address {format_origin(where) if where else url!r} "
                f"is not the configured upload server {format_origin(self._home)} (nor in "
                "platform.upload_origins); refusing to send footage or the station's "
                "certificate there", retryable=False)

    def offset(self, upload_url: str) -> int:
        """The server's offset of an upload (HEAD).  Raises UploadGone on 404/410."""
        self._check_pinned("HEAD", upload_url)
        resp = self._send("HEAD", upload_url)
        if resp.status_code not in (200, 204):
            raise self._status_error(resp, "HEAD", upload_url, upload=True)
        return self._header_offset(resp, "HEAD", upload_url)

    def terminate(self, upload_url: str) -> None:
        """Delete an upload on the server (DELETE); an upload already gone is fine."""
        self._check_pinned("DELETE", upload_url)
        resp = self._send("DELETE", upload_url)
        if resp.status_code in (404, 410):
            log.info("tus upload %s was already gone at termination", upload_url)
        elif resp.status_code not in (200, 204):
            raise self._status_error(resp, "DELETE", upload_url)

    def upload(
        self,
        upload_url: str,
        path: Path,
        *,
        start: int,
        total: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Send ``path`` from ``start`` to ``total`` in PATCH chunks; returns the final offset.

        ``on_progress`` gets each server-confirmed offset so the caller can
        persist it.  A 409 (offset mismatch) re-reads the server's offset and
        carries on from there, unless that offset is past ``total`` or behind
        what the server had confirmed (OffsetError); every other failure
        raises, and the caller resumes later from ``offset()``.
        """
        if not 0 <= start <= total:
            raise ValueError(f"start {start} outside 0..{total}")
        self._check_pinned("PATCH", upload_url)
        algorithm = self._checksum_algorithm()
        hasher: _Prehasher | None = None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"cannot open {path} for upload: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size != total:
                raise IntegrityError(f"{path} is {size} bytes but its upload length is {total}")
            hasher = _Prehasher(fd, path, algorithm) if algorithm else None
            offset = start
            conflicts = 0
            while offset < total:
                length = min(self.chunk_size, total - offset)
                checksum = None
                if hasher is not None:
                    checksum = hasher.checksum(offset, length)
                    ahead = offset + length
                    hasher.prefetch(ahead, min(self.chunk_size, total - ahead))
                confirmed = self._send_chunk(upload_url, _FileBody(fd, path, offset, length,
                                                                   self._limiter),
                                             offset=offset, checksum=checksum)
                if confirmed is None:  # 409: the server holds a different offset
                    conflicts += 1
                    if conflicts > _MAX_CONFLICTS:
                        raise TransportError(f"tus PATCH {upload_url}: offset conflict "
                                             f"{conflicts} times in a row")
                    server = self.offset(upload_url)
                    log.info("tus upload %s: offset conflict, server is at %d", upload_url,
                             server)
                    problem = offset_problem(server, confirmed=offset, total=total)
                    if problem is not None:
                        raise OffsetError(f"tus upload {upload_url}: {problem}",
                                          server_offset=server)
                    offset = server
                    continue
                conflicts = 0
                offset = confirmed
                if on_progress is not None:
                    on_progress(offset)
            return offset
        finally:
            if hasher is not None:
                hasher.close()
            os.close(fd)

    # -- internals ------------------------------------------------------------------

    def _checksum_algorithm(self) -> str | None:
        caps = self._caps or self.options()
        if "checksum" in caps.extensions and "sha256" in caps.checksum_algorithms:
            return "sha256"
        return None

    def _send_chunk(self, url: str, body: _FileBody, *, offset: int,
                    checksum: str | None) -> int | None:
        """PATCH ``body`` (the file's bytes at ``offset``); the new offset, or None on 409."""
        headers = {"Content-Type": OFFSET_CONTENT_TYPE, "Upload-Offset": str(offset)}
        if checksum is not None:
            headers["Upload-Checksum"] = checksum
        resp = self._send("PATCH", url, headers=headers, data=body)
        if resp.status_code == 409:
            return None
        if resp.status_code not in (200, 204):
            raise self._status_error(resp, "PATCH", url, upload=True)
        confirmed = self._header_offset(resp, "PATCH", url)
        if confirmed == offset:
            raise TransportError(f"tus PATCH {url}: the server accepted none of {len(body)} "
                                 f"bytes at offset {offset}")
        if not offset < confirmed <= offset + len(body):
            raise OffsetError(f"tus PATCH {url}: server confirmed offset {confirmed} after "
                              f"{len(body)} bytes at {offset}", server_offset=confirmed)
        return confirmed

    def _send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
              data: _FileBody | None = None) -> _Answer:
        """The one place where requests/urllib3/ssl/socket exceptions become TransportError.

        The whole exchange (connect, body, headers, the answer's body) runs
        under one overall deadline.
        """
        budget = self._deadline_s + (len(data) / self._min_rate if data is not None else 0.0)
        with overall_deadline(budget) as deadline:
            try:
                resp = self._session.request(method, url, headers=headers, data=data,  # type: ignore[arg-type]
                                             timeout=self._timeout, allow_redirects=False,
                                             stream=True)
                try:
                    body = resp.raw.read(_MAX_BODY + 1) if method != "HEAD" else b""
                finally:
                    if len(body) > _MAX_BODY:
                        resp.close()  # the rest is never read: the connection is dropped
                    else:
                        resp.raw.release_conn()
                return _Answer(resp.status_code, resp.reason or "", resp.headers,
                               body[:_MAX_BODY])
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                    OSError) as exc:
                if deadline.passed:
                    raise TransportError(
                        f"tus {method} {url}: no complete answer within the overall deadline "
                        f"of {budget:.0f} s (platform.request_timeout_s); the server is too "
                        "slow or trickles its answer") from exc
                if isinstance(exc, requests.exceptions.SSLError):
                    raise TransportError(f"tus {method} {url}: TLS failed ({_describe(exc)}); "
                                         "check the CA file and the server's certificate"
                                         ) from exc
                if isinstance(exc, (requests.exceptions.InvalidURL,
                                    requests.exceptions.InvalidSchema,
                                    requests.exceptions.MissingSchema,
                                    requests.exceptions.InvalidHeader)):
                    raise TransportError(f"tus {method} {url}: {_describe(exc)}",
                                         retryable=False) from exc
                raise TransportError(f"tus {method} {url}: {_describe(exc)}") from exc

    @staticmethod
    def _status_error(resp: _Answer, method: str, url: str, *,
                      upload: bool = False) -> TusStatusError:
        status = resp.status_code
        text = " ".join(resp.text.split())[:300] if method != "HEAD" else ""
        message = f"tus {method} {url}: HTTP {status} {resp.reason}" + (f": {text}" if text
                                                                         else "")
        if upload and status in (404, 410):
            return UploadGone(message, status=status)
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        return TusStatusError(message, status=status, retryable=retryable,
                              retry_after_s=parse_retry_after(resp.headers.get("Retry-After")))

    @staticmethod
    def _header_offset(resp: _Answer, method: str, url: str) -> int:
        value = resp.headers.get("Upload-Offset", "")
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise TransportError(f"tus {method} {url}: HTTP {resp.status_code} with a missing "
                                 f"or malformed Upload-Offset {value!r}", retryable=False)
        return int(value)


def offset_problem(server: int, *, confirmed: int, total: int) -> str | None:
    """Why the server's offset ``server`` cannot be believed; None if it can.

    ``confirmed`` is the offset the server itself confirmed last (0 if none):
    a server may be ahead of it (a PATCH whose answer was lost), never behind
    it, and never past the upload's length.
    """
    if server > total:
        return f"the server's offset {server} is past the file's length {total}"
    if server < confirmed:
        return (f"the server's offset went back to {server} after it had confirmed "
                f"{confirmed} bytes")
    return None


class _Prehasher:
    """Hashes the chunk after the one on the wire, in a helper thread, straight from the file.

    The digest is a header, so it must be known before the body goes out;
    hashing in line stalled the link for every chunk (measured: sha256 was
    ~15% of the upload time at 8 MiB chunks).  The helper reads the file with
    its own 1 MiB buffer, so memory stays at one piece plus 1 MiB.  hashlib,
    pread and the TLS socket all release the GIL, so the two threads overlap.
    """

    def __init__(self, fd: int, path: Path, algorithm: str) -> None:
        self._fd, self._path, self._algorithm = fd, path, algorithm
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tus-hash")
        self._ahead: tuple[tuple[int, int], Future[str]] | None = None

    def prefetch(self, offset: int, length: int) -> None:
        if length > 0:
            self._ahead = ((offset, length), self._pool.submit(self._hash, offset, length))

    def checksum(self, offset: int, length: int) -> str:
        """The Upload-Checksum value for the file's ``length`` bytes at ``offset``."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == (offset, length):
            return ahead[1].result()
        return self._pool.submit(self._hash, offset, length).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _hash(self, offset: int, length: int) -> str:
        digest = hashlib.new(self._algorithm)
        view = memoryview(bytearray(min(length, _HASH_BLOCK)))
        done = 0
        while done < length:
            block = view[:min(len(view), length - done)]
            _read_into(self._fd, self._path, block, offset + done)
            digest.update(block)
            done += len(block)
        return f"{self._algorithm} {base64.b64encode(digest.digest()).decode()}"


def _read_into(fd: int, path: Path, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the file's bytes at ``offset`` (one preadv in practice)."""
    got = 0
    try:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise IntegrityError(f"{path} ended at {offset + got} bytes while uploading "
                                     f"{len(view)} bytes from {offset}")
            got += n
    except OSError as exc:
        raise StoreError(f"cannot read {path} at offset {offset}: {exc.strerror}") from exc

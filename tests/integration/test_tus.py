"""The tus client against the development tus server, over real TLS on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests

from agent.devpki import DevCA, Issued
from agent.errors import ConfigError, TransportError
from agent.sync.tus import (
    RateLimiter,
    TusClient,
    TusStatusError,
    UploadGone,
    backoff_delay,
    encode_metadata,
    parse_retry_after,
)
from scripts.devplatform.tusserver import CompletedUpload, TusServer, parse_metadata

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
T = TypeVar("T")


@dataclass
class Pki:
    ca: DevCA
    server: Issued
    client: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = DevCA(tmp_path_factory.mktemp("pki"))
    return Pki(ca, ca.issue("localhost", "server", server=True, client=False),
               ca.issue("ST-0001", "station"))


@pytest.fixture
def completed() -> list[CompletedUpload]:
    return []


@pytest.fixture
def start_server(tmp_path: Path, pki: Pki,
                 completed: list[CompletedUpload]) -> Iterator[Callable[..., TusServer]]:
    servers: list[TusServer] = []

    def start(**kwargs: Any) -> TusServer:
        kwargs.setdefault("on_complete", completed.append)
        server = TusServer(kwargs.pop("store", tmp_path / "store"), certfile=pki.server.cert_path,
                           keyfile=pki.server.key_path, **kwargs)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., TusServer]) -> TusServer:
    return start_server()


def client_for(server: TusServer, pki: Pki, **kwargs: Any) -> TusClient:
    kwargs.setdefault("chunk_size", MiB)
    return TusClient(server.url, ca_file=pki.ca.cert_path, **kwargs)


def make_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def retrying(step: Callable[[], T], errors: list[TransportError], attempts: int = 20) -> T:
    """The caller's loop: retry retryable TransportErrors after backoff_delay (tiny base)."""
    for attempt in range(attempts):
        try:
            return step()
        except TransportError as exc:
            if not exc.retryable:
                raise
            errors.append(exc)
            time.sleep(backoff_delay(attempt, base=0.005, cap=0.05))
    raise AssertionError(f"no success after {attempts} attempts: {errors[-1]}")


def resume(client: TusClient, url: str, path: Path, errors: list[TransportError]) -> int:
    """What the upload worker does after a failure: ask the server, continue from there."""
    size = path.stat().st_size
    return retrying(lambda: client.upload(url, path, start=client.offset(url), total=size), errors)


def test_full_upload_is_byte_identical_and_reports_confirmed_offsets(
        server: TusServer, pki: Pki, tmp_path: Path, completed: list[CompletedUpload]) -> None:
    source = make_file(tmp_path / "clip.mp4", 3 * MiB + 17)
    progress: list[int] = []
    with client_for(server, pki) as client:
        caps = client.options()
        assert caps.version == "1.0.0"
        assert {"creation", "termination", "checksum"} <= caps.extensions
        assert "sha256" in caps.checksum_algorithms
        url = client.create(source.stat().st_size, {"clip_id": "c1"})
        assert url.startswith(server.url)
        final = client.upload(url, source, start=0, total=source.stat().st_size,
                              on_progress=progress.append)
        assert final == source.stat().st_size
        assert client.offset(url) == final
    assert progress == [MiB, 2 * MiB, 3 * MiB, 3 * MiB + 17]
    assert len(completed) == 1
    assert completed[0].length == final
    assert sha256(completed[0].path) == sha256(source)


def test_metadata_round_trip_with_chinese_filename(
        server: TusServer, pki: Pki, tmp_path: Path, completed: list[CompletedUpload]) -> None:
    source = make_file(tmp_path / "c.mp4", 1000)
    metadata = {"clip_id": "0190a1b2-0000-7000-8000-000000000001",
                "sha256": sha256(source), "station_id": "ST-0001",
                "filename": "执法记录仪_张三_2024-05-01.mp4", "note": ""}
    with client_for(server, pki) as client:
        url = client.create(1000, metadata)
        client.upload(url, source, start=0, total=1000)
        head = requests.head(url, headers={"Tus-Resumable": "1.0.0"}, verify=str(pki.ca.cert_path),
                             timeout=10)
    assert completed[0].metadata == metadata
    assert parse_metadata(head.headers["Upload-Metadata"]) == metadata
    assert head.headers["Cache-Control"] == "no-store"


def test_metadata_keys_are_validated_before_sending() -> None:
    for bad in ("", "has space", "comma,key", "ключ"):
        with pytest.raises(ValueError, match="metadata key"):
            encode_metadata({bad: "v"})
    assert encode_metadata({"a": "", "b": "x"}) == "a,b eA=="


def test_damaged_chunk_is_refused_by_checksum_then_resent(
        server: TusServer, pki: Pki, tmp_path: Path, completed: list[CompletedUpload]) -> None:
    source = make_file(tmp_path / "c.mp4", 3 * MiB)
    with client_for(server, pki) as client:
        url = client.create(3 * MiB, {})
        server.corrupt_next = True  # the first chunk arrives with one byte flipped
        with pytest.raises(TusStatusError) as caught:
            client.upload(url, source, start=0, total=3 * MiB)
        assert caught.value.status == 460
        assert caught.value.retryable
        assert client.offset(url) == 0  # the damaged chunk was not appended
        errors: list[TransportError] = []
        assert resume(client, url, source, errors) == 3 * MiB
    assert sha256(completed[0].path) == sha256(source)


def test_server_refuses_wrong_checksum_and_unsupported_algorithm(
        server: TusServer, pki: Pki) -> None:
    with client_for(server, pki) as client:
        url = client.create(4, {})
    headers = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
               "Upload-Offset": "0"}
    with requests.Session() as session:
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        session.verify = str(pki.ca.cert_path)
        wrong = session.patch(url, data=b"abcd", timeout=10, headers={
            **headers, "Upload-Checksum": "sha1 " + "A" * 27 + "="})
        assert wrong.status_code == 460
        md5 = session.patch(url, data=b"abcd", timeout=10,
                            headers={**headers, "Upload-Checksum": "md5 AAAA"})
        assert md5.status_code == 400
        assert session.head(url, headers=headers, timeout=10).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("algorithms", [(), ("sha256",)], ids=["plain", "checksum"])
def test_resume_after_connection_cut_mid_patch(
        start_server: Callable[..., TusServer], pki: Pki, tmp_path: Path,
        completed: list[CompletedUpload], algorithms: tuple[str, ...]) -> None:
    server = start_server(checksum_algorithms=algorithms)
    size, cut = 4 * MiB + 5, 300_000
    source = make_file(tmp_path / "c.mp4", size)

    def cut_second_chunk(offset: int) -> None:
        if offset == MiB:
            server.cut_after = cut

    with client_for(server, pki) as client:
        url = client.create(size, {})
        with pytest.raises(TransportError) as caught:
            client.upload(url, source, start=0, total=size, on_progress=cut_second_chunk)
        assert caught.value.retryable
        kept = client.offset(url)
        errors: list[TransportError] = []
        assert resume(client, url, source, errors) == size
    if algorithms:
        # An unverified partial chunk is dropped and the whole chunk is sent again.
        assert kept == MiB
        assert server.bytes_received == size + cut
    else:
        # What arrived before the cut is kept; the client resumes exactly after it.
        assert kept == MiB + cut
        assert server.bytes_received == size
    assert sha256(completed[0].path) == sha256(source)


def test_server_errors_for_a_while_then_success_with_backoff(
        server: TusServer, pki: Pki, tmp_path: Path, completed: list[CompletedUpload]) -> None:
    source = make_file(tmp_path / "c.mp4", 2 * MiB)
    errors: list[TransportError] = []
    with client_for(server, pki) as client:
        server.fail_next = 3
        url = retrying(lambda: client.create(2 * MiB, {"clip_id": "c"}), errors)
        server.fail_next = 2
        assert resume(client, url, source, errors) == 2 * MiB
    assert [e.status for e in errors if isinstance(e, TusStatusError)] == [500] * 5
    assert all(e.retryable for e in errors)
    assert len(completed) == 1
    assert sha256(completed[0].path) == sha256(source)


def test_server_restart_mid_upload(
        start_server: Callable[..., TusServer], pki: Pki, tmp_path: Path,
        completed: list[CompletedUpload]) -> None:
    first = start_server()
    size = 4 * MiB
    source = make_file(tmp_path / "c.mp4", size)

    def stop_after_two_chunks(offset: int) -> None:
        if offset == 2 * MiB:
            first.stop()

    with client_for(first, pki) as client:
        url = client.create(size, {"clip_id": "c"})
        with pytest.raises(TransportError) as caught:
            client.upload(url, source, start=0, total=size, on_progress=stop_after_two_chunks)
        assert caught.value.retryable
        second = start_server(port=first.port)
        errors: list[TransportError] = []
        assert retrying(lambda: client.offset(url), errors) == 2 * MiB
        assert resume(client, url, source, errors) == size
    assert second.bytes_received == 2 * MiB
    assert [c.metadata for c in completed] == [{"clip_id": "c"}]
    assert sha256(completed[0].path) == sha256(source)


def test_a_checksummed_chunk_a_crash_left_unverified_is_dropped_at_start(
        start_server: Callable[..., TusServer], pki: Pki, tmp_path: Path,
        completed: list[CompletedUpload]) -> None:
    first = start_server()
    size = 3 * MiB
    source = make_file(tmp_path / "c.mp4", size)
    stop_now = {"at": MiB}

    def stop_after_one_chunk(offset: int) -> None:
        if offset == stop_now["at"]:
            first.stop()

    with client_for(first, pki) as client:
        assert client.options().checksum_algorithms >= {"sha256"}
        url = client.create(size, {"clip_id": "c"})
        with pytest.raises(TransportError):
            client.upload(url, source, start=0, total=size, on_progress=stop_after_one_chunk)
        upload_id = url.rstrip("/").rsplit("/", 1)[-1]
        data, marker = first.data_path(upload_id), first.pending_path(upload_id)
        assert data.stat().st_size == MiB and not marker.exists()
        # What a crash in the middle of the next checksummed PATCH leaves behind:
        # the marker with the offset before the chunk, and part of the chunk.
        marker.write_text(str(MiB))
        with open(data, "ab") as f:
            f.write(b"\xff" * 300_000)
        second = start_server(port=first.port)
        assert data.stat().st_size == MiB and not marker.exists()
        errors: list[TransportError] = []
        assert retrying(lambda: client.offset(url), errors) == MiB
        assert resume(client, url, source, errors) == size
    assert second.bytes_received == 2 * MiB
    assert sha256(completed[0].path) == sha256(source)


def test_an_upload_whose_bytes_all_arrived_before_a_crash_is_completed_at_start(
        start_server: Callable[..., TusServer], pki: Pki, tmp_path: Path,
        completed: list[CompletedUpload]) -> None:
    first = start_server()
    source = make_file(tmp_path / "c.mp4", 200_000)
    with client_for(first, pki) as client:
        url = client.create(200_000, {"clip_id": "c"})
        assert client.upload(url, source, start=0, total=200_000) == 200_000
    first.stop()
    upload_id = url.rstrip("/").rsplit("/", 1)[-1]
    # A crash between the last byte written and the upload marked completed.
    info = first.info(upload_id)
    assert info is not None and info["completed_at"]
    first.save_info(upload_id, {**info, "completed_at": None})
    completed.clear()
    second = start_server(port=first.port)
    # The client finds the offset at the length and sends nothing more: the server
    # completes the upload itself, so the platform hears of it.
    assert [c.id for c in completed] == [upload_id]
    assert sha256(completed[0].path) == sha256(source)
    assert (second.info(upload_id) or {}).get("completed_at")


def test_a_pending_marker_beyond_the_data_never_lengthens_it(
        start_server: Callable[..., TusServer], pki: Pki, tmp_path: Path) -> None:
    # After a power cut the synced marker may name bytes the unsynced data lost.
    first = start_server()
    source = make_file(tmp_path / "c.mp4", 3 * MiB)
    with client_for(first, pki) as client:
        url = client.create(3 * MiB, {"clip_id": "c"})
        upload_id = url.rstrip("/").rsplit("/", 1)[-1]
        first.stop()
        first.pending_path(upload_id).write_text(str(2 * MiB))
        second = start_server(port=first.port)
        assert second.data_path(upload_id).stat().st_size == 0  # not padded with zeros
        assert not second.pending_path(upload_id).exists()
        errors: list[TransportError] = []
        assert retrying(lambda: client.offset(url), errors) == 0
        assert resume(client, url, source, errors) == 3 * MiB
    assert second.data_path(upload_id).read_bytes() == source.read_bytes()


def test_a_leftover_marker_is_undone_before_the_next_chunk(
        server: TusServer, pki: Pki, tmp_path: Path) -> None:
    source = make_file(tmp_path / "c.mp4", 2 * MiB)
    with client_for(server, pki) as client:
        url = client.create(2 * MiB, {"clip_id": "c"})
        upload_id = url.rstrip("/").rsplit("/", 1)[-1]
        # A chunk whose undo failed while the server ran: marker and bytes left behind.
        server.pending_path(upload_id).write_text("0")
        server.data_path(upload_id).write_bytes(b"\xff" * 1000)
        assert client.offset(url) == 0  # HEAD: the unverified bytes do not count
        assert client.upload(url, source, start=0, total=2 * MiB) == 2 * MiB
    assert server.data_path(upload_id).read_bytes() == source.read_bytes()
    assert not server.pending_path(upload_id).exists()


def test_too_large_upload_is_a_permanent_413(
        start_server: Callable[..., TusServer], pki: Pki) -> None:
    server = start_server(max_size=MiB)
    with client_for(server, pki) as client:
        assert client.options().max_size == MiB
        with pytest.raises(TusStatusError) as caught:
            client.create(MiB + 1, {})
    assert caught.value.status == 413
    assert not caught.value.retryable
    assert "413" in str(caught.value)
    assert "exceeds Tus-Max-Size" in str(caught.value)


def test_patch_beyond_upload_length_is_a_permanent_400(
        server: TusServer, pki: Pki, tmp_path: Path) -> None:
    source = make_file(tmp_path / "c.mp4", 20)
    with client_for(server, pki) as client:
        url = client.create(10, {})
        with pytest.raises(TusStatusError) as caught:
            client.upload(url, source, start=0, total=20)
        assert client.offset(url) == 0
    assert caught.value.status == 400
    assert not caught.value.retryable
    assert "exceed Upload-Length 10" in str(caught.value)


def test_unknown_or_terminated_upload_is_gone(
        server: TusServer, pki: Pki, tmp_path: Path) -> None:
    source = make_file(tmp_path / "c.mp4", 3 * MiB)
    with client_for(server, pki) as client:
        with pytest.raises(UploadGone):
            client.offset(server.url + "0" * 32)
        url = client.create(3 * MiB, {})
        client.terminate(url)
        assert sorted(server.store.iterdir()) == []
        with pytest.raises(UploadGone) as caught:
            client.offset(url)
        assert caught.value.status == 404
        with pytest.raises(UploadGone):
            client.upload(url, source, start=0, total=3 * MiB)
        client.terminate(url)  # terminating again is not an error


def test_terminate_partial_upload(server: TusServer, pki: Pki, tmp_path: Path,
                                  completed: list[CompletedUpload]) -> None:
    source = make_file(tmp_path / "c.mp4", 3 * MiB)

    class Stop(Exception):
        pass

    def stop_after_first_chunk(offset: int) -> None:
        raise Stop  # the caller's own way out, e.g. station shutdown

    with client_for(server, pki) as client:
        url = client.create(3 * MiB, {})
        with pytest.raises(Stop):
            client.upload(url, source, start=0, total=3 * MiB, on_progress=stop_after_first_chunk)
        assert client.offset(url) == MiB
        client.terminate(url)
        with pytest.raises(UploadGone):
            client.offset(url)
    assert list(server.store.iterdir()) == []
    assert completed == []


def test_wrong_ca_fails_tls_verification(server: TusServer, tmp_path: Path) -> None:
    other = DevCA(tmp_path / "other-ca")
    with TusClient(server.url, ca_file=other.cert_path) as client, \
            pytest.raises(TransportError) as caught:
        client.options()
    assert "certificate" in str(caught.value).lower()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_plain_http_endpoint_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="not an https"):
        TusClient("http://127.0.0.1:1/files/", ca_file=pki.ca.cert_path)


def test_mutual_tls_required_and_provided(
        start_server: Callable[..., TusServer], pki: Pki, tmp_path: Path,
        completed: list[CompletedUpload]) -> None:
    server = start_server(client_ca=pki.ca.cert_path)
    with client_for(server, pki) as anonymous, pytest.raises(TransportError) as caught:
        anonymous.options()
    assert caught.value.retryable
    source = make_file(tmp_path / "c.mp4", MiB + 3)
    cert = (pki.client.cert_path, pki.client.key_path)
    with client_for(server, pki, cert=cert) as client:
        url = client.create(MiB + 3, {})
        assert client.upload(url, source, start=0, total=MiB + 3) == MiB + 3
    assert sha256(completed[0].path) == sha256(source)


def test_bandwidth_capped_upload_is_still_byte_identical(
        server: TusServer, pki: Pki, tmp_path: Path, completed: list[CompletedUpload]) -> None:
    source = make_file(tmp_path / "c.mp4", MiB + 999)
    with client_for(server, pki, chunk_size=256 * 1024, bandwidth_bytes_s=64 * MiB) as client:
        url = client.create(MiB + 999, {})
        assert client.upload(url, source, start=0, total=MiB + 999) == MiB + 999
    assert sha256(completed[0].path) == sha256(source)


def test_file_changed_since_sealing_is_refused(server: TusServer, pki: Pki,
                                               tmp_path: Path) -> None:
    from agent.errors import IntegrityError

    source = make_file(tmp_path / "c.mp4", 100)
    with client_for(server, pki) as client:
        url = client.create(100, {})
        source.write_bytes(b"x" * 50)
        with pytest.raises(IntegrityError, match="50 bytes but its upload length is 100"):
            client.upload(url, source, start=0, total=100)


def test_server_protocol_errors(server: TusServer, pki: Pki) -> None:
    with client_for(server, pki) as client:
        url = client.create(10, {})
    base = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    with requests.Session() as s:
        s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        s.verify = str(pki.ca.cert_path)
        assert s.head(url, timeout=10).status_code == 412  # no Tus-Resumable
        assert s.patch(url, data=b"ab", timeout=10, headers={
            **base, "Content-Type": "application/octet-stream",
            "Upload-Offset": "0"}).status_code == 415
        assert s.patch(url, data=b"ab", timeout=10,
                       headers={**base, "Upload-Offset": "5"}).status_code == 409
        ok = s.patch(url, data=b"ab", timeout=10, headers={**base, "Upload-Offset": "0"})
        assert (ok.status_code, ok.headers["Upload-Offset"]) == (204, "2")
        assert s.post(server.url, timeout=10, headers={
            "Tus-Resumable": "1.0.0", "Upload-Length": "1",
            "Upload-Metadata": "k not-base64!"}).status_code == 400
        assert s.head(server.url + "../../etc/passwd", headers=base,
                      timeout=10).status_code == 404


def test_retry_after_is_read_from_a_503(server: TusServer, pki: Pki) -> None:
    server.fail_next, server.fail_status, server.fail_retry_after = 1, 503, "120"
    with client_for(server, pki) as client, pytest.raises(TusStatusError) as caught:
        client.create(10, {"clip_id": "c"})
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert caught.value.retry_after_s == 120.0
    server.fail_next, server.fail_status = 1, 500
    server.fail_retry_after = None
    with client_for(server, pki) as client, pytest.raises(TusStatusError) as caught:
        client.create(10, {"clip_id": "c"})
    assert caught.value.retry_after_s is None


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0),
    (" 0 ", 0.0),
    ("Sun, 29 Nov 2026 00:01:40 GMT", 100.0),   # an HTTP-date 100 s after "now"
    ("Sat, 28 Nov 2026 00:00:00 GMT", 0.0),     # in the past: go now
    (None, None),
    ("-5", None),
    ("soon", None),
    ("1.5", None),
    ("\u00b2", None),   # a Latin-1 superscript two: isdigit() but not a number
])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = datetime(2026, 11, 29, 0, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == seconds


def test_backoff_delay_is_full_jitter_under_the_cap() -> None:
    for attempt in range(12):
        ceiling = min(300.0, 2.0 ** attempt)
        delays = [backoff_delay(attempt) for _ in range(50)]
        assert all(0.0 <= d <= ceiling for d in delays)
    assert max(backoff_delay(1000, cap=7.0) for _ in range(50)) <= 7.0
    with pytest.raises(ValueError):
        backoff_delay(-1)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_a_server_over_its_load_cap_answers_503_with_retry_after(
        start_server: Callable[..., TusServer], pki: Pki) -> None:
    server = start_server(max_active=1, busy_retry_after=7)
    with client_for(server, pki) as client:
        url = client.create(1000, {"clip_id": "busy"})
    # One upload in progress: its PATCH body is still on its way.
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    raw = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                              server_hostname="localhost")
    path = urlsplit(url).path
    raw.sendall((f"PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\n"
                 "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                 "Content-Length: 1000\r\n\r\n").encode() + b"x" * 10)
    deadline = time.monotonic() + 10
    while server.active != 1:
        assert time.monotonic() < deadline, "the PATCH never started"
        time.sleep(0.01)
    with client_for(server, pki) as client, pytest.raises(TusStatusError) as caught:
        client.create(10, {"clip_id": "second"})
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert caught.value.retry_after_s == 7.0
    assert server.busy_refusals == 1
    raw.sendall(b"x" * 990)  # the first upload completes; the slot is free again
    assert raw.recv(4096).startswith(b"HTTP/1.1 204")
    raw.close()
    with client_for(server, pki) as client:
        assert client.create(10, {"clip_id": "second"}).startswith(server.url)
    assert server.busy_refusals == 1 and server.active == 0

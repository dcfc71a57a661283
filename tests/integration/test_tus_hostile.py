"""Uploads against hostile HTTPS servers: lying offsets, foreign upload addresses, slow lorises.

Every server here is real (TLS on 127.0.0.1 with certificates made by the
test, or the development tus server behind a trickling TCP proxy); only its
behaviour is hostile.  The station side is the real Uploader on a real
sealed store and vault.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.config import Config
from agent.custody.keys import StationKey
from agent.devpki import DevCA, Issued
from agent.errors import ConfigError, TransportError
from agent.store import ClipState, Store
from agent.sync.tus import TusClient
from agent.sync.uploader import Uploader
from agent.vault import Vault
from scripts.devplatform.tusserver import TusServer
from tests.conftest import write_station_config
from tests.support.hostile import (
    Conn,
    HostileServer,
    LyingTus,
    Request,
    TricklingProxy,
    Upload,
)
from tests.support.stations import camera, running_station

pytestmark = pytest.mark.integration


@dataclass
class Pki:
    ca: DevCA
    server: Issued
    client: Issued
    platform_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = DevCA(directory)
    key_path = directory / "platform-key.pem"
    key_path.write_bytes(StationKey.generate().public_pem())
    return Pki(ca, ca.issue("localhost", "server", server=True, client=False),
               ca.issue("ST-0001", "station"), key_path)


@pytest.fixture(scope="module")
def sealed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station directory with two sealed clips and no platform (copied by each test)."""
    base = tmp_path_factory.mktemp("sealed")
    config = config_mod.load(write_station_config(base))
    camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
    return base


@dataclass
class Rig:
    config: Config
    store: Store
    uploader: Uploader

    def clip(self, index: int = 0) -> Any:
        return self.store.clips()[index]

    def events(self, code: str | None = None) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT payload FROM outbox WHERE topic LIKE '%/events' "
                                "ORDER BY rowid")
        events = [json.loads(r["payload"]) for r in rows]
        return [e for e in events if code is None or e["data"].get("code") == code]

    def log(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.store.query(
            "SELECT body FROM custody_log WHERE kind = ? ORDER BY seq", (kind,))]


@pytest.fixture
def rig(sealed_dir: Path, tmp_path: Path, pki: Pki) -> Iterator[Any]:
    """``rig(upload_url, platform_extra)``: the sealed station copied, with a platform section."""
    stores: list[Store] = []

    def make(upload_url: str, platform_extra: str = "") -> Rig:
        base = tmp_path / "station"
        shutil.copytree(sealed_dir, base)
        path = base / "platform.toml"
        text = (base / "station.toml").read_text().replace(str(sealed_dir), str(base))
        path.write_text(text + textwrap.dedent(f"""
            [platform]
            mqtt_url = "mqtts://127.0.0.1:1"
            upload_url = "{upload_url}"
            ca_file = "{pki.ca.cert_path}"
            platform_key_file = "{pki.platform_key}"
            """) + textwrap.dedent(platform_extra), encoding="utf-8")
        config = config_mod.load(path)
        store = Store(config.data_dir / "state.db", station_id=config.station.id)
        stores.append(store)
        return Rig(config, store, Uploader(config, store, Vault(config.data_dir / "vault")))

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def lying(pki: Pki) -> Iterator[tuple[LyingTus, HostileServer]]:
    tus = LyingTus()
    with HostileServer(pki.server.cert_path, pki.server.key_path, tus) as server:
        yield tus, server


def _upload(rig: Rig, clip_id: str) -> None:
    client = rig.uploader._client()
    try:
        rig.uploader.upload_one(client, clip_id)
    finally:
        client.close()


# --- offsets -------------------------------------------------------------------------------

def test_a_head_offset_beyond_the_file_starts_a_fresh_upload_and_alerts(
        rig: Any, lying: tuple[LyingTus, HostileServer]) -> None:
    tus, server = lying
    station: Rig = rig(f"{server.origin}/files/")
    clip = station.clip()
    size = int(clip["size"])
    # A previous attempt created an upload there; now the server claims more than the file.
    tus.uploads["u-old"] = Upload(size)
    tus.head_offset = lambda upload_id, true: size + 4096 if upload_id == "u-old" else true
    with station.store.transaction() as tx:
        tx.transition(clip["clip_id"], ClipState.UPLOADING, log_body={})
        tx.update_clip(clip["clip_id"], upload_url=f"{server.origin}/files/u-old",
                       upload_offset=0)
    _upload(station, clip["clip_id"])
    row = station.store.clip(clip["clip_id"])
    fresh = [u for k, u in tus.uploads.items() if k != "u-old"]
    assert len(fresh) == 1 and bytes(fresh[0].data) == \
        (station.config.data_dir / "vault").joinpath(
            "sha256", clip["sha256"][:2], clip["sha256"][2:4], clip["sha256"]).read_bytes()
    assert row["state"] == "uploaded" and row["upload_url"] != f"{server.origin}/files/u-old"
    (alert,) = station.events("upload.offset_invalid")
    assert alert["data"]["clip_id"] == clip["clip_id"]
    assert f"{size + 4096}" in alert["data"]["message"] and f"{size}" in alert["data"]["message"]
    (restart,) = station.log("upload.restarted")
    assert restart["server_offset"] == size + 4096 and restart["size"] == size


def test_a_head_offset_below_what_the_server_confirmed_starts_a_fresh_upload(
        rig: Any, lying: tuple[LyingTus, HostileServer]) -> None:
    tus, server = lying
    station: Rig = rig(f"{server.origin}/files/")
    clip = station.clip()
    size = int(clip["size"])
    tus.uploads["u-old"] = Upload(size, bytearray(b"x" * 5000))
    tus.head_offset = lambda upload_id, true: 10 if upload_id == "u-old" else true
    with station.store.transaction() as tx:
        tx.transition(clip["clip_id"], ClipState.UPLOADING, log_body={})
        tx.update_clip(clip["clip_id"], upload_url=f"{server.origin}/files/u-old",
                       upload_offset=5000)
    _upload(station, clip["clip_id"])
    assert station.store.clip(clip["clip_id"])["state"] == "uploaded"
    (alert,) = station.events("upload.offset_invalid")
    assert "went back" in alert["data"]["message"]
    assert [r["server_offset"] for r in station.log("upload.restarted")] == [10]


def test_a_conflict_whose_head_is_beyond_the_file_restarts_instead_of_quarantining(
        rig: Any, lying: tuple[LyingTus, HostileServer]) -> None:
    tus, server = lying
    station: Rig = rig(f"{server.origin}/files/")
    clip = station.clip()
    size = int(clip["size"])
    lied: list[str] = []

    def conflict_once(request: Request, conn: Conn) -> bool:
        upload_id = tus.upload_id(request.path)
        if not lied:
            lied.append(upload_id)
            conn.respond(409, "Conflict")
            return True
        return False

    tus.patch = conflict_once
    tus.head_offset = lambda upload_id, true: size * 2 if upload_id in lied else true
    _upload(station, clip["clip_id"])
    row = station.store.clip(clip["clip_id"])
    assert row["state"] == "uploading", "retried later from a fresh upload, not quarantined"
    assert row["upload_url"] is None and row["upload_attempts"] == 1
    assert len(station.events("upload.offset_invalid")) == 1
    _upload(station, clip["clip_id"])  # the next attempt (its back-off is not waited here)
    assert station.store.clip(clip["clip_id"])["state"] == "uploaded"
    # The abandoned upload was deleted on the server (termination); the fresh one is whole.
    assert lied[0] not in tus.uploads
    assert [len(u.data) for u in tus.uploads.values()] == [size]


# --- the upload address --------------------------------------------------------------------

def test_an_upload_address_on_another_host_or_port_gets_nothing(
        rig: Any, pki: Pki, lying: tuple[LyingTus, HostileServer]) -> None:
    tus, server = lying
    with HostileServer(pki.server.cert_path, pki.server.key_path, LyingTus(),
                       client_ca=pki.ca.cert_path) as elsewhere:
        for target in (f"https://127.0.0.1:{elsewhere.port}/files/x",
                       f"https://localhost:{server.port}/files/x"):
            tus.location = lambda _id, target=target: target
            station: Rig = rig(f"{server.origin}/files/")
            clip = station.clip()
            _upload(station, clip["clip_id"])
            row = station.store.clip(clip["clip_id"])
            assert row["state"] == "quarantined"
            assert "not the configured upload server" in row["reason"]
            assert target.rsplit("/files", 1)[0] in row["reason"]
            assert [r.method for r in server.requests if r.method == "PATCH"] == []
            station.store.close()
            shutil.rmtree(station.config.data_dir.parent)
        assert elsewhere.connections == 0, "the station's certificate never went there"


def test_a_redirect_is_never_followed(rig: Any, pki: Pki) -> None:
    with HostileServer(pki.server.cert_path, pki.server.key_path, LyingTus()) as elsewhere:
        def redirect(request: Request, conn: Conn) -> None:
            if request.method == "OPTIONS":
                LyingTus()(request, conn)
            else:
                conn.respond(307, "Temporary Redirect",
                             {"Location": f"{elsewhere.origin}/files/"})

        with HostileServer(pki.server.cert_path, pki.server.key_path, redirect) as server:
            station: Rig = rig(f"{server.origin}/files/")
            clip = station.clip()
            _upload(station, clip["clip_id"])
            row = station.store.clip(clip["clip_id"])
            assert row["state"] == "quarantined" and "HTTP 307" in row["reason"]
        assert elsewhere.connections == 0


def test_an_allow_listed_upload_origin_is_followed(
        rig: Any, pki: Pki, lying: tuple[LyingTus, HostileServer]) -> None:
    tus, server = lying
    storage = LyingTus()
    with HostileServer(pki.server.cert_path, pki.server.key_path, storage) as elsewhere:
        tus.location = lambda upload_id: f"{elsewhere.origin}/files/{upload_id}"
        storage.uploads["u1"] = Upload(0)
        station: Rig = rig(f"{server.origin}/files/",
                           f'upload_origins = ["{elsewhere.origin}"]\n')
        clip = station.clip()
        storage.uploads["u1"].length = int(clip["size"])
        _upload(station, clip["clip_id"])
        assert station.store.clip(clip["clip_id"])["state"] == "uploaded"
        assert len(storage.uploads["u1"].data) == int(clip["size"])


@pytest.mark.parametrize("origin", ["https://a.example/files/", "ftp://a.example",
                                    "https://a.example:99999", "a.example:443"])
def test_upload_origins_must_be_bare_origins(station_config: Any, pki: Pki,
                                             origin: str) -> None:
    with pytest.raises(ConfigError) as info:
        station_config(textwrap.dedent(f"""
            [platform]
            mqtt_url = "mqtts://127.0.0.1:1"
            upload_url = "https://127.0.0.1:8443/files/"
            ca_file = "{pki.ca.cert_path}"
            platform_key_file = "{pki.platform_key}"
            upload_origins = ["{origin}"]
            """))
    assert any(p.startswith("platform.upload_origins[0]:") for p in info.value.problems)


# --- slow servers ----------------------------------------------------------------------------

def _timed(step: Any, limit: float) -> tuple[BaseException | None, float]:
    """Run ``step`` on a thread; (its exception, seconds), or fail if it is still running."""
    outcome: list[BaseException | None] = []
    started = time.monotonic()

    def run() -> None:
        try:
            step()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the request was still running after {limit} s"
    return outcome[0], time.monotonic() - started


def test_headers_trickled_one_byte_a_second_end_at_the_overall_deadline(pki: Pki) -> None:
    answer = (b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nTus-Version: 1.0.0\r\n"
              b"Content-Length: 0\r\n\r\n")

    def slow_loris(_request: Request, conn: Conn) -> None:
        conn.trickle(answer, every_s=1.0)

    with HostileServer(pki.server.cert_path, pki.server.key_path, slow_loris) as server:
        client = TusClient(f"{server.origin}/files/", ca_file=pki.ca.cert_path,
                           timeout_s=30.0, deadline_s=2.0)
        error, elapsed = _timed(client.options, limit=8.0)
        client.close()
    assert isinstance(error, TransportError) and error.retryable
    assert "overall deadline of 2 s" in str(error)
    assert 1.5 < elapsed < 4.0


def test_a_tls_handshake_trickled_through_a_proxy_ends_at_the_overall_deadline(
        pki: Pki, tmp_path: Path) -> None:
    server = TusServer(tmp_path / "store", certfile=pki.server.cert_path,
                       keyfile=pki.server.key_path).start()
    proxy = TricklingProxy(server.port, every_s=1.0).start()
    try:
        client = TusClient(f"https://127.0.0.1:{proxy.port}/files/", ca_file=pki.ca.cert_path,
                           deadline_s=2.0)
        error, elapsed = _timed(client.options, limit=8.0)
        client.close()
    finally:
        proxy.stop()
        server.stop()
    assert isinstance(error, TransportError) and "overall deadline" in str(error)
    assert elapsed < 4.0


def test_the_deadline_of_a_patch_allows_for_its_body(pki: Pki, tmp_path: Path) -> None:
    """A healthy but capped link is not cut: the body's time at the floor rate is added."""
    server = TusServer(tmp_path / "store", certfile=pki.server.cert_path,
                       keyfile=pki.server.key_path).start()
    source = tmp_path / "clip.bin"
    source.write_bytes(b"\x5a" * (512 * 1024))
    try:
        client = TusClient(server.url, ca_file=pki.ca.cert_path, chunk_size=512 * 1024,
                           bandwidth_bytes_s=512 * 1024, deadline_s=0.5,
                           min_rate_bytes_s=256 * 1024)
        url = client.create(source.stat().st_size, {})
        assert client.upload(url, source, start=0, total=source.stat().st_size) == 512 * 1024
        client.close()
    finally:
        server.stop()

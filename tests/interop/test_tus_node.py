"""The agent's tus client against the official Node tus server (@tus/server, FileStore)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devpki import DevCA, Issued
from agent.sync.tus import TusClient, UploadGone
from tests.support import tus_node

pytestmark = pytest.mark.interop

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def node() -> str:
    try:
        return tus_node.ensure_installed()
    except tus_node.NodeSetupError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCA, Issued]:
    ca = DevCA(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("localhost", "server", server=True, client=False)


@pytest.fixture
def server(node: str, pki: tuple[DevCA, Issued],
           tmp_path: Path) -> Iterator[tus_node.NodeTusServer]:
    _, issued = pki
    with tus_node.NodeTusServer(node, tmp_path / "store", issued.cert_path,
                                issued.key_path) as running:
        yield running


def client_for(server: tus_node.NodeTusServer, pki: tuple[DevCA, Issued]) -> TusClient:
    return TusClient(server.url, ca_file=pki[0].cert_path, chunk_size=MiB)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_in_chunks_is_stored_byte_identical_with_metadata(
        server: tus_node.NodeTusServer, pki: tuple[DevCA, Issued], tmp_path: Path) -> None:
    size = 3 * MiB + 123
    source = tmp_path / "clip.mp4"
    source.write_bytes(os.urandom(size))
    metadata = {"clip_id": "0190a1b2-0000-7000-8000-000000000001", "sha256": sha256(source),
                "station_id": "ST-0001", "filename": "执法记录仪_张三_2024-05-01.mp4"}
    progress: list[int] = []
    with client_for(server, pki) as client:
        caps = client.options()
        assert caps.version == "1.0.0"
        assert {"creation", "termination"} <= caps.extensions
        url = client.create(size, metadata)
        # @tus/server answers with a relative Location; the client resolves it.
        assert url.startswith(f"https://127.0.0.1:{server.port}/files/")
        assert client.upload(url, source, start=0, total=size,
                             on_progress=progress.append) == size
        assert client.offset(url) == size
    finished = server.wait_event("finish")
    assert progress == [MiB, 2 * MiB, 3 * MiB, size]
    assert url.endswith("/" + finished["id"])
    assert finished["size"] == finished["offset"] == size
    assert finished["metadata"] == metadata
    assert sha256(server.store / finished["id"]) == sha256(source)


def test_resume_with_a_new_client_from_the_server_offset(
        server: tus_node.NodeTusServer, pki: tuple[DevCA, Issued], tmp_path: Path) -> None:
    size = 3 * MiB
    source = tmp_path / "clip.mp4"
    source.write_bytes(os.urandom(size))

    class Crash(Exception):
        pass

    def crash_after_first_chunk(offset: int) -> None:
        raise Crash

    with client_for(server, pki) as first:
        url = first.create(size, {"clip_id": "c2"})
        with pytest.raises(Crash):
            first.upload(url, source, start=0, total=size, on_progress=crash_after_first_chunk)
    with client_for(server, pki) as second:  # as after an agent restart
        offset = second.offset(url)
        assert offset == MiB
        assert second.upload(url, source, start=offset, total=size) == size
    finished = server.wait_event("finish")
    assert sha256(server.store / finished["id"]) == sha256(source)


def test_terminated_upload_is_gone(server: tus_node.NodeTusServer,
                                   pki: tuple[DevCA, Issued]) -> None:
    with client_for(server, pki) as client:
        url = client.create(MiB, {"clip_id": "c3"})
        client.terminate(url)
        with pytest.raises(UploadGone):
            client.offset(url)
    assert not (server.store / url.rsplit("/", 1)[1]).exists()

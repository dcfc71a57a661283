"""Fixtures for the integration tests: a development CA and a real mosquitto broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.devpki import DevCA
from tests.support.mosquitto import Broker, PlatformClient, issue_files


@dataclass(frozen=True)
class ClientCert:
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    """One development CA for the whole session (key generation is the slow part)."""
    return DevCA(tmp_path_factory.mktemp("devca"))


@pytest.fixture(scope="session")
def station_cert(dev_ca: DevCA, tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    """The client certificate of station ST-0001 (CN = station ID = MQTT user name)."""
    cert, key = issue_files(dev_ca, tmp_path_factory.mktemp("station"), "ST-0001", "station")
    return ClientCert(cert, key)


@pytest.fixture(scope="session")
def platform_cert(dev_ca: DevCA, tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    """The platform's client certificate (CN "platform", full access in the ACL)."""
    cert, key = issue_files(dev_ca, tmp_path_factory.mktemp("platform"), "platform", "platform")
    return ClientCert(cert, key)


@pytest.fixture
def broker(tmp_path: Path, dev_ca: DevCA) -> Iterator[Broker]:
    """A running mosquitto (TLS, client certificates, station ACL, persistence) for one test."""
    instance = Broker(tmp_path / "broker", dev_ca)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def platform(broker: Broker, platform_cert: ClientCert) -> Iterator[PlatformClient]:
    """The platform side: subscribed to every station topic before the test starts."""
    client = PlatformClient(broker, platform_cert.cert_file, platform_cert.key_file).start()
    try:
        yield client
    finally:
        client.stop()

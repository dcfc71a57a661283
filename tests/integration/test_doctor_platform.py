"""`bwc-agent doctor` against the development platform: broker and upload server over TLS and
mutual TLS, and the clock against the upload server's Date; each made to fail, with its advice.
"""

from __future__ import annotations

import http.server
import re
import ssl
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from agent import config as config_mod
from agent import doctor
from agent.cli.main import main
from agent.config import Config
from agent.devpki import DevCA
from agent.doctor import FAIL, OK, Environment, Finding
from scripts.devplatform.stand import DevStand
from tests.support.mosquitto import issue_files

pytestmark = pytest.mark.integration


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def _station(stand: DevStand, tmp_path: Path, platform_extra: str = "") -> Config:
    return config_mod.load(stand.station(tmp_path / "ST-0001", "ST-0001",
                                         platform_extra=platform_extra))


def _check(config: Config, name: str, deadline_s: float = 5.0) -> list[Finding]:
    report = doctor.run(config, Environment(deadline_s=deadline_s))
    return [f for f in report.findings if f.check == name]


def test_broker_and_upload_server_reachable_with_mutual_tls(
        stand: DevStand, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _station(stand, tmp_path)
    [broker] = _check(config, "broker")
    assert broker.status == OK and "accepts the station (TLS with the station's client " \
        "certificate" in broker.text
    [upload] = _check(config, "upload")
    assert upload.status == OK and "speaks tus 1.0.0 over mutual TLS" in upload.text
    skew = [f for f in _check(config, "clock") if "platform" in f.text]
    assert skew and skew[0].status == OK
    capsys.readouterr()
    code = main(["doctor", "--config", str(config.source)])
    out = capsys.readouterr().out
    assert "FAIL  broker" not in out and "FAIL  upload" not in out, out
    assert code in (0, 1)


def test_broker_down(stand: DevStand, tmp_path: Path) -> None:
    config = _station(stand, tmp_path)
    stand.stop_broker()
    [finding] = _check(config, "broker")
    assert finding.status == FAIL and "refused" in finding.text.lower()
    assert "is the broker running" in finding.advice


def test_broker_certificate_from_another_ca(stand: DevStand, tmp_path: Path) -> None:
    other = DevCA(tmp_path / "other-ca")
    config = _station(stand, tmp_path)
    source = Path(str(config.source))
    source.write_text(source.read_text().replace(str(stand.pki.ca_cert_path),
                                                 str(other.cert_path)))
    patched = config_mod.load(source)
    [finding] = _check(patched, "broker")
    assert finding.status == FAIL and "certificate verification failed" in finding.text
    assert "platform.ca_file" in finding.advice
    [upload] = _check(patched, "upload")
    assert upload.status == FAIL and "platform.ca_file" in upload.advice


def test_client_certificate_the_broker_does_not_trust(stand: DevStand, tmp_path: Path) -> None:
    other = DevCA(tmp_path / "other-ca")
    cert, key = issue_files(other, tmp_path, "ST-0001", "foreign")
    config = _station(stand, tmp_path)
    text = Path(str(config.source)).read_text()
    tls = stand.pki.station_tls("ST-0001")
    text = text.replace(str(tls.cert_path), str(cert)).replace(str(tls.key_path), str(key))
    Path(str(config.source)).write_text(text)
    patched = config_mod.load(Path(str(config.source)))
    [finding] = _check(patched, "broker")
    assert finding.status == FAIL
    assert "client certificate" in finding.advice
    [upload] = _check(patched, "upload")
    assert upload.status == FAIL and "client certificate" in upload.advice


class _SkewedTus(http.server.BaseHTTPRequestHandler):
    """A tus endpoint whose clock is two hours behind."""

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self.send_header("Tus-Version", "1.0.0")
        self.end_headers()

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() - 7200, usegmt=True)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_station_clock_far_from_the_platforms(stand: DevStand, tmp_path: Path) -> None:
    cert, key = issue_files(stand.pki.ca, tmp_path, "127.0.0.1", "skewed", server=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SkewedTus)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = _station(stand, tmp_path)
        text = Path(str(config.source)).read_text().replace(
            stand.platform.upload_url, f"https://127.0.0.1:{server.server_address[1]}/files/")
        Path(str(config.source)).write_text(text)
        skewed = config_mod.load(Path(str(config.source)))
        [finding] = [f for f in _check(skewed, "clock") if "platform" in f.text]
        assert finding.status == FAIL
        assert re.search(r"station clock \+720[01] s from the platform's", finding.text)
        assert "timedatectl set-ntp true" in finding.advice
        assert "commands are refused beyond 60 s" in finding.advice
    finally:
        server.shutdown()
        server.server_close()


def test_upload_server_that_never_answers_is_cut_at_the_deadline(stand: DevStand,
                                                                  tmp_path: Path) -> None:
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections (the kernel does), never says a word
    try:
        config = _station(stand, tmp_path)
        text = Path(str(config.source)).read_text().replace(
            stand.platform.upload_url, f"https://127.0.0.1:{silent.getsockname()[1]}/files/")
        Path(str(config.source)).write_text(text)
        slow = config_mod.load(Path(str(config.source)))
        started = time.monotonic()
        [finding] = _check(slow, "upload", deadline_s=2.0)
        assert time.monotonic() - started < 10
        assert finding.status == FAIL and "no answer in time" in finding.advice
    finally:
        silent.close()

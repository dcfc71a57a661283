"""Starting and stopping the sync side: TLS files named by their key, no lost wake-ups.

The TLS cases use real files (a development CA, a real key, a file the
station's user may not read) and the real command line, which must exit 2
(a configuration error) naming the key.  The wake-up cases hold a real
upload worker at the exact moment between "nothing to do" and its wait.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config import Config
from agent.custody.keys import StationKey
from agent.devpki import DevCA
from agent.errors import ConfigError
from agent.store import Store
from agent.sync.mqtt import MqttLink
from agent.sync.tlsfiles import client_context
from agent.sync.uploader import Uploader
from agent.vault import Vault
from tests.conftest import write_station_config


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA(tmp_path_factory.mktemp("ca"))


def _platform(ca: DevCA, tmp_path: Path, **overrides: str) -> str:
    platform_key = tmp_path / "platform-key.pem"
    platform_key.write_bytes(StationKey.generate().public_pem())
    client = ca.issue("ST-0001", "tls")
    keys = {"ca_file": str(ca.cert_path), "cert_file": str(client.cert_path),
            "key_file": str(client.key_path), **overrides}
    return textwrap.dedent(f"""
        [platform]
        mqtt_url = "mqtts://127.0.0.1:1"
        upload_url = "https://127.0.0.1:2/files/"
        platform_key_file = "{platform_key}"
        upload_concurrency = 1
        """) + "".join(f'{k} = "{v}"\n' for k, v in keys.items())


# --- TLS files -------------------------------------------------------------------------------

def _unreadable(tmp_path: Path, ca: DevCA) -> Path:
    path = tmp_path / "unreadable.pem"
    path.write_bytes(ca.cert_path.read_bytes())
    path.chmod(0)
    return path


CASES: dict[str, tuple[str, Callable[[Path, DevCA], str], str]] = {
    "ca missing": ("ca_file", lambda t, _c: str(t / "nope.pem"), "does not exist"),
    "ca not pem": ("ca_file", lambda t, _c: str(_text(t, "ca.txt", "hello")),
                   "holds no PEM certificate"),
    "cert is a directory": ("cert_file", lambda t, _c: str(t), "is a directory"),
    "cert not pem": ("cert_file", lambda t, _c: str(_text(t, "c.pem", "x")),
                     "holds no PEM certificate"),
    "key missing": ("key_file", lambda t, _c: str(t / "missing.key"), "does not exist"),
    "key is a certificate": ("key_file", lambda _t, c: str(c.cert_path),
                             "holds no PEM private key"),
    "key of another certificate": ("key_file",
                                   lambda _t, c: str(c.issue("other", "other").key_path),
                                   "does not belong to the certificate"),
}


def _text(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_tls_file_names_its_key_for_mqtt_and_uploads(ca: DevCA, tmp_path: Path,
                                                           case: str) -> None:
    key, make, words = CASES[case]
    value = make(tmp_path, ca)
    files = {"ca_file": ca.cert_path, "cert_file": ca.issue("ST-0001", "tls").cert_path,
             "key_file": ca.issue("ST-0001", "tls2").key_path}
    files = {**files, key: Path(value)}
    if case == "key of another certificate":
        files["cert_file"] = ca.issue("ST-0001", "tls3").cert_path
    with pytest.raises(ConfigError) as info:
        client_context(files["ca_file"], files["cert_file"], files["key_file"])
    assert str(info.value).startswith(f"platform.{key}") or \
        str(info.value).startswith("platform.cert_file / platform.key_file")
    assert words in str(info.value)


def test_an_unreadable_ca_file_is_named_not_errno_13(ca: DevCA, tmp_path: Path) -> None:
    path = _unreadable(tmp_path, ca)
    with pytest.raises(ConfigError) as info, _as_another_user():
        client_context(path, None, None)
    assert str(info.value).startswith("platform.ca_file: ")
    assert "permission denied" in str(info.value) and "Errno" not in str(info.value)


@contextlib.contextmanager
def _as_another_user() -> Iterator[None]:
    """Root reads any file: as root, act as "nobody" for the block (effective uid only)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_mqtt_link_refuses_bad_tls_files_as_a_configuration_error(ca: DevCA,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^platform\.key_file: .*holds no PEM private key"):
        MqttLink(station_id="ST-0001", url="mqtts://127.0.0.1:1", ca_file=ca.cert_path,
                 cert_file=ca.cert_path, key_file=ca.cert_path, username=None, password=None,
                 protocol="5", keepalive=30, outbox=None,  # type: ignore[arg-type]
                 status_provider=dict, on_message=lambda _m: None)


def test_run_with_a_bad_tls_file_exits_2_naming_the_key(
        ca: DevCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_key = _text(tmp_path, "tls.key", "-----BEGIN PRIVATE KEY-----\ngarbage\n")
    path = write_station_config(tmp_path, _platform(ca, tmp_path, key_file=str(not_a_key)))
    assert main(["run", "--config", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert "platform.key_file" in err and "holds no PEM private key" in err
    assert "Errno" not in err and "Traceback" not in err


# --- lost wake-ups -----------------------------------------------------------------------------

def _uploader(ca: DevCA, tmp_path: Path, station_config: Callable[..., Config]) -> Uploader:
    config = station_config(_platform(ca, tmp_path))
    store = Store(config.data_dir / "state.db", station_id=config.station.id)
    return Uploader(config, store, Vault(config.data_dir / "vault"))


def _hold_after_empty_claim(uploader: Uploader, until: threading.Event) -> threading.Event:
    """Make the worker stop right after its first empty look for work, until ``until``."""
    found_nothing = threading.Event()
    real_claim = uploader._claim
    calls = [0]

    def claim() -> str | None:
        result = real_claim()
        calls[0] += 1
        if calls[0] == 1:
            found_nothing.set()
            assert until.wait(10)
        return result

    uploader._claim = claim  # type: ignore[method-assign]
    uploader.calls = calls  # type: ignore[attr-defined]
    return found_nothing


def test_stop_right_after_a_worker_found_nothing_returns_at_once(
        ca: DevCA, tmp_path: Path, station_config: Callable[..., Config]) -> None:
    uploader = _uploader(ca, tmp_path, station_config)
    stop_sent = threading.Event()
    real_poke = uploader.poke

    def poke() -> None:
        real_poke()
        if uploader._stop.is_set():
            stop_sent.set()  # stop()'s wake-up has gone out: only now may the worker wait

    uploader.poke = poke  # type: ignore[method-assign]
    found_nothing = _hold_after_empty_claim(uploader, stop_sent)
    uploader.start()
    assert found_nothing.wait(10)
    started = time.monotonic()
    uploader.stop()
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in uploader._threads)
    assert elapsed < 2.0, f"stop() took {elapsed:.1f} s: the wake-up was lost"
    uploader.store.close()


def test_a_seal_right_after_a_worker_found_nothing_is_picked_up_at_once(
        ca: DevCA, tmp_path: Path, station_config: Callable[..., Config]) -> None:
    uploader = _uploader(ca, tmp_path, station_config)
    poked = threading.Event()
    found_nothing = _hold_after_empty_claim(uploader, poked)
    uploader.start()
    try:
        assert found_nothing.wait(10)
        uploader.poke()  # a clip was sealed while the worker was between claim and wait
        poked.set()
        deadline = time.monotonic() + 2.0
        while uploader.calls[0] < 2 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        assert uploader.calls[0] >= 2, "the worker slept through the poke"  # type: ignore[attr-defined]
    finally:
        uploader.stop()
        uploader.store.close()

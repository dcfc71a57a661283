"""The checks after a copy run beside the next copy; a vault copy that fails its verify is redone."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.station import Station
from tests.support.stations import camera, running_station


def _damage_first_verify(station: Station, times: int = 1) -> list[str]:
    """The vault disk damages the first ``times`` objects written, right before each is read
    back (always the same bytes: a failing disk that damages every copy)."""
    vault = station.vault
    assert vault is not None
    real = vault.verify
    damaged: list[str] = []

    def verify(sha256: str, **kwargs: bool) -> int:
        if len(damaged) < times:
            damaged.append(sha256)
            path = vault.path_for(sha256)
            os.chmod(path, 0o644)
            with open(path, "r+b") as f:
                f.seek(10)
                f.write(b"\x00\xff")
            os.chmod(path, 0o444)
        return real(sha256, **kwargs)

    vault.verify = verify  # type: ignore[method-assign]
    return damaged


def _sources(cam: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (cam / "DCIM").rglob("*") if p.is_file()}


def test_a_vault_copy_that_fails_its_verify_is_copied_again(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    sources = _sources(camera(config, clips=2))
    with running_station(config) as station:
        damaged = _damage_first_verify(station)
        summary = station.run_once()
        store = station.store
        assert store is not None
        rows = {r["name"]: r for r in store.clips()}
        log = [(r["kind"], json.loads(r["body"])) for r in store.query(
            "SELECT kind, body FROM custody_log ORDER BY seq")]
    assert summary.ok, summary
    assert {n: r["sha256"] for n, r in rows.items()} == sources
    assert {(r["state"], r["verified"]) for r in rows.values()} == {("sealed", 1)}
    (redone,) = [r for r in rows.values() if r["sha256"] == damaged[0]]
    assert redone["copy_attempts"] == 2
    assert sorted(r["copy_attempts"] for r in rows.values()) == [1, 2]
    alerts = [body for kind, body in log if kind == "alert"]
    assert [a["code"] for a in alerts] == ["vault.verify_failed"]
    assert f"vault object {damaged[0]} reads back as" in alerts[0]["message"]
    reasons = [body.get("reason", "") for kind, body in log
               if kind == "clip.discovered" and body.get("reason")]
    assert any(r.startswith("vault copy failed verification") for r in reasons), log


def test_a_vault_copy_failing_its_last_verify_is_quarantined(
        station_config: Callable[..., Config]) -> None:
    config = station_config("[ingest]\nchange_retries = 0\n")
    camera(config, clips=1)
    with running_station(config) as station:
        damaged = _damage_first_verify(station)
        summary = station.run_once()
        store = station.store
        assert store is not None
        (row,) = store.clips()
    assert not summary.ok
    assert row["state"] == "quarantined" and row["sha256"] is None
    assert row["reason"].startswith(f"vault copy failed verification: vault object {damaged[0]}")
    # The damaged object is not kept under its digest: it does not hold those bytes.
    assert not (config.data_dir / "vault" / "sha256" / damaged[0][:2] / damaged[0][2:4]
                / damaged[0]).exists()


def test_a_vault_copy_that_keeps_failing_its_verify_is_quarantined_after_its_retries(
        station_config: Callable[..., Config]) -> None:
    """Rule: ``ingest.change_retries`` bounds the copies of a clip whose verify fails, also
    across the rounds of a dock session; then it is quarantined, never copied for ever."""
    config = station_config("[ingest]\nchange_retries = 1\n")
    camera(config, clips=1)
    with running_station(config) as station:
        damaged = _damage_first_verify(station, times=6)
        summary = station.run_once()
        (row,) = station.store.clips()
    assert len(damaged) == 2  # the first copy and one retry, each damaged
    assert (row["state"], row["copy_attempts"]) == ("quarantined", 2)
    assert not summary.ok


@pytest.mark.parametrize("verify", [True, False])
def test_verify_setting_decides_the_verified_flag(station_config: Callable[..., Config],
                                                  verify: bool) -> None:
    config = station_config(f"[ingest]\nverify = {str(verify).lower()}\n")
    camera(config, clips=2)
    with running_station(config) as station:
        assert station.run_once().ok
        assert station.store is not None
        rows = station.store.clips()
    assert {(r["state"], r["verified"]) for r in rows} == {("sealed", int(verify))}


def test_a_clip_probed_before_its_verify_ends_is_recorded_when_the_verify_ends(
        station_config: Callable[..., Config]) -> None:
    import threading

    config = station_config()
    sources = _sources(camera(config, clips=3))
    with running_station(config) as station:
        assert station.offloader is not None and station.store is not None
        checker = station.offloader.copier.checker
        real_probe = checker.probe
        probed: list[str] = []

        def probe(path: Path, clip_id: str, name: str) -> tuple[dict[str, Any] | None, list[str]]:
            result = real_probe(path, clip_id, name)
            probed.append(clip_id)
            return result

        checker.probe = probe  # type: ignore[method-assign]
        # Every verify worker is held: the probes run and end first.
        gate = threading.Event()
        started = threading.Semaphore(0)
        pool = station.offloader.verifies

        def hold() -> None:
            started.release()
            gate.wait(60)

        holds = [pool.submit(object(), hold) for _ in range(pool.workers)]
        for _ in holds:
            assert started.acquire(timeout=10)
        results = []
        session = threading.Thread(target=lambda: results.append(station.run_once()))
        session.start()
        deadline = time.monotonic() + 60
        while len(probed) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(probed) == 3
        # Probed, not verified: nothing is recorded copied yet.
        assert {r["state"] for r in station.store.clips()} == {"copying"}
        gate.set()
        session.join(60)
        rows = station.store.clips()
    assert results and results[0].ok
    assert {r["name"]: r["sha256"] for r in rows} == sources
    assert {(r["state"], r["verified"]) for r in rows} == {("sealed", 1)}
    assert all(json.loads(r["media"])["verdict"] == "ok" for r in rows)


def _ingest_failures(station: Station) -> list[str]:
    return [json.loads(r["body"])["message"] for r in station.store.query(
        "SELECT body FROM custody_log WHERE kind = 'alert'")
        if json.loads(r["body"])["code"] == "ingest.failed"]


def test_a_probe_that_cannot_run_is_a_station_failure_and_the_clip_is_copied_again(
        station_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: no clip is left ``copying`` in silence: a probe without room for its output
    (or a process to run in) fails the clip's ingest with an alert; the next dock copies it."""
    import errno

    from agent.media import sandbox

    config = station_config()
    camera(config, clips=1)

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with running_station(config) as station:
        with monkeypatch.context() as patch:
            patch.setattr(sandbox.tempfile, "TemporaryFile", full)
            summary = station.run_once()
        (row,) = station.store.clips()
        assert (row["state"], summary.ok) == ("discovered", False)
        (message,) = _ingest_failures(station)
        assert "the media probe of clip" in message and \
            "could not run: No space left on device" in message
        assert station.run_once().ok  # the next dock, with room again
        assert station.store.clip(row["clip_id"])["state"] == "sealed"


@pytest.mark.parametrize("check", ["verify", "probe"])
def test_a_check_failing_in_a_way_nobody_expected_is_still_reported(
        station_config: Callable[..., Config], check: str) -> None:
    """Rule: a defect in a check (any exception) is an ingest failure with an alert naming
    it, never a clip left ``copying`` with the session reported fine."""
    config = station_config()
    camera(config, clips=1)
    with running_station(config) as station:
        assert station.offloader is not None and station.vault is not None

        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("a defect")

        if check == "verify":
            station.vault.verify = broken  # type: ignore[method-assign]
        else:
            checker = station.offloader.copier.checker
            checker.probe = broken
        summary = station.run_once()
        (row,) = station.store.clips()
        assert (row["state"], summary.ok) == ("discovered", False)
        (message,) = _ingest_failures(station)
        name = "verify" if check == "verify" else "media probe"
        assert f"the {name} failed: RuntimeError: a defect" in message

"""What the station is doing: the live registry, "safe to undock", and the figures every face reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from agent.config import Config
from agent.overview import ClipFacts, clip_safe, dock_view, station_status, undock_verdict
from agent.progress import DockProgress, ProgressRegistry
from drivers.base import DeviceInfo, Recording
from drivers.simulated import SimulatedDevice
from tests.support.stations import FaultyDevice, camera, running_station, sim_devices

SEALED = ClipFacts("c1", "sealed", sealed=True, verified=True, in_vault=True)


def _dock(paths: list[str] | None, *, phase: str = "finished", serial: str = "SIM0001",
          errors: list[str] | None = None, unreadable: int = 0) -> DockProgress:
    listed = None if paths is None else [(p, 10, 1.0) for p in paths]
    return DockProgress(handle="/sim/cam", phase=phase, serial=serial, listed=listed,
                        errors=errors or [], unreadable=unreadable)


# --- clip_safe: in the vault, verified and sealed, or acknowledged --------------------------

@pytest.mark.parametrize(("facts", "safe"), [
    (SEALED, True),
    (replace(SEALED, state="uploading"), True),
    (replace(SEALED, state="uploaded"), True),
    (replace(SEALED, verified=False), False),              # never read back from the disk
    (replace(SEALED, in_vault=False), False),              # the vault object is gone
    (replace(SEALED, sealed=False, state="copied"), False),  # copied, not sealed yet
    (replace(SEALED, state="discovered", sealed=False, verified=False, in_vault=False), False),
    (replace(SEALED, state="copying", sealed=False, verified=False, in_vault=False), False),
    (replace(SEALED, state="quarantined"), True),          # sealed, only the upload was refused
    (replace(SEALED, state="quarantined", sealed=False), False),  # quarantined during ingest
    (replace(SEALED, state="acknowledged", verified=False), True),  # the platform has it
    (replace(SEALED, state="purged", in_vault=False), True),
    (replace(SEALED, state="released", in_vault=False), True),
    (replace(SEALED, state="duplicate", original=SEALED), True),
    (replace(SEALED, state="duplicate", original=replace(SEALED, state="copied",
                                                         sealed=False)), False),
    (replace(SEALED, state="duplicate", original=None), False),
])
def test_clip_safe(facts: ClipFacts, safe: bool) -> None:
    assert clip_safe(facts) is safe


def test_safe_only_when_every_listed_recording_is_safe_and_the_session_ended() -> None:
    paths = ["DCIM/a.MP4", "DCIM/b.MP4"]
    both = {"DCIM/a.MP4": SEALED, "DCIM/b.MP4": replace(SEALED, clip_id="c2")}
    assert undock_verdict(_dock(paths), both).safe
    assert not undock_verdict(_dock(paths, phase="copying"), both).safe
    one_missing = {"DCIM/a.MP4": SEALED, "DCIM/b.MP4": None}
    verdict = undock_verdict(_dock(paths), one_missing)
    assert (verdict.safe, verdict.waiting, verdict.problems) == (False, 1, ())
    not_sealed = {**both, "DCIM/b.MP4": replace(SEALED, state="copied", sealed=False)}
    assert not undock_verdict(_dock(paths), not_sealed).safe


def test_problems_make_a_camera_unsafe_and_say_why() -> None:
    paths = ["DCIM/a.MP4"]
    ok = {"DCIM/a.MP4": SEALED}
    assert undock_verdict(_dock(paths, unreadable=1), ok).problems == (
        "camera.entries_unreadable",)
    assert not undock_verdict(_dock(paths, unreadable=1), ok).safe
    full = undock_verdict(_dock(paths, errors=["disk full: 3 MB free"]), ok)
    assert (full.safe, full.problems) == (False, ("disk.full",))
    failed = undock_verdict(_dock(paths), {"DCIM/a.MP4": replace(SEALED, state="quarantined",
                                                                  sealed=False)})
    assert (failed.safe, failed.problems) == (False, ("clips.failed",))
    unidentified = undock_verdict(_dock(None, serial="", errors=["identify failed: x"]), {})
    assert (unidentified.safe, unidentified.problems) == (False, ("camera.unreadable",))
    stopped = undock_verdict(_dock(paths, errors=["device removed: gone"]), ok)
    assert (stopped.safe, stopped.problems) == (False, ("session.failed",))


def test_an_empty_camera_is_safe_once_listed_and_finished() -> None:
    assert undock_verdict(_dock([]), {}).safe
    assert not undock_verdict(_dock(None), {}).safe
    assert not undock_verdict(_dock([], phase="listing"), {}).safe


# --- the registry -------------------------------------------------------------------------

def test_registry_follows_a_session_and_drops_an_undocked_camera() -> None:
    clock = [100.0]
    reg = ProgressRegistry(clock=lambda: clock[0])
    reg.queued("/sim/cam")
    v0 = reg.version
    reg.identified("/sim/cam", DeviceInfo(serial="SIM0001", officer_name="李明",
                                          officer_id="010203"))
    rec = Recording("DCIM/a.MP4", 1000, 1.0)
    reg.listed("/sim/cam", [rec], 0, [("c1", rec)])
    reg.clip_phase("/sim/cam", "c1", rec, "copying")
    clock[0] += 1.0
    reg.clip_bytes("/sim/cam", "c1", 400)
    (dock,) = reg.snapshot()
    assert (dock.serial, dock.officer_name, dock.phase) == ("SIM0001", "李明", "copying")
    assert dock.clips["c1"].done == 400 and dock.bytes_per_s == pytest.approx(400.0)
    assert reg.version > v0
    reg.clip_phase("/sim/cam", "c1", rec, "verifying")
    assert reg.snapshot()[0].clips["c1"].done == 1000
    reg.finished("/sim/cam", [])
    assert not reg.snapshot()[0].running
    reg.undocked("/sim/cam")
    assert reg.snapshot() == []
    reg.finished("/sim/cam", [])  # a session outliving its camera leaves no ghost tile
    assert reg.snapshot() == []
    with pytest.raises(ValueError, match="unknown clip phase"):
        reg.clip_phase("/sim/cam", "c1", rec, "dancing")


def test_wait_changed_wakes_on_a_change() -> None:
    reg = ProgressRegistry()
    assert reg.wait_changed(reg.version, timeout=0.01) == reg.version
    reg.queued("/sim/cam")
    assert reg.wait_changed(0, timeout=5) == 1


# --- a real station -----------------------------------------------------------------------

def test_a_real_dock_is_safe_only_once_sealed_and_not_after_its_vault_copy_vanished(
        station_config: Callable[..., Config]) -> None:
    config = station_config()
    camera(config, clips=3, serial="SIM0042", officer_id="010203", officer_name="李明")
    seen: list[tuple[str, int, int]] = []
    with running_station(config) as station:
        assert station.store is not None and station.vault is not None
        store, vault = station.store, station.vault
        real = station.progress.clip_bytes

        def watch(handle: str, clip_id: str, done: int) -> None:
            real(handle, clip_id, done)
            view = dock_view(store, vault, station.progress.snapshot()[0])
            assert not view["safe_to_undock"]  # never while a copy runs
            seen.append((view["state"], view["bytes_done"], view["bytes_total"]))

        station.progress.clip_bytes = watch  # type: ignore[method-assign]
        (device,) = sim_devices(station)
        future = station.dock(device)
        assert future is not None
        future.result(timeout=60)
        (dock,) = station.progress.snapshot()
        view = dock_view(store, vault, dock)
        assert view["safe_to_undock"] and view["state"] == "safe"
        assert (view["serial"], view["officer_name"], view["recordings"]) == ("SIM0042", "李明", 3)
        assert view["bytes_done"] == view["bytes_total"] > 0
        assert [c["step"] for c in view["clips"]] == ["sealed"] * 3
        status = station_status(config, store, vault=vault, progress=station.progress)
        assert status["docks"][0]["safe_to_undock"] is True
        assert {s for s, _d, _t in seen} == {"copying"}
        assert [d for _s, d, _t in seen] == sorted(d for _s, d, _t in seen)

        # The vault object of one clip disappears: the camera is no longer safe to take.
        row = store.clips()[0]
        vault.path_for(row["sha256"]).unlink()
        assert not dock_view(store, vault, dock)["safe_to_undock"]


def test_a_camera_whose_copy_fails_needs_attention(station_config: Callable[..., Config]) -> None:
    config = station_config("""
        [ingest]
        change_retries = 0
        """)
    camera(config, clips=2, serial="SIM0043")
    with running_station(config) as station:
        assert station.store is not None
        (inner,) = sim_devices(station)
        assert isinstance(inner, SimulatedDevice)

        def unreadable(rec: Recording, _done: int) -> None:
            if rec.path.endswith("0001.MP4"):
                from agent.errors import DeviceError
                raise DeviceError("read error on the camera (EIO)")

        device = FaultyDevice(inner, on_read=unreadable)
        future = station.dock(device)  # type: ignore[arg-type]
        assert future is not None
        future.result(timeout=60)
        view = dock_view(station.store, station.vault, station.progress.snapshot()[0])
    assert view["state"] == "attention" and view["problems"] == ["clips.failed"]
    assert not view["safe_to_undock"]
    steps = {c["name"][-8:]: c["step"] for c in view["clips"]}
    assert steps == {"0001.MP4": "attention", "0002.AVI": "sealed"}


def test_cli_status_reads_the_same_figures(station_config: Callable[..., Config],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.main import main

    config = station_config()
    camera(config, clips=1, serial="SIM0044")
    with running_station(config) as station:
        assert station.run_once().ok
        assert station.store is not None
        expected = station_status(config, station.store)
    assert config.source is not None
    assert main(["status", "--config", str(config.source), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["clips"] == expected["clips"] and printed["backlog"] == expected["backlog"]
    assert printed["clips"]["sealed"] == 1

"""A serial camera's battery, as the platform sees it: the retained MQTT status, the
``status`` command, the device.docked event and the battery alerts.

A camera written from docs/GAT947.md on a real pseudo-terminal, a real
station, the development platform over real mosquitto (TLS) and HTTPS tus.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.station import Station
from drivers.simcam import make_camera
from drivers.simulated import IDENTITY_FILE
from scripts.devplatform.stand import DevStand
from tests.support.gat947_doccam import DocCamera
from tests.support.stations import running_station

pytestmark = pytest.mark.integration


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def test_the_platform_sees_the_battery_of_a_serial_camera(stand: DevStand,
                                                          tmp_path: Path) -> None:
    mount_root = tmp_path / "mnt"
    mount_root.mkdir()
    storage = make_camera(tmp_path / "internal", serial="DOC0001", officer_id="054321", clips=1,
                          seconds=0.5, width=160, height=120, fps=10.0,
                          start=datetime(2025, 3, 1, 8, tzinfo=UTC))
    (storage / IDENTITY_FILE).unlink()
    camera = DocCamera(storage=storage, mount_root=mount_root).start()
    camera.battery, camera.charge = 12, 0x00
    password = tmp_path / "camera.password"
    password.write_text("doc-pass\n", encoding="utf-8")
    password.chmod(0o600)
    try:
        path = stand.station(tmp_path / "ST-0001", "ST-0001", extra=f"""
            [devices.gat947]
            ports = ["{camera.port}"]
            password_file = "{password}"
            mount_root = "{mount_root}"
            catalog_key = "simulated"
            require_mount = false
            command_timeout_s = 0.3
            """, platform_extra="retry_max_s = 1\n")
        config = config_mod.load(path)
        with running_station(config) as station:
            summary = station.run_once(platform_timeout_s=30)
            assert summary.ok, summary
        # The next start announces the store's figures in its birth status (retained).
        station = Station(config)
        station.start(watch=False)
        try:
            assert station.sync is not None and station.sync.link.wait_connected(10)

            def born() -> dict[str, Any] | None:
                status = stand.platform.stations().get("ST-0001", {}).get("status") or {}
                return status if status.get("devices") else None

            retained = stand.platform.wait_for(born, timeout=20, what="birth status")
            answered = stand.platform.send_command("ST-0001", "status", {})
        finally:
            station.stop()
    finally:
        camera.close()
    expected = {"battery_percent": 12, "charging": "not_charging",
                "resolution": {"width": 1280, "height": 720, "fps": 25}}
    for device in (retained["devices"][0], answered["result"]["devices"][0]):
        assert device["serial"] == "DOC0001"
        assert {k: device[k] for k in expected} == expected
        assert device["health_at"].endswith("Z")
    events = stand.platform.events("ST-0001")
    [docked] = [e["data"] for e in events if e["type"] == "device.docked"]
    assert {k: docked["health"][k] for k in expected} == expected
    codes = sorted(e["data"]["code"] for e in events if e["type"] == "alert"
                   and e["data"]["code"].startswith("device."))
    assert codes == ["device.battery_low", "device.not_charging"]

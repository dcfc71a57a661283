"""The Prometheus endpoint, scraped over real HTTP while a camera docks, offloads and syncs.

A station against the development platform (mosquitto over TLS, HTTPS tus,
signed acks), its metrics scraped with a plain HTTP client and parsed with
prometheus_client's own text parser.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import config as config_mod
from agent.overview import station_status
from agent.station import Station
from drivers.simcam import make_camera
from scripts.devplatform.stand import DevStand

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[DevStand]:
    with DevStand(tmp_path / "stand") as instance:
        yield instance


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_during_a_dock(stand: DevStand, tmp_path: Path) -> None:
    path = stand.station(tmp_path / "ST-0001", "ST-0001", platform_extra="retry_max_s = 1\n",
                         extra="[metrics]\nport = 0\n")
    config = config_mod.load(path)
    station = Station(config)
    station.start(watch=True)
    try:
        assert station.metrics is not None and station.metrics.listen == "127.0.0.1"
        port = station.metrics.port
        assert station.sync is not None and station.sync.link.wait_connected(10)
        before = scrape(port)
        assert value(before, "bwc_up") == 1
        assert value(before, "bwc_ingest_bytes_total") == 0
        assert value(before, "bwc_docked_devices") == 0
        assert value(before, "bwc_clips", state="sealed") == 0
        assert value(before, "bwc_broker_connected") == 1
        assert value(before, "bwc_disk_free_bytes") > 0
        assert value(before, "bwc_certificate_expiry_timestamp_seconds") > time.time()

        # The broker is down while the camera is read, so the events wait in the outbox and
        # the clips in the backlog until it is back: both are seen in a scrape, whatever the
        # machine's speed, and not only if a scrape happens to fall in a short window.
        stand.stop_broker()
        cam = make_camera(config.devices["simulated"].root, serial="MET0001", clips=3,
                          seconds=2, width=640, height=480, fps=15.0)
        size = sum(p.stat().st_size for p in (cam / "DCIM").rglob("*") if p.is_file())
        seen: list[Samples] = []

        def scrape_until(done: Callable[[Samples], bool]) -> Samples:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                seen.append(scrape(port))
                if done(seen[-1]):
                    return seen[-1]
                time.sleep(0.05)
            return seen[-1]

        offline = scrape_until(lambda s: value(s, "bwc_ingest_bytes_total") == size
                               and value(s, "bwc_outbox_pending") > 0
                               and value(s, "bwc_broker_connected") == 0)
        assert value(offline, "bwc_ingest_bytes_total") == size, offline
        assert value(offline, "bwc_broker_connected") == 0
        assert value(offline, "bwc_outbox_pending") > 0
        assert value(offline, "bwc_docked_devices") == 1
        assert value(offline, "bwc_backlog_clips") == 3
        assert value(offline, "bwc_clips", state="released") == 0
        stand.start_broker()
        final = scrape_until(lambda s: value(s, "bwc_clips", state="released") == 3
                             and value(s, "bwc_outbox_pending") == 0)
        assert value(final, "bwc_clips", state="released") == 3, final
        assert value(final, "bwc_broker_connected") == 1
        assert any(value(s, "bwc_ingest_bytes_per_second") > 0 for s in seen)
        # Counters only grow, and end at the bytes the camera held (read once, sent once).
        ingested = [value(s, "bwc_ingest_bytes_total") for s in seen]
        assert ingested == sorted(ingested) and ingested[-1] == size
        assert value(final, "bwc_upload_bytes_total") == size
        assert value(final, "bwc_backlog_clips") == 0
        assert value(final, "bwc_backlog_oldest_age_seconds") == 0
        # No roster was sent: each clip was sealed with an unverified officer, alerted.
        assert value(before, "bwc_alerts_total", code="officer.no_roster") == 0
        assert value(final, "bwc_alerts_total", code="officer.no_roster") == 3
        assert value(final, "bwc_alerts_active", code="officer.no_roster") == 1
        # The same figures as the status, from the same place.
        status = station_status(config, station.store, vault=station.vault,  # type: ignore[arg-type]
                                progress=station.progress, daemon=station.daemon_facts())
        assert status["throughput"]["ingested_bytes"] == size
        assert value(final, "bwc_clips", state="released") == status["clips"]["released"]
        # Not a general web server: only GET.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x",
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
    finally:
        station.stop()


def test_no_metrics_without_the_table(stand: DevStand,
                                      tmp_path: Path) -> None:
    path = stand.station(tmp_path / "ST-0002", "ST-0002")
    config = config_mod.load(path)
    assert config.metrics is None
    station = Station(config)
    station.start(watch=False)
    try:
        assert station.metrics is None
    finally:
        station.stop()

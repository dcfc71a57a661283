"""``scripts/bench fleet``: N station agents against one broker and one upload server.

Every station is a real ``bwc-agent run`` daemon (its own process, store,
keys and TLS client certificate) with a simulated camera; the platform is
one mosquitto (TLS, client certificates) and the development platform
(``python -m scripts.devplatform serve``: the MQTT consumer and the tus
server, with a load cap: more uploads at once than ``--max-uploads`` are
answered 503 + Retry-After).

The run:

1. the broker, the platform and N agents start; wait until every agent is
   connected; the agents' idle memory and CPU are sampled;
2. the cameras dock over ``--window`` seconds (a shift ending), each with
   ``--clips`` real clips: offload, seal, events, uploads, acks;
3. a third into the window the broker is killed (SIGKILL) and started again
   ``--down`` seconds later; two thirds in, the platform (the upload server
   and its consumer) is killed and started again the same way;
4. wait until every clip is acknowledged at its station, every event is
   delivered and the platform holds every one of them (those the broker lost
   in its crash come back through ``resend-events`` after the station's next
   status); stop the agents (SIGTERM).

Measured: the time for all stations to reconnect after the broker came
back, and how their attempts spread (per-100-ms buckets: a synchronised
storm would put them all in a few); events lost (delivered by a station,
never recorded by the platform: must be 0), duplicates the platform
received (de-duplicated by id), events the broker lost in its crash and the
platform asked for again (``resend-events``), clips acknowledged, 503 answers and the
stations that waited for their Retry-After, the agents' memory idle and
busy (RSS, VmHWM).  Everything goes to ``bench-run/fleet-<N>.json``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.custody.keys import init_station_keys
from drivers.simcam import make_camera
from scripts.bench_common import ROOT
from scripts.devplatform.pki import DevPki, make_dev_pki, write_mosquitto_conf
from scripts.devplatform.stand import free_port, mosquitto_binary

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_WAIT = re.compile(r" in ([0-9.]+) s \(attempt")
_MISSING = re.compile(r"dev platform: (\d+) events of \S+ missing")


@dataclass
class Station:
    station_id: str
    base: Path
    config: Path
    camera: Path  # built outside the simulated root; docking renames it in
    proc: subprocess.Popen[bytes] | None = None
    samples: dict[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.base / "agent.log"

    @property
    def db(self) -> Path:
        return self.base / "data" / "state.db"


class Fleet:
    """The broker, the platform and the stations of one run; ``close()`` stops them all."""

    def __init__(self, workdir: Path, stations: int, clips: int, max_uploads: int,
                 retry_after: int) -> None:
        self.dir = workdir
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.pki: DevPki = make_dev_pki(workdir / "pki")
        self.broker_port, self.tus_port = free_port(), free_port()
        self.broker_conf = write_mosquitto_conf(self.pki, workdir / "broker", self.broker_port)
        # A broker the platform relies on keeps its sessions and queued messages on disk:
        # here a snapshot after every change (mosquitto has no write-ahead log), so a
        # SIGKILL loses neither the platform's session nor the events queued for it.
        # The platform's consumer falls behind in bursts: the broker queues for it.
        with open(self.broker_conf, "a") as conf:
            conf.write("autosave_on_changes true\nautosave_interval 1\n"
                       "max_queued_messages 1000000\n")
        self.broker: subprocess.Popen[bytes] | None = None
        self.platform: subprocess.Popen[bytes] | None = None
        self.max_uploads, self.retry_after = max_uploads, retry_after
        self.stations = [self._station(i, clips) for i in range(stations)]

    # --- the platform side ----------------------------------------------------------------

    def start_broker(self) -> None:
        log = open(self.dir / "broker" / "mosquitto.log", "ab")  # noqa: SIM115 - owned by Popen
        self.broker = subprocess.Popen([mosquitto_binary(), "-c", str(self.broker_conf)],
                                       stdout=log, stderr=log)
        log.close()
        _wait_port(self.broker_port)

    def start_platform(self) -> None:
        log = open(self.dir / "platform.log", "ab")  # noqa: SIM115 - owned by Popen
        self.platform = subprocess.Popen(
            [sys.executable, "-m", "scripts.devplatform", "serve", "--dir",
             str(self.dir / "pki"), "--broker-port", str(self.broker_port), "--tus-port",
             str(self.tus_port), "--workdir", str(self.dir / "platform"),
             "--max-uploads", str(self.max_uploads), "--retry-after", str(self.retry_after)],
            stdout=log, stderr=log, cwd=ROOT)
        log.close()
        _wait_port(self.tus_port, timeout=60)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    # --- the stations ---------------------------------------------------------------------

    def _station(self, index: int, clips: int) -> Station:
        station_id = f"ST-{index:04d}"
        base = self.dir / "stations" / station_id
        (base / "sim").mkdir(parents=True)
        data_dir = base / "data"
        init_station_keys(data_dir, station_id)
        self.pki.enroll_station(data_dir, station_id)
        tls = self.pki.station_tls(station_id)
        camera = make_camera(base / "dock", serial=f"FLT{index:04d}", clips=clips,
                             seconds=2.0, width=320, height=240, fps=10.0)
        config = base / "station.toml"
        config.write_text(textwrap.dedent(f"""\
            [station]
            id = "{station_id}"
            data_dir = "{data_dir}"

            [devices.simulated]
            root = "{base / 'sim'}"

            [platform]
            mqtt_url = "mqtts://127.0.0.1:{self.broker_port}"
            upload_url = "https://127.0.0.1:{self.tus_port}/files/"
            ca_file = "{self.pki.ca_cert_path}"
            cert_file = "{tls.cert_path}"
            key_file = "{tls.key_path}"
            platform_key_file = "{self.pki.platform_pub_path}"
            retry_max_s = 30
            """))
        return Station(station_id, base, config, camera)

    def start_stations(self) -> None:
        agent = Path(sys.executable).parent / "bwc-agent"
        for station in self.stations:
            log = open(station.log, "ab")  # noqa: SIM115 - owned by Popen
            station.proc = subprocess.Popen([str(agent), "run", "--config", str(station.config)],
                                            stdout=log, stderr=log, cwd=ROOT)
            log.close()

    def dock(self, station: Station) -> None:
        station.camera.rename(station.base / "sim" / station.camera.name)

    def stop_stations(self) -> None:
        for station in self.stations:
            if station.proc is not None and station.proc.poll() is None:
                station.proc.send_signal(signal.SIGTERM)
        for station in self.stations:
            if station.proc is not None:
                try:
                    station.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    station.proc.kill()
                    station.proc.wait()

    def close(self) -> None:
        self.stop_stations()
        for proc in (self.platform, self.broker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def bench_fleet(stations: int, clips: int, window_s: float, down_s: float, max_uploads: int,
                retry_after: int, workdir: Path, timeout_s: float) -> dict[str, Any]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the fleet on the way out
    workdir = workdir.resolve()
    started = time.time()
    fleet = Fleet(workdir, stations, clips, max_uploads, retry_after)
    print(f"fleet: {stations} stations prepared in {time.time() - started:.0f} s", flush=True)
    try:
        fleet.start_broker()
        fleet.start_platform()
        t_start = time.time()
        fleet.start_stations()
        _wait(lambda: _connected_since(fleet.stations, t_start) == stations,
              timeout_s, "every station connected")
        startup_s = time.time() - t_start
        print(f"fleet: all connected after {startup_s:.1f} s", flush=True)
        time.sleep(10)  # settled: what an idle agent holds
        idle = _sample_agents(fleet.stations, 10.0)
        events = _run_faults(fleet, window_s, down_s)
        total_clips = stations * clips
        _wait(lambda: _acknowledged(fleet.stations) >= total_clips, timeout_s,
              "every clip acknowledged")
        _wait(lambda: _undelivered(fleet.stations) == 0, timeout_s, "every event delivered")
        events["all_acknowledged"] = time.time()
        busy = {"vmhwm_mib": _stats([_status_kib(s.proc.pid, "VmHWM") / 1024
                                     for s in fleet.stations if s.proc])}
        # Events a broker lost come back once a station's next status (within
        # platform.status_interval_s) says its outbox is empty and the platform asks.
        _wait(lambda: not _missing_at_platform(fleet), timeout_s, "every event at the platform")
        events["no_event_missing"] = time.time()
        fleet.stop_stations()
        result = _results(fleet, events, total_clips)
        result.update(stations=stations, clips_per_station=clips, window_s=window_s,
                      down_s=down_s, max_uploads=max_uploads, retry_after_s=retry_after,
                      startup_all_connected_s=round(startup_s, 1), idle=idle, busy=busy,
                      cpus=len(os.sched_getaffinity(0)),
                      loadavg_end=[round(x, 2) for x in os.getloadavg()],
                      command=(f"scripts/bench fleet --stations {stations} --clips {clips} "
                               f"--window {window_s:g} --down {down_s:g} "
                               f"--max-uploads {max_uploads} --retry-after {retry_after}"))
        return result
    finally:
        fleet.close()


def _run_faults(fleet: Fleet, window_s: float, down_s: float) -> dict[str, Any]:
    """Dock the cameras over the window; kill and restart the broker, then the platform."""
    rng = random.Random(13)
    t_dock = time.time()
    docks = sorted((t_dock + rng.uniform(0, window_s), s) for s in fleet.stations)
    faults = [(t_dock + window_s / 3, "broker"), (t_dock + 2 * window_s / 3, "platform")]
    times: dict[str, Any] = {"t_dock": t_dock}
    while docks or faults:
        next_dock = docks[0][0] if docks else float("inf")
        next_fault = faults[0][0] if faults else float("inf")
        time.sleep(max(0.0, min(next_dock, next_fault) - time.time()))
        if next_dock <= next_fault:
            fleet.dock(docks.pop(0)[1])
            continue
        _, what = faults.pop(0)
        times[f"{what}_killed"] = time.time()
        fleet.kill(fleet.broker if what == "broker" else fleet.platform)
        time.sleep(down_s)
        (fleet.start_broker if what == "broker" else fleet.start_platform)()
        times[f"{what}_up"] = time.time()
        print(f"fleet: {what} killed and started again", flush=True)
    return times


# --- what the agents say ------------------------------------------------------------------


def _log_lines(station: Station, needle: str) -> list[tuple[float, str]]:
    found = []
    with open(station.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if needle in line and (m := _LOG_TIME.match(line)):
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append((at, line.rstrip()))
    return found


def _connected_since(stations: list[Station], since: float) -> int:
    return sum(1 for s in stations
               if any(at >= since for at, _ in _log_lines(s, "MQTT: connected to")))


def _db(station: Station) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{station.db}?mode=ro", uri=True, timeout=10)


def _acknowledged(stations: list[Station]) -> int:
    total = 0
    for station in stations:
        with _db(station) as db:
            total += db.execute("SELECT COUNT(*) FROM clips WHERE state IN "
                                "('acknowledged', 'released', 'purged')").fetchone()[0]
    return total


def _missing_at_platform(fleet: Fleet) -> list[str]:
    """Events the stations delivered that the platform has not recorded (yet)."""
    db = sqlite3.connect(f"file:{fleet.dir / 'platform' / 'platform.db'}?mode=ro", uri=True,
                         timeout=10)
    try:
        received = {row[0] for row in db.execute("SELECT id FROM events")}
    finally:
        db.close()
    missing = []
    for station in fleet.stations:
        with _db(station) as sdb:
            for (payload,) in sdb.execute("SELECT payload FROM outbox WHERE topic LIKE "
                                          "'%/events' AND delivered_at IS NOT NULL"):
                body = json.loads(payload)
                if body["id"] not in received:
                    missing.append(f"{station.station_id}:{body['type']}:{body['seq']}")
    return missing


def _undelivered(stations: list[Station]) -> int:
    total = 0
    for station in stations:
        with _db(station) as db:
            total += db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
                                ).fetchone()[0]
    return total


def _results(fleet: Fleet, times: dict[str, Any], total_clips: int) -> dict[str, Any]:
    up = times["broker_up"]
    reconnect: list[float] = []
    attempts: list[float] = []
    for station in fleet.stations:
        after = [at for at, _ in _log_lines(station, "MQTT: connected to") if at >= up]
        reconnect.append(min(after) - up if after else float("inf"))
        for at, line in _log_lines(station, "MQTT: reconnecting to"):
            # Logged when the wait starts: the attempt is the wait later.
            wait = _WAIT.search(line)
            tried = at + float(wait.group(1)) if wait else at
            if times["broker_killed"] <= at and tried <= (min(after) if after else tried):
                attempts.append(tried - times["broker_killed"])
    buckets: dict[int, int] = {}
    for at in attempts:
        buckets[int(at * 10)] = buckets.get(int(at * 10), 0) + 1
    platform_db = sqlite3.connect(f"file:{fleet.dir / 'platform' / 'platform.db'}?mode=ro",
                                  uri=True)
    received = {row[0] for row in platform_db.execute("SELECT id FROM events")}
    duplicates = platform_db.execute("SELECT COALESCE(SUM(duplicates), 0) FROM events"
                                     ).fetchone()[0]
    platform_db.close()
    sent, pending, lost, acknowledged, retry_after_waits, upload_retries = 0, 0, [], 0, 0, 0
    for station in fleet.stations:
        with _db(station) as db:
            for payload, delivered in db.execute("SELECT payload, delivered_at FROM outbox "
                                                 "WHERE topic LIKE '%/events'"):
                body = json.loads(payload)
                if delivered is None:
                    pending += 1  # made while stopping (a last checkpoint): sent next start
                    continue
                sent += 1
                if body["id"] not in received:
                    lost.append(f"{station.station_id}:{body['type']}:{body.get('seq')}")
            acknowledged += db.execute("SELECT COUNT(*) FROM clips WHERE state IN "
                                       "('acknowledged', 'released', 'purged')").fetchone()[0]
        retry_after_waits += len(_log_lines(station, "the server asked for"))
        upload_retries += len(_log_lines(station, "upload attempt"))
    busy_503, asked_again = 0, 0
    with open(fleet.dir / "platform.log", errors="replace") as platform_log:
        for line in platform_log:
            busy_503 += "busy:" in line
            if (m := _MISSING.search(line)) is not None:
                asked_again += int(m.group(1))
    return {
        "broker_restart": {
            "all_reconnected_s": round(max(reconnect), 2),
            "reconnect_s": _stats(reconnect),
            "attempts": len(attempts),
            "attempts_max_per_100ms": max(buckets.values()) if buckets else 0,
            "attempts_spread_s": _stats(attempts),
        },
        "events": {"delivered": sent, "pending_at_stop": pending,
                   "received_distinct": len(received), "lost": len(lost),
                   "lost_by_the_broker_and_sent_again": asked_again,
                   "lost_examples": lost[:10], "duplicates_received": int(duplicates)},
        "clips": {"total": total_clips, "acknowledged": acknowledged},
        "uploads": {"busy_503_answered": busy_503, "retry_after_waits": retry_after_waits,
                    "retried": upload_retries},
        "timeline_s": {k: round(v - times["t_dock"], 2) for k, v in times.items()
                       if k != "t_dock"},
    }


# --- processes ----------------------------------------------------------------------------


def _sample_agents(stations: list[Station], seconds: float) -> dict[str, Any]:
    """RSS and CPU use of the idle agents over ``seconds``."""
    procs = [s.proc for s in stations if s.proc is not None]
    before = {p.pid: _cpu_s(p.pid) for p in procs}
    time.sleep(seconds)
    cpu = [(_cpu_s(p.pid) - before[p.pid]) / seconds * 100 for p in procs]
    return {"rss_mib": _stats([_status_kib(p.pid, "VmRSS") / 1024 for p in procs]),
            "threads": _stats([_status_kib(p.pid, "Threads") for p in procs]),
            "cpu_percent": _stats(cpu)}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2),
            "min": round(min(values), 2),
            "stdev": round(statistics.pstdev(values), 2) if len(values) > 1 else 0.0}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"fleet: {what} not reached within {timeout:.0f} s")
        time.sleep(1.0)


def _wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"fleet: nothing listens on port {port} after {timeout:.0f} s")

"""Prometheus metrics: the station's figures for fleet monitoring, at ``/metrics``.

Served by the daemon when the configuration has a ``[metrics]`` table
(``enabled = true`` by default there; off without the table), on
127.0.0.1 unless ``metrics.listen`` says otherwise.  Every scrape reads the
figures afresh from the one place that computes them,
:func:`agent.overview.station_status` (the store, and the daemon's live
:class:`~agent.progress.ProgressRegistry`): the metrics, ``bwc-agent
status``, the retained MQTT status and the pages cannot disagree.

Names (docs/OPERATIONS.md, "Monitor", lists them with their meaning):

* ``bwc_clips{state}``: clips by state;
* ``bwc_ingest_bytes_total``, ``bwc_upload_bytes_total``: bytes read off
  cameras and confirmed by the upload server since the daemon started
  (counters; they start again at 0 with the daemon, as counters do);
* ``bwc_ingest_bytes_per_second``, ``bwc_upload_bytes_per_second``: the
  throughput of the last 10 s;
* ``bwc_backlog_clips``, ``bwc_backlog_oldest_age_seconds``: clips the
  platform has not acknowledged yet, and how long the oldest has waited;
* ``bwc_disk_free_bytes``, ``bwc_disk_total_bytes``: the data directory's disk;
* ``bwc_outbox_pending``, ``bwc_outbox_refused``: events not delivered yet,
  and those the broker refused at their last attempt;
* ``bwc_docked_devices``: cameras docked now;
* ``bwc_alerts_total{code}`` (counter: raised ever), ``bwc_alerts_active{code}``
  (1 while raised within the last 24 h);
* ``bwc_certificate_expiry_timestamp_seconds``: when the station certificate expires;
* ``bwc_broker_connected``: 1 while connected to the platform's broker;
* ``bwc_up``: 1 (with ``bwc_info{version, station_id}``).

The HTTP server answers GET only, with a 10 s deadline per connection
(a client that sends nothing is cut), on its own threads.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agent import __version__
from agent.errors import ConfigError
from agent.overview import alert_counts
from agent.store import Store
from agent.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT_S = 10.0

StatusSource = Callable[[], dict[str, Any]]


class StationCollector(Collector):
    """Turns one :func:`~agent.overview.station_status` per scrape into metric families."""

    def __init__(self, status: StatusSource, store: Store) -> None:
        self.status = status
        self.store = store

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        yield GaugeMetricFamily("bwc_up", "1 while the agent answers", value=1)
        info = GaugeMetricFamily("bwc_info", "The agent's version and station",
                                 labels=["version", "station_id"])
        info.add_metric([__version__, status["station_id"]], 1)
        yield info
        clips = GaugeMetricFamily("bwc_clips", "Clips by state", labels=["state"])
        for state, count in status["clips"].items():
            clips.add_metric([state], count)
        yield clips
        throughput = status.get("throughput") or {}
        yield CounterMetricFamily("bwc_ingest_bytes", "Bytes read off cameras since the "
                                  "agent started", value=throughput.get("ingested_bytes", 0))
        yield CounterMetricFamily("bwc_upload_bytes", "Bytes the upload server confirmed "
                                  "since the agent started",
                                  value=throughput.get("uploaded_bytes", 0))
        yield GaugeMetricFamily("bwc_ingest_bytes_per_second", "Ingest throughput, last 10 s",
                                value=throughput.get("ingest_bytes_per_s", 0))
        yield GaugeMetricFamily("bwc_upload_bytes_per_second", "Upload throughput, last 10 s",
                                value=throughput.get("upload_bytes_per_s", 0))
        yield GaugeMetricFamily("bwc_backlog_clips", "Clips not acknowledged by the platform",
                                value=status["backlog"])
        oldest = status.get("backlog_oldest") or {}
        yield GaugeMetricFamily("bwc_backlog_oldest_age_seconds", "How long the oldest "
                                "unacknowledged clip has waited (0: none waits)",
                                value=oldest.get("age_s") or 0)
        yield GaugeMetricFamily("bwc_disk_free_bytes", "Free space of the data directory's "
                                "disk", value=status["disk"]["free_bytes"])
        yield GaugeMetricFamily("bwc_disk_total_bytes", "Size of the data directory's disk",
                                value=status["disk"]["total_bytes"])
        yield GaugeMetricFamily("bwc_outbox_pending", "Events not delivered to the broker yet",
                                value=status["sync"]["outbox_pending"])
        yield GaugeMetricFamily("bwc_outbox_refused", "Waiting events the broker refused",
                                value=status["sync"]["outbox_refused"])
        yield GaugeMetricFamily("bwc_docked_devices", "Cameras docked now",
                                value=sum(1 for d in status["devices"] if d["docked"]))
        total = CounterMetricFamily("bwc_alerts", "Alerts raised, by code", labels=["code"])
        for code, count in sorted(alert_counts(self.store).items()):
            total.add_metric([code], count)
        yield total
        active = GaugeMetricFamily("bwc_alerts_active", "1 for each alert code raised within "
                                   "the last 24 h", labels=["code"])
        for alert in status["alerts"]["active"]:
            active.add_metric([alert["code"]], 1)
        yield active
        cert = status["certificate"]["station"]
        if cert.get("not_after"):
            yield GaugeMetricFamily(
                "bwc_certificate_expiry_timestamp_seconds", "When the station certificate "
                "expires (Unix time)", value=parse_rfc3339(cert["not_after"]).timestamp())
        broker = status["sync"].get("broker")
        if status["sync"]["platform"]:
            yield GaugeMetricFamily("bwc_broker_connected", "1 while connected to the "
                                    "platform's broker", value=int(bool(
                                        broker and broker.get("state") == "connected")))


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S  # socketserver sets it on the connection: slow clients cut

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """The ``/metrics`` endpoint on its own thread; ``port`` is the bound one (0 picks one)."""

    def __init__(self, listen: str, port: int, status: StatusSource, store: Store) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StationCollector(status, store))
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
                return [b"GET /metrics\n"]
            return metrics_app(environ, start_response)

        server_class = _Server
        if ":" in listen:
            class _Server6(_Server):
                address_family = socket.AF_INET6
            server_class = _Server6
        try:
            self._server = make_server(listen, port, app, server_class=server_class,
                                       handler_class=_Handler)
        except OSError as exc:
            raise ConfigError(f"metrics.listen/metrics.port: cannot listen on {listen}:{port}: "
                              f"{exc.strerror or exc}") from exc
        self.listen = listen
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics at http://%s:%d/metrics", self.listen, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

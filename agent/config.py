"""The station configuration: one validated, typed tree loaded from TOML.

Relative paths are resolved against the directory of the configuration file,
so a station directory can be moved as a whole.  Secrets never live here:
keys that name secrets point to files (checked for permissions) or name
environment variables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.configschema import load_section, option
from agent.devicepolicy import RESERVED_KEYS, DevicePolicy, parse_policy
from agent.errors import ConfigError

STATION_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


@dataclass(frozen=True, kw_only=True)
class StationSection:
    id: str = option(doc="Station ID; also the MQTT client ID and certificate CN.",
                     pattern=STATION_ID_PATTERN)
    data_dir: Path = option(doc="Store, vault and keys live below it.")
    # Reading a camera is I/O-bound (USB 2.0 class cameras give ~20 MiB/s each): every
    # docked camera is read at once, up to this many; the checks after each copy share
    # bounded pools (ingest.verify_workers, media.probe_workers) and one memory budget
    # (ingest.buffer_mib), so more sessions cost threads, not CPU or memory.
    max_ingest_workers: int = option(32, min=1, max=64,
                                     doc="Devices offloaded at the same time (one dock "
                                         "session each; more wait for a free one).")
    log_level: str = option("info", choices=("debug", "info", "warning", "error"),
                            doc="Daemon log level.")
    log_format: str = option("text", choices=("text", "json"),
                             doc="Daemon log lines: 'text', or 'json' (one object per line, "
                                 "with clip_id / serial / dock_id where known) for journald "
                                 "and log shippers.")


@dataclass(frozen=True, kw_only=True)
class IngestSection:
    # 8 MiB blocks: large sequential reads are what camera storage and disks do best
    # (scripts/bench ingest: 1 MiB blocks copied 4 GiB ~40% slower than 8 MiB ones).
    chunk_kib: int = option(8192, min=64, max=65536,
                            doc="Largest read/write block (KiB); blocks shrink when many "
                                "copies share ingest.buffer_mib.")
    queue_chunks: int = option(3, min=2, max=64,
                               doc="Blocks one copy or verify holds at a time (one being "
                                   "read, one hashed, one written).")
    buffer_mib: int = option(128, min=1, max=16384,
                             doc="Memory for the blocks of every copy and verify at once "
                                 "(MiB): the peak whatever the number of cameras "
                                 "(docs/OPERATIONS.md, memory).")
    verify: bool = option(True, doc="Re-read each vault copy from disk and compare its hash.")
    verify_workers: int = option(4, min=1, max=16,
                                 doc="Vault copies verified at the same time (disk-bound), "
                                     "shared fairly by the docked cameras.")
    change_retries: int = option(2, min=0, max=10,
                                 doc="Re-copies of a file that changed during the copy "
                                     "before it is quarantined.")
    min_free_mb: int = option(512, min=0,
                              doc="Stop ingesting (and alert) when the vault disk has less "
                                  "free space than this.")


@dataclass(frozen=True, kw_only=True)
class MediaSection:
    probe: bool = option(True, doc="Probe each clip with FFmpeg (PyAV): streams, durations, "
                                   "damage (docs/FORMATS.md, media).")
    decode_check: bool = option(True, doc="Decode a sample of each clip (small clips whole), "
                                          "not only demux it.")
    # scripts/bench probe, 1 GiB 1080p files on this 2-core machine: 6.5 s (H.264) and
    # 10.6 s (HEVC), of which demuxing every packet is under 1 s per GiB and the decoded
    # windows (a fixed number per file) the rest.  The deadline is for files that make
    # FFmpeg spin: several times any honest file's time.
    probe_timeout_s: float = option(60.0, min=5, max=3600,
                                    doc="Probe deadline per GiB of clip (never less than "
                                        "one GiB's); the probe is killed after it.")
    probe_workers: int = option(0, min=0, max=64,
                                doc="Probes run at the same time, shared fairly by the docked "
                                    "cameras (0: one per CPU core).")
    probe_memory_mib: int = option(1536, min=256, max=16384,
                                   doc="Address-space limit of the probe's process (MiB).")
    max_clock_skew_s: float = option(300.0, min=0,
                                     doc="Device clock offset above which clips are flagged.")


@dataclass(frozen=True, kw_only=True)
class CustodySection:
    checkpoint_interval_s: int = option(300, min=5, max=86400,
                                        doc="Seconds between signed log checkpoints.")
    # Letters and digits of any script (Chinese case numbers such as
    # 内公(治)行罚决字〔2019〕123号), then also the punctuation case numbers use.
    case_id_pattern: str = option(r"[^\W_][\w.:/#()（）〔〕［］【】\[\]-]{0,127}",
                                  doc="Regular expression every case ID must match.")
    credential_key_file: Path | None = option(
        None, doc="Platform public key (PEM) that signs officer credentials and rosters.")


@dataclass(frozen=True, kw_only=True)
class OfficersSection:
    hold_release_until_verified: bool = option(
        False, doc="Keep a clip on its camera (even once acknowledged) until its officer is "
                   "verified.")
    time_tolerance_s: float = option(
        120.0, min=0, max=86400,
        doc="Recording times (file name + duration, file time, dock time) further apart than "
            "this flag the clip recorded.time_mismatch.")


@dataclass(frozen=True, kw_only=True)
class PlatformSection:
    mqtt_url: str = option(doc="Broker URL: mqtts://host:port (mqtt:// needs insecure=true).")
    upload_url: str = option(doc="tus 1.0 creation endpoint (https://...).")
    ca_file: Path = option(doc="CA bundle that verifies the broker and the upload server.")
    cert_file: Path | None = option(None, doc="Station TLS client certificate (mutual TLS).")
    key_file: Path | None = option(None, doc="Station TLS client key (mode 0600).")
    platform_key_file: Path = option(doc="Platform public key (PEM) that signs acks and "
                                         "commands.")
    insecure: bool = option(False, doc="Allow mqtt:// and http:// (development only).")
    mqtt_protocol: str = option("5", choices=("5", "3.1.1"), doc="MQTT protocol version.")
    username: str | None = option(None, doc="Broker user name, if the broker asks for one.")
    password_file: Path | None = option(None, doc="File holding the broker password (0600).")
    keepalive_s: int = option(30, min=5, max=3600, doc="MQTT keep-alive.")
    status_interval_s: int = option(60, min=5, max=3600, doc="Seconds between status reports.")
    upload_concurrency: int = option(2, min=1, max=16, doc="Uploads at the same time.")
    upload_origins: list[str] = option(
        default_factory=list,
        doc="Other origins (https://host:port) the upload server may send uploads to; "
            "by default only upload_url's own.")
    request_timeout_s: float = option(60.0, min=1, max=3600,
                                      doc="Overall deadline of one upload request "
                                          "(a PATCH also gets its body's time at "
                                          "min_upload_kib_s).")
    min_upload_kib_s: int = option(32, min=1,
                                   doc="Slowest upload rate allowed for a PATCH body "
                                       "(KiB/s) before the request is cut.")
    # Bytes per PATCH are the resume granularity, not memory (bodies stream from the file
    # in 256 KiB pieces).  scripts/bench upload found 4 to 64 MiB alike within the noise.
    upload_chunk_mib: int = option(32, min=1, max=256,
                                   doc="Bytes per tus PATCH request (MiB).")
    bandwidth_kib_s: int = option(0, min=0, doc="Upload bandwidth cap in KiB/s (0: none).")
    retry_max_s: int = option(300, min=1, max=86400, doc="Longest back-off between retries.")
    command_max_age_s: int = option(600, min=10, max=86400,
                                    doc="Commands older than this are refused as stale.")


@dataclass(frozen=True, kw_only=True)
class PkiSection:
    est_url: str | None = option(None, doc="EST server (RFC 7030) of the platform CA: "
                                           "https://host:port[/.well-known/est[/label]].")
    est_ca_file: Path | None = option(None, doc="CA bundle that verifies the EST server "
                                                "(default: platform.ca_file).")
    est_auth: str = option("basic", choices=("basic", "bearer"),
                           doc="How the one-time enrolment token is sent.")
    est_username: str | None = option(None, doc="HTTP basic user name for enrolment "
                                                "(default: the station ID).")
    timeout_s: float = option(30.0, min=1, max=600, doc="Overall deadline of one EST request.")
    renew_after: float = option(0.66, min=0.1, max=0.95,
                                doc="Share of a certificate's validity after which the "
                                    "daemon renews it (simplereenroll).")
    check_interval_s: float = option(3600.0, min=1, max=86400,
                                     doc="Seconds between certificate checks (renewal, "
                                         "expiry alerts).")


@dataclass(frozen=True, kw_only=True)
class RetentionSection:
    release: str = option("after-ack", choices=("after-ack", "never"),
                          doc="Delete a clip from the camera after the platform acknowledged it.")
    keep_days: float = option(30.0, min=0, doc="Days an acknowledged clip stays in the vault.")
    low_water_mb: int = option(2048, min=0,
                               doc="Purge acknowledged clips early when free space falls "
                                   "below this.")


LANGUAGE_PATTERN = r"[a-z]{2,3}(_[A-Za-z0-9]{2,8})*"


@dataclass(frozen=True, kw_only=True)
class WebSection:
    enabled: bool = option(True, doc="Serve the station's pages (officer page, IT page).")
    listen: str = option("127.0.0.1", doc="IP address to listen on.  A loopback address "
                                          "serves the station's own screen; any other needs "
                                          "tls_cert_file, tls_key_file and users_file.")
    port: int = option(8947, min=0, max=65535, doc="TCP port (0: any free port).")
    hostnames: list[str] = option(default_factory=list,
                                  doc="Host names the pages are reached by besides the listen "
                                      "address and localhost; requests naming another host "
                                      "are refused (DNS rebinding).")
    tls_cert_file: Path | None = option(None, doc="TLS certificate chain (PEM) of the pages.")
    tls_key_file: Path | None = option(None, doc="TLS private key (PEM, mode 0600).")
    users_file: Path | None = option(None, doc="IT accounts, made with `bwc-agent web user "
                                               "add` (default: <data_dir>/web-users.json).")
    session_timeout_s: int = option(600, min=1, max=86400,
                                    doc="An IT session idle this long is signed out.")
    sign_in_attempts: int = option(5, min=1, max=100,
                                   doc="Failed sign-ins per account or per address within "
                                       "sign_in_window_s before sign-in is refused.")
    sign_in_window_s: int = option(300, min=1, max=86400,
                                   doc="Window of the failed sign-in limit (seconds).")
    officer_timeout_s: int = option(90, min=1, max=3600,
                                    doc="An officer signed in at the station's screen and "
                                        "idle this long is signed out.")
    officer_sign_in_attempts: int = option(10, min=1, max=1000,
                                           doc="Refused officer sign-ins at the screen (and "
                                               "per officer number) within "
                                               "officer_sign_in_window_s before sign-in "
                                               "pauses.")
    officer_sign_in_window_s: int = option(60, min=1, max=86400,
                                           doc="Window of the refused officer sign-in limit "
                                               "(seconds).")
    languages: list[str] = option(default_factory=lambda: ["zh_Hans_CN", "en"],
                                  doc="Message catalogs offered on the pages; the first is "
                                      "the default.")
    locale_dir: Path | None = option(None, doc="More message catalogs "
                                               "(<dir>/<language>/LC_MESSAGES/messages.po), "
                                               "searched before the shipped ones.")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.listen)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class MetricsSection:
    """The Prometheus endpoint (agent/metrics.py)."""

    enabled: bool = option(True, doc="Serve Prometheus metrics at /metrics.")
    listen: str = option("127.0.0.1", doc="IP address to listen on; the metrics carry no "
                                          "secrets, but any other address than a loopback "
                                          "one shows the station's figures to its network.")
    port: int = option(9947, min=0, max=65535, doc="TCP port (0: any free port).")


@dataclass(frozen=True, kw_only=True)
class MountSection:
    """Camera volumes mounted by the station itself (``bwc-agent mount``, the udev rule)."""

    user: str = option("bwc-agent", pattern=r"[a-z_][a-z0-9_-]{0,31}",
                       doc="The agent's user: owner of every file on a mounted volume.")
    run_dir: Path = option(Path("/run/bwc-agent/volumes"),
                           doc="Where the mount helper and the daemon leave each other notes "
                               "(mounted, done, refused); owned by the agent's user.")
    codepage: int = option(936, min=437, max=1258,
                           doc="Code page of FAT short names (936: GBK, Simplified Chinese).")
    fuse: str = option("fallback", choices=("fallback", "never", "always"),
                       doc="FUSE (fusefat, exfat-fuse) when the kernel has no vfat/exfat: "
                           "'fallback', 'never' or 'always'.")
    hold_s: float = option(600.0, min=0, max=86400,
                           doc="After a dock session, keep the volume mounted this long while "
                               "its clips wait for the platform's acknowledgement (release).")


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration.  ``devices`` maps a driver key to that driver's config."""

    station: StationSection
    devices: dict[str, Any]
    ingest: IngestSection
    media: MediaSection
    custody: CustodySection
    officers: OfficersSection
    retention: RetentionSection
    platform: PlatformSection | None
    web: WebSection | None = None
    device_policy: DevicePolicy = dataclasses.field(default_factory=DevicePolicy)
    mount: MountSection | None = None
    pki: PkiSection = dataclasses.field(default_factory=PkiSection)
    metrics: MetricsSection | None = None
    source: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.station.data_dir


_SECTIONS: dict[str, type[Any]] = {
    "station": StationSection,
    "ingest": IngestSection,
    "media": MediaSection,
    "custody": CustodySection,
    "officers": OfficersSection,
    "retention": RetentionSection,
    "platform": PlatformSection,
    "web": WebSection,
    "mount": MountSection,
    "pki": PkiSection,
    "metrics": MetricsSection,
}
# Sections that are absent unless the file has them (no table: the feature is off).
_OPTIONAL = ("platform", "web", "mount", "metrics")


def _resolve_paths(obj: Any, base: Path) -> Any:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    changes: dict[str, Any] = {}
    for fld in dataclasses.fields(obj):
        value = getattr(obj, fld.name)
        if isinstance(value, Path) and not value.is_absolute():
            changes[fld.name] = (base / value).resolve()
        elif dataclasses.is_dataclass(value):
            changes[fld.name] = _resolve_paths(value, base)
    return dataclasses.replace(obj, **changes) if changes else obj


def parse(raw: dict[str, Any], base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML document; raises ConfigError listing every problem."""
    from drivers import REGISTRY  # drivers depend on agent; import late to avoid a cycle

    problems: list[str] = []
    for key in raw:
        if key not in _SECTIONS and key != "devices":
            allowed = ", ".join([*_SECTIONS, "devices"])
            problems.append(f"{key}: unknown section (allowed: {allowed})")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name)
        if table is None:
            if name in _OPTIONAL:
                sections[name] = None
                continue
            table = {}
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a table, got {type(table).__name__}")
            table = {}
        sections[name] = load_section(cls, table, name, problems)

    devices: dict[str, Any] = {}
    dev_table = raw.get("devices", {})
    if not isinstance(dev_table, dict):
        problems.append("devices: expected a table of driver sections")
        dev_table = {}
    device_policy = parse_policy(dev_table, problems)
    for key, table in dev_table.items():
        if key in RESERVED_KEYS:
            continue
        spec = REGISTRY.get(key)
        if spec is None:
            problems.append(f"devices.{key}: unknown driver (known: {', '.join(sorted(REGISTRY))})")
            continue
        if not isinstance(table, dict):
            problems.append(f"devices.{key}: expected a table")
            continue
        devices[key] = load_section(spec.config_cls, table, f"devices.{key}", problems)
    if not devices and "devices" in raw:
        problems.append("devices: no driver configured")

    roots: list[tuple[str, Path]] = [
        (f"devices.{key}.mount_root", cfg.mount_root) for key, cfg in devices.items()
        if isinstance(getattr(cfg, "mount_root", None), Path)]
    for i, (key_a, root_a) in enumerate(roots):
        for key_b, root_b in roots[i + 1:]:
            if (base_dir / root_a).resolve() == (base_dir / root_b).resolve():
                problems.append(f"{key_b}: {root_b} is also {key_a}; a camera volume would be "
                                "docked twice (once without its serial identity)")
    mount = sections["mount"]
    if mount is not None and not problems:
        problems.extend(_check_mount(mount, roots, base_dir))
    platform = sections["platform"]
    if platform is not None and not problems:
        problems.extend(_check_platform(platform))
    web = sections["web"]
    if web is not None and not problems:
        problems.extend(_check_web(web))
    if not problems:
        problems.extend(_check_pki(sections["pki"], platform))
    metrics = sections["metrics"]
    if metrics is not None and not problems:
        try:
            ipaddress.ip_address(metrics.listen)
        except ValueError:
            problems.append(f"metrics.listen: {metrics.listen!r} is not an IP address "
                            "(e.g. 127.0.0.1)")

    if problems:
        where = f" in {source}" if source else ""
        raise ConfigError(f"configuration is invalid{where} ({len(problems)} problems)", problems)

    resolved = {name: _resolve_paths(value, base_dir) for name, value in sections.items()}
    devices = {k: _resolve_paths(v, base_dir) for k, v in devices.items()}
    return Config(devices=devices, device_policy=device_policy, source=source, **resolved)


def _check_mount(m: MountSection, roots: list[tuple[str, Path]], base_dir: Path) -> list[str]:
    if not roots:
        return ["mount: the station mounts camera volumes below a driver's mount_root: "
                "configure [devices.mass_storage] or [devices.gat947]"]
    run_dir = (base_dir / m.run_dir).resolve()
    return [f"mount.run_dir: {m.run_dir} is inside {key} ({root}); notes would look like "
            "camera volumes" for key, root in roots
            if run_dir == (base_dir / root).resolve()
            or (base_dir / root).resolve() in run_dir.parents]


def _check_platform(p: PlatformSection) -> list[str]:
    problems = []
    if p.mqtt_url.startswith("mqtt://") and not p.insecure:
        problems.append("platform.mqtt_url: mqtt:// sends evidence events in clear text; "
                        "use mqtts:// or set platform.insecure = true for development")
    elif not p.mqtt_url.startswith(("mqtts://", "mqtt://")):
        problems.append(f"platform.mqtt_url: {p.mqtt_url!r} is not an mqtts:// or mqtt:// URL")
    if p.upload_url.startswith("http://") and not p.insecure:
        problems.append("platform.upload_url: http:// sends footage in clear text; "
                        "use https:// or set platform.insecure = true for development")
    elif not p.upload_url.startswith(("https://", "http://")):
        problems.append(f"platform.upload_url: {p.upload_url!r} is not an https:// URL")
    if (p.cert_file is None) != (p.key_file is None):
        problems.append("platform.cert_file / platform.key_file: give both or neither")
    from agent.sync.tus import origin_problem  # the tus client owns what an origin is

    for i, origin in enumerate(p.upload_origins):
        problem = origin_problem(origin, allow_http=p.insecure)
        if problem is not None:
            problems.append(f"platform.upload_origins[{i}]: {problem}")
    return problems


def _check_web(w: WebSection) -> list[str]:
    problems = []
    try:
        ipaddress.ip_address(w.listen)
    except ValueError:
        problems.append(f"web.listen: {w.listen!r} is not an IP address (e.g. 127.0.0.1)")
        return problems
    if (w.tls_cert_file is None) != (w.tls_key_file is None):
        problems.append("web.tls_cert_file / web.tls_key_file: give both or neither")
    if w.enabled and not w.loopback:
        missing = [key for key, value in (("web.tls_cert_file", w.tls_cert_file),
                                          ("web.tls_key_file", w.tls_key_file),
                                          ("web.users_file", w.users_file)) if value is None]
        if missing:
            problems.append(f"web.listen: {w.listen} is reachable from the network; the pages "
                            f"are served there only over TLS to signed-in users: set "
                            f"{', '.join(missing)}")
    for i, name in enumerate(w.languages):
        if not re.fullmatch(LANGUAGE_PATTERN, name):
            problems.append(f"web.languages[{i}]: {name!r} is not a catalog name "
                            "(e.g. zh_Hans_CN, en, mn_Mong)")
    if not w.languages:
        problems.append("web.languages: name at least one language")
    for i, host in enumerate(w.hostnames):
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
            problems.append(f"web.hostnames[{i}]: {host!r} is not a host name")
    return problems


def _check_pki(p: PkiSection, platform: PlatformSection | None) -> list[str]:
    problems = []
    if p.est_url is not None and not p.est_url.startswith("https://"):
        problems.append(f"pki.est_url: {p.est_url!r} is not an https:// URL (EST runs over "
                        "TLS only)")
    if p.est_url is not None and p.est_ca_file is None and platform is None:
        problems.append("pki.est_ca_file: needed to verify the EST server when there is no "
                        "[platform] table (whose ca_file would be used)")
    return problems


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the configuration file at ``path``."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {source}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: TOML syntax error: {exc}") from exc
    return parse(raw, source.resolve().parent, source)

"""Preflight: `config check` fails wherever `run` would, and `run` writes nothing before it.

Each case breaks one thing of a complete station (platform with mutual TLS,
the three drivers) and asserts three things: the daemon's own start-up
really fails on it (so the check is not an invention), `bwc-agent config
check` exits 2 naming the key, and `bwc-agent run --once` exits 2 with the
same problem before it wrote anything (no data directory, no key).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import config as config_mod
from agent import preflight
from agent.cli.main import main
from agent.custody.keys import init_station_keys
from agent.errors import ConfigError
from agent.station import Station
from scripts.devplatform.pki import make_dev_pki


@dataclass
class Site:
    """A complete station directory: configuration, platform PKI, camera roots."""

    base: Path
    config: Path
    data_dir: Path
    pki_dir: Path

    def load(self) -> config_mod.Config:
        return config_mod.load(self.config)

    def edit(self, old: str, new: str) -> None:
        text = self.config.read_text(encoding="utf-8")
        assert old in text, old
        self.config.write_text(text.replace(old, new), encoding="utf-8")

    def tree(self) -> list[str]:
        """Every path below the data directory (what a run wrote)."""
        if not self.data_dir.exists():
            return []
        return sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*"))


def make_site(base: Path, *, platform: bool = True) -> Site:
    pki = make_dev_pki(base / "pki")
    tls = pki.station_tls("ST-0001")
    for name in ("sim", "media", "media-gat947"):
        (base / name).mkdir()
    password = base / "camera.password"
    password.write_text("123456\n", encoding="utf-8")
    password.chmod(0o600)
    broker_password = base / "broker.password"
    broker_password.write_text("s3cret\n", encoding="utf-8")
    broker_password.chmod(0o600)
    catalog = base / "devices.toml"
    catalog.write_text((Path(__file__).parents[2] / "config" / "devices.toml")
                       .read_text(encoding="utf-8"), encoding="utf-8")
    text = textwrap.dedent(f"""\
        [station]
        id = "ST-0001"
        data_dir = "{base / 'data'}"

        [devices.simulated]
        root = "{base / 'sim'}"
        catalog = "{catalog}"

        [devices.mass_storage]
        mount_root = "{base / 'media'}"
        catalog = "{catalog}"

        [devices.gat947]
        mount_root = "{base / 'media-gat947'}"
        password_file = "{password}"
        catalog_key = "gat947-generic-a"
        """)
    if platform:
        text += textwrap.dedent(f"""
            [platform]
            mqtt_url = "mqtts://127.0.0.1:1"
            upload_url = "https://127.0.0.1:1/files/"
            ca_file = "{pki.ca_cert_path}"
            cert_file = "{tls.cert_path}"
            key_file = "{tls.key_path}"
            platform_key_file = "{pki.platform_pub_path}"
            username = "ST-0001"
            password_file = "{broker_password}"
            """)
    config = base / "station.toml"
    config.write_text(text, encoding="utf-8")
    return Site(base, config, base / "data", base / "pki")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def _other_tls_key(site: Site) -> None:
    """platform.key_file: the key of another certificate."""
    other = make_dev_pki(site.base / "pki2").station_tls("ST-0001")
    site.edit(f'key_file = "{site.pki_dir}/station-ST-0001-tls.key"',
              f'key_file = "{other.key_path}"')


def _station_key_0644(site: Site) -> None:
    init_station_keys(site.data_dir, "ST-0001")
    (site.data_dir / "keys" / "station.key").chmod(0o644)


def _station_cert_of_another_key(site: Site) -> None:
    init_station_keys(site.data_dir, "ST-0001")
    other = site.base / "other"
    init_station_keys(other, "ST-0001")
    shutil.copy(other / "keys" / "station.pem", site.data_dir / "keys" / "station.pem")


def _lost_key_of_a_certified_station(site: Site) -> None:
    init_station_keys(site.data_dir, "ST-0001")
    (site.data_dir / "keys" / "station.key").unlink()


def _newer_store(site: Site) -> None:
    import sqlite3

    from agent.store.db import SCHEMA_VERSION

    site.data_dir.mkdir()
    db = sqlite3.connect(site.data_dir / "state.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()


def _credential_key(text: str | None) -> Callable[[Site], None]:
    """custody.credential_key_file: a file that is no key, or none at all."""
    def change(site: Site) -> None:
        path = site.base / "credential.pub"
        if text is not None:
            path.write_text(text, encoding="utf-8")
        site.edit("[devices.simulated]",
                  f'[custody]\ncredential_key_file = "{path}"\n\n[devices.simulated]')
    return change


def _replace(old: str, new: str) -> Callable[[Site], None]:
    def change(site: Site) -> None:
        site.edit(old.format(base=site.base, pki=site.pki_dir),
                  new.format(base=site.base, pki=site.pki_dir))
    return change


def _chmod(name: str, mode: int) -> Callable[[Site], None]:
    def change(site: Site) -> None:
        (site.base / name).chmod(mode)
    return change


# (id, breakage, text config check and run must name, does the daemon's start fail on it?)
CASES: list[tuple[str, Callable[[Site], None], str, bool]] = [
    ("catalog-missing", _replace('catalog = "{base}/devices.toml"\n\n[devices.mass',
                                 'catalog = "{base}/nope.toml"\n\n[devices.mass'),
     "devices.simulated.catalog: ", True),
    ("catalog-broken", lambda s: (s.base / "devices.toml").write_text("[[device]\n"),
     "TOML syntax error", True),
    ("catalog-invalid", lambda s: (s.base / "devices.toml").write_text(
        '[[device]]\nkey = "x"\nvendor = "v"\nmodel = "m"\nname_pattern = "("\n'
        'extensions = ["mp4"]\n'), "not a valid regular expression", True),
    ("catalog-key-unknown", _replace('catalog_key = "gat947-generic-a"', 'catalog_key = "nope"'),
     "no entry 'nope'", True),
    ("ca-file-missing", _replace('ca_file = "{pki}/ca.pem"', 'ca_file = "{pki}/nope.pem"'),
     "platform.ca_file", True),
    ("ca-file-not-pem", lambda s: (s.pki_dir / "ca.pem").write_text("not a certificate\n"),
     "platform.ca_file", True),
    ("platform-key-missing", _replace('platform_key_file = "{pki}/platform.pub"',
                                      'platform_key_file = "{pki}/nope.pub"'),
     "platform.platform_key_file", True),
    ("tls-key-0644", lambda s: (s.pki_dir / "station-ST-0001-tls.key").chmod(0o644),
     "platform.key_file", True),
    ("tls-cert-missing", _replace('cert_file = "{pki}/station-ST-0001-tls.pem"',
                                  'cert_file = "{pki}/nope.pem"'),
     "platform.cert_file", True),
    ("tls-key-of-another-cert", _other_tls_key, "platform.key_file", True),
    ("broker-password-0644", _chmod("broker.password", 0o644), "platform.password_file", True),
    ("camera-password-0644", _chmod("camera.password", 0o644),
     "devices.gat947.password_file", True),
    ("camera-password-missing", lambda s: (s.base / "camera.password").unlink(),
     "devices.gat947.password_file", True),
    ("station-key-0644", _station_key_0644, "has mode 0644", True),
    ("station-cert-of-another-key", _station_cert_of_another_key, "does not match", True),
    ("station-key-lost", _lost_key_of_a_certified_station, "restore the key", True),
    ("store-newer-than-agent", _newer_store, "newer than this agent", True),
    ("mount-root-missing", lambda s: (s.base / "media").rmdir(),
     "devices.mass_storage.mount_root", True),
    ("mount-root-is-a-file", lambda s: ((s.base / "media").rmdir(),
                                        (s.base / "media").write_text("")),
     "devices.mass_storage.mount_root", True),
    ("gat947-mount-root-missing", lambda s: (s.base / "media-gat947").rmdir(),
     "devices.gat947.mount_root", False),
    ("data-dir-is-a-file", lambda s: s.data_dir.write_text(""), "station.data_dir", True),
    ("credential-key-not-a-key", _credential_key("not a key\n"),
     "custody.credential_key_file", True),
    ("credential-key-missing", _credential_key(None), "custody.credential_key_file", True),
]


def _daemon_start_fails(site: Site, *, platform: bool) -> bool:
    config = site.load()
    if not platform:  # its services start first and take a while to stop again
        config = dataclasses.replace(config, platform=None)
    station = Station(config)
    try:
        station.start(watch=True)
    except Exception:
        return True
    station.stop()
    return False


def test_a_complete_station_passes(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(site.config)]) == 0
    out = capsys.readouterr().out
    assert f"{site.config}: OK (station ST-0001, drivers: gat947, mass_storage, simulated" in out
    assert "station key" in out and "created at the first start" in out
    assert site.tree() == [], "config check writes nothing"


@pytest.mark.parametrize(("breakage", "named", "daemon_fails"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_config_check_fails_wherever_run_would(
        site: Site, breakage: Callable[[Site], None], named: str, daemon_fails: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    breakage(site)
    before = site.tree()
    data_dir_existed = site.data_dir.exists()

    assert main(["config", "check", "--config", str(site.config)]) == 2
    checked = capsys.readouterr()
    assert named in checked.out, checked.out

    assert main(["run", "--once", "--config", str(site.config)]) == 2
    ran = capsys.readouterr()
    assert named in ran.err, ran.err
    assert site.tree() == before, "run wrote into the data directory before failing"
    assert site.data_dir.exists() == data_dir_existed

    if daemon_fails:
        assert _daemon_start_fails(site, platform=named.startswith("platform.")), \
            "the daemon would have started: the check is invented"


def test_run_writes_nothing_before_the_catalog_is_checked(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    site = make_site(tmp_path, platform=False)
    site.edit(f'catalog = "{tmp_path}/devices.toml"\n\n[devices.mass',
              f'catalog = "{tmp_path}/missing.toml"\n\n[devices.mass')
    assert main(["run", "--once", "--config", str(site.config)]) == 2
    assert "devices.simulated.catalog: " in capsys.readouterr().err
    assert not site.data_dir.exists(), "no data directory, no station key"


def test_every_problem_is_listed_at_once(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    (site.pki_dir / "station-ST-0001-tls.key").chmod(0o644)
    (site.base / "camera.password").chmod(0o640)
    (site.base / "media").rmdir()
    assert main(["config", "check", "--config", str(site.config)]) == 2
    out = capsys.readouterr().out
    for key in ("platform.key_file", "devices.gat947.password_file",
                "devices.mass_storage.mount_root"):
        assert key in out
    assert "(3 problems)" in out


def test_unreadable_files_are_named_for_the_agent_user(site: Site) -> None:
    """Readability is judged for the user running the agent (here: a file nobody may read)."""
    if os.geteuid() == 0:
        pytest.skip("root reads every file; the test as nobody below covers it")
    (site.pki_dir / "ca.pem").chmod(0)
    with pytest.raises(ConfigError) as info:
        preflight.check(site.load())
    assert any("platform.ca_file" in p for p in info.value.problems)


NOBODY = 65534


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory user nobody can reach.

    Not below pytest's base directory: every pytest session that starts on the
    machine makes /tmp/pytest-of-<user> private again (mode 0700).
    """
    base = Path(tempfile.mkdtemp(prefix="bwc-preflight-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to hand files to another user (CI runs as root)")
def test_data_dir_left_to_root_by_keys_init_names_the_chown(nobody_dir: Path) -> None:
    """`keys init` run as root leaves root's files; the agent's user is told the exact chown."""
    import pwd
    import sys

    base = nobody_dir
    site = make_site(base, platform=False)
    for path in (base, base / "sim", base / "media", base / "media-gat947"):
        os.chown(path, NOBODY, NOBODY)
    os.chown(base / "camera.password", NOBODY, NOBODY)
    base.joinpath("devices.toml").chmod(0o644)
    site.config.chmod(0o644)
    assert main(["keys", "init", "--config", str(site.config)]) == 0  # as root
    agent = [sys.executable, "-m", "agent.cli.main"]
    user = pwd.getpwuid(NOBODY).pw_name

    checked = _as_nobody(*agent, "config", "check", "--config", str(site.config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert f"chown -R {user}: {site.data_dir}" in checked.stdout

    ran = _as_nobody(*agent, "run", "--once", "--config", str(site.config))
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"chown -R {user}: {site.data_dir}" in ran.stderr

    subprocess.run(["chown", "-R", f"{user}:", str(site.data_dir)], check=True)
    checked = _as_nobody(*agent, "config", "check", "--config", str(site.config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # root, checking the station of another user, is told to run the agent as that user.
    as_root = subprocess.run([*agent, "config", "check", "--config", str(site.config)],
                             capture_output=True, text=True, timeout=120)
    assert as_root.returncode == 2
    assert f"run bwc-agent as {user} (runuser -u {user} -- bwc-agent ...)" in as_root.stdout

    # A file the configuration names that the agent's user cannot read (root's, 0600).
    os.chown(base / "camera.password", 0, 0)
    checked = _as_nobody(*agent, "config", "check", "--config", str(site.config))
    assert checked.returncode == 2
    assert (f"devices.gat947.password_file: user {user} cannot read {base / 'camera.password'}"
            in checked.stdout), checked.stdout


def test_a_store_cut_short_before_its_tables_does_not_count_as_signed(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """A crash right after the database file was made: the key is still made at start."""
    import sqlite3

    site.data_dir.mkdir()
    db = sqlite3.connect(site.data_dir / "state.db")
    db.execute("PRAGMA journal_mode = WAL")
    db.close()
    assert main(["config", "check", "--config", str(site.config)]) == 0
    assert "station key" in capsys.readouterr().out


def test_a_signature_still_in_the_write_ahead_log_counts(site: Site) -> None:
    """What a crash left in the WAL is part of the store: the lost key is still refused."""
    import sqlite3

    from agent.store import Store

    store = Store(site.data_dir / "state.db", station_id="ST-0001")
    keep_open = sqlite3.connect(site.data_dir / "state.db")  # holds the WAL: no checkpoint
    keep_open.execute("PRAGMA wal_autocheckpoint = 0")
    store.query("PRAGMA wal_autocheckpoint = 0")
    with store.transaction() as tx:
        tx.execute("INSERT INTO checkpoints (size, root, at, envelope) VALUES (1, 'r', 't', '{}')")
    assert (site.data_dir / "state.db-wal").stat().st_size > 0
    with pytest.raises(ConfigError) as info:
        preflight.check(site.load())
    assert any("has already signed" in p for p in info.value.problems), info.value.problems
    keep_open.close()
    store.close()

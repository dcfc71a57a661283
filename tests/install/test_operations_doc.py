"""docs/OPERATIONS.md, followed literally: its marked command blocks run as written, in order.

The blocks run as root in one bash session inside a private mount
namespace, where /etc, /opt, /var, /usr/local, /media, /root and /run are
overlays on this machine's directories: `useradd`, `/etc/bwc-agent`,
`/opt/bwc-agent` and the rest are real for the session and vanish with it.
Only what needs a running systemd or the network is stood in for:
`apt-get` (the packages are installed already), and `systemctl` and
`journalctl`, replaced by a small stand-in that starts the unit's own
`ExecStart=` as its `User=` and `Group=` (setpriv) with its
`RuntimeDirectory=`, stops it with SIGTERM,
and shows its output.  Between blocks the test does what a person would:
docks a simulated camera before the first start, and brings the next
version's installation set before the upgrade.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.install.conftest import REPO, clean_env, sh

pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                       or shutil.which("setpriv") is None,
                       reason="needs root, unshare and setpriv (CI runs as root)"),
]

DOC = REPO / "docs" / "OPERATIONS.md"
BLOCK = re.compile(r"<!-- doc-test: ([a-z-]+) -->\n```sh\n(.*?)```", re.S)
ORDER = ["install", "user", "configure", "keys", "first-start", "upgrade", "rollback",
         "backup", "restore", "retire"]
NEXT_VERSION = "99.0.0"  # the version of the installation set the upgrade brings
OVERLAID = ("etc", "opt", "var", "usr/local", "media", "root", "run")

STAND_INS = r"""
set -euo pipefail
umask 022
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PIP_CONFIG_FILE=/dev/null
JOURNAL="$STUB/journal"
: > "$JOURNAL"
_pid=""

apt-get() { echo "(apt-get $*: the packages are installed on this machine)"; }
journalctl() { cat "$JOURNAL"; }

_start() {
    local unit=/etc/systemd/system/bwc-agent.service exec user group before
    exec="$(sed -n 's/^ExecStart=//p' "$unit")"
    user="$(sed -n 's/^User=//p' "$unit")"
    group="$(sed -n 's/^Group=//p' "$unit")"
    before="$(grep -c 'starting for station' "$JOURNAL" || true)"
    local runtime
    runtime="$(sed -n 's/^RuntimeDirectory=//p' "$unit")"
    if [ -n "$runtime" ]; then install -d -m 0755 -o "$user" -g "$group" "/run/$runtime"; fi
    # shellcheck disable=SC2086
    (umask 0077; exec setpriv --reuid="$user" --regid="$group" --init-groups $exec) \
        >>"$JOURNAL" 2>&1 &
    _pid=$!
    for _ in $(seq 150); do
        if ! kill -0 "$_pid" 2>/dev/null; then
            wait "$_pid" || echo "bwc-agent.service: main process exited, status=$?" >&2
            _pid=""
            return 1
        fi
        if [ "$(grep -c 'starting for station' "$JOURNAL" || true)" -gt "$before" ]; then
            sleep 1
            kill -0 "$_pid" && return 0
        fi
        sleep 0.2
    done
    echo "bwc-agent.service: no start-up within 30 s" >&2
    return 1
}

_stop() {
    [ -n "$_pid" ] || return 0
    kill -TERM "$_pid"
    local status=0
    wait "$_pid" || status=$?
    _pid=""
    [ "$status" -eq 0 ] || { echo "bwc-agent.service: stopped with status $status" >&2; return 1; }
}

systemctl() {
    local now="" args=()
    for a in "$@"; do
        case "$a" in --now) now=1 ;; --no-pager) ;; *) args+=("$a") ;; esac
    done
    case "${args[0]}" in
        daemon-reload) ;;
        enable) if [ -n "$now" ]; then _start; fi ;;
        disable) if [ -n "$now" ]; then _stop; fi ;;
        start) _start ;;
        stop) _stop ;;
        restart) _stop; _start ;;
        status) kill -0 "$_pid" && echo "bwc-agent.service: active (running), pid $_pid" ;;
        *) echo "systemctl stand-in: $* is not supported" >&2; return 1 ;;
    esac
}

check() { if ! eval "$1"; then echo "CHECK FAILED: $1" >&2; exit 1; fi; }
# Whatever happens, no daemon outlives the session.
trap '_stop || true' EXIT
"""


def _hooks(old: str, new_wheelhouse: Path) -> dict[str, tuple[str, str]]:
    """What happens before and after each block (a person's actions, and the checks)."""
    py, simcam = sys.executable, REPO / "scripts" / "simcam"
    cfg = "/etc/bwc-agent/station.toml"
    return {
        "install": ("", f'check \'[ "$(bwc-agent --version)" = "bwc-agent {old}" ]\''),
        "configure": ("", ""),
        "first-start": (f"""
# An officer docks a (simulated) camera at the new station; like a camera volume, it is
# a file system of its own (the overlays mix two file systems in one tree).
install -d /var/lib/bwc-sim
mount -t tmpfs -o mode=0755 tmpfs /var/lib/bwc-sim
install -d -o bwc-agent -g bwc-agent /var/lib/bwc-sim/docks
printf '\\n[devices.simulated]\\nroot = "/var/lib/bwc-sim/docks"\\n' >> {cfg}
{py} {simcam} /var/lib/bwc-sim/docks --serial SIMDOC1 --clips 2 --seconds 0.5 \\
    --size 160x120 --fps 10 >/dev/null
chown -R bwc-agent: /var/lib/bwc-sim
""", """
for _ in $(seq 300); do grep -q 'offload of SIMDOC1 done' "$JOURNAL" && break; sleep 0.2; done
check 'grep -q "offload of SIMDOC1 done: 2 new, 2 copied" "$JOURNAL"'
check '[ "$(stat -c %U /var/lib/bwc-agent/keys/station.key)" = bwc-agent ]'
"""),
        "upgrade": (f"""
# The next version's installation set arrives.
rm -rf /root/bwc-wheelhouse
cp -r {new_wheelhouse} /root/bwc-wheelhouse
""", f"""
check '[ "$(bwc-agent --version)" = "bwc-agent {NEXT_VERSION}" ]'
check '[ "$(readlink /opt/bwc-agent/current)" = "{NEXT_VERSION}" ]'
check 'grep -q "bwc-agent {NEXT_VERSION} starting for station ST-0001" "$JOURNAL"'
check 'runuser -u bwc-agent -- bwc-agent status --config {cfg} | grep -q "clips: sealed 2"'
check '[ -s "/var/backups/bwc-agent/before-{NEXT_VERSION}.tar.gz" ]'
"""),
        "rollback": ("", f"""
check '[ "$(bwc-agent --version)" = "bwc-agent {old}" ]'
check 'systemctl status bwc-agent'
"""),
        "restore": ("", """
check 'ls -d /var/lib/bwc-agent.set-aside-*'
check 'systemctl status bwc-agent'
"""),
        "retire": ("", """
tar -tzf /var/backups/bwc-agent/retired-ST-0001.tar.gz > "$STUB/archive"
check 'grep -qx "bwc-agent/keys/station.pem" "$STUB/archive"'
check '! grep -q "station.key$" "$STUB/archive"'
check 'grep -qx "bwc-agent-final/export/bagit.txt" "$STUB/archive"'
check '[ ! -e /var/lib/bwc-agent ] && [ ! -e /opt/bwc-agent ] && ! id bwc-agent 2>/dev/null'
"""),
    }


@pytest.fixture(scope="module")
def newer_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installation set of a later build (the same tree, built as NEXT_VERSION)."""
    out = tmp_path_factory.mktemp("wheelhouse-next")
    sh(REPO / "scripts" / "wheelhouse", out, cwd=out,
       env=dict(os.environ, SETUPTOOLS_SCM_PRETEND_VERSION=NEXT_VERSION))
    assert (out / "VERSION").read_text(encoding="ascii").strip() == NEXT_VERSION
    return out


def test_every_documented_block_is_run() -> None:
    names = [m.group(1) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]
    assert names == ORDER, "a doc-test block was added, renamed or moved: update ORDER and hooks"
    assert "scripts/wheelhouse /tmp/bwc-wheelhouse" in DOC.read_text(encoding="utf-8")


def test_operations_md_works_as_written(wheelhouse: Path, version: str, newer_wheelhouse: Path,
                                        tmp_path: Path) -> None:
    blocks = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))
    hooks = _hooks(version, newer_wheelhouse)
    script = [STAND_INS]
    for name in ORDER:
        before, after = hooks.get(name, ("", ""))
        script += [f"echo '=== {name}'", before, "set -x", blocks[name], "set +x", after]
    script.append("echo '=== all blocks ran'")
    (tmp_path / "doc.sh").write_text("\n".join(script), encoding="utf-8")

    ns = tmp_path / "ns"
    ns.mkdir()
    overlays = "\n".join(
        f'mkdir -p "$NS/upper/{d}" "$NS/work/{d}"; mount -t overlay overlay -o '
        f'"lowerdir=/{d},upperdir=$NS/upper/{d},workdir=$NS/work/{d}" "/{d}"' for d in OVERLAID)
    setup = f"""set -euo pipefail
mount -t tmpfs tmpfs "$NS"
{overlays}
mkdir -p "$STUB"
cp -r {wheelhouse} /root/bwc-wheelhouse
cd /root
exec bash {tmp_path / 'doc.sh'}
"""
    env = clean_env(NS=str(ns), STUB=str(ns / "stub"))
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             setup], env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + "\n" + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "=== all blocks ran" in result.stdout
    assert not (Path("/etc/bwc-agent").exists() or Path("/opt/bwc-agent").exists()), \
        "the doc test leaked into this machine"

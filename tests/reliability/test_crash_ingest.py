"""Power-cut safety of ingest and sealing: SIGKILL at many points, restart, nothing lost.

A real agent process (``bwc-agent run --once``) is killed with SIGKILL at
the Nth durable step (see crashpoint.py), then restarted until it completes.
After every cycle: every clip of the camera is in the vault exactly once
with the source's SHA-256, no partial or temporary file is left, no clip is
sealed twice, none is left unsealed, and the custody log verifies against
its signed checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.custody import merkle
from agent.verify import verify_paths
from drivers.simcam import make_camera
from tests.conftest import write_station_config

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
KILL_POINTS = 24


def _run(config: Path, limit: int, *scope: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.reliability.crashpoint", str(limit), *scope, "--",
         "run", "--once", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def camera_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    cam = make_camera(root, serial="CRASH01", clips=4, seconds=1.0, width=160, height=120,
                      fps=10.0)
    # A larger clip so that copies take several chunks (chunk_kib = 64 below).
    (cam / "DCIM" / "BIG.MP4").write_bytes(hashlib.sha256(b"seed").digest() * 8192)
    return cam


def _sources(cam: Path) -> dict[str, str]:
    return {p.relative_to(cam).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (cam / "DCIM").rglob("*") if p.is_file()}


def _check_invariants(data_dir: Path, sources: dict[str, str]) -> None:
    db = sqlite3.connect(data_dir / "state.db")
    db.row_factory = sqlite3.Row
    clips = db.execute("SELECT * FROM clips").fetchall()
    by_path = {r["path"]: r for r in clips}
    assert sorted(by_path) == sorted(sources), "every recording has exactly one clip row"
    assert len(clips) == len(sources)
    for path, sha in sources.items():
        row = by_path[path]
        assert row["state"] == "sealed", f"{path} is {row['state']}"
        assert row["sha256"] == sha
        envelope = json.loads(row["manifest"])
        assert envelope["payloadType"] == "application/vnd.bwc.manifest.v1+json"
    objects = sorted(p.name for p in (data_dir / "vault" / "sha256").rglob("*") if p.is_file())
    assert objects == sorted(set(sources.values())), "vault holds each clip exactly once"
    for name in objects:
        obj = next((data_dir / "vault" / "sha256").rglob(name))
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == name
    leftovers = list((data_dir / "vault" / "incoming").iterdir())
    assert leftovers == [], f"partial files left: {leftovers}"
    assert not [p for p in data_dir.rglob("*.tmp*")], "temporary files left"
    # Sealed exactly once per clip in the custody log.
    seals = db.execute("SELECT clip_id, COUNT(*) AS n FROM custody_log WHERE kind = 'clip.sealed'"
                       " GROUP BY clip_id").fetchall()
    assert {r["clip_id"]: r["n"] for r in seals} == {r["clip_id"]: 1 for r in clips}
    # The log is contiguous and every checkpoint is a prefix of it.
    seqs = [r[0] for r in db.execute("SELECT seq FROM custody_log ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))
    leaves = [bytes(r[0]) for r in db.execute("SELECT leaf FROM custody_log ORDER BY seq")]
    for size, root in db.execute("SELECT size, root FROM checkpoints"):
        assert merkle.root(leaves[:size]).hex() == root
    # And the auditor's verifier agrees: signatures, log, checkpoints, vault objects.
    report = verify_paths([data_dir])
    assert report.ok, report.problems + [p for c in report.clips for p in c.problems]


def test_sigkill_at_many_points_loses_nothing(tmp_path: Path, camera_template: Path) -> None:
    base = tmp_path / "station"
    base.mkdir()
    config_path = write_station_config(base, "[ingest]\nchunk_kib = 64\n", station_id="ST-CRASH")
    config = config_mod.load(config_path)
    sim_root = config.devices["simulated"].root
    shutil.copytree(camera_template, sim_root / camera_template.name, symlinks=True)
    sources = _sources(sim_root / camera_template.name)

    # Count the durable steps of one clean run on a scratch copy, to spread the kill points.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch_config = write_station_config(scratch, "[ingest]\nchunk_kib = 64\n")
    shutil.copytree(camera_template, scratch / "sim" / camera_template.name, symlinks=True)
    clean = _run(scratch_config, 0)
    assert clean.returncode == 0, clean.stderr
    total = int(clean.stderr.rsplit("crashpoint-steps=", 1)[1].split()[0])
    assert total > KILL_POINTS * 2

    killed = 0
    # Each cycle kills a fresh run somewhere in its first `budget` steps, then checks
    # recovery; the cuts walk across the whole ingest: identify, copies, fsyncs, renames,
    # transactions, seals and checkpoints.
    for i in range(KILL_POINTS):
        point = 1 + (i * total) // KILL_POINTS
        result = _run(config_path, point)
        if result.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert result.returncode == 0, result.stderr
        # Restarting must always bring the station to a consistent, complete state.
        done = _run(config_path, 0)
        assert done.returncode == 0, done.stderr
        _check_invariants(config.data_dir, sources)
        # Start the next cycle from an empty station, so every cut lands on fresh work.
        shutil.rmtree(config.data_dir)
    assert killed >= 20, f"only {killed} runs were actually killed"


def test_sigkill_during_sealing(tmp_path: Path, camera_template: Path) -> None:
    """Power cut at every step of sealing: the log verifies, nothing sealed twice or left out."""
    base = tmp_path / "station"
    base.mkdir()
    config_path = write_station_config(base, station_id="ST-SEAL")
    config = config_mod.load(config_path)
    sim_root = config.devices["simulated"].root
    shutil.copytree(camera_template, sim_root / camera_template.name, symlinks=True)
    sources = _sources(sim_root / camera_template.name)
    clean = _run(config_path, 0, "--scope", "seal")
    assert clean.returncode == 0, clean.stderr
    total = int(clean.stderr.rsplit("crashpoint-steps=", 1)[1].split()[0])
    assert total >= 2 * len(sources), "each seal has at least a begin and a commit step"
    shutil.rmtree(config.data_dir)
    killed = 0
    for point in range(1, total + 1):
        result = _run(config_path, point, "--scope", "seal")
        killed += result.returncode == -signal.SIGKILL
        done = _run(config_path, 0)
        assert done.returncode == 0, done.stderr
        _check_invariants(config.data_dir, sources)
        shutil.rmtree(config.data_dir)
    assert killed == total, "every sealing step was cut once"

"""Benchmarks of the network and verify paths (see scripts/benchmarks.py for the runner)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.bench_common import make_source

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3

AGENT_UPLOAD = r"""
import json, resource, sys, time
from pathlib import Path
from agent.sync.tus import TusClient
endpoint, ca, src = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
chunk_mib = int(sys.argv[4])
size = src.stat().st_size
with TusClient(endpoint, ca_file=ca, chunk_size=chunk_mib * 1024 * 1024) as client:
    url = client.create(size, {"filename": src.name})
# Timed like curl's PATCH: a new connection (TLS handshake included), then the bytes.
t0 = time.perf_counter()
with TusClient(endpoint, ca_file=ca, chunk_size=chunk_mib * 1024 * 1024) as client:
    client.upload(url, src, start=0, total=size)
elapsed = time.perf_counter() - t0
print(json.dumps({"seconds": elapsed,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

AGENT_HASH = r"""
import json, resource, sys, time
from pathlib import Path
from agent.verify.files import hash_file  # what bwc-agent verify hashes files with
t0 = time.perf_counter()
digest, size = hash_file(Path(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t0, "sha256": digest,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _source(workdir: Path, size: int) -> Path:
    src = workdir / f"src-{size}.bin"
    make_source(src, size)
    return src


def _curl_upload(endpoint: str, ca: Path, src: Path) -> float:
    size = src.stat().st_size
    created = subprocess.run(
        ["curl", "-sS", "-i", "--cacert", str(ca), "-X", "POST", "-H", "Tus-Resumable: 1.0.0",
         "-H", f"Upload-Length: {size}", endpoint], check=True, capture_output=True, text=True)
    location = next(line.split(":", 1)[1].strip() for line in created.stdout.splitlines()
                    if line.lower().startswith("location:"))
    url = location if location.startswith("https://") else endpoint.rstrip("/") + "/" + \
        location.rsplit("/", 1)[-1]
    t0 = time.perf_counter()
    subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "--cacert", str(ca), "-X", "PATCH",
         "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0",
         "-H", "Content-Type: application/offset+octet-stream", "-T", str(src), url],
        check=True)
    return time.perf_counter() - t0


def _agent_upload(endpoint: str, ca: Path, src: Path, chunk_mib: int) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of the agent's tus client uploading ``src``."""
    proc = subprocess.run([sys.executable, "-c", AGENT_UPLOAD, endpoint, str(ca), str(src),
                           str(chunk_mib)], check=True, capture_output=True, text=True, cwd=ROOT)
    run = json.loads(proc.stdout)
    return run["seconds"], run["peak_rss_kib"]


def _clear(store: Path) -> None:
    """Empty the server's store between contenders.

    Measured: an upload landing beside the previous contender's 1 GiB on tmpfs
    ran up to 2x slower on this VM (fresh pages cost more than recycled ones),
    which favoured whoever went first.
    """
    for f in store.glob("*"):
        if f.is_file():
            f.unlink()


def _compare(url: str, ca: Path, src: Path, store: Path, chunk_mib: int,
             repeat: int) -> dict[str, Any]:
    """curl vs the agent against one running server: medians, best runs, every sample."""
    curl_s: list[float] = []
    agent_s: list[float] = []
    rss: list[int] = []
    # Interleaved, alternating who goes first, so that drift in the machine's speed
    # hits both contenders alike; each starts on an empty store.
    for i in range(repeat):
        for contender in ("curl", "agent") if i % 2 == 0 else ("agent", "curl"):
            if contender == "curl":
                curl_s.append(_curl_upload(url, ca, src))
            else:
                seconds, rss_kib = _agent_upload(url, ca, src, chunk_mib)
                agent_s.append(seconds)
                rss.append(rss_kib)
            _clear(store)
    size = src.stat().st_size
    curl_med, agent_med = statistics.median(curl_s), statistics.median(agent_s)
    return {
        "curl_s": round(curl_med, 3), "agent_s": round(agent_med, 3),
        "curl_mib_s": round(size / curl_med / 2**20, 1),
        "agent_mib_s": round(size / agent_med / 2**20, 1),
        "agent_vs_curl": round(curl_med / agent_med, 3),
        "agent_peak_rss_mib": round(max(rss) / 1024, 1),
        "best_agent_vs_curl": round(min(curl_s) / min(agent_s), 3),
        "samples_s": {"curl": [round(x, 3) for x in curl_s],
                      "agent": [round(x, 3) for x in agent_s]},
    }


def bench_upload(size_gib: float, workdir: Path, chunk_mib: int = 32, repeat: int = 9,
                 server: str = "dev") -> dict[str, Any]:
    """The agent's tus client vs curl (one PATCH), same bytes, same HTTPS server.

    ``server``: "dev", the development platform's tus server, with and without
    sha256 checksums; "node", the official Node server (@tus/server with its
    FileStore, installed from npm as for the interop test; it has no checksum
    extension).
    """
    from agent.devpki import DevCA

    size = int(size_gib * GIB)
    src = _source(workdir, size)
    ca = DevCA(workdir / "pki")
    server_cert = ca.issue("127.0.0.1", "server", server=True, client=False)
    results: dict[str, Any] = {"size_gib": size_gib, "chunk_mib": chunk_mib, "repeat": repeat,
                               "server": server, "runs": {}}
    # The server keeps uploads in memory (tmpfs) when it can: this measures the client and
    # the network path; the same disk-write noise would otherwise land on either contender.
    shm = Path("/dev/shm")
    store_root = shm / "bwc-bench-upload" if shm.is_dir() else workdir
    results["server_store"] = str(store_root)
    if server == "node":
        from tests.support.tus_node import NodeTusServer, ensure_installed

        store = store_root / "store-node"
        try:
            with NodeTusServer(ensure_installed(), store, server_cert.cert_path,
                               server_cert.key_path) as node:
                entry = _compare(node.url + "/", ca.cert_path, src, store, chunk_mib, repeat)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        results["runs"]["node_no_checksum"] = entry
        print(json.dumps({"node_no_checksum": entry}), flush=True)
        return results
    from scripts.devplatform.tusserver import TusServer

    for label, algorithms in (("with_checksum", ("sha256",)), ("no_checksum", ())):
        store = store_root / f"store-{label}"
        dev = TusServer(store, certfile=server_cert.cert_path, keyfile=server_cert.key_path,
                        checksum_algorithms=algorithms).start()
        try:
            entry = _compare(dev.url, ca.cert_path, src, store, chunk_mib, repeat)
        finally:
            dev.stop()
            shutil.rmtree(store, ignore_errors=True)
        results["runs"][label] = entry
        print(json.dumps({label: entry}), flush=True)
    return results


def bench_verify(size_gib: float, workdir: Path) -> dict[str, Any]:
    """The verifier's hashing vs ``openssl dgst -sha256`` on the same file, cache warm."""
    size = int(size_gib * GIB)
    src = _source(workdir, size)
    subprocess.run(["cat", str(src)], check=True, stdout=subprocess.DEVNULL)  # warm the cache
    ossl, agent = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", str(src)], check=True,
                       stdout=subprocess.DEVNULL)
        ossl.append(time.perf_counter() - t0)
        proc = subprocess.run([sys.executable, "-c", AGENT_HASH, str(src)], check=True,
                              capture_output=True, text=True, cwd=ROOT)
        agent.append(json.loads(proc.stdout)["seconds"])
    result = {"size_gib": size_gib, "openssl_s": round(statistics.median(ossl), 3),
              "agent_s": round(statistics.median(agent), 3)}
    result["agent_vs_openssl"] = round(result["openssl_s"] / result["agent_s"], 3)
    print(json.dumps(result), flush=True)
    os.sync()
    return result

"""``scripts/bench ingest``: the agent's single-pass copy and its verify pass, against cp.

The agent's copy (read + SHA-256 + durable write) and its verify pass
(re-read from disk, page cache dropped), against `cp` + `sync`,
`cp` + `sync` + `sha256sum`, and `cp` + `sync` + `openssl dgst -sha256`.
Peak RSS is measured in a child process that does only the measured work.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts.bench_common import GIB, ROOT, drop_caches, make_source, timed

AGENT_INGEST = r"""
import json, os, resource, sys, time
from pathlib import Path
from agent.ingest import copy_to_vault
from agent.vault import Vault
src, vault_dir = sys.argv[1], Path(sys.argv[2])
chunk_kib, depth = int(sys.argv[3]), int(sys.argv[4])
vault = Vault(vault_dir)
temp = vault.temp_path("bench")
t0 = time.perf_counter()
with open(src, "rb", buffering=0) as f:
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    result = copy_to_vault(f, temp, chunk_size=chunk_kib * 1024, queue_chunks=depth)
vault.commit(temp, result.sha256)
t1 = time.perf_counter()
vault.verify(result.sha256, drop_cache=True)
t2 = time.perf_counter()
print(json.dumps({"copy_s": t1 - t0, "verify_s": t2 - t1, "sha256": result.sha256,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def bench_ingest(sizes_gib: list[float], workdir: Path, chunk_kib: int, depth: int,
                 repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {"chunk_kib": chunk_kib, "queue_chunks": depth, "repeat": repeat,
                               "drop_caches": drop_caches(), "runs": []}
    for size_gib in sizes_gib:
        size = int(size_gib * GIB)
        src = workdir / f"src-{size_gib:g}G.bin"
        make_source(src, size)
        dst = workdir / "dst.bin"
        vault_dir = workdir / "vault"

        def clean(dst: Path = dst, vault_dir: Path = vault_dir) -> None:
            dst.unlink(missing_ok=True)
            shutil.rmtree(vault_dir, ignore_errors=True)

        samples: dict[str, list[float]] = {"cp": [], "sha": [], "ossl": [], "copy": [],
                                           "verify": [], "rss": []}
        for _ in range(repeat):
            # Interleaved, so that drift in the disk's speed hits every contender alike.
            clean()
            samples["cp"].append(timed(f"cp {src} {dst} && sync"))
            clean()
            samples["sha"].append(timed(f"cp {src} {dst} && sync && sha256sum {dst} >/dev/null"))
            clean()
            samples["ossl"].append(
                timed(f"cp {src} {dst} && sync && openssl dgst -sha256 {dst} >/dev/null"))
            clean()
            drop_caches()
            proc = subprocess.run(
                [sys.executable, "-c", AGENT_INGEST, str(src), str(vault_dir), str(chunk_kib),
                 str(depth)], check=True, capture_output=True, text=True, cwd=ROOT)
            agent_run = json.loads(proc.stdout)
            samples["copy"].append(agent_run["copy_s"])
            samples["verify"].append(agent_run["verify_s"])
            samples["rss"].append(agent_run["peak_rss_kib"])
            clean()
        # This machine's disk is shared and noisy (the same copy varies 2x between runs):
        # medians are the headline, minimums (each contender's best run) the steadier view.
        cp_sync, cp_sync_sha, cp_sync_ossl = (statistics.median(samples[k])
                                              for k in ("cp", "sha", "ossl"))
        agent = {"copy_s": statistics.median(samples["copy"]),
                 "verify_s": statistics.median(samples["verify"]),
                 "peak_rss_kib": max(samples["rss"])}
        best = {k: min(v) for k, v in samples.items() if k != "rss"}
        run = {
            "size_gib": size_gib,
            "cp_sync_s": round(cp_sync, 3),
            "cp_sync_sha256sum_s": round(cp_sync_sha, 3),
            "cp_sync_openssl_s": round(cp_sync_ossl, 3),
            "agent_copy_s": round(agent["copy_s"], 3),
            "agent_verify_s": round(agent["verify_s"], 3),
            "agent_total_s": round(agent["copy_s"] + agent["verify_s"], 3),
            "agent_peak_rss_mib": round(agent["peak_rss_kib"] / 1024, 1),
            "copy_vs_cp_sync": round(agent["copy_s"] / cp_sync, 3),
            "total_vs_cp_sync_openssl": round((agent["copy_s"] + agent["verify_s"])
                                              / cp_sync_ossl, 3),
            "agent_copy_mib_s": round(size / agent["copy_s"] / 2**20, 1),
            "best_copy_vs_cp_sync": round(best["copy"] / best["cp"], 3),
            "best_total_vs_cp_sync_openssl": round((best["copy"] + best["verify"])
                                                   / best["ossl"], 3),
            "samples_s": {k: [round(x, 3) for x in v] for k, v in samples.items()
                          if k != "rss"},
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    return results

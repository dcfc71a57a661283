"""Footage uploads: sealed clips go to the platform's tus endpoint, resumably.

A clip moves ``sealed → uploading`` when its upload starts, and
``uploading → uploaded`` when the server confirmed the last byte.  The upload
URL and the confirmed offset are stored after every PATCH, so a network
failure, a server restart or an agent restart resumes from the server's
offset (asked with HEAD), never from zero.  Transient failures back off
exponentially with jitter; a 4xx that will never succeed quarantines the clip
with the reason.  Nothing here ever deletes a clip.

A server offset that cannot be right (past the file's length, behind what
the server confirmed before) is never resumed nor taken as "complete": the
upload is abandoned, a fresh one is created (``upload.restarted`` in the
custody log, an ``upload.offset_invalid`` alert).  A stored upload URL that
is no longer on an allowed origin is abandoned the same way, without a
request to it.

Workers sleep on one condition; ``poke`` and ``stop`` bump a generation
counter under its lock, and a worker waits only if the generation did not
move since it last looked for work, so no wake-up is lost between "nothing
to do" and the wait.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.errors import AgentError, IntegrityError, StoreError, TransportError
from agent.store import ClipState, Store
from agent.sync.tus import (
    OffsetError,
    RateLimiter,
    TusClient,
    TusStatusError,
    UploadGone,
    backoff_delay,
    offset_problem,
)
from agent.timeutil import now
from agent.vault import Vault

log = logging.getLogger(__name__)
S = ClipState
# The longest Retry-After honoured: a server asking for more is waited on this long.
MAX_RETRY_AFTER_S = 6 * 3600.0


class Uploader:
    """A pool of upload workers sharing one bandwidth limiter; important clips first."""

    def __init__(self, config: Config, store: Store, vault: Vault) -> None:
        assert config.platform is not None
        self.config = config
        self.platform = config.platform
        self.store = store
        self.vault = vault
        self._wake = threading.Condition()
        self._generation = 0  # bumped under _wake by poke() and stop()
        self._tls_generation = 0  # bumped by reload_client_certificate()
        self._claimed: set[str] = set()
        # The platform's Retry-After, for every upload of this station (not only the
        # clip that got it): no request before this time.  In memory on purpose: a
        # restart of the agent is how an operator overrides a wrong, long Retry-After.
        self._not_before = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        bandwidth = self.platform.bandwidth_kib_s * 1024
        self._limiter = RateLimiter(bandwidth) if bandwidth else None
        # Counts the bytes the server confirmed (agent.progress.ByteMeter), if set.
        self.meter: Any = None

    def start(self) -> None:
        self._client().close()  # a bad endpoint or CA file fails the start, with its name
        for i in range(self.platform.upload_concurrency):
            thread = threading.Thread(target=self._worker, name=f"upload-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._wake:
            self._stop.set()
        self.poke()
        for thread in self._threads:
            thread.join(timeout=30)

    def reload_client_certificate(self) -> None:
        """The TLS client certificate was renewed: each worker makes its client anew
        (loading the files as they are now) before its next upload."""
        with self._wake:
            self._tls_generation += 1

    def poke(self) -> None:
        """Something may be ready to upload (a seal, a retry time reached)."""
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def busy(self) -> bool:
        with self._wake:
            return bool(self._claimed)

    # --- scheduling ----------------------------------------------------------------------

    def _claim(self) -> str | None:
        with self._wake:
            if time.time() < self._not_before:
                return None
        rows = self.store.query(
            "SELECT clip_id FROM clips WHERE state IN ('sealed', 'uploading') AND "
            "next_attempt_at <= ? ORDER BY important DESC, clip_id LIMIT 64", (time.time(),))
        with self._wake:
            for row in rows:
                if row["clip_id"] not in self._claimed:
                    self._claimed.add(row["clip_id"])
                    return str(row["clip_id"])
        return None

    def _next_due(self) -> float:
        row = self.store.query_one("SELECT MIN(next_attempt_at) AS t FROM clips WHERE state IN "
                                   "('sealed', 'uploading')")
        with self._wake:
            not_before = self._not_before
        due = 30.0 if row is None or row["t"] is None else float(row["t"]) - time.time()
        return max(0.05, min(30.0, max(due, not_before - time.time())))

    def _worker(self) -> None:
        client = self._client()
        tls = self._tls_generation
        try:
            while not self._stop.is_set():
                with self._wake:
                    seen = self._generation
                    renewed = self._tls_generation != tls
                    tls = self._tls_generation
                if renewed:
                    try:
                        fresh = self._client()
                    except AgentError:
                        log.exception("cannot load the renewed TLS client certificate; uploads "
                                      "go on with the one loaded before")
                    else:
                        client.close()
                        client = fresh
                try:
                    clip_id = self._claim()
                except AgentError:
                    log.exception("upload scheduling failed")
                    self._stop.wait(1.0)
                    clip_id = None
                if clip_id is None:
                    due = self._next_due()
                    with self._wake:
                        # A poke or stop since ``seen`` is not lost: no wait at all then.
                        if not self._stop.is_set() and self._generation == seen:
                            self._wake.wait(due)
                    continue
                try:
                    self.upload_one(client, clip_id)
                except Exception:
                    # Never let one clip kill the worker; it is tried again later.
                    log.exception("upload of %s failed", clip_id)
                    self._stop.wait(1.0)
                finally:
                    with self._wake:
                        self._claimed.discard(clip_id)
        finally:
            client.close()

    def _client(self) -> TusClient:
        p = self.platform
        cert = (p.cert_file, p.key_file) if p.cert_file and p.key_file else None
        # The bandwidth cap is shared by every worker: each one's body allowance uses its share.
        share = (p.bandwidth_kib_s * 1024 // p.upload_concurrency) if p.bandwidth_kib_s else 0
        min_rate = p.min_upload_kib_s * 1024
        return TusClient(p.upload_url, ca_file=p.ca_file, cert=cert,
                         chunk_size=p.upload_chunk_mib * 1024 * 1024, limiter=self._limiter,
                         deadline_s=p.request_timeout_s,
                         min_rate_bytes_s=min(min_rate, share // 2) if share else min_rate,
                         allowed_origins=p.upload_origins, allow_http=p.insecure)

    # --- one clip ------------------------------------------------------------------------

    def upload_one(self, client: TusClient, clip_id: str) -> None:
        clip = self.store.clip(clip_id)
        if clip["state"] == S.SEALED.value:
            with self.store.transaction() as tx:
                tx.transition(clip_id, S.UPLOADING, log_body={"endpoint": self.platform.upload_url})
            clip = self.store.clip(clip_id)
        elif clip["state"] != S.UPLOADING.value:
            return
        path: Path = self.vault.path_for(clip["sha256"])
        size = int(clip["size"])
        try:
            url = clip["upload_url"]
            offset = 0
            if url and not client.pinned(url):
                self._abandon(clip_id, url, None, size, "the stored upload address is not on "
                              "the configured upload server (platform.upload_url / "
                              "upload_origins changed)", alert=False)
                url = None
            if url:
                try:
                    offset = client.offset(url)
                except UploadGone:
                    log.warning("upload %s of clip %s is gone on the server; starting anew",
                                url, clip_id)
                    url = None
                else:
                    problem = offset_problem(offset, confirmed=int(clip["upload_offset"]),
                                             total=size)
                    if problem is not None:
                        self._abandon(clip_id, url, offset, size, problem, client=client)
                        url, offset = None, 0
            if not url:
                url = client.create(size, {
                    "clip_id": clip_id, "sha256": clip["sha256"],
                    "station_id": self.config.station.id, "filename": clip["name"]})
                with self.store.transaction() as tx:
                    tx.update_clip(clip_id, upload_url=url, upload_offset=0)
                    tx.log("upload.created", clip_id, {"upload_url": url, "size": size})

            sent = [offset]

            def progress(confirmed: int) -> None:
                with self.store.transaction() as tx:
                    tx.update_clip(clip_id, upload_offset=confirmed)
                if self.meter is not None:
                    self.meter.add(confirmed - sent[0])
                sent[0] = max(sent[0], confirmed)

            if offset < size:
                if offset:
                    log.info("clip %s: resuming upload at %d of %d", clip_id, offset, size)
                client.upload(url, path, start=offset, total=size, on_progress=progress)
        except OffsetError as exc:
            self._abandon(clip_id, url, exc.server_offset, size, str(exc), client=client)
            self._failed(clip_id, int(clip["upload_attempts"]) + 1, exc)
            return
        except TransportError as exc:
            self._failed(clip_id, int(clip["upload_attempts"]) + 1, exc)
            return
        except IntegrityError as exc:
            # The vault copy is not what was sealed: never send it; an operator looks.
            self._quarantine(clip_id, f"vault copy cannot be uploaded: {exc}")
            return
        except StoreError as exc:
            # The station's own side (a busy database, a vault read): try again later.
            self._failed(clip_id, int(clip["upload_attempts"]) + 1,
                         TransportError(f"station error during upload: {exc}"))
            return
        with self.store.transaction() as tx:
            if tx.clip(clip_id)["state"] != S.UPLOADING.value:
                return  # an ack raced ahead and already moved it on
            tx.transition(clip_id, S.UPLOADED, uploaded_at=now(), upload_offset=size,
                          log_body={"upload_url": url, "sha256": clip["sha256"], "size": size})
            tx.event("clip.uploaded", {"clip_id": clip_id, "sha256": clip["sha256"],
                                       "size": size, "upload_url": url})
        log.info("clip %s uploaded (%d bytes)", clip_id, size)

    def _abandon(self, clip_id: str, url: str, server_offset: int | None, size: int,
                 reason: str, *, client: TusClient | None = None, alert: bool = True) -> None:
        """Forget upload ``url`` of a clip (its next attempt creates a fresh one); log and alert.

        The server's copy is deleted if it lets us (best effort: a server that
        lies about offsets may refuse that too).
        """
        log.warning("clip %s: abandoning upload %s and starting a fresh one: %s", clip_id,
                    url, reason)
        with self.store.transaction() as tx:
            tx.update_clip(clip_id, upload_url=None, upload_offset=0)
            tx.log("upload.restarted", clip_id, {"upload_url": url,
                                                  "server_offset": server_offset,
                                                  "size": size, "reason": reason})
            if alert:
                tx.event("alert", {"code": "upload.offset_invalid", "clip_id": clip_id,
                                   "message": f"upload {url}: {reason}; a fresh upload of "
                                              f"the {size} bytes is started"})
        if client is not None:
            try:
                client.terminate(url)
            except TransportError as exc:
                log.info("clip %s: the abandoned upload %s could not be deleted: %s",
                         clip_id, url, exc)

    def _quarantine(self, clip_id: str, reason: str) -> None:
        log.error("clip %s: %s", clip_id, reason)
        with self.store.transaction() as tx:
            tx.transition(clip_id, S.QUARANTINED, reason=reason, log_body={"reason": reason})
            tx.event("alert", {"code": "upload.failed", "clip_id": clip_id, "message": reason})

    def _failed(self, clip_id: str, attempts: int, exc: TransportError) -> None:
        if not exc.retryable:
            with self.store.transaction() as tx:
                tx.update_clip(clip_id, upload_attempts=attempts)
            self._quarantine(clip_id, f"upload refused by the platform: {exc}")
            return
        delay = backoff_delay(attempts, base=1.0, cap=float(self.platform.retry_max_s))
        asked = exc.retry_after_s if isinstance(exc, TusStatusError) else None
        if asked is not None:
            # The platform said when it can take uploads again (429/503 Retry-After):
            # coming back earlier, with this clip or another, would only load it while
            # it recovers.
            wait = min(asked, MAX_RETRY_AFTER_S)
            with self._wake:
                self._not_before = max(self._not_before, time.time() + wait)
        log.warning("clip %s: upload attempt %d failed (%s); retrying in %.1f s%s", clip_id,
                    attempts, exc, delay if asked is None else max(delay, wait),
                    "" if asked is None else
                    f" (the server asked for {asked:.0f} s; no upload before then)")
        with self.store.transaction() as tx:
            tx.update_clip(clip_id, upload_attempts=attempts, next_attempt_at=time.time() + delay)

"""The web server inside the agent: uvicorn serving the pages from a thread of the daemon.

Why in-process: the pages show the daemon's live progress (agent.progress),
which only this process has, and act through the same store and custody
log; a second process would need a second copy of the state or a private
protocol.  uvicorn runs its own event loop in one thread; the station's
threads are not touched.

The listening socket is bound by :meth:`WebServer.start` itself, so a busy
port or a refused address stops the daemon's start with a message naming
``web.listen`` / ``web.port``, and ``port = 0`` gives a free port (tests).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn

from agent.config import Config, WebSection
from agent.errors import ConfigError
from agent.progress import ProgressRegistry
from agent.store import Store
from agent.vault import Vault
from agent.web.accounts import Accounts, users_path
from agent.web.app import WebContext, build_app
from agent.web.i18n import Catalogs
from agent.web.sessions import Sessions, SignInLimiter

if TYPE_CHECKING:
    from agent.web.officers import OfficerSignIn

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0


def allowed_hosts(web: WebSection) -> list[str]:
    return [web.listen, "localhost", "127.0.0.1", "::1", *web.hostnames]


def _check_tls_key(web: WebSection) -> None:
    if web.tls_key_file is None:
        return
    import os
    import stat

    try:
        mode = stat.S_IMODE(os.stat(web.tls_key_file).st_mode)
    except OSError as exc:
        raise ConfigError(f"web.tls_key_file: cannot read {web.tls_key_file}: "
                          f"{exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(f"web.tls_key_file: {web.tls_key_file} is open to group or others "
                          f"(mode {mode:04o}); run chmod 600 {web.tls_key_file}")


def _roster_sign_in(config: Config, store: Store) -> OfficerSignIn | None:
    """Officer sign-in at the screen, on a station that checks officer credentials."""
    if config.custody.credential_key_file is None:
        return None
    from agent.web.officers import RosterSignIn

    return RosterSignIn(store, config)


class WebServer:
    def __init__(self, config: Config, store: Store, vault: Vault | None,
                 progress: ProgressRegistry | None,
                 officer_sign_in: OfficerSignIn | None = None,
                 daemon: Callable[[], dict[str, Any] | None] | None = None) -> None:
        assert config.web is not None
        self.web = config.web
        self.tls = self.web.tls_cert_file is not None
        accounts = Accounts(users_path(config))
        # Reachable from the network: refuse to start without a usable account file.
        if not self.web.loopback and accounts.check() == 0:
            raise ConfigError(f"web.users_file: {accounts.path} has no account; the "
                              "pages are not served to the network without one")
        _check_tls_key(self.web)
        self.ctx = WebContext(
            config=config, store=store, vault=vault, progress=progress,
            catalogs=Catalogs(self.web.languages, self.web.locale_dir), accounts=accounts,
            sessions=Sessions(self.web.session_timeout_s),
            limiter=SignInLimiter(self.web.sign_in_attempts, self.web.sign_in_window_s),
            tls=self.tls, officer_sign_in=officer_sign_in or _roster_sign_in(config, store),
            officer_limiter=SignInLimiter(self.web.officer_sign_in_attempts,
                                          self.web.officer_sign_in_window_s),
            daemon=daemon)
        self.app = build_app(self.ctx, allowed_hosts(self.web))
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.web.listen if ":" not in self.web.listen else f"[{self.web.listen}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.web.listen else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.web.listen, self.web.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"web.listen / web.port: cannot listen on "
                              f"{self.web.listen}:{self.web.port}: {exc.strerror}") from exc
        sock.listen(64)
        sock.set_inheritable(True)
        return sock

    def start(self) -> None:
        sock = self._bind()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="on",
            server_header=False, proxy_headers=False,
            ssl_certfile=str(self.web.tls_cert_file) if self.web.tls_cert_file else None,
            ssl_keyfile=str(self.web.tls_key_file) if self.web.tls_key_file else None,
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
            # Bounded: idle connections close, a flood waits, a stuck stream ends at stop.
            timeout_keep_alive=5, limit_concurrency=64, timeout_graceful_shutdown=3,
            h11_max_incomplete_event_size=16 * 1024)
        try:
            config.load()  # here, not in the thread: a bad certificate stops the start
            server = uvicorn.Server(config)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise ConfigError(f"web.tls_cert_file / web.tls_key_file: {exc}") from exc
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise ConfigError("web: the page server did not start (see the log above; "
                                  "check web.tls_cert_file and web.tls_key_file)")
            time.sleep(0.02)
        log.info("station pages at %s", self.url)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        if self.ctx.live is not None:
            self.ctx.live.close_threadsafe()  # open streams end now, not at the grace timeout
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            log.error("web: the page server did not stop within 10 s")

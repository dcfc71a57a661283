"""Install and run the official Node tus server (@tus/server with FileStore) for interop tests.

The packages are pinned (the 2.x line needs Node >= 20.19) and installed with
npm once into ``build/tus-node`` (ignored by git); later runs reuse them.
Missing node or npm is an error with a clear message, never a silent skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INSTALL_DIR = REPO / "build" / "tus-node"
SERVER_SCRIPT = REPO / "tests" / "interop" / "tus_node_server.mjs"
PACKAGES = {"@tus/server": "2.4.5", "@tus/file-store": "2.1.1"}
MIN_NODE = (20, 19)


class NodeSetupError(RuntimeError):
    """node/npm missing or too old, or the npm install failed."""


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise NodeSetupError(
            "the tus interop test needs Node.js >= {}.{} with npm on PATH "
            "(found node={}, npm={}); install them, e.g. apt-get install nodejs npm"
            .format(*MIN_NODE, node, npm))
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True,
                         timeout=30).stdout.strip()
    version = tuple(int(p) for p in out.lstrip("v").split(".")[:2])
    if version < MIN_NODE:
        raise NodeSetupError("@tus/server {} needs Node >= {}.{}, this machine has {}".format(
            PACKAGES["@tus/server"], *MIN_NODE, out))
    return node, npm


def _installed() -> bool:
    for name, version in PACKAGES.items():
        manifest = INSTALL_DIR / "node_modules" / name / "package.json"
        try:
            if json.loads(manifest.read_text())["version"] != version:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return True


def ensure_installed() -> str:
    """Install the pinned packages if needed; returns the path of ``node``."""
    node, npm = _tools()
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    with open(INSTALL_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs install once
        if _installed():
            return node
        (INSTALL_DIR / "package.json").write_text(json.dumps(
            {"name": "bwc-tus-node-interop", "private": True, "type": "module",
             "dependencies": PACKAGES}, indent=2) + "\n")
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev"],
                                cwd=INSTALL_DIR, capture_output=True, text=True, timeout=600,
                                check=False)
        if result.returncode != 0 or not _installed():
            raise NodeSetupError(f"npm install of {PACKAGES} in {INSTALL_DIR} failed "
                                 f"(exit {result.returncode}):\n{result.stderr[-2000:]}")
    return node


class NodeTusServer:
    """``node tus_node_server.mjs`` on 127.0.0.1 with a FileStore in ``store``."""

    def __init__(self, node: str, store: Path, certfile: Path, keyfile: Path) -> None:
        self.store = store
        self._argv = [node, str(SERVER_SCRIPT)]
        self._env = {**os.environ, "TUS_NODE_DIR": str(INSTALL_DIR), "TUS_STORE": str(store),
                     "TUS_CERT": str(certfile), "TUS_KEY": str(keyfile),
                     "TUS_HOST": "127.0.0.1", "TUS_PORT": "0"}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stderr = store.parent / f"{store.name}.node-stderr.log"
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/files"

    def __enter__(self) -> NodeTusServer:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self._stderr, "w") as err:
            self._proc = subprocess.Popen(self._argv, env=self._env, stdout=subprocess.PIPE,
                                          stderr=err, text=True)
        threading.Thread(target=self._read_events, daemon=True).start()
        self.port = self.wait_event("listening", timeout=30)["port"]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def wait_event(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        """The next stdout event of ``kind``; fails with the server's stderr if none comes."""
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {kind!r} event from the Node tus server within "
                                     f"{timeout}s; stderr:\n{self.stderr()}") from None
            if event.get("event") == "exited":
                raise AssertionError(f"the Node tus server exited before {kind!r}; "
                                     f"stderr:\n{self.stderr()}")
            if event.get("event") == kind:
                return event

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self._stderr.read_text()[-4000:]
        return ""

    def _read_events(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self._events.put(json.loads(line))
        self._events.put({"event": "exited"})

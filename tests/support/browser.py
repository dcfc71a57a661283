"""Debian's chromium driven by Playwright, and axe-core installed from npm for the accessibility checks.

Playwright never downloads a browser here: it launches /usr/bin/chromium
(installed by scripts/setup) with a fresh profile directory per test.
axe-core is pinned and installed with npm once into ``build/axe-core``
(ignored by git); the check injects that local file into the page.
Missing chromium, node or npm is an error with a clear message, never a skip.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
AXE_DIR = REPO / "build" / "axe-core"
AXE_VERSION = "4.14.1"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = REPO / "test-artifacts"


class BrowserSetupError(RuntimeError):
    """chromium, node or npm is missing, or the npm install failed."""


def chromium() -> str:
    if not CHROMIUM.exists():
        raise BrowserSetupError(f"{CHROMIUM} is missing: the page tests need Debian's chromium "
                                "(scripts/setup installs it: apt-get install chromium)")
    return str(CHROMIUM)


def _axe_installed() -> bool:
    try:
        manifest = json.loads((AXE_SCRIPT.parent / "package.json").read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("version") == AXE_VERSION and AXE_SCRIPT.is_file()


def axe_source() -> str:
    """The axe-core script, installed with npm on first use."""
    npm = shutil.which("npm")
    if npm is None:
        raise BrowserSetupError("the accessibility check needs npm (apt-get install npm)")
    AXE_DIR.mkdir(parents=True, exist_ok=True)
    with open(AXE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _axe_installed():
            (AXE_DIR / "package.json").write_text(json.dumps(
                {"name": "bwc-axe-check", "private": True,
                 "dependencies": {"axe-core": AXE_VERSION}}, indent=2) + "\n")
            result = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=AXE_DIR,
                                    capture_output=True, text=True, timeout=600, check=False)
            if result.returncode != 0 or not _axe_installed():
                raise BrowserSetupError(f"npm install axe-core@{AXE_VERSION} in {AXE_DIR} "
                                        f"failed:\n{result.stderr[-2000:]}")
    return AXE_SCRIPT.read_text(encoding="utf-8")


def axe_violations(page: Any, source: str) -> list[dict[str, Any]]:
    """Run axe-core in ``page`` (WCAG 2.x A/AA rules); the serious and critical violations.

    The script goes in through the DevTools protocol (page.evaluate), not a <script>
    element: the pages' Content-Security-Policy rightly refuses inline scripts.
    """
    page.evaluate(source)
    result = page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


def artifact_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

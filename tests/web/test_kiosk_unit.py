"""The shipped kiosk unit: systemd accepts it, and it points at the page the agent serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from agent.config import WebSection

UNIT = Path(__file__).resolve().parents[2] / "config" / "bwc-kiosk.service"


def test_systemd_analyze_verifies_the_kiosk_unit() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is needed (Debian package systemd)"
    for tool in ("/usr/bin/cage", "/usr/bin/chromium", "/usr/bin/curl"):
        assert Path(tool).exists(), f"{tool} is missing: scripts/setup installs it"
    result = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "kiosk" not in result.stderr, result.stderr


def test_the_kiosk_shows_the_default_local_page() -> None:
    text = UNIT.read_text(encoding="utf-8")
    web = WebSection()
    page = f"http://{web.listen}:{web.port}/"
    assert re.search(rf"--kiosk .*{re.escape(page)}\s*$", text.replace("\\\n", " "),
                     re.MULTILINE | re.DOTALL)
    assert f"curl -fs -o /dev/null {page}" in text
    assert "--user-data-dir=/var/lib/bwc-kiosk/chromium" in text
    assert "ExecStartPre=/usr/bin/rm -rf /var/lib/bwc-kiosk/chromium" in text

"""The hand steps of an export bundle's README.txt, run as an auditor would type them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def readme_script(bundle: Path) -> str:
    """The README's commands ($ lines, with their heredocs) as one bash script."""
    lines = (bundle / "README.txt").read_text(encoding="utf-8").splitlines()
    commands, i = [], 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            command = lines[i][2:]
            if command.endswith("<<'EOF'"):
                end = lines.index("EOF", i)
                command = "\n".join([command, *lines[i + 1:end], "EOF"])
                i = end
            commands.append(command)
        i += 1
    return "set -euo pipefail\n" + "\n".join(commands) + "\n"


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run README commands; their ``mktemp -d`` lands in the test's directory."""
    env = {**os.environ, "TMPDIR": str(cwd.parent)}
    return subprocess.run(["bash", "-c", script], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)

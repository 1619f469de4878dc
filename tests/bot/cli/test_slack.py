"""``ftbot run`` through the installed console script: a database it cannot reach is one line and exit code 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.paths import REPO

FTBOT = Path(sys.executable).parent / "ftbot"
UNREACHABLE = "postgresql://127.0.0.1:1/x"


def _run_ftbot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "FTBOT_", "OPENAI_"))}
    clean.update(FTBOT_HOME=str(tmp_path / "home"), FTBOT_DATABASE_URL=UNREACHABLE, **env)
    return subprocess.run([str(FTBOT), *args], capture_output=True, text=True, timeout=120, env=clean, cwd=REPO,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "env"), [
    (("run", "--http", "--port", "0"), {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_SIGNING_SECRET": "secret"}),
    (("run",), {"SLACK_BOT_TOKEN": "xoxb-1-2", "SLACK_APP_TOKEN": "xapp-1-2"}),
    (("run",), {}),
    (("shell",), {}),
], ids=["http", "socket-mode", "console", "shell"])
def test_an_unreachable_database_is_one_line_and_exit_code_1(tmp_path, args, env):
    result = _run_ftbot(tmp_path, *args, **env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    [line] = [line for line in result.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert line.startswith("error: cannot use the database postgresql://127.0.0.1:1/x") and "FTBOT_DATABASE_URL" in line

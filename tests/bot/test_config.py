"""Roles and the `ftbot run` entry points (exit codes, HTTP and Socket Mode start-up) with their configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import storage.config
from bot.app import build_client
from bot.cli import app
from bot.roles import Roles
from storage.config import Settings
from tests.fixtures.paths import REPO
from tests.fixtures.slack_api import BOT_TOKEN, SIGNING_SECRET, signed_headers, slash_command_body

FTBOT = str(Path(sys.executable).with_name("ftbot"))
SLACK_ENV = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "FTBOT_AGENTS", "FTBOT_REVIEWERS",
             "FTBOT_TRAINERS", "FTBOT_ADMINS", "FTBOT_VOTERS", "FTBOT_SLACK_API_URL", "FTBOT_DATABASE_URL")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SLACK_ENV}
    env.update(FTBOT_HOME=str(tmp_path / "home"), **extra)
    return env


def test_roles_without_configuration_allow_everyone_and_approve():
    roles = Roles(Settings())
    assert not roles.configured
    assert roles.may_capture("U1") and roles.may_review("U1") and roles.may_train("U1") and roles.may_vote("U1")
    assert roles.capture_status("U1") == "approved"


def test_roles_with_user_ids_and_groups(fake_slack):
    fake_slack.add_usergroup("S_TRAIN", ["U_T1", "U_T2"])
    settings = Settings(slack_bot_token=BOT_TOKEN, slack_api_url=fake_slack.base_url, agents=("U_A",), reviewers=("U_R",),
                        trainers=("S_TRAIN",), admins=("U_ADMIN",), voters=("U_V",))
    roles = Roles(settings, build_client(settings))
    assert roles.may_capture("U_A") and not roles.may_capture("U_CUSTOMER")
    assert roles.may_review("U_R") and roles.may_review("U_ADMIN") and not roles.may_review("U_A")
    assert roles.may_train("U_T2") and not roles.may_train("U_R")
    assert roles.may_vote("U_V") and not roles.may_vote("U_A")
    assert roles.is_team("U_T1") and not roles.is_team("U_CUSTOMER")
    assert roles.capture_status("U_A") == "pending"
    roles.may_train("U_T1")
    assert len(fake_slack.calls_to("usergroups.users.list")) == 1  # cached


def test_unreadable_user_group_grants_nothing(fake_slack):
    settings = Settings(slack_bot_token=BOT_TOKEN, slack_api_url=fake_slack.base_url, reviewers=("S_GONE",))
    assert not Roles(settings, build_client(settings)).may_review("U_ANY")


@pytest.mark.parametrize("args, env, message", [
    (["run", "--http"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "HTTP mode needs SLACK_SIGNING_SECRET"),
    (["run"], {"SLACK_BOT_TOKEN": "xoxb-1"}, "Socket Mode needs SLACK_APP_TOKEN"),
    (["run"], {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xoxb-wrong"}, "must be an app-level token"),
    (["run"], {"FTBOT_CHANNEL_PROMPTS": "nope"}, "FTBOT_CHANNEL_PROMPTS is not valid JSON"),
])
def test_missing_settings_exit_2_with_a_clear_message(tmp_path, args, env, message):
    result = subprocess.run([FTBOT, *args], env=_env(tmp_path, **env), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "xoxb-1" not in result.stderr + result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_http_serves_signed_requests(tmp_path, fake_slack):
    port = _free_port()
    env = _env(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,
               FTBOT_SLACK_API_URL=fake_slack.base_url)
    process = subprocess.Popen([FTBOT, "run", "--http", "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "ftbot run --http did not start"
                time.sleep(0.2)
        body = slash_command_body("help", response_url=fake_slack.response_url())
        request = urllib.request.Request(f"http://127.0.0.1:{port}/slack/events", data=body.encode(),
                                         headers=signed_headers(body), method="POST")
        assert urllib.request.urlopen(request, timeout=10).status == 200
        fake_slack.wait_for("response_url")
        forged = urllib.request.Request(f"http://127.0.0.1:{port}/slack/events", data=body.encode(),
                                        headers=signed_headers(body, secret="forged"), method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(forged, timeout=10)
        assert error.value.code == 401
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert BOT_TOKEN not in output and SIGNING_SECRET not in output


def test_run_with_app_token_starts_socket_mode(tmp_path, fake_slack):
    env = _env(tmp_path, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN="xapp-1-test-not-real",
               FTBOT_SLACK_API_URL=fake_slack.base_url)
    process = subprocess.Popen([FTBOT, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        fake_slack.wait_for("apps.connections.open", timeout=60)  # Socket Mode asked Slack for its WebSocket URL
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "xapp-1-test-not-real" not in output and BOT_TOKEN not in output


def test_bot_start_and_slash_path_do_not_import_training_libraries(tmp_path):
    code = (
        "import sys, tempfile\n"
        "from storage.config import Settings\nfrom bot.app import build_app\nfrom storage.db import Database\n"
        "from bot.console.shell import Console\nimport io\n"
        "db = Database.open('sqlite:///' + tempfile.mkdtemp() + '/x.db')\n"
        "c = Console(Settings(), db, out=io.StringIO())\n"
        "c.handle('/ft help'); c.handle('/ft list'); c.close()\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'bitsandbytes') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=_env(tmp_path), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --- `ftbot price` takes FTBOT_OPENAI_MODEL (the setting itself: tests/storage/test_config.py) -----------------------


@pytest.fixture
def fresh_model_warning(monkeypatch):
    """The deprecation warning is once per process: let each test see it."""
    monkeypatch.setattr(storage.config, "_warned_deprecated", False)


def test_ftbot_price_defaults_to_the_openai_model_setting(tmp_path, monkeypatch, fresh_model_warning):
    data = tmp_path / "ten.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
        for i in range(10)
    ))
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FTBOT_BASE_MODEL", raising=False)
    monkeypatch.setenv("FTBOT_OPENAI_MODEL", "gpt-4.1-mini-2025-04-14")
    result = CliRunner().invoke(app, ["price", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == "gpt-4.1-mini-2025-04-14"

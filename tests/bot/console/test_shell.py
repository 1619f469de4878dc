"""The local console (`ftbot shell` / `ftbot run` without credentials), driven through the CLI with a script on stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.blocks import upload_file
from bot.console.render import file_kind, human_size, is_binary
from bot.console.shell import CHANNEL, Console
from storage.config import Settings
from storage.db import Database
from storage.examples import list_examples
from trainers.plots import loss_curve_png

FTBOT = str(Path(sys.executable).with_name("ftbot"))

NEWCOMER_SCRIPT = """\
My invoice 1042 shows the wrong VAT number. Please email me at jo@example.com
:thread 1
:as agent
Sorry about that! I corrected the VAT number and emailed you a new copy of invoice 1042.
:add 2
:click 1
:set 3 Sorry about that! I corrected the VAT number and sent a new copy of invoice 1042.
:set 4 billing, vat
:submit
:as lead
/ft review
:click 4
/ft list
/ft validate
/ft price gpt-4o-mini-2024-07-18
/ft nonsense
:quit
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "FTBOT_"))}
    env["FTBOT_HOME"] = str(tmp_path / "home")
    return env


def _run(args: list[str], script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FTBOT, *args], input=script, env=_env(tmp_path), capture_output=True, text=True, timeout=120)


def test_newcomer_captures_reviews_and_gets_reports_through_ftbot_run(tmp_path):
    result = _run(["run"], NEWCOMER_SCRIPT, tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    assert "To connect a real workspace" in result.stderr  # the hint, when stdout is not a terminal
    # the capture form, filled from the thread, with the PII redacted by the button
    assert "<field 2> 1. Customer (user):" in out
    assert "Please email me at [EMAIL]" in out and "Personal data redacted" in out
    # roles in the console: the agent's capture waits for the lead's review
    assert "Captured example *#1* by @agent (3 turns) — *pending*" in out
    assert "*1 example(s) waiting for review*" in out
    assert "Approve" in out and "Nothing waiting for review" in out
    assert "1 approved" in out
    assert "== Dataset check ==" in out and "[file] ftbot validate report" in out
    assert "== Training price estimate ==" in out and "[file] ftbot price report" in out
    assert "I don't know `/ft nonsense`" in out
    assert "Traceback" not in out + result.stderr
    # the example is in the same database the real bot uses
    db = Database.open(f"sqlite:///{tmp_path / 'home' / 'ftbot.sqlite3'}")
    try:
        [example] = list_examples(db)
        assert example.status == "approved" and example.tags == ["billing", "vat"]
        assert example.messages[-1]["content"].endswith("sent a new copy of invoice 1042.")
    finally:
        db.close()


def test_shell_reports_form_errors_and_bad_input(tmp_path):
    script = "Hello, my order never arrived and it has been a week\n:thread 1\n:as agent\nOn it!\n:add 2\n" \
             ":set 2 \\n\n:submit\n:click 99\n:add 77\n:as robot\n:frobnicate\n:cancel\n:quit\n"
    result = _run(["shell"], script, tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "The form has errors:" in out and "field 2:" in out
    assert "there is no button 99" in out and "there is no message #77" in out
    assert "use :as customer, :as agent or :as lead" in out and "unknown command :frobnicate" in out


def test_reactions_and_mentions_reach_the_app_as_events(sqlite_db):
    console = Console(Settings(), sqlite_db, out=io.StringIO())
    received = []

    # A middleware sees every request; a second reaction_added listener would never run (Bolt runs the first match).
    @console.app.middleware
    def record_reactions(body, next):
        event = body.get("event") or {}
        if event.get("type") == "reaction_added":
            received.append(event)
        next()

    try:
        console.handle("Is there a student discount?")
        console.handle(":thread 1")
        console.handle(":as agent")
        console.handle("Yes, 50% with a valid student email.")
        console.handle("@ftbot add")
        console.handle(":react 2 +1")
        output = console.out.getvalue()
        assert received and received[0]["reaction"] == "+1" and received[0]["item"]["ts"] == console.by_number[2]
        assert received[0]["user"] == "U0AGENT"
        # the mention offered the capture form for the agent's reply
        assert "Capture this reply as a training example?" in output and "[1: Open capture form]" in output
        console.handle(":click 1")
        assert "2. Agent reply (assistant):" in console.out.getvalue()
    finally:
        console.close()


@pytest.mark.parametrize("command", ["shell"])
def test_console_help_lists_commands(tmp_path, command):
    result = _run([command], ":help\n:quit\n", tmp_path)
    assert ":react N emoji" in result.stdout and ":add N" in result.stdout


def test_binary_uploads_are_saved_and_named_text_uploads_previewed(sqlite_db, tmp_path):
    png = loss_curve_png([{"step": s, "train_loss": 1.0 / s} for s in range(1, 30)])
    console = Console(Settings(), sqlite_db, out=io.StringIO(), files_dir=tmp_path / "console-files")
    try:
        # What the bot does for a loss plot and a report: files_upload_v2 through the real client to the fake Slack.
        client = console.app.ftbot.client
        upload_file(client, CHANNEL, content=png, filename="loss job#1.png", title="Job #1 loss")
        upload_file(client, CHANNEL, content="line one\nline two\nline three\nline four\n", filename="report.txt",
                    title="ftbot validate report")
        output = console.out.getvalue()
    finally:
        console.close()
    [saved] = list((tmp_path / "console-files").iterdir())
    assert saved.name.endswith("-loss_job_1.png") and saved.read_bytes() == png
    assert f"[file] loss job#1.png ({round(len(png) / 1024)} KB, PNG image) saved to {saved}" in output
    assert "PNG\r" not in output and "IHDR" not in output and "\ufffd" not in output
    assert "[file] ftbot validate report (report.txt, 39 bytes)\n    | line one\n    | line two\n    | line three\n" in output
    assert "line four" not in output


def test_file_kinds_and_binary_detection():
    assert not is_binary("Größe: 3 × 4 — ok\n".encode())
    assert not is_binary(("é" * 5000).encode())  # a character cut at the 8 KiB boundary is still text
    assert is_binary(b"\x89PNG\r\n\x1a\n\0\0") and is_binary(b"\xff\xfe\xfa text")
    assert file_kind("x.png", b"\x89PNG\r\n\x1a\n") == "PNG image" and file_kind("a.pdf", b"%PDF-1.7") == "PDF document"
    assert file_kind("data.bin", b"\0\1") == "application/octet-stream"
    assert (human_size(900), human_size(52_000), human_size(3 * 1024 * 1024)) == ("900 bytes", "51 KB", "3.0 MB")

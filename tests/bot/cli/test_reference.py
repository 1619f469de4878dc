"""docs/cli.md is every command's real --help output: a changed option or help text without regenerating fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from bot.cli import app
from bot.cli.reference import HELP_ENVIRONMENT, REFERENCE_FILE, command_paths, help_text, render
from tests.fixtures.paths import REPO


def test_cli_reference_matches_every_commands_help():
    assert REFERENCE_FILE.read_text() == render(), "docs/cli.md is out of date: run `python -m bot.cli.reference`"


def test_reference_lists_nested_commands():
    paths = command_paths(typer.main.get_group(app))
    assert ("validate",) in paths and ("eval", "add") in paths and ("db", "info") in paths


def test_reference_text_is_what_the_installed_command_prints():
    # The reference renders through CliRunner; the console script a user runs must print the same text.
    env = {**os.environ, **HELP_ENVIRONMENT}
    ftbot = Path(sys.executable).with_name("ftbot")
    printed = subprocess.run([str(ftbot), "price", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    as_printed = "\n".join(line.rstrip() for line in printed.stdout.strip("\n").splitlines())
    assert as_printed == help_text(("price",))

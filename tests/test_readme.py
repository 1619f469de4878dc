"""The README's first two commands are the ones that work: CI runs exactly the second one."""

from __future__ import annotations

import re

from tests.fixtures.paths import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", text)[:2]


def test_ci_runs_exactly_the_readme_test_command():
    _, test_command = readme_commands()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [test_command]


def test_the_test_command_lints_type_checks_and_tests():
    _, test_command = readme_commands()
    assert test_command.endswith(".venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest")


def test_the_run_command_starts_the_local_console():
    run_command, _ = readme_commands()
    assert run_command.endswith(".venv/bin/ftbot run") and "torch==2.13.0" in run_command

"""Fixtures shared by the Slack training tests: bots ("processes") on one database, with fast relays."""

from __future__ import annotations

import pytest

from bot.scheduler import stop_scheduler
from tests.fixtures.slack_api import SlackHarness


@pytest.fixture
def training_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTBOT_TRAINING_POLL_SECONDS", "0.2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def harnesses(sqlite_db, fake_slack, training_env):
    """Builds bots on the test database; stops their schedulers and thread pools at the end."""
    made: list[SlackHarness] = []

    def make(**settings) -> SlackHarness:
        harness = SlackHarness.create(sqlite_db, fake_slack, **settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        stop_scheduler(harness.bot)
        harness.close()

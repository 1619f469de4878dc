"""The Slack harness of the evaluation tests: the real Bolt app on the fake Slack Web API and the fake OpenAI API."""

from __future__ import annotations

import pytest

from tests.bot.evaluation.helpers import answer_by_model, stop_harness_scheduler
from tests.fixtures.slack_api import SlackHarness


@pytest.fixture
def harness(sqlite_db, fake_slack, openai_api):
    openai_api.responder = answer_by_model
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0)
    try:
        yield h
    finally:
        stop_harness_scheduler(h)
        h.close()


@pytest.fixture
def trainer_harness(sqlite_db, fake_slack, openai_api):
    openai_api.responder = answer_by_model
    h = SlackHarness.create(sqlite_db, fake_slack, eval_post_interval=0.0, trainers=("U_AGENT",))
    try:
        yield h
    finally:
        stop_harness_scheduler(h)
        h.close()

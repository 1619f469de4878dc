"""Whole-number /ft arguments out of range or not numbers: a usage line naming the argument and its range, never a
traceback, an OverflowError or a database error (stored ids are 32-bit integers in PostgreSQL)."""

from __future__ import annotations

import logging

import pytest

from bot.commands import int_arg
from storage.errors import FtbotError
from tests.fixtures.slack_api import SlackHarness

HUGE = "99999999999999999999999"


@pytest.mark.parametrize(("text", "expected"), [
    (f"cancel {HUGE}", "job id must be a whole number from 1 to 2,147,483,647"),
    ("cancel ²", "job id must be a whole number from 1 to"),
    (f"eval --n {HUGE}", "--n (the number of questions) must be a whole number from 1 to 200"),
    (f"train --epochs {HUGE}", "--epochs must be a whole number from 1 to 50"),
    ("train --epochs 0", "--epochs must be a whole number from 1 to 50"),
    (f"review {HUGE}", "page must be a whole number from 1 to"),
    (f"results {HUGE}", "round number must be a whole number from 1 to"),
    (f"judge #{HUGE}", "round number must be a whole number from 1 to"),
    (f"eval close {HUGE}", "round number must be a whole number from 1 to"),
    ("eval cancel " + "9" * 5000, "round number must be a whole number from 1 to"),
])
def test_out_of_range_integer_argument_is_a_usage_error(slack_bot: SlackHarness, caplog: pytest.LogCaptureFixture,
                                                        text: str, expected: str):
    h = slack_bot
    h.command(text)
    h.wait()
    [reply] = h.fake.responses
    assert reply["response_type"] == "ephemeral"
    assert expected in reply["text"] and "unexpectedly" not in reply["text"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_int_arg_accepts_what_a_user_types():
    assert int_arg("12", "the job id") == 12
    assert int_arg("#12", "the job id") == 12
    with pytest.raises(FtbotError, match=r"the page must be a whole number from 1 to 9, not 'x'. Usage: `/ft review \[page\]`"):
        int_arg("x", "the page", high=9, usage="/ft review [page]")

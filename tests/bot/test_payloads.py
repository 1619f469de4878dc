"""Buttons and modals whose values the bot did not write (an old message, a hand-made request): a private
"out of date" answer through the real Bolt app, never a 404/500 or a traceback in the log."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bot import capture, review, training
from bot.evaluation import judge, quotes
from bot.payloads import STALE_ACTION_MESSAGE, button_int, button_json, view_metadata
from storage.errors import StaleAction
from tests.fixtures.slack_api import SlackHarness, block_actions, interactive_body, view_submission

TOO_BIG = "99999999999999999999999"

STALE_BUTTONS = [
    (quotes.POST_ACTION, "abc"),
    (quotes.POST_ACTION, TOO_BIG),
    (quotes.POST_ACTION, "-3"),
    (quotes.CANCEL_ACTION, "1.5"),
    (judge.JUDGE_ACTION, "not json"),
    (judge.JUDGE_ACTION, '{"round": 1}'),
    (judge.JUDGE_ACTION, "[1, 2]"),
    (judge.JUDGE_CANCEL_ACTION, '{"round": "x", "model": "m", "quote": "q"}'),
    (review.APPROVE_ACTION, "x"),
    (review.REJECT_ACTION, f"{TOO_BIG}:1"),
    (review.APPROVE_ACTION, "1:two"),
    (f"{review.PAGE_ACTION}_next", "abc"),
    (training.START_ACTION, "abc"),
    (training.START_PII_ACTION, TOO_BIG),
    (training.DISCARD_ACTION, ""),
    (capture.OPEN_ACTION, "not json"),
    (capture.OPEN_ACTION, '{"channel": "C_SUPPORT"}'),
]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


@pytest.mark.parametrize(("action_id", "value"), STALE_BUTTONS)
def test_button_with_a_value_the_bot_did_not_write_is_answered_privately(slack_bot: SlackHarness, action_id: str, value: str,
                                                                         caplog: pytest.LogCaptureFixture):
    h = slack_bot
    response = h.interact(block_actions(action_id, value, response_url=h.fake.response_url()))
    h.wait()
    assert response.status == 200
    [reply] = h.fake.responses
    assert reply["response_type"] == "ephemeral" and reply.get("replace_original") is False
    assert reply["text"] == STALE_ACTION_MESSAGE
    assert _errors(caplog) == []


def test_stale_button_over_http_is_acked(slack_bot: SlackHarness, caplog: pytest.LogCaptureFixture):
    h = slack_bot
    status, _ = h.http(interactive_body(block_actions(quotes.POST_ACTION, "abc", response_url=h.fake.response_url())))
    h.wait()
    assert status == 200
    assert [r["text"] for r in h.fake.responses] == [STALE_ACTION_MESSAGE]
    assert _errors(caplog) == []


def test_button_for_a_round_that_does_not_exist_says_so_without_a_traceback(slack_bot: SlackHarness,
                                                                            caplog: pytest.LogCaptureFixture):
    h = slack_bot
    h.interact(block_actions(quotes.POST_ACTION, "424242", response_url=h.fake.response_url()))
    h.wait()
    [reply] = h.fake.responses
    assert reply["response_type"] == "ephemeral" and "424242 does not exist" in reply["text"]
    assert _errors(caplog) == []


@pytest.mark.parametrize("metadata", ["not json", "[1]", '{"draft": 5}', '{"other": "x"}'])
def test_capture_form_with_metadata_the_bot_did_not_write_shows_an_error_view(slack_bot: SlackHarness, metadata: str,
                                                                              caplog: pytest.LogCaptureFixture):
    h = slack_bot
    view = {"id": "V_STALE", "type": "modal", "callback_id": capture.VIEW_ID, "private_metadata": metadata, "blocks": [],
            "hash": "h1"}
    response = h.interact(view_submission(view, {}))
    assert response.status == 200
    answer = json.loads(response.body)
    assert answer["response_action"] == "update"
    assert STALE_ACTION_MESSAGE in json.dumps(answer["view"])
    # the Redact button in the same form
    h.fake.views["V_STALE"] = view
    assert h.interact(block_actions(capture.REDACT_ACTION, view=view)).status == 200
    h.wait()
    [update] = h.fake.calls_to("views.update")
    assert STALE_ACTION_MESSAGE in json.dumps(update.args)
    assert _errors(caplog) == []


def test_parsers_accept_what_the_bot_writes():
    assert button_int({"value": "42"}) == 42
    assert button_json({"value": '{"round": 3, "model": "m"}'}, round=int, model=str) == {"round": 3, "model": "m"}
    assert view_metadata({"private_metadata": '{"draft": "k"}'}, draft=str) == {"draft": "k"}
    for bad in ({"value": "0"}, {"value": " 7"}, {"value": "٣"}, {}, {"value": str(2**31)}):
        with pytest.raises(StaleAction):
            button_int(bad)


def test_a_button_acknowledged_then_refused_is_answered_200_however_late_the_request_thread_looks(
        slack_bot: SlackHarness, monkeypatch: pytest.MonkeyPatch):
    # Bolt's request thread polls for the listener's ack every 10 ms; under load it may look only after the listener
    # acknowledged *and* raised (a stale button), when Bolt has already reset the acknowledgement. Make it look late.
    import slack_bolt.listener.thread_runner as runner

    class LateClock:
        time = staticmethod(time.time)

        @staticmethod
        def sleep(seconds: float) -> None:
            time.sleep(max(seconds, 0.3))

    monkeypatch.setattr(runner, "time", LateClock)
    h = slack_bot
    submit = h.executor.submit

    def listener_starts_a_moment_later(fn, /, *args, **kwargs):
        return submit(lambda: (time.sleep(0.05), fn(*args, **kwargs))[1])

    monkeypatch.setattr(h.executor, "submit", listener_starts_a_moment_later)
    started = time.monotonic()
    response = h.interact(block_actions(quotes.POST_ACTION, "abc", response_url=h.fake.response_url()))
    h.wait()
    assert response.status == 200 and time.monotonic() - started < 2.5
    assert h.fake.responses[-1]["text"] == STALE_ACTION_MESSAGE

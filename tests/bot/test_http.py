"""The HTTP transport: uvicorn + Starlette at /slack/events with Bolt's signature check, and event deduplication."""

from __future__ import annotations

import json
import threading
import time

from storage.examples import list_examples
from tests.fixtures.slack_api import (
    SlackHarness,
    event_callback,
    form_values,
    interactive_body,
    message_action,
    signed_headers,
    slash_command_body,
    view_submission,
)


def test_signed_slash_command_over_http_acks_and_answers_ephemerally(slack_bot: SlackHarness):
    h = slack_bot
    status, body = h.http(slash_command_body("help", response_url=h.fake.response_url()))
    h.wait()
    assert status == 200 and body == ""
    reply = h.fake.responses[-1]
    assert reply["response_type"] == "ephemeral"
    assert "/ft validate" in reply["text"] and reply["blocks"]


def test_forged_signature_is_rejected_with_401(slack_bot: SlackHarness):
    h = slack_bot
    body = slash_command_body("help", response_url=h.fake.response_url())
    forged = signed_headers(body, secret="not-the-signing-secret")
    status, _ = h.http(body, headers=forged)
    assert status == 401
    # a valid signature over a different body is forged too
    status, _ = h.http(body.replace("help", "export"), headers=signed_headers(body))
    assert status == 401
    h.wait()
    assert h.fake.responses == [] and "response_url" not in h.fake.methods()


def test_stale_timestamp_is_rejected_with_401(slack_bot: SlackHarness):
    h = slack_bot
    body = slash_command_body("help", response_url=h.fake.response_url())
    status, _ = h.http(body, timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    status, _ = h.http(body, headers={"Content-Type": "application/x-www-form-urlencoded"})  # unsigned
    assert status == 401


def test_dispatch_path_checks_signatures_too(slack_bot: SlackHarness):
    h = slack_bot
    response = h.dispatch(slash_command_body("help"), secret="wrong")
    assert response.status == 401


def test_url_verification_challenge_over_http(slack_bot: SlackHarness):
    h = slack_bot
    body = json.dumps({"token": "x", "challenge": "ch4llenge", "type": "url_verification"})
    status, text = h.http(body, content_type="application/json")
    assert status == 200 and "ch4llenge" in text


def test_event_retries_over_http_have_one_effect(slack_bot: SlackHarness):
    """Slack redelivers with X-Slack-Retry-Num when the first 200 was late: the home view is published once."""
    h = slack_bot
    body = json.dumps(event_callback({"type": "app_home_opened", "user": "U_AGENT", "channel": "D1", "tab": "home",
                                      "event_ts": f"{time.time():.6f}"}, event_id="EvHome1"))
    statuses = [h.http(body, content_type="application/json", retry_num=n)[0] for n in (None, 1, 2, 3)]
    h.wait()
    assert statuses == [200, 200, 200, 200]
    assert len(h.fake.calls_to("views.publish")) == 1
    # a retry is processed when it is the first delivery that reached us
    other = json.dumps(event_callback({"type": "app_home_opened", "user": "U_LEAD", "channel": "D2", "tab": "home",
                                       "event_ts": f"{time.time():.6f}"}, event_id="EvHome2"))
    assert h.http(other, content_type="application/json", retry_num=2)[0] == 200
    h.wait()
    assert len(h.fake.calls_to("views.publish")) == 2


def test_failed_event_is_released_so_a_retry_can_succeed(slack_bot: SlackHarness):
    h = slack_bot
    event = {"type": "app_home_opened", "user": "U_AGENT", "channel": "D1", "tab": "home", "event_ts": "1.0"}
    h.fake.fail_next("views.publish", status=500, error="internal_error", retry_after=None)
    h.event(event, event_id="EvFlaky")
    h.wait()
    h.event(event, event_id="EvFlaky", retry_num=1)
    h.wait()
    publishes = h.fake.calls_to("views.publish")
    assert len(publishes) == 2  # the failed attempt and the successful retry


def test_shortcut_flow_over_http(slack_bot: SlackHarness):
    """The capture flow end to end through uvicorn: shortcut → modal → submission stored."""
    h = slack_bot
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", "How do I reset my password?")
    reply = h.fake.post_message("C_SUPPORT", "U_AGENT", "Click 'Forgot password' on the sign-in page and follow the email.",
                                thread_ts=parent["ts"])
    status, _ = h.http(interactive_body(message_action(reply, trigger_id=h.fake.new_trigger_id(),
                                                       response_url=h.fake.response_url())))
    h.wait()
    assert status == 200
    view = list(h.fake.views.values())[-1]
    values = form_values(view)
    status, _ = h.http(interactive_body(view_submission(view, values)))
    h.wait()
    assert status == 200
    [example] = list_examples(h.db)
    assert example.messages[1] == {"role": "user", "content": "How do I reset my password?"}


def test_concurrent_duplicate_deliveries_act_once_on_both_databases(db, fake_slack):
    """Four deliveries of one event racing in parallel threads (SQLite and PostgreSQL): one App Home publish."""
    h = SlackHarness.create(db, fake_slack)
    try:
        body = json.dumps(event_callback({"type": "app_home_opened", "user": "U_AGENT", "channel": "D1", "tab": "home",
                                          "event_ts": "1.0"}, event_id="EvRace"))
        h.start_http()
        results = []
        threads = [threading.Thread(target=lambda n=n: results.append(h.http(body, content_type="application/json",
                                                                              retry_num=n)[0])) for n in (None, 1, 2, 3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        h.wait()
        assert results == [200] * 4
        assert len(fake_slack.calls_to("views.publish")) == 1
    finally:
        h.close()

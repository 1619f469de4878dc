"""The HTTP transport: uvicorn + Starlette at /slack/events with Bolt's signature check, and event deduplication."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse

import pytest

from bot.http import MAX_BODY_BYTES
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


# ---- bad input at the door: 401/413, never a 500, a parse of an unverified body, or the body in the log ----------------
def _raw_post(url: str, body: bytes, headers: dict[str, str], *, chunked: bool = False) -> int:
    """POST with http.client; the server may answer (413) before it has read the body, so a write error is not fatal."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        try:
            if chunked:
                connection.request("POST", parts.path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                                   headers=headers, encode_chunked=True)
            else:
                connection.request("POST", parts.path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize("timestamp", ["abc", "1795985011.5", "", "-1", "0x6a1b2c3d"])
def test_malformed_timestamp_is_rejected_with_401(slack_bot: SlackHarness, timestamp: str):
    h = slack_bot
    body = slash_command_body("help", response_url=h.fake.response_url())
    headers = {**signed_headers(body), "X-Slack-Request-Timestamp": timestamp}
    status, _ = h.http(body, headers=headers)
    h.wait()
    assert status == 401
    assert h.fake.responses == []


def test_unsigned_body_is_rejected_before_parsing_and_never_logged(slack_bot: SlackHarness, caplog: pytest.LogCaptureFixture):
    h = slack_bot
    caplog.set_level(logging.DEBUG)
    secret_text = "customer-card-4111111111111111"
    not_json = '{"type": "event_callback", "broken": ' + secret_text * 2000
    status, _ = h.http(not_json, headers={"Content-Type": "application/json"})
    assert status == 401
    forged = signed_headers(not_json, secret="not-the-signing-secret", content_type="application/json")
    status, _ = h.http(not_json, headers=forged)
    assert status == 401
    assert secret_text not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_body_over_the_limit_gets_413_without_being_read(slack_bot: SlackHarness, caplog: pytest.LogCaptureFixture):
    h = slack_bot
    caplog.set_level(logging.DEBUG)
    url = h.start_http() + "/slack/events"
    huge = b"x" * (MAX_BODY_BYTES + 1)
    assert _raw_post(url, huge, {"Content-Type": "application/json"}) == 413
    assert _raw_post(url, huge, signed_headers(huge.decode())) == 413
    # without a Content-Length (chunked), the server stops reading at the limit
    assert _raw_post(url, huge, {"Content-Type": "application/json"}, chunked=True) == 413
    assert "xxxxxxxxxx" not in caplog.text
    # a body just under the limit is an ordinary (here unsigned) request
    assert _raw_post(url, b"x" * MAX_BODY_BYTES, {"Content-Type": "application/json"}) == 401


def test_signed_but_unparseable_body_is_acked_without_a_traceback(slack_bot: SlackHarness, caplog: pytest.LogCaptureFixture):
    h = slack_bot
    status, _ = h.http('{"type": "event_callback", "event": ', content_type="application/json")
    assert status == 200
    status, _ = h.http(urllib.parse.urlencode({"payload": "{not json"}))
    assert status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

"""/ft subcommands against the real app and the fake Slack: help, reports with file uploads, export, escaping, 429s."""

from __future__ import annotations

import json
import time

import pytest

from bot.blocks import escape, fit_blocks
from storage.examples import save_capture
from tests.fixtures.slack_api import SlackHarness, allow_subcommand, form_values, message_action, view_submission


def _seed(db, n: int, *, status: str = "approved", extra: str = "") -> None:
    for i in range(n):
        record = {"messages": [
            {"role": "system", "content": "You are a helpful support agent."},
            {"role": "user", "content": f"Question number {i}: how do I export my data?{extra}"},
            {"role": "assistant", "content": f"Go to Settings, then Export, and pick CSV. Reply {i} with the steps in detail."},
        ]}
        save_capture(db, record=record, source_key=f"slack:C_SUPPORT:17000000{i:02d}.000100", channel="C_SUPPORT",
                     ts=f"17000000{i:02d}.000100", thread_ts=None, permalink=None, captured_by="U_AGENT", status=status,
                     approved_by="U_LEAD" if status == "approved" else None)


@pytest.mark.parametrize("text", ["", "help", "  HELP  "])
def test_help_and_bare_ft_list_every_subcommand(slack_bot: SlackHarness, text: str):
    h = slack_bot
    response = h.command(text)
    h.wait()
    assert response.status == 200 and response.body == ""  # acked at once, answer via response_url
    reply = h.fake.responses[-1]
    assert reply["response_type"] == "ephemeral"
    listed = json.dumps(reply["blocks"])
    for name in ("help", "add", "list", "review", "validate", "price", "export", "stats"):
        assert f"/ft {name}" in listed


def test_unknown_subcommand_gets_help(slack_bot: SlackHarness):
    h = slack_bot
    h.command("frobnicate <!channel>")
    h.wait()
    reply = h.fake.responses[-1]
    assert "I don't know `/ft frobnicate`" in reply["blocks"][0]["text"]["text"]
    assert "<!channel>" not in json.dumps(reply)


def test_router_accepts_subcommands_from_other_features(slack_bot: SlackHarness, monkeypatch):
    h = slack_bot
    allow_subcommand(monkeypatch, "ping")  # a subcommand with no access rule is refused
    seen = []
    h.bot.router.add("ping", usage="/ft ping [x]", summary="Answer pong", handler=lambda ctx: (seen.append(ctx.args),
                                                                                                ctx.respond("pong")))
    h.command('ping "two words" three')
    h.wait()
    assert seen == [["two words", "three"]]
    assert h.fake.responses[-1]["text"] == "pong"
    h.command("help")
    h.wait()
    assert "/ft ping [x]" in json.dumps(h.fake.responses[-1]["blocks"])


def test_handler_crash_is_reported_without_traceback(slack_bot: SlackHarness, monkeypatch):
    h = slack_bot
    allow_subcommand(monkeypatch, "boom")  # a subcommand with no access rule is refused

    def boom(ctx):
        raise RuntimeError("secret internals")

    h.bot.router.add("boom", usage="/ft boom", summary="Fails", handler=boom)
    h.command("boom")
    h.wait()
    text = h.fake.responses[-1]["text"]
    assert "failed unexpectedly" in text and "secret internals" not in text


def test_price_posts_summary_and_uploads_full_report(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 12)
    h.command("price gpt-4o-mini-2024-07-18")
    h.wait()
    summary = h.fake.responses[-1]
    assert summary["response_type"] == "ephemeral"
    fields = json.dumps(summary["blocks"])
    assert "12 valid of 12" in fields and "Estimated cost" in fields and "gpt-4o-mini-2024-07-18" in fields
    # files_upload_v2: all three steps
    methods = h.fake.methods()
    assert methods.index("files.getUploadURLExternal") < methods.index("upload") < methods.index("files.completeUploadExternal")
    complete = h.fake.calls_to("files.completeUploadExternal")[0].args
    # reports may hold customer data: they go to the requester's DM, not the shared channel
    assert complete["channel_id"].startswith("D") and h.fake.calls_to("conversations.open")[0].args["users"] == "U_AGENT"
    [uploaded] = [f for f in h.fake.files.values() if f["completed"]]
    report = json.loads(uploaded["content"])
    assert report["examples"] == 12 and report["valid_examples"] == 12 and report["model"] == "gpt-4o-mini-2024-07-18"
    assert report["estimated_cost_usd"] > 0


def test_validate_reports_errors_with_too_few_examples(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 3)
    h.command("validate")
    h.wait()
    summary = json.dumps(h.fake.responses[-1]["blocks"])
    assert "Errors (1)" in summary and "at least 10" in summary
    assert len(h.fake.calls_to("files.completeUploadExternal")) == 1


def test_validate_names_database_examples_not_file_lines(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 10, extra=" Call me on +1 415 555 0134.")
    h.command("validate")
    h.wait()
    [uploaded] = [f for f in h.fake.files.values() if f["completed"]]
    warnings = [w for w in json.loads(uploaded["content"])["warnings"] if w["code"] == "pii"]
    assert len(warnings) == 10
    assert all(w["message"].startswith(f"example {w['line']}: ") for w in warnings)
    assert "example " in json.dumps(h.fake.responses[-1]["blocks"]) and "line " not in json.dumps(h.fake.responses[-1]["blocks"])


def test_validate_without_approved_examples_says_what_to_do(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 2, status="pending")
    h.command("validate")
    h.wait()
    assert "no approved examples" in h.fake.responses[-1]["text"]
    assert h.fake.calls_to("files.getUploadURLExternal") == []


def test_export_uploads_jsonl_of_approved_examples(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 4)
    _seed_pending = save_capture(h.db, record={"messages": [{"role": "user", "content": "pending question here"},
                                                            {"role": "assistant", "content": "pending answer here ok"}]},
                                 source_key="slack:C_SUPPORT:1.2", channel="C_SUPPORT", ts="1.2", thread_ts=None,
                                 permalink=None, captured_by="U_AGENT", status="pending")
    h.command("export")
    h.wait()
    [uploaded] = [f for f in h.fake.files.values() if f["completed"]]
    assert uploaded["name"].endswith(".jsonl")
    lines = uploaded["content"].decode().splitlines()
    assert len(lines) == 4
    assert all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in lines)
    assert "Exported 4 approved examples" in h.fake.responses[-1]["text"]


def test_upload_refused_by_slack_is_explained(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 2)
    h.fake.fail_next("files.completeUploadExternal", status=200, error="not_in_channel", retry_after=None)
    h.command("export")
    h.wait()
    assert "could not send you" in h.fake.responses[-1]["text"] and "not_in_channel" in h.fake.responses[-1]["text"]


def test_list_and_stats(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db, 3)
    h.command("list")
    h.wait()
    listed = h.fake.responses[-1]
    assert "3 approved" in listed["text"] and "#3" in json.dumps(listed["blocks"])
    h.command("stats")
    h.wait()
    stats = json.dumps(h.fake.responses[-1]["blocks"])
    assert "<@U_AGENT> (3)" in stats


def test_prompt_set_is_used_by_the_next_capture(slack_bot: SlackHarness):
    h = slack_bot
    h.command("prompt set You answer billing questions for ACME & friends.")
    h.wait()
    h.command("prompt show")
    h.wait()
    assert "ACME &amp; friends" in h.fake.responses[-1]["text"]
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", "Why was I charged twice this month?")
    reply = h.fake.post_message("C_SUPPORT", "U_AGENT", "One charge is a pending authorisation; it drops off in 3 days.",
                                thread_ts=parent["ts"])
    h.interact(message_action(reply, trigger_id=h.fake.new_trigger_id(), response_url=h.fake.response_url()))
    h.wait()
    view = list(h.fake.views.values())[-1]
    system = next(b for b in view["blocks"] if b.get("block_id", "").startswith("turn_0"))
    assert system["element"]["initial_value"] == "You answer billing questions for ACME & friends."


def test_hostile_text_is_escaped_everywhere(slack_bot: SlackHarness):
    """A customer writing <!channel> or <@U…> must not ping anyone through ftbot's messages."""
    h = slack_bot
    hostile = "Hey <!channel> & <@U_LEAD> look: <https://evil.example|click me> </script>"
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", hostile.replace("&", "&amp;"))
    reply = h.fake.post_message("C_SUPPORT", "U_AGENT", "We never ask for passwords; please ignore that link. <!here>",
                                thread_ts=parent["ts"])
    h.interact(message_action(reply, trigger_id=h.fake.new_trigger_id(), response_url=h.fake.response_url()))
    h.wait()
    view = list(h.fake.views.values())[-1]
    values = form_values(view)
    # the user then types markup into the reply field too
    turn2 = next(k for k in values if k.startswith("turn_2"))
    values[turn2]["text"]["value"] = "Ignore it <!everyone> <@U_LEAD> & thanks"
    h.interact(view_submission(view, values))
    h.wait()
    h.command("list")
    h.command("review")
    h.wait()
    posted = [c.args for c in h.fake.calls if c.method in ("chat.postMessage", "chat.postEphemeral", "chat.update",
                                                            "response_url")]
    assert posted
    for args in posted:
        # The blocks and the notification fallback text alike.
        for part in [*(args.get("blocks") or []), args.get("text") or ""]:
            text = json.dumps(part)
            for forbidden in ("<!channel>", "<!everyone>", "<!here>", "<@U_LEAD>", "<https://evil"):
                assert forbidden not in text, (forbidden, part)
    confirmation = json.dumps(h.fake.calls_to("chat.postEphemeral")[-1].args["blocks"])
    assert "&lt;!everyone&gt;" in confirmation and "&amp; thanks" in confirmation


def test_escape_and_block_limits():
    assert escape("a & b <c> <!here>") == "a &amp; b &lt;c&gt; &lt;!here&gt;"
    many = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}} for _ in range(80)]
    fitted = fit_blocks(many)
    assert len(fitted) <= 50 and len(json.dumps(fitted)) < 12000
    assert "Truncated" in fitted[-1]["elements"][0]["text"]


def test_rate_limited_call_is_retried_after_retry_after(slack_bot: SlackHarness):
    h = slack_bot
    h.fake.fail_next("chat.postEphemeral", status=429, retry_after=1)
    parent = h.fake.post_message("C_SUPPORT", "U_CUSTOMER", "Where is my parcel? It has been two weeks.")
    reply = h.fake.post_message("C_SUPPORT", "U_AGENT", "It left our depot today; here is the tracking link in your email.",
                                thread_ts=parent["ts"])
    h.interact(message_action(reply, trigger_id=h.fake.new_trigger_id(), response_url=h.fake.response_url()))
    h.wait()
    view = list(h.fake.views.values())[-1]
    values = form_values(view)
    started = time.monotonic()
    h.interact(view_submission(view, values))
    h.wait()
    calls = h.fake.calls_to("chat.postEphemeral")
    assert len(calls) == 2  # the 429, then the retry that went through
    assert calls[1].at - calls[0].at >= 0.9  # waited for Retry-After: 1
    assert time.monotonic() - started >= 0.9


def test_help_fallback_text_escapes_the_argument_placeholders(slack_bot: SlackHarness):
    """``<message link>`` in a usage is Slack link markup unless escaped, in the notification text too."""
    h = slack_bot
    h.command("help")
    h.wait()
    text = h.fake.responses[-1]["text"]
    assert "/ft add &lt;message link&gt;" in text and "<message link>" not in text

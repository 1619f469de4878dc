"""Send, Edit… and Discard: what each posts, what becomes training data, and that every decision acts once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from bot.drafts.views import DISCARD_ACTION, EDIT_ACTION, SEND_ACTION
from bot.scheduler import EXPIRE_DRAFTS_JOB, context_key, expire_old_drafts, start_scheduler
from storage.drafts import get_draft
from storage.examples import list_examples
from storage.models import ReplyDraft, utcnow
from storage.pairs import list_pairs
from storage.vocabulary import DraftOutcome, PairSource
from tests.bot.drafts.conftest import DRAFT_TEXT, MODEL, QUESTION, Desk
from tests.fixtures.concurrency import at_once
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO
from tests.fixtures.slack_api import block_actions

FTBOT = str(Path(sys.executable).with_name("ftbot"))


def _ftbot(db, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTBOT_DATABASE_URL": database_url(db), "FTBOT_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    return subprocess.run([FTBOT, *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def test_send_posts_the_draft_in_the_thread_and_replaces_the_private_message(team: Desk):
    team.mention()
    draft_id = team.draft_id()
    url = team.click(SEND_ACTION, draft_id)

    [posted] = team.thread_posts_by_bot()
    assert posted["text"] == DRAFT_TEXT and posted["thread_ts"] == team.thread_ts
    context = json.dumps(posted["blocks"][-1], ensure_ascii=False)
    assert "sent by <@U_AGENT>" in context and f"drafted by ftbot ({MODEL})" in context
    [answer] = team.answers(url)
    assert answer["replace_original"] is True and answer["text"].startswith(":white_check_mark: Sent")
    draft = get_draft(team.h.db, draft_id)
    assert draft.outcome == DraftOutcome.SENT and draft.decided_by == "U_AGENT" and draft.posted_ts == posted["ts"]
    assert draft.final_text == DRAFT_TEXT and draft.example_id is None  # FTBOT_DRAFTS_SENT_AS_EXAMPLES is off


def test_send_twice_acts_once_and_the_second_click_says_what_happened(team: Desk):
    team.mention()
    draft_id = team.draft_id()
    urls = [team.fake.response_url() for _ in range(3)]
    at_once(lambda i: team.h.interact(block_actions(SEND_ACTION, str(draft_id), response_url=urls[i])), 3)  # a triple click
    team.h.wait()
    assert len(team.thread_posts_by_bot()) == 1

    url = team.click(SEND_ACTION, draft_id)  # later, from the same stale message
    assert len(team.thread_posts_by_bot()) == 1
    [answer] = team.answers(url)
    assert answer["replace_original"] is False and "already sent by <@U_AGENT>" in answer["text"]
    url = team.click(DISCARD_ACTION, draft_id)  # Discard on a sent draft opens nothing
    assert "already sent" in team.answers(url)[0]["text"] and get_draft(team.h.db, draft_id).outcome == DraftOutcome.SENT


def test_edit_posts_the_edited_text_and_it_becomes_an_example_and_a_preference(team: Desk, tmp_path):
    team.mention()
    draft_id = team.draft_id()
    form = team.open_form(EDIT_ACTION, draft_id)
    [reply_input] = [b for b in form["blocks"] if b["type"] == "input"]
    assert form["blocks"][0] is reply_input and reply_input["element"]["initial_value"] == DRAFT_TEXT
    assert reply_input["element"]["multiline"] is True and json.loads(form["private_metadata"])["draft"] == draft_id

    edited = "Sorry! I refunded the duplicate charge on order 1042; expect it within 3 to 5 business days."
    response = team.submit(form, edited, block_id="reply")
    assert response.status == 200
    [posted] = team.thread_posts_by_bot()
    assert posted["text"] == edited and "sent by <@U_AGENT>" in json.dumps(posted["blocks"])
    draft = get_draft(team.h.db, draft_id)
    assert draft.outcome == DraftOutcome.EDITED and draft.final_text == edited and draft.posted_ts == posted["ts"]

    listed = _ftbot(team.h.db, tmp_path, "drafts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert item["outcome"] == "edited" and item["final"] == edited and item["draft"] == DRAFT_TEXT and item["agent"] == "U_AGENT"

    exported = _ftbot(team.h.db, tmp_path, "export", "--format", "dpo")
    assert exported.returncode == 0, exported.stderr
    [pair] = [json.loads(line) for line in exported.stdout.splitlines()]
    assert pair["preferred_output"] == [{"role": "assistant", "content": edited}]
    assert pair["non_preferred_output"] == [{"role": "assistant", "content": DRAFT_TEXT}]
    assert pair["input"]["messages"][-1]["content"].startswith("My card was charged twice")
    [example] = list_examples(team.h.db, status="pending")
    assert example.messages[-1] == {"role": "assistant", "content": edited}

    form_again = team.submit(form, edited + " Again.", block_id="reply")  # the form submitted twice
    assert form_again.status == 200 and len(team.thread_posts_by_bot()) == 1


def test_an_empty_edit_is_refused_in_the_form(team: Desk):
    team.mention()
    response = team.edit(team.draft_id(), "   ")
    assert json.loads(response.body)["response_action"] == "errors"
    assert not team.thread_posts_by_bot() and get_draft(team.h.db, team.draft_id()).outcome is None


def test_discard_then_the_agents_own_reply_is_preferred_over_the_draft(team: Desk):
    team.mention()
    draft_id = team.draft_id()
    team.discard(draft_id, "Refunds take 10 days, not 5")
    draft = get_draft(team.h.db, draft_id)
    assert draft.outcome == DraftOutcome.DISCARDED and draft.discard_reason == "Refunds take 10 days, not 5"
    assert not team.thread_posts_by_bot()
    replaced = [r for r in team.fake.responses if r.get("replace_original")]
    assert replaced and "Discarded" in replaced[-1]["text"]

    team.say("Sorry about that! The duplicate is refunded; allow up to 10 business days.", user="U_AGENT")
    [pair] = list_pairs(team.h.db)
    assert pair.source_kind == PairSource.DRAFT_REPLY
    assert pair.record["preferred_output"][0]["content"].startswith("Sorry about that! The duplicate is refunded")
    assert pair.record["non_preferred_output"][0]["content"] == DRAFT_TEXT
    assert get_draft(team.h.db, draft_id).pair_id == pair.id

    team.say("Anything else I can help with?", user="U_AGENT")  # a second reply: the draft has its pair already
    team.say("Thanks!", user="U_CUSTOMER")
    assert len(list_pairs(team.h.db)) == 1


def test_only_the_agent_the_draft_was_offered_to_may_decide_it(team: Desk):
    team.mention()
    draft_id = team.draft_id()
    url = team.click(SEND_ACTION, draft_id, user="U_AGENT2")
    assert "offered to <@U_AGENT>, not to you" in team.answers(url)[0]["text"]
    assert not team.thread_posts_by_bot() and get_draft(team.h.db, draft_id).outcome is None
    url = team.click(SEND_ACTION, draft_id, user="U_CUSTOMER")  # not on the team: refused before the listener
    assert "Only the support team" in team.answers(url)[0]["text"] and not team.thread_posts_by_bot()


def test_a_forged_button_value_is_out_of_date(team: Desk):
    team.mention()
    for value in ("not-a-number", "999999", "-1"):
        url = team.click(SEND_ACTION, value)
        assert "out of date" in team.answers(url)[0]["text"]
    assert not team.thread_posts_by_bot()


def test_a_refused_post_keeps_the_draft_undecided_for_another_try(team: Desk):
    team.mention()
    draft_id = team.draft_id()
    team.fake.fail_next("chat.postMessage", status=200, error="is_archived", retry_after=None)
    url = team.click(SEND_ACTION, draft_id)
    assert "nothing was sent" in team.answers(url)[0]["text"] and get_draft(team.h.db, draft_id).outcome is None
    team.click(SEND_ACTION, draft_id)
    assert len(team.thread_posts_by_bot()) == 1 and get_draft(team.h.db, draft_id).outcome == DraftOutcome.SENT


def test_a_later_draft_in_the_thread_reads_the_sent_reply_as_the_agents(team: Desk, openai_api):
    team.mention()
    team.click(SEND_ACTION, team.draft_id())
    team.say("It still shows twice on my statement.", user="U_CUSTOMER", deliver=False)
    team.mention()
    request = openai_api.requests_to("/chat/completions")[-1].json
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert request["messages"][1]["content"].startswith(QUESTION.split(" <!")[0])
    assert request["messages"][2]["content"] == DRAFT_TEXT


def test_ft_stats_ends_with_the_drafts_statistics(team: Desk):
    team.mention()
    team.click(SEND_ACTION, team.draft_id())
    team.h.command("stats", user_id="U_AGENT")
    team.h.wait()
    blocks = json.dumps(team.fake.responses[-1]["blocks"], ensure_ascii=False)
    assert "*Drafts*" in blocks and f"{MODEL}: 100% of 1 draft sent unedited" in blocks


def test_undecided_drafts_expire_hourly_and_their_buttons_then_say_so(team: Desk):
    team.mention()
    draft_id = team.draft_id()
    [job] = [job for job in start_scheduler(team.h.bot).get_jobs() if job.id == EXPIRE_DRAFTS_JOB]
    assert job.func_ref == "bot.scheduler:expire_old_drafts" and job.next_run_time.minute == 37
    assert expire_old_drafts(context_key(team.h.bot)) == 0  # a fresh draft stays
    with team.h.db.session() as session:
        session.exec(update(ReplyDraft).where(ReplyDraft.id == draft_id).values(created_at=utcnow() - timedelta(hours=25)))
    assert expire_old_drafts(context_key(team.h.bot)) == 1
    url = team.click(SEND_ACTION, draft_id)
    assert "This draft expired" in team.answers(url)[0]["text"] and not team.thread_posts_by_bot()

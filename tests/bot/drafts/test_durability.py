"""An `@ftbot draft` acknowledged to Slack is never lost: its event stays pending until the draft is shown."""

from __future__ import annotations

import threading
from datetime import timedelta

from storage.drafts import list_drafts
from storage.events import pending_events
from tests.bot.drafts.conftest import Desk


def _pending(team: Desk) -> list[str]:
    return [event.event_id for event in pending_events(team.h.bot.inbox.db)]


def test_the_mention_stays_pending_until_its_draft_is_shown(team: Desk, monkeypatch):
    service = team.h.bot.draft_service()
    real_generate = service.generate
    release, generating = threading.Event(), threading.Event()

    def slow_generate(model, messages):
        generating.set()
        assert release.wait(10)
        return real_generate(model, messages)

    monkeypatch.setattr(service, "generate", slow_generate)
    team.question()
    message = team.fake.post_message("C_SUPPORT", "U_AGENT", "<@U0FTBOT> draft", thread_ts=team.thread_ts)
    from tests.fixtures.slack_api import app_mention

    response = team.h.event(app_mention("<@U0FTBOT> draft", user="U_AGENT", ts=message["ts"], thread_ts=team.thread_ts),
                            event_id="EvSlowDraft")
    assert response.status == 200 and generating.wait(10)
    assert _pending(team) == ["EvSlowDraft"]  # acknowledged, listener returned, draft not shown yet: still pending
    release.set()
    team.h.wait()
    assert _pending(team) == [] and len(team.drafts_shown("U_AGENT")) == 1


def test_a_draft_lost_with_its_process_is_made_when_the_event_is_redelivered(team: Desk, monkeypatch):
    inbox = team.h.bot.inbox
    inbox.lease = timedelta(0)  # the work below "dies" with its process: its lease lapses at once
    lost: list[object] = []
    with monkeypatch.context() as dying:
        dying.setattr(team.h.bot, "defer", lambda fn, *args, **kwargs: lost.append(fn))  # the work never runs
        team.question()
        team.mention()
    assert lost and _pending(team) and not list_drafts(team.h.db)

    # A restarted bot (the work pool works again) redelivers what was left pending.
    assert inbox.redeliver_pending() == 1
    team.h.wait()
    assert _pending(team) == [] and len(list_drafts(team.h.db)) == 1 and len(team.drafts_shown("U_AGENT")) == 1

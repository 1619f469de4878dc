"""Reply drafts in storage, on SQLite and PostgreSQL: one draft per request, one decision per draft, and the
training data each decision makes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col

from storage.db import Database
from storage.drafts import (
    channel_drafts_on,
    create_draft,
    decide_draft,
    expire_drafts,
    find_draft,
    get_draft,
    list_drafts,
    record_agent_reply,
    set_channel_drafts,
    set_draft_timing,
    store_missing_training_data,
)
from storage.errors import DraftNotFound, ValidationFailed
from storage.eval_prompts import prompt_hash
from storage.examples import get_example, list_examples, save_capture
from storage.models import ReplyDraft, stored_id, utcnow
from storage.pairs import list_pairs
from storage.vocabulary import DraftOutcome, ExampleSource, ExampleStatus, PairSource
from tests.fixtures.concurrency import at_once

PROMPT = [
    {"role": "system", "content": "You are Acme's support assistant."},
    {"role": "user", "content": "How do I reset my password?"},
]
DRAFT = "Click *Forgot password* on the sign-in page."
WINDOW = timedelta(minutes=60)


def new_draft(db: Database, key: str = "mention:C1:1700000000.000100", **overrides: Any) -> ReplyDraft:
    fields: dict[str, Any] = {
        "request_key": key, "channel": "C1", "thread_ts": "1700000000.000100", "source_ts": "1700000000.000100",
        "requested_by": "U_AGENT", "model": "acme-sft-job4", "backend": "openai", "prompt": PROMPT, "draft": DRAFT,
        "latency_ms": 1200, "generation_ms": 900, "prompt_tokens": 40, "completion_tokens": 12, "cost_usd": 0.0001,
    }
    fields.update(overrides)
    return create_draft(db, **fields).example


def age(db: Database, draft_id: int, *, created: timedelta | None = None, decided: timedelta | None = None) -> None:
    """Move a draft's times into the past (as if it were made or decided that long ago)."""
    values = {}
    if created is not None:
        values["created_at"] = utcnow() - created
    if decided is not None:
        values["decided_at"] = utcnow() - decided
    with db.session() as session:
        session.exec(update(ReplyDraft).where(col(ReplyDraft.id) == draft_id).values(**values))


# --- creating ----------------------------------------------------------------------------------


def test_a_request_delivered_four_times_makes_one_draft(db: Database) -> None:
    results = at_once(lambda index: create_draft(
        db, request_key="mention:C1:1700.1", channel="C1", thread_ts="1700.1", source_ts="1700.1",
        requested_by="U_AGENT", model="acme-sft-job4", backend="openai", prompt=PROMPT, draft=f"draft {index}",
    ), 4)
    assert sum(result.created for result in results) == 1
    assert len({result.example.id for result in results}) == 1
    assert len(list_drafts(db)) == 1
    assert find_draft(db, "mention:C1:1700.1") == get_draft(db, stored_id(results[0].example))


def test_a_draft_keeps_its_prompt_model_and_costs(db: Database) -> None:
    draft = new_draft(db)
    stored = get_draft(db, stored_id(draft))
    assert stored.prompt == PROMPT and stored.prompt_hash == prompt_hash(PROMPT)
    assert (stored.model, stored.backend, stored.requested_by) == ("acme-sft-job4", "openai", "U_AGENT")
    assert (stored.prompt_tokens, stored.completion_tokens, stored.generation_ms) == (40, 12, 900)
    assert stored.outcome is None and stored.created_at is not None
    set_draft_timing(db, stored_id(draft), latency_ms=1500)
    assert get_draft(db, stored_id(draft)).latency_ms == 1500


def test_unknown_drafts_are_reported_by_id(db: Database) -> None:
    assert find_draft(db, "mention:nowhere") is None
    with pytest.raises(DraftNotFound, match="#99"):
        get_draft(db, 99)
    with pytest.raises(DraftNotFound):
        decide_draft(db, 99, DraftOutcome.SENT, by="U_AGENT")
    with pytest.raises(DraftNotFound):
        set_draft_timing(db, 99, latency_ms=1)


# --- deciding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [DraftOutcome.SENT, DraftOutcome.EDITED, DraftOutcome.DISCARDED])
def test_eight_clicks_at_once_decide_a_draft_once(db: Database, outcome: DraftOutcome) -> None:
    draft_id = stored_id(new_draft(db))
    results = at_once(lambda index: decide_draft(db, draft_id, outcome, by=f"U{index}", final_text=f"Edited {index}",
                                                 posted_ts=f"1700000001.{index:06d}"), 8)
    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    stored = get_draft(db, draft_id)
    assert stored.outcome == outcome and stored.decided_by == winners[0].decided_by
    # The losers stored nothing: one example and one pair at most, whoever won.
    assert len(list_examples(db)) == (1 if outcome is DraftOutcome.EDITED else 0)
    assert len(list_pairs(db)) == (1 if outcome is DraftOutcome.EDITED else 0)
    # A late click changes nothing either.
    assert decide_draft(db, draft_id, DraftOutcome.DISCARDED, by="U_LATE") is None
    assert get_draft(db, draft_id).outcome == outcome


def test_an_edit_becomes_a_pending_example_and_a_preference_pair(db: Database) -> None:
    draft_id = stored_id(new_draft(db))
    final = "Click *Forgot password* on the sign-in page; the link is valid for 30 minutes."
    decided = decide_draft(db, draft_id, DraftOutcome.EDITED, by="U_AGENT", final_text=final, posted_ts="1700000002.000100")
    assert decided is not None and decided.outcome == DraftOutcome.EDITED and decided.final_text == final
    assert decided.decided_at is not None and decided.posted_ts == "1700000002.000100"

    assert decided.example_id is not None
    example = get_example(db, decided.example_id)
    assert example.messages == [*PROMPT, {"role": "assistant", "content": final}]
    assert example.status == ExampleStatus.PENDING and example.source_kind == ExampleSource.DRAFT
    assert example.source_key == f"draft:{draft_id}" and example.captured_by == "U_AGENT"
    assert (example.source_channel, example.source_thread_ts) == ("C1", "1700000000.000100")

    [pair] = list_pairs(db)
    assert decided.pair_id == pair.id and pair.source_kind == PairSource.DRAFT_EDIT
    assert pair.record == {
        "input": {"messages": PROMPT},
        "preferred_output": [{"role": "assistant", "content": final}],
        "non_preferred_output": [{"role": "assistant", "content": DRAFT}],
    }


def test_an_edit_needs_text_and_an_unchanged_edit_counts_as_sent(db: Database) -> None:
    draft_id = stored_id(new_draft(db))
    with pytest.raises(ValidationFailed):
        decide_draft(db, draft_id, DraftOutcome.EDITED, by="U_AGENT", final_text="  ")
    assert get_draft(db, draft_id).outcome is None  # the refused edit claimed nothing
    decided = decide_draft(db, draft_id, DraftOutcome.EDITED, by="U_AGENT", final_text=DRAFT + "\n")
    assert decided is not None and decided.outcome == DraftOutcome.SENT and decided.final_text == DRAFT
    assert list_pairs(db) == [] and list_examples(db) == []


def test_an_edit_identical_to_a_stored_example_links_that_example(db: Database) -> None:
    final = "Use the reset link we just emailed you."
    existing = save_capture(db, record={"messages": [*PROMPT, {"role": "assistant", "content": final}]},
                            source_key="slack:C1:1", channel="C1", ts="1", thread_ts="1", permalink=None,
                            captured_by="U_OTHER").example
    decided = decide_draft(db, stored_id(new_draft(db)), DraftOutcome.EDITED, by="U_AGENT", final_text=final)
    assert decided is not None and decided.example_id == existing.id and len(list_examples(db)) == 1
    assert decided.pair_id is not None


def test_sending_as_is_stores_the_draft_as_the_final_text(db: Database) -> None:
    decided = decide_draft(db, stored_id(new_draft(db)), DraftOutcome.SENT, by="U_AGENT", posted_ts="1700000003.000100")
    assert decided is not None and decided.final_text == DRAFT and decided.example_id is None
    assert list_examples(db) == [] and list_pairs(db) == []


def test_a_draft_sent_as_is_becomes_an_example_when_configured(db: Database) -> None:
    decided = decide_draft(db, stored_id(new_draft(db)), DraftOutcome.SENT, by="U_AGENT", sent_as_example=True)
    assert decided is not None and decided.example_id is not None
    example = get_example(db, decided.example_id)
    assert example.messages[-1] == {"role": "assistant", "content": DRAFT} and example.status == ExampleStatus.PENDING
    assert list_pairs(db) == []


def test_discarding_keeps_the_reason_and_agents_cannot_expire(db: Database) -> None:
    draft_id = stored_id(new_draft(db))
    with pytest.raises(ValidationFailed):
        decide_draft(db, draft_id, DraftOutcome.EXPIRED, by="U_AGENT")
    decided = decide_draft(db, draft_id, DraftOutcome.DISCARDED, by="U_AGENT", reason=" wrong product ")
    assert decided is not None and decided.discard_reason == "wrong product" and decided.final_text is None
    assert list_examples(db) == [] and list_pairs(db) == []


# --- the agent's own reply after a discard -----------------------------------------------------


def discarded(db: Database, key: str, *, by: str = "U_AGENT", **overrides: Any) -> int:
    draft_id = stored_id(new_draft(db, key, **overrides))
    age(db, draft_id, created=timedelta(minutes=5))
    assert decide_draft(db, draft_id, DraftOutcome.DISCARDED, by=by) is not None
    return draft_id


def reply(db: Database, text: str = "Go to Settings → Security → Reset.", *, agent: str = "U_AGENT",
          thread_ts: str = "1700000000.000100", ts: str | None = None) -> list:
    return record_agent_reply(db, channel="C1", thread_ts=thread_ts, agent=agent, text=text,
                              ts=ts or f"{utcnow().timestamp():.6f}", window=WINDOW)


def test_an_agents_reply_after_a_discard_is_preferred_over_the_draft_once(db: Database) -> None:
    draft_id = discarded(db, "mention:C1:1")
    [pair] = reply(db)
    assert pair.source_kind == PairSource.DRAFT_REPLY
    assert pair.record["preferred_output"] == [{"role": "assistant", "content": "Go to Settings → Security → Reset."}]
    assert pair.record["non_preferred_output"] == [{"role": "assistant", "content": DRAFT}]
    assert pair.record["input"] == {"messages": PROMPT}
    assert get_draft(db, draft_id).pair_id == pair.id
    # Slack redelivering the reply, or the agent's next message, pairs nothing more.
    assert reply(db) == [] and reply(db, "Anything else?") == []
    assert len(list_pairs(db)) == 1


def test_a_reply_delivered_eight_times_at_once_makes_one_pair(db: Database) -> None:
    draft_id = discarded(db, "mention:C1:1")
    results = at_once(lambda index: reply(db, f"Reply number {index % 2}"), 8)
    assert sum(len(result) for result in results) == 1
    [pair] = list_pairs(db)  # the losers' pairs were rolled back with their claims
    assert get_draft(db, draft_id).pair_id == pair.id


def test_only_this_agents_recent_discards_in_this_thread_count(db: Database) -> None:
    mine = discarded(db, "mention:C1:1")
    someone_elses = discarded(db, "mention:C1:2", by="U_OTHER")
    other_thread = discarded(db, "mention:C1:3", thread_ts="1700000099.000100")
    too_old = discarded(db, "mention:C1:4")
    age(db, too_old, decided=WINDOW + timedelta(minutes=1))
    sent = stored_id(new_draft(db, "mention:C1:5"))
    decide_draft(db, sent, DraftOutcome.SENT, by="U_AGENT")

    [pair] = reply(db)
    assert get_draft(db, mine).pair_id == pair.id
    assert all(get_draft(db, draft_id).pair_id is None for draft_id in (someone_elses, other_thread, too_old, sent))
    # The other agent's reply pairs with their own discard.
    [theirs] = reply(db, "Try the reset link.", agent="U_OTHER")
    assert get_draft(db, someone_elses).pair_id == theirs.id


def test_replies_older_than_the_draft_or_equal_to_it_make_no_pair(db: Database) -> None:
    draft_id = discarded(db, "mention:C1:1")
    assert reply(db, ts=f"{(utcnow() - timedelta(hours=1)).timestamp():.6f}") == []
    assert reply(db, DRAFT) == [] and reply(db, "   ") == []
    assert get_draft(db, draft_id).pair_id is None and list_pairs(db) == []


# --- expiry, listing, auto mode ----------------------------------------------------------------


def test_undecided_drafts_expire_and_decided_ones_stay(db: Database) -> None:
    old = stored_id(new_draft(db, "mention:C1:1"))
    fresh = stored_id(new_draft(db, "mention:C1:2"))
    decided = stored_id(new_draft(db, "mention:C1:3"))
    decide_draft(db, decided, DraftOutcome.SENT, by="U_AGENT")
    for draft_id in (old, decided):
        age(db, draft_id, created=timedelta(hours=25))
    assert expire_drafts(db, timedelta(hours=24)) == 1
    assert get_draft(db, old).outcome == DraftOutcome.EXPIRED and get_draft(db, old).decided_at is not None
    assert get_draft(db, fresh).outcome is None and get_draft(db, decided).outcome == DraftOutcome.SENT
    assert expire_drafts(db, timedelta(hours=24)) == 0
    # An expired draft can no longer be sent: its buttons are stale.
    assert decide_draft(db, old, DraftOutcome.SENT, by="U_AGENT") is None


def test_drafts_are_listed_newest_first(db: Database) -> None:
    ids = [stored_id(new_draft(db, f"mention:C1:{n}")) for n in range(3)]
    age(db, ids[2], created=timedelta(hours=1))
    assert [d.id for d in list_drafts(db)] == [ids[1], ids[0], ids[2]]
    assert [d.id for d in list_drafts(db, limit=1)] == [ids[1]]


def test_auto_mode_is_off_until_turned_on_per_channel(db: Database) -> None:
    assert not channel_drafts_on(db, "C1")
    set_channel_drafts(db, "C1", True)
    assert channel_drafts_on(db, "C1") and not channel_drafts_on(db, "C2")
    set_channel_drafts(db, "C1", False)
    assert not channel_drafts_on(db, "C1")


def test_a_decision_whose_training_data_was_not_stored_is_completed_by_the_repair(db, monkeypatch):
    # A process killed between the claim and the data writes: the draft is decided, its example and pair missing.
    from storage import drafts as drafts_module

    draft = new_draft(db)
    monkeypatch.setattr(drafts_module, "_store_training_data", lambda _db, decided, **_kw: decided)
    decided = decide_draft(db, draft.id, DraftOutcome.EDITED, by="U_AGENT", final_text="Edited: it ships Monday.")
    assert decided is not None and decided.example_id is None and decided.pair_id is None
    monkeypatch.undo()

    assert store_missing_training_data(db) == 1
    repaired = get_draft(db, draft.id)
    assert repaired.example_id is not None and repaired.pair_id is not None
    assert store_missing_training_data(db) == 0  # idempotent: nothing left to complete

"""Storage behaviour users rely on, on SQLite and on PostgreSQL (the ``db`` fixture runs both)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.errors import DuplicateExample, ExampleNotFound, ValidationFailed
from storage.events import claim_event, forget_events_before, release_event
from storage.examples import (
    BATCH_SIZE,
    approved_records,
    change_status,
    count_by_status,
    dataset_stats,
    example_by_source_key,
    example_record,
    get_example,
    import_records,
    iter_records,
    list_examples,
    recent_examples,
    save_capture,
    set_status,
    update_example,
)
from storage.models import Example, utcnow
from storage.pairs import add_pair, count_pairs, import_pairs, list_pairs, pair_records
from storage.records import content_hash, sft_record
from storage.snapshots import create_snapshot, latest_snapshot
from storage.workspace_settings import delete_setting, get_setting, set_setting
from tests.fixtures.concurrency import at_once
from tests.fixtures.db import database_url
from tests.fixtures.paths import REPO


def conversation(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are Acme's support assistant."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


TOOL_RECORD = {
    "messages": [
        {"role": "user", "content": "Where is order 42?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "order_status", "arguments": "{\"id\": 42}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
        {"role": "assistant", "content": "It shipped — 🚚 arriving Tuesday.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "order_status", "parameters": {"type": "object"}}}],
    "parallel_tool_calls": False,
}


def capture(db: Database, record: dict, *, key: str = "slack:C1:100.1", **overrides):
    arguments = dict(
        record=record,
        source_key=key,
        channel="C1",
        ts=key.rsplit(":", 1)[-1],
        thread_ts="100.0",
        permalink=f"https://acme.slack.com/archives/C1/p{key.rsplit(':', 1)[-1].replace('.', '')}",
        captured_by="U_CAPTURER",
        status="pending",
    )
    arguments.update(overrides)
    return save_capture(db, **arguments)


# --- capture -----------------------------------------------------------------------------------


def test_capturing_the_same_message_twice_updates_one_example(db: Database) -> None:
    first = capture(db, conversation("How do I reset my password?", "Use the link."), tags=["auth"])
    assert first.created
    before = first.example.updated_at

    second = capture(
        db,
        conversation("How do I reset my password?", "Use the reset link on the login page."),
        status="approved",
        approved_by="U_REVIEWER",
        tags=["auth", "faq", "auth"],
    )

    assert not second.created and second.example.id == first.example.id
    (stored,) = list_examples(db)
    assert stored.messages[-1]["content"] == "Use the reset link on the login page."
    assert stored.content_hash == content_hash(conversation("How do I reset my password?", "Use the reset link on the login page."))
    assert stored.tags == ["auth", "faq"]
    assert stored.status == "approved" and stored.approved_by == "U_REVIEWER" and stored.approved_at is not None
    assert stored.updated_at >= before
    assert stored.source_permalink.startswith("https://acme.slack.com/archives/C1/p")
    assert stored.source_kind == "slack" and stored.captured_by == "U_CAPTURER"


def test_capture_identical_to_another_example_names_it(db: Database) -> None:
    existing = capture(db, conversation("q", "a"), key="slack:C1:1.1").example
    with pytest.raises(DuplicateExample, match=f"#{existing.id}") as raised:
        capture(db, conversation("q", "a"), key="slack:C2:2.2")
    assert raised.value.existing_id == existing.id
    assert len(list_examples(db)) == 1


def test_capture_rejects_a_record_without_messages(db: Database) -> None:
    with pytest.raises(ValidationFailed, match="messages"):
        capture(db, {"prompt": "hi"})
    with pytest.raises(ValidationFailed, match="unknown status"):
        capture(db, conversation("q", "a"), status="maybe")
    assert list_examples(db) == []


def test_concurrent_captures_of_one_message_end_with_one_row(db: Database) -> None:
    """Slack retries and double clicks: eight threads capture the same message at the same moment."""
    results = at_once(lambda index: capture(db, conversation("Refund?", f"Refunds take 5 days ({index % 2})")), 8)
    assert sum(result.created for result in results) == 1
    assert len({result.example.id for result in results}) == 1
    assert len(list_examples(db)) == 1


# --- review and edits --------------------------------------------------------------------------


def test_status_changes_record_who_approved_and_when(db: Database) -> None:
    example = capture(db, conversation("q", "a")).example
    assert example.approved_by is None and example.approved_at is None

    approved = set_status(db, example.id, "approved", by="U_LEAD")
    assert approved.status == "approved" and approved.approved_by == "U_LEAD"
    assert abs(approved.approved_at - utcnow()) < timedelta(minutes=1)

    rejected = set_status(db, example.id, "rejected", by="U_OTHER")
    assert rejected.status == "rejected" and rejected.approved_by is None and rejected.approved_at is None
    assert get_example(db, example.id).status == "rejected"


def test_status_changes_only_from_the_expected_status_and_once_under_concurrent_clicks(db: Database) -> None:
    example = capture(db, conversation("q", "a")).example
    # Two reviewers click at once, one Approve and one Reject, both on a pending example: exactly one wins.
    outcomes = at_once(lambda index: change_status(db, example.id, ("approved", "rejected")[index % 2], by=f"U{index}",
                                                   expected="pending"), 6)
    winners = [outcome for outcome in outcomes if outcome.changed]
    assert len(winners) == 1
    stored = get_example(db, example.id)
    assert stored.status == winners[0].example.status
    assert all(outcome.example.status == stored.status for outcome in outcomes)
    # A stale click changes nothing and returns the example as the winner left it.
    stale = change_status(db, example.id, "pending", by="U_LATE", expected="rejected" if stored.status == "approved" else "approved")
    assert not stale.changed and get_example(db, example.id).status == stored.status


def test_a_capture_that_must_be_new_leaves_an_existing_example_alone(db: Database) -> None:
    first = capture(db, conversation("My email is jane@example.com", "Noted."), status="approved", approved_by="U_LEAD")
    again = capture(db, conversation("My email is [EMAIL]", "Noted, thanks."), status="pending", update_existing=False)
    assert not again.created and again.example.id == first.example.id
    stored = get_example(db, first.example.id)
    assert (stored.status, stored.approved_by) == ("approved", "U_LEAD")
    assert stored.messages == first.example.messages


def test_missing_examples_and_bad_status_are_named_errors(db: Database) -> None:
    with pytest.raises(ExampleNotFound, match="#404"):
        set_status(db, 404, "approved", by="U1")
    with pytest.raises(ExampleNotFound):
        get_example(db, 404)
    with pytest.raises(ExampleNotFound):
        update_example(db, 404, tags=["x"])
    example = capture(db, conversation("q", "a")).example
    with pytest.raises(ValidationFailed, match="pending, approved, rejected"):
        set_status(db, example.id, "done", by="U1")


def test_edit_that_would_duplicate_another_example_is_refused_and_names_it(db: Database) -> None:
    first = capture(db, conversation("q1", "a1"), key="slack:C1:1.1").example
    second = capture(db, conversation("q2", "a2"), key="slack:C1:2.2").example

    with pytest.raises(DuplicateExample, match=f"#{first.id}"):
        update_example(db, second.id, record=conversation("q1", "a1"))
    assert get_example(db, second.id).messages == conversation("q2", "a2")["messages"]

    edited = update_example(db, second.id, record=conversation("q2", "better a2"), tags=["edited"], pii_allowed=True)
    assert edited.content_hash == content_hash(conversation("q2", "better a2"))
    stored = get_example(db, second.id)
    assert stored.messages[-1]["content"] == "better a2" and stored.tags == ["edited"] and stored.pii_allowed
    # Re-saving an example's own content is not a duplicate of itself.
    update_example(db, second.id, record=conversation("q2", "better a2"))


def test_tool_calls_unicode_and_optional_keys_round_trip(db: Database) -> None:
    example = capture(db, TOOL_RECORD, status="approved", approved_by="U1").example
    assert example_record(get_example(db, example.id)) == TOOL_RECORD
    assert example.content_hash == content_hash(sft_record(TOOL_RECORD["messages"], TOOL_RECORD["tools"], False))

    plain = capture(db, conversation("ça va ?", "Oui — merci 🙂"), key="slack:C1:9.9", status="approved").example
    record = example_record(get_example(db, plain.id))
    assert record == conversation("ça va ?", "Oui — merci 🙂")
    assert "tools" not in record and "parallel_tool_calls" not in record


def test_absent_tools_are_sql_null_so_queries_can_filter_on_them(db: Database) -> None:
    capture(db, conversation("q", "a"))
    capture(db, TOOL_RECORD, key="slack:C1:7.7")
    with db.session() as session:
        assert session.scalar(select(func.count()).where(Example.tools.is_(None))) == 1
        assert session.scalar(select(func.count()).where(Example.tools.is_not(None))) == 1


def test_extra_keys_do_not_change_identity(db: Database) -> None:
    import_records(db, [(1, conversation("q", "a"))], source_file="a.jsonl", approved_by="U1")
    result = import_records(db, [(1, {**conversation("q", "a"), "metadata": {"x": 1}})], source_file="b.jsonl", approved_by="U1")
    assert (result.added, result.unchanged) == (0, 1)


# --- import ------------------------------------------------------------------------------------


def test_import_stores_approved_examples_with_provenance(db: Database) -> None:
    items = [(3, conversation("q1", "a1")), (7, TOOL_RECORD), (9, conversation("q1", "a1"))]
    result = import_records(db, items, source_file="/data/support.jsonl", approved_by="alice")
    assert (result.added, result.unchanged) == (2, 1)

    first, second = list_examples(db)
    assert (first.source_file, first.source_line, second.source_line) == ("/data/support.jsonl", 3, 7)
    assert first.source_kind == "import" and first.status == "approved" and first.approved_by == "alice"
    assert first.approved_at is not None and first.tags == []
    assert [record for _, record in approved_records(db)] == [conversation("q1", "a1"), TOOL_RECORD]


def test_reimporting_the_same_items_adds_nothing(db: Database) -> None:
    items = [(line, conversation(f"q{line}", f"a{line}")) for line in range(1, 51)]
    assert import_records(db, items, source_file="f.jsonl", approved_by="U1").added == 50
    again = import_records(db, items, source_file="f.jsonl", approved_by="U1")
    assert (again.added, again.unchanged) == (0, 50)
    assert count_by_status(db)["approved"] == 50


def test_import_is_atomic_a_bad_last_item_stores_nothing(db: Database) -> None:
    """The bad record comes after more than one full batch has been inserted."""
    capture(db, conversation("kept", "kept"))
    items = [(line, conversation(f"q{line}", f"a{line}")) for line in range(1, BATCH_SIZE + 300)]
    items.append((BATCH_SIZE + 300, {"messages": "not a list"}))
    with pytest.raises(ValidationFailed):
        import_records(db, items, source_file="f.jsonl", approved_by="U1")
    assert [example.messages for example in list_examples(db)] == [conversation("kept", "kept")["messages"]]


def test_import_skips_content_already_captured_from_slack(db: Database) -> None:
    capture(db, conversation("q", "a"))
    result = import_records(db, [(1, conversation("q", "a")), (2, conversation("q", "b"))], source_file="f", approved_by="U1")
    assert (result.added, result.unchanged) == (1, 1)
    # The captured example keeps its review state; importing does not approve it behind the reviewer's back.
    assert count_by_status(db) == {"pending": 1, "approved": 1, "rejected": 0}


# --- listing and streaming ---------------------------------------------------------------------


def test_counts_listing_and_streaming_by_status(db: Database) -> None:
    assert count_by_status(db) == {"pending": 0, "approved": 0, "rejected": 0}
    ids = [capture(db, conversation(f"q{i}", f"a{i}"), key=f"slack:C1:{i}.0").example.id for i in range(6)]
    set_status(db, ids[1], "approved", by="U1")
    set_status(db, ids[3], "approved", by="U1")
    set_status(db, ids[4], "rejected", by="U1")

    assert count_by_status(db) == {"pending": 3, "approved": 2, "rejected": 1}
    assert [example.id for example in list_examples(db, status="pending")] == [ids[0], ids[2], ids[5]]
    assert [example.id for example in list_examples(db, limit=2, offset=1)] == ids[1:3]
    assert [example_id for example_id, _ in approved_records(db)] == [ids[1], ids[3]]
    assert [record for _, record in iter_records(db, status="rejected")] == [conversation("q4", "a4")]
    assert len(list(iter_records(db, status=None))) == 6


def test_recent_examples_newest_first_and_lookup_by_slack_message(db: Database) -> None:
    assert recent_examples(db) == [] and example_by_source_key(db, "slack:C1:1.0") is None
    ids = [capture(db, conversation(f"q{i}", f"a{i}"), key=f"slack:C1:{i}.0", tags=[f"t{i}"]).example.id
           for i in range(4)]
    import_records(db, [(1, conversation("imported", "yes"))], source_file="f.jsonl", approved_by="U1")

    newest = recent_examples(db, limit=3)
    assert [example.id for example in newest[1:]] == [ids[3], ids[2]]
    assert newest[0].source_kind == "import" and newest[0].id > ids[3]
    found = example_by_source_key(db, "slack:C1:2.0")
    assert found is not None and found.id == ids[2] and found.tags == ["t2"]
    assert example_by_source_key(db, "slack:C9:2.0") is None


def test_dataset_stats_count_tags_capturers_and_turns_over_every_status(db: Database) -> None:
    assert dataset_stats(db).total == 0 and dataset_stats(db).average_turns is None
    first = capture(db, conversation("q1", "a1"), key="slack:C1:1.0", tags=["billing", "refund"])
    capture(db, conversation("q2", "a2"), key="slack:C1:2.0", tags=["billing"], captured_by="U_OTHER")
    set_status(db, first.example.id, "rejected", by="U1")
    import_records(db, [(1, TOOL_RECORD)], source_file="f.jsonl", approved_by="U1")

    stats = dataset_stats(db)
    assert stats.total == 3
    assert stats.turns == 3 + 3 + 4
    assert stats.average_turns == pytest.approx(10 / 3)
    assert stats.tags == {"billing": 2, "refund": 1}
    assert stats.capturers == {"U_CAPTURER": 1, "U_OTHER": 1, "import": 1}


def test_latest_snapshot_is_the_newest_one(db: Database) -> None:
    assert latest_snapshot(db) is None
    first = import_records(db, [(1, conversation("q1", "a1")), (2, conversation("q2", "a2"))],
                           source_file="f", approved_by="U1")
    assert first.added == 2
    older = create_snapshot(db).snapshot
    import_records(db, [(3, conversation("q3", "a3"))], source_file="f", approved_by="U1")
    newer = create_snapshot(db).snapshot
    latest = latest_snapshot(db)
    assert newer.id != older.id and latest is not None and latest.id == newer.id
    assert latest.train_count + latest.validation_count == 3


def test_streaming_many_records_in_id_order(db: Database) -> None:
    items = [(line, conversation(f"q{line}", f"a{line}")) for line in range(1, 2 * BATCH_SIZE + 2)]
    import_records(db, items, source_file="f", approved_by="U1")
    streamed = list(approved_records(db))
    assert len(streamed) == len(items)
    assert [record for _, record in streamed] == [record for _, record in items]
    assert [example_id for example_id, _ in streamed] == sorted(example_id for example_id, _ in streamed)


# --- preference pairs --------------------------------------------------------------------------


def pair(question: str, good: str, bad: str) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }


def test_pairs_are_stored_once_and_stream_as_openai_dpo_lines(db: Database) -> None:
    first = add_pair(db, pair("q", "good", "bad"), source_kind="vote")
    again = add_pair(db, {**pair("q", "good", "bad"), "note": "ignored"}, source_kind="vote")
    assert first.created and not again.created and again.pair.id == first.pair.id

    result = import_pairs(db, [(1, pair("q", "good", "bad")), (2, pair("q2", "g", "b")), (3, pair("q2", "g", "b"))], source_file="p.jsonl")
    assert (result.added, result.unchanged) == (1, 2)
    assert count_pairs(db) == 2
    assert [record for _, record in pair_records(db)] == [pair("q", "good", "bad"), pair("q2", "g", "b")]
    assert [(p.source_kind, p.source_line) for p in list_pairs(db)] == [("vote", None), ("import", 2)]

    with pytest.raises(ValidationFailed, match="preferred_output"):
        add_pair(db, {"input": {}}, source_kind="import")


# --- events and settings -----------------------------------------------------------------------


def test_an_event_is_claimed_once_even_by_concurrent_deliveries(db: Database) -> None:
    assert claim_event(db, "Ev1") is True
    assert claim_event(db, "Ev1") is False

    outcomes = at_once(lambda _index: claim_event(db, "Ev2"), 6)
    assert sorted(outcomes) == [False] * 5 + [True]

    # A failed handling releases its claim: Slack's retry of that event is then processed once more.
    assert release_event(db, "Ev2") is True and release_event(db, "Ev2") is False
    assert claim_event(db, "Ev2") is True and claim_event(db, "Ev2") is False

    assert forget_events_before(db, utcnow() + timedelta(seconds=1)) == 2
    assert claim_event(db, "Ev1") is True


def test_settings_hold_json_values(db: Database) -> None:
    assert get_setting(db, "prompt:C1") is None
    assert get_setting(db, "prompt:C1", "default") == "default"
    set_setting(db, "prompt:C1", "Be brief.")
    set_setting(db, "onboarded", {"U1": True, "list": [1, 2]})
    set_setting(db, "prompt:C1", "Be brief and kind.")
    assert get_setting(db, "prompt:C1") == "Be brief and kind."
    assert get_setting(db, "onboarded") == {"U1": True, "list": [1, 2]}
    assert delete_setting(db, "prompt:C1") and not delete_setting(db, "prompt:C1")
    assert get_setting(db, "prompt:C1", 0) == 0


_CAPTURE_SCRIPT = """
import sys
from storage.db import Database
from storage.examples import save_capture
db = Database.open(sys.argv[1])
for round_ in range(15):
    record = {"messages": [{"role": "user", "content": "Refund?"},
                           {"role": "assistant", "content": "Refunds take 5 days (" + sys.argv[2] + str(round_ % 3) + ")"}]}
    save_capture(db, record=record, source_key="slack:C9:555.5", channel="C9", ts="555.5", thread_ts=None,
                 permalink=None, captured_by="U" + sys.argv[2], status="pending")
print("ok")
"""


def test_two_processes_capturing_one_message_end_with_one_row(db: Database) -> None:
    """The bot and a second bot instance (or a worker) write the same Slack message at once."""
    processes = [
        subprocess.Popen([sys.executable, "-c", _CAPTURE_SCRIPT, database_url(db), name], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("A", "B")
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.strip() == "ok"
    (example,) = list_examples(db)
    assert example.source_key == "slack:C9:555.5" and example.captured_by in ("UA", "UB")


# --- the fixture itself ------------------------------------------------------------------------


@pytest.mark.parametrize("ci, outcome", [("", "1 passed, 1 skipped"), ("true", "1 passed, 1 error")])
def test_postgres_cases_skip_locally_but_fail_in_ci_when_the_server_is_down(tmp_path, ci: str, outcome: str) -> None:
    """CI must never silently skip the PostgreSQL half of the suite."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.fixtures.db"]\n')
    (tmp_path / "test_probe.py").write_text("def test_probe(db):\n    assert db is not None\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO),
           "FTBOT_TEST_POSTGRES_URL": "postgresql+psycopg://postgres@127.0.0.1:1/test"}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert outcome in completed.stdout, completed.stdout + completed.stderr
    if not ci:
        assert "PostgreSQL not reachable at postgresql+psycopg://postgres@127.0.0.1:1/test" in completed.stdout


def test_concurrent_first_writes_of_one_setting_all_succeed(db: Database) -> None:
    at_once(lambda value: set_setting(db, "home:U1", {"seen": value}), 6)
    assert get_setting(db, "home:U1")["seen"] in range(6)

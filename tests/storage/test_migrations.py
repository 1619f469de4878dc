"""Schema migrations: the models and the migrations agree, and a user's data survives upgrades."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables)
from storage.capture_drafts import load_capture_draft
from storage.db import Database
from storage.errors import MigrationError
from storage.events import Delivery, claim_event, event_status, pending_events, receive_event
from storage.examples import list_examples
from storage.jobs import jobs_to_relay, list_jobs
from storage.migrate import current_revision, downgrade, head_revision, include_object, upgrade
from storage.vocabulary import InboxStatus
from storage.workspace_settings import get_setting
from tests.fixtures.paths import REPO


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with nothing in it (not even alembic_version)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def empty_db(empty_url: str) -> Iterator[Database]:
    database = Database.open(empty_url, migrate=False)
    yield database
    database.close()


def _schema_differences(database: Database) -> list:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True, "include_object": include_object}
        )
        return compare_metadata(context, SQLModel.metadata)


def test_migrated_schema_matches_the_models(empty_db: Database) -> None:
    assert current_revision(empty_db) is None
    upgrade(empty_db)
    assert current_revision(empty_db) == head_revision()
    differences = _schema_differences(empty_db)
    assert differences == [], (
        "storage/models.py and storage/migrations disagree; add a migration with "
        "`.venv/bin/python -m storage.migrate revision \"what changed\"`:\n" + "\n".join(map(str, differences))
    )


def test_comparison_catches_a_model_change_without_migration(empty_db: Database) -> None:
    """Guards the test above: an extra column in the metadata must show up as a difference."""
    upgrade(empty_db)
    with empty_db.engine.begin() as connection:
        connection.execute(text("ALTER TABLE settings ADD COLUMN stray INTEGER"))
    differences = _schema_differences(empty_db)
    assert any(diff[0] == "remove_column" and diff[3].name == "stray" for diff in differences), differences


def _insert_revision_0001_rows(database: Database) -> None:
    # Raw SQL with the columns revision 0001 has, so this keeps working when models.py grows.
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO examples (content_hash, messages, status, source_kind, source_key, tags, pii_allowed,"
                " created_at, updated_at, approved_by) VALUES (:hash, :messages, 'approved', 'slack', 'slack:C1:1.0',"
                " '[\"billing\"]', :false, :now, :now, 'U1')"
            ),
            {
                "hash": "a" * 64,
                "messages": '[{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi"}]',
                "false": False,
                "now": "2026-01-02 03:04:05+00:00",
            },
        )
        connection.execute(
            text("INSERT INTO settings (key, value, updated_at) VALUES ('onboarded', '{\"U1\": true}', :now)"),
            {"now": "2026-01-02 03:04:05+00:00"},
        )


def test_data_at_revision_0001_survives_upgrade(empty_db: Database) -> None:
    upgrade(empty_db, "0001")
    assert current_revision(empty_db) == "0001"
    _insert_revision_0001_rows(empty_db)

    upgrade(empty_db)

    assert current_revision(empty_db) == head_revision()
    (example,) = list_examples(empty_db)
    assert example.messages == [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": "hi"}]
    assert example.tags == ["billing"] and example.approved_by == "U1" and example.source_key == "slack:C1:1.0"
    assert get_setting(empty_db, "onboarded") == {"U1": True}


def test_capture_drafts_move_out_of_the_settings_table_at_revision_0002(empty_db: Database) -> None:
    """Drafts stored under the old key prefix in settings keep their keys (open modals carry them)."""
    upgrade(empty_db, "0001")
    draft_key = "capture_draft:slack:C1:1.0:U1"
    with empty_db.engine.begin() as connection:
        for key, value in ((draft_key, '{"source_key": "slack:C1:1.0", "turns": []}'),
                           ("channel_prompt:C1", '"Be brief."'),
                           ("capturexdraft:lookalike", '"not a draft"')):
            connection.execute(
                text("INSERT INTO settings (key, value, updated_at) VALUES (:key, :value, :now)"),
                {"key": key, "value": value, "now": "2026-01-02 03:04:05+00:00"},
            )

    upgrade(empty_db, "0002")

    assert load_capture_draft(empty_db, draft_key) == {"source_key": "slack:C1:1.0", "turns": []}
    assert get_setting(empty_db, draft_key) is None
    assert get_setting(empty_db, "channel_prompt:C1") == "Be brief."
    assert get_setting(empty_db, "capturexdraft:lookalike") == "not a draft"

    downgrade(empty_db, "0001")
    assert get_setting(empty_db, draft_key) == {"source_key": "slack:C1:1.0", "turns": []}
    assert "capture_drafts" not in inspect(empty_db.engine).get_table_names()


def test_slack_event_claims_become_done_inbox_events_at_revision_0003(empty_db: Database) -> None:
    """A retry of an event handled before the upgrade is still recognised; other idempotency keys stay claims."""
    upgrade(empty_db, "0002")
    with empty_db.engine.begin() as connection:
        for key in ("Ev0123ABC", "judge_quote:abc", "view_submission:V1:slack:C1:1.0"):
            connection.execute(text("INSERT INTO processed_events (event_id, created_at) VALUES (:key, :now)"),
                               {"key": key, "now": "2026-01-02 03:04:05+00:00"})

    upgrade(empty_db, "0003")

    assert event_status(empty_db, "Ev0123ABC") == InboxStatus.DONE
    assert receive_event(empty_db, "Ev0123ABC", "{}", owner="h:1:t", lease=timedelta(seconds=60)) == Delivery.DONE
    assert pending_events(empty_db) == []
    assert not claim_event(empty_db, "judge_quote:abc") and not claim_event(empty_db, "view_submission:V1:slack:C1:1.0")
    assert claim_event(empty_db, "Ev0123ABC")  # no longer a claim: it moved to the inbox

    downgrade(empty_db, "0002")
    with empty_db.engine.connect() as connection:
        claims = set(connection.scalars(text("SELECT event_id FROM processed_events")))
    assert {"Ev0123ABC", "judge_quote:abc", "view_submission:V1:slack:C1:1.0"} <= claims
    assert "slack_events" not in inspect(empty_db.engine).get_table_names()


def test_jobs_finished_before_revision_0004_count_as_announced(empty_db: Database) -> None:
    """An upgrade never makes the bot re-post old jobs; a job still running is relayed (and announced) later."""
    upgrade(empty_db, "0003")
    with empty_db.engine.begin() as connection:
        for status, finished in (("succeeded", "2026-01-02 03:04:05+00:00"), ("running", None), ("quoted", None)):
            connection.execute(
                text("INSERT INTO jobs (backend, method, status, base_model, config, slack_channel, created_at, updated_at,"
                     " finished_at) VALUES ('openai', 'sft', :status, 'm', '{}', 'C1', :now, :now, :finished)"),
                {"status": status, "now": "2026-01-01 00:00:00+00:00", "finished": finished},
            )

    upgrade(empty_db, "0004")

    assert [job.status for job in jobs_to_relay(empty_db)] == ["running"]
    [finished] = [job for job in list_jobs(empty_db) if job.status == "succeeded"]
    assert finished.announced_at == finished.finished_at
    downgrade(empty_db, "0003")
    assert "announced_at" not in {c["name"] for c in inspect(empty_db.engine).get_columns("jobs")}


def test_downgrade_to_base_and_back(empty_db: Database) -> None:
    upgrade(empty_db)
    downgrade(empty_db, "base")
    assert set(inspect(empty_db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(empty_db)
    assert _schema_differences(empty_db) == []


def test_open_migrates_and_reopen_is_a_no_op(empty_url: str) -> None:
    first = Database.open(empty_url)
    assert current_revision(first) == head_revision()
    if first.is_sqlite:
        # The migration turns foreign keys off on its connection: none of the pooled ones may keep that.
        for _ in range(3):
            with first.engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    first.close()
    second = Database.open(empty_url)
    assert current_revision(second) == head_revision()
    second.close()


def test_two_processes_migrating_one_database_at_once(empty_url: str) -> None:
    """The bot and the training worker may both open a fresh database at the same moment."""
    script = (
        "import sys; from storage.db import Database; from storage.migrate import current_revision; "
        "db = Database.open(sys.argv[1]); print(current_revision(db))"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, empty_url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == head_revision()
    database = Database.open(empty_url, migrate=False)
    assert _schema_differences(database) == []
    database.close()


def test_database_from_a_newer_ftbot_gives_a_clear_error(empty_db: Database) -> None:
    upgrade(empty_db)
    with empty_db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(MigrationError, match="newer ftbot"):
        upgrade(empty_db)


def test_a_failing_migration_leaves_the_schema_unchanged(empty_db: Database) -> None:
    """All revisions run in one transaction: a failure half-way creates no tables and no version."""
    with empty_db.engine.begin() as connection:
        # A foreign table in the way of revision 0001 (created after several other tables).
        connection.execute(text("CREATE TABLE snapshot_members (id INTEGER PRIMARY KEY)"))
    with pytest.raises(MigrationError, match="schema was left unchanged"):
        upgrade(empty_db)
    assert set(inspect(empty_db.engine).get_table_names()) == {"snapshot_members"}
    assert current_revision(empty_db) is None


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(sqlite_db: Database) -> None:
    with sqlite_db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    # Enforced, not just reported: a member pointing at a missing snapshot is refused.
    with pytest.raises(IntegrityError):
        with sqlite_db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO snapshot_members (snapshot_id, split, position, content_hash, record)"
                    " VALUES (999, 'train', 0, 'x', '{}')"
                )
            )


def test_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "custom.sqlite3"
    monkeypatch.setenv("FTBOT_DATABASE_URL", f"sqlite:///{target}")
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    database = Database.open()
    assert target.exists() and current_revision(database) == head_revision()
    assert not (tmp_path / "home").exists()
    database.close()


def test_apschedulers_own_table_is_not_a_schema_difference(empty_db: Database) -> None:
    """The scheduler's job store lives in the same database; autogenerate must not propose dropping it."""
    upgrade(empty_db)
    SQLAlchemyJobStore(engine=empty_db.engine, tablename="apscheduler_jobs").start(None, "default")
    assert "apscheduler_jobs" in inspect(empty_db.engine).get_table_names()
    assert _schema_differences(empty_db) == []

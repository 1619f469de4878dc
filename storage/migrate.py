"""Schema migrations, run programmatically: every ``Database.open()`` calls ``upgrade(db)``.

Migrations are Alembic revisions in ``storage/migrations/versions``; users never need alembic.ini.

Developer commands (run from the repository root):

    .venv/bin/python -m storage.migrate revision "add foo to examples"   # autogenerate the next revision
    .venv/bin/python -m storage.migrate regenerate-initial               # rewrite 0001 from storage/models.py
    .venv/bin/python -m storage.migrate current [URL]                    # show a database's revision

``regenerate-initial`` is only for before the first release (while 0001 is the only revision):
it autogenerates 0001 against an empty SQLite database. Review the file it writes.
After a release, never edit 0001; add a revision instead. ``tests/storage/test_migrations.py`` fails
when models.py and the migrations disagree.

Notes for revision authors: all pending revisions run in ONE transaction (SQLite included), so a failure
changes nothing. On SQLite, ALTERs are rendered as ``batch_alter_table`` (copy-and-move); they run with
foreign keys off, as SQLite's ALTER TABLE recipe requires, and ``PRAGMA foreign_key_check`` must pass
before the transaction commits.
"""

from __future__ import annotations

import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from storage.db import Database
from storage.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
# Any constant works; it only has to be the same in every ftbot process that migrates one Postgres database.
_PG_LOCK_KEY = 0x667462_6F74  # "ftbot"
# Tables in ftbot's database that a library owns: APScheduler's job store (bot/scheduler.py) creates its own,
# so autogenerate (and the schema test) must neither drop nor recreate it.
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's autogenerate filter: everything but the tables in ``FOREIGN_TABLES``."""
    return not (type_ == "table" and name in FOREIGN_TABLES)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at ``storage/migrations``; ``env.py`` uses ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(VERSIONS_DIR))
    # Keeps revision files named 0001_initial_schema.py etc., sorted by their number.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision this version of ftbot knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"storage/migrations has {len(heads)} heads {heads}: merge them into one")
    return heads[0]


def current_revision(db: Database) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the database schema up to ``revision`` (default: the newest).

    Cheap when already current (one read). Safe when the bot and a training worker open the same
    database at once: the migration runs under a database-wide lock (Postgres advisory lock,
    SQLite ``BEGIN IMMEDIATE``) and Alembic re-reads the version inside it, so the second process
    finds the work done.
    """
    target = head_revision() if revision == "head" else revision
    try:
        if current_revision(db) == target:
            return
    except SQLAlchemyError:  # unreachable or unreadable: reported by the locked attempt below
        pass
    with db.engine.connect() as connection:  # connection errors propagate as they are
        sqlite = connection.dialect.name == "sqlite"
        try:
            if sqlite:
                # SQLite's ALTER recipe: foreign keys off (only possible outside a transaction) so batch
                # table rebuilds can drop and rename referenced tables; checked again before commit.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                # Takes SQLite's write lock now (waiting up to busy_timeout) and makes the DDL one transaction.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            # Alembic sees the transaction we opened and runs every revision inside it: all or nothing.
            command.upgrade(alembic_config(connection), revision)
            if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                raise MigrationError(
                    f"migrating {db.url} would break {len(broken)} foreign key reference(s) (first: {broken[0]}); "
                    "the schema was left unchanged. Report this as a bug in the migration"
                )
            connection.commit()
        except CommandError as error:
            raise MigrationError(
                f"cannot migrate {db.url} to {revision}: {error}. If the database was created by a newer "
                "ftbot, upgrade ftbot (pip install -U ftbot)"
            ) from error
        except SQLAlchemyError as error:
            reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
            raise MigrationError(
                f"cannot migrate {db.url} to {revision}: {reason}; the schema was left unchanged. "
                "Is this database used by another application? Point FTBOT_DATABASE_URL at a database of its own"
            ) from error
        finally:
            if sqlite:
                # Never hand a connection with foreign keys off back to the pool.
                connection.invalidate()


def downgrade(db: Database, revision: str) -> None:
    """Move the schema back to ``revision`` (used by tests; users upgrade only)."""
    with db.engine.connect() as connection:
        command.downgrade(alembic_config(connection), revision)
        connection.commit()


def _scratch_database() -> Database:
    scratch = Path(tempfile.mkdtemp(prefix="ftbot-migrate-")) / "scratch.sqlite3"
    return Database.open(f"sqlite:///{scratch}", migrate=False)


def make_revision(message: str) -> Path:
    """Autogenerate the next revision (0002, 0003, ...) from the difference between models.py and head."""
    scratch = _scratch_database()
    upgrade(scratch)
    existing = sorted(p.name for p in VERSIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.py"))
    next_id = f"{int(existing[-1][:4]) + 1:04d}" if existing else "0001"
    with scratch.engine.connect() as connection:
        script = command.revision(alembic_config(connection), message=message, autogenerate=True, rev_id=next_id)
    scratch.close()
    head_revision.cache_clear()
    return _written(script)


def _written(script: Script | list[Script | None] | None) -> Path:
    """The file of the one revision ``command.revision`` wrote (a list or None would mean branches or none)."""
    if not isinstance(script, Script):
        raise MigrationError(f"alembic did not write exactly one revision: {script!r}")
    return Path(script.path)


def regenerate_initial() -> Path:
    """Rewrite revision 0001 from the current models (only while 0001 is the only revision)."""
    revisions = sorted(VERSIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.py"))
    if any(not p.name.startswith("0001_") for p in revisions):
        raise MigrationError("later revisions exist: add a new revision with `revision` instead of rewriting 0001")
    for path in revisions:
        path.unlink()
    head_revision.cache_clear()
    scratch = _scratch_database()
    with scratch.engine.connect() as connection:
        script = command.revision(
            alembic_config(connection), message="initial schema", autogenerate=True, rev_id="0001"
        )
    scratch.close()
    return _written(script)


def main(argv: list[str]) -> int:
    usage = "usage: python -m storage.migrate revision MESSAGE | regenerate-initial | current [URL] | upgrade [URL]"
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    action, rest = argv[0], argv[1:]
    if action == "revision" and len(rest) == 1:
        print(f"wrote {make_revision(rest[0])}: review it, then run tests/storage/test_migrations.py")
    elif action == "regenerate-initial" and not rest:
        print(f"wrote {regenerate_initial()}: review it, then run tests/storage/test_migrations.py")
    elif action in ("current", "upgrade") and len(rest) <= 1:
        db = Database.open(rest[0] if rest else None, migrate=action == "upgrade")
        print(f"{db.url}: revision {current_revision(db) or '(empty)'}, code head {head_revision()}")
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

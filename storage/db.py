"""Opening the database: SQLite by default, any SQLAlchemy URL through ``FTBOT_DATABASE_URL``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, cast

from sqlalchemy import event, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Mapped
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, SQLModel, create_engine

from storage.config import default_database_url

T = TypeVar("T")
K = TypeVar("K")

# An INSERT that can take an ON CONFLICT clause: the dialects that have one.
UpsertInsert = Callable[[type[SQLModel]], sqlite.Insert | postgresql.Insert]
_UPSERT_INSERTS: dict[str, UpsertInsert] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the bot read while the training worker writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One engine plus sessions. ``Database.open()`` creates and migrates the schema."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @classmethod
    def open(cls, url: str | None = None, *, migrate: bool = True) -> Database:
        """The database at ``url`` (``Settings.database_url``); None: the configured one (``FTBOT_DATABASE_URL``,
        else SQLite in ftbot's home)."""
        url = url or default_database_url()
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 15, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        database = cls(engine)
        if migrate:
            # Local: storage.migrate imports this module (an import cycle), and Alembic loads only when a database opens.
            from storage.migrate import upgrade

            upgrade(database)
        return database

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def upsert_insert(self) -> UpsertInsert | None:
        """This database's INSERT with ``on_conflict_do_*`` clauses, or None when the dialect has none."""
        return _UPSERT_INSERTS.get(self.engine.dialect.name)

    def get_or_insert(self, key_column: Mapped[K], key: K, build: Callable[[Session], T]) -> tuple[T, bool]:
        """The row whose unique ``key_column`` equals ``key`` (``False``), else the row ``build(session)`` returns,
        stored in the same transaction (``True``). ``key=None`` always inserts.

        This is how retries and double clicks stay single: when a concurrent writer stores the same key between
        the lookup and the insert, the unique constraint refuses ours and the second attempt returns theirs.
        """
        # ``sqlmodel.col`` types a model's column as ``Mapped``; at runtime it is the class's InstrumentedAttribute.
        table = cast(InstrumentedAttribute[K], key_column).class_
        for attempt in range(2):
            try:
                with self.session() as session:
                    if key is not None:
                        existing = session.scalar(select(table).where(key_column == key))
                        if existing is not None:
                            return existing, False
                    row = build(session)
                    session.add(row)
                    session.flush()
                    return row, True
            except IntegrityError:
                if key is None or attempt:
                    raise
        raise AssertionError("unreachable: the key both exists and does not")

    @contextmanager
    def lock(self, space: int, key: int) -> Iterator[None]:
        """Hold the lock named (``space``, ``key``) for the block, excluding every process on this database.

        PostgreSQL: a transaction-level advisory lock on a connection of its own, released when the block ends
        (or when a killed process's connection closes). SQLite: nothing to take here: SQLite serializes its
        writers itself, and ftbot's processes on one SQLite file are the bot and its workers on one host, so
        callers serialize with a process lock around this (a PostgreSQL deployment may run two bots at once).
        """
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": space, "key": key})
            yield

    def close(self) -> None:
        self.engine.dispose()

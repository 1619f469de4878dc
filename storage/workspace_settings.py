"""Small key/value state kept in the database (onboarding seen, per-channel prompts set from Slack)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.models import Setting, utcnow


def get_setting(db: Database, key: str, default: Any = None) -> Any:
    """The JSON value stored under ``key``, or ``default`` when none is."""
    with db.session() as session:
        setting = session.get(Setting, key)
        return default if setting is None else setting.value


def set_setting(db: Database, key: str, value: Any) -> None:
    """Store a JSON-serialisable ``value`` under ``key`` (insert or replace)."""
    for attempt in range(2):
        try:
            with db.session() as session:
                setting = session.get(Setting, key, with_for_update=True)
                if setting is None:
                    session.add(Setting(key=key, value=value, updated_at=utcnow()))
                else:
                    setting.value = value
                    setting.updated_at = utcnow()
            return
        except IntegrityError:
            # Another writer inserted the key first: the second attempt updates it.
            if attempt:
                raise


def delete_setting(db: Database, key: str) -> bool:
    with db.session() as session:
        return session.exec(delete(Setting).where(col(Setting.key) == key)).rowcount > 0

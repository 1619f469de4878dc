"""Capture forms in progress: the state of a Slack capture modal between its opening and its Save.

A modal's ``private_metadata`` holds at most 3000 characters, too few for a long thread, so the form carries
only the draft's key and the draft itself lives here until it is saved as an example.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.models import CaptureDraft, utcnow


def save_capture_draft(db: Database, key: str, draft: dict[str, Any]) -> None:
    """Store the JSON-serialisable ``draft`` under ``key`` (insert, or replace the one stored)."""
    for attempt in range(2):
        try:
            with db.session() as session:
                row = session.get(CaptureDraft, key, with_for_update=True)
                if row is None:
                    session.add(CaptureDraft(key=key, draft=draft))
                else:
                    row.draft = draft
                    row.updated_at = utcnow()
            return
        except IntegrityError:
            # Another writer inserted the key first (a double-clicked button): the second attempt updates it.
            if attempt:
                raise


def load_capture_draft(db: Database, key: str) -> dict[str, Any] | None:
    """The draft stored under ``key``, or None when there is none (never opened, or already saved)."""
    with db.session() as session:
        row = session.get(CaptureDraft, key)
        return None if row is None else row.draft


def delete_capture_draft(db: Database, key: str) -> bool:
    """Forget the draft under ``key``; True if there was one."""
    with db.session() as session:
        return session.exec(delete(CaptureDraft).where(col(CaptureDraft.key) == key)).rowcount > 0

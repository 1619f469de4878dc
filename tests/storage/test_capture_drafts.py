"""Capture forms in progress: saved, replaced, loaded and deleted by key."""

from __future__ import annotations

from storage.capture_drafts import delete_capture_draft, load_capture_draft, save_capture_draft
from storage.db import Database

KEY = "capture_draft:slack:C1:1.0:U1"


def test_a_draft_is_saved_replaced_and_deleted(db: Database) -> None:
    assert load_capture_draft(db, KEY) is None
    save_capture_draft(db, KEY, {"turns": [{"role": "user", "content": "héllo"}], "rev": 0})
    save_capture_draft(db, KEY, {"turns": [{"role": "user", "content": "héllo"}], "rev": 1})
    assert load_capture_draft(db, KEY) == {"turns": [{"role": "user", "content": "héllo"}], "rev": 1}

    assert delete_capture_draft(db, KEY)
    assert load_capture_draft(db, KEY) is None
    assert not delete_capture_draft(db, KEY)

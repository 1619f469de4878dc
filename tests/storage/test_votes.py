"""The vote rule (storage.votes): which side a comparison's voters preferred."""

from __future__ import annotations

from storage import votes


def test_decided_side_rules():
    assert votes.decided_side(["A", "A", "B"]) == "A"
    assert votes.decided_side(["A", "B"]) is None
    assert votes.decided_side(["B", "tie", "tie"]) == "B"
    assert votes.decided_side(["A", "bad", "bad"]) is None
    assert votes.decided_side([]) is None

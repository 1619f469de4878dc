"""Out-of-order reaction events (SQLite and PostgreSQL): a removal remembered as a tombstone keeps an older add,
delivered late, from bringing the vote back; a newer add still counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage import evals
from storage.evals import RoundStatus, VoteAction
from tests.fixtures.concurrency import at_once

T1 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _comparison_ids(db, n: int = 2) -> list[int]:
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(n)]
    round_ = evals.create_round(db, candidate_model="ft:m", baseline_model="base", prompts=prompts,
                                status=RoundStatus.OPEN).example
    return [c.id for c in evals.round_comparisons(db, round_.id)]


def test_an_add_older_than_a_removal_of_that_reaction_casts_nothing(db):
    [comparison, _] = _comparison_ids(db)
    evals.remember_removal(db, comparison, "U1", reaction="a", at=T1 + timedelta(seconds=2))
    change = evals.cast_vote(db, comparison, "U1", "A", reaction="a", at=T1)
    assert change.action == VoteAction.STALE and change.vote is None
    assert evals.get_vote(db, comparison, "U1") is None
    # Another reaction, or the same one added after the removal, counts.
    assert evals.cast_vote(db, comparison, "U1", "B", reaction="b", at=T1).action == VoteAction.CREATED
    assert evals.cast_vote(db, comparison, "U1", "A", reaction="a", at=T1 + timedelta(seconds=3)).action == VoteAction.MOVED
    assert evals.get_vote(db, comparison, "U1").choice == "A"


def test_the_newest_removal_is_kept(db):
    [comparison, other] = _comparison_ids(db)
    evals.remember_removal(db, comparison, "U1", reaction="a", at=T1 + timedelta(seconds=5))
    evals.remember_removal(db, comparison, "U1", reaction="a", at=T1)  # an older removal delivered late
    assert evals.cast_vote(db, comparison, "U1", "A", reaction="a", at=T1 + timedelta(seconds=4)).action == VoteAction.STALE
    # Tombstones are per voter, comparison and reaction.
    assert evals.cast_vote(db, comparison, "U2", "A", reaction="a", at=T1).action == VoteAction.CREATED
    assert evals.cast_vote(db, other, "U1", "A", reaction="a", at=T1).action == VoteAction.CREATED


def test_a_removal_racing_its_older_add_never_leaves_a_vote(db):
    """Each voter's add (t1) and removal (t2) are processed at the same moment on two threads, as two deliveries are."""
    [comparison, _] = _comparison_ids(db)
    voters = [f"U{i}" for i in range(8)]

    def deliver(index: int) -> None:
        voter = voters[index // 2]
        if index % 2:
            evals.remember_removal(db, comparison, voter, reaction="b", at=T1 + timedelta(seconds=1))
            evals.retract_vote(db, comparison, voter, reaction="b", at=T1 + timedelta(seconds=1))
        else:
            evals.cast_vote(db, comparison, voter, "B", reaction="b", at=T1)

    at_once(deliver, 2 * len(voters))
    assert evals.round_votes(db, evals.list_rounds(db)[0].id) == []

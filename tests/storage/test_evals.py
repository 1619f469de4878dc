"""Evaluation storage on SQLite and PostgreSQL: rounds, one vote per voter, moves, removals, pairs, held-out prompts."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from storage import eval_prompts, evals
from storage.errors import ValidationFailed
from storage.evals import RoundStatus
from storage.examples import save_capture
from storage.jobs import create_job, model_lineage, register_model
from storage.models import Comparison
from storage.pairs import add_pair, list_pairs, pair_records
from storage.records import dpo_record
from storage.snapshots import create_snapshot, snapshot_records
from tests.fixtures.concurrency import at_once

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _prompt(i: int) -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i}?"}]


def _round(db, n=4, **kwargs):
    result = evals.create_round(
        db, candidate_model="cand", baseline_model="base", prompts=[_prompt(i) for i in range(n)],
        channel="C1", rng=random.Random(1), **kwargs,
    )
    return result.example


def test_round_sides_are_balanced_and_models_follow_the_side(db):
    round_ = _round(db, n=10)
    comparisons = evals.round_comparisons(db, round_.id)
    assert len(comparisons) == 10
    assert sorted(c.candidate_side for c in comparisons).count("A") == 5
    for c in comparisons:
        assert (c.model_a if c.candidate_side == "A" else c.model_b) == "cand"
        assert {c.model_a, c.model_b} == {"cand", "base"}
        assert c.prompt_hash == eval_prompts.prompt_hash(c.prompt)
    # Answers land on the right side whatever the shuffle was.
    evals.set_answers(db, round_.id, "cand", {c.id: f"cand says {c.id}" for c in comparisons})
    evals.set_answers(db, round_.id, "base", {c.id: f"base says {c.id}" for c in comparisons})
    for c in evals.round_comparisons(db, round_.id):
        candidate_answer = c.answer_a if c.candidate_side == "A" else c.answer_b
        assert candidate_answer == f"cand says {c.id}"


def test_round_is_created_once_per_idempotency_key(db):
    first = evals.create_round(db, candidate_model="c", baseline_model="b", prompts=[_prompt(1)], idempotency_key="k1")
    again = evals.create_round(db, candidate_model="c", baseline_model="b", prompts=[_prompt(1)], idempotency_key="k1")
    assert first.created and not again.created and first.example.id == again.example.id
    assert len(evals.round_comparisons(db, first.example.id)) == 1
    with pytest.raises(ValidationFailed):
        evals.create_round(db, candidate_model="c", baseline_model="c", prompts=[_prompt(1)])
    with pytest.raises(ValidationFailed):
        evals.create_round(db, candidate_model="c", baseline_model="b", prompts=[])


def test_one_vote_per_voter_moves_and_removals(db):
    comparison = evals.round_comparisons(db, _round(db).id)[0]
    cid = comparison.id
    assert evals.cast_vote(db, cid, "U1", "A", reaction="a", at=T0).action == "created"
    # The same event delivered again: nothing changes.
    assert evals.cast_vote(db, cid, "U1", "A", reaction="a", at=T0).action == "unchanged"
    # A new reaction moves the vote.
    change = evals.cast_vote(db, cid, "U1", "B", reaction="b", at=T0 + timedelta(seconds=5))
    assert change.action == "moved" and change.vote.choice == "B"
    # Removing the old reaction (that no longer counts) leaves the vote alone.
    assert not evals.retract_vote(db, cid, "U1", reaction="a", at=T0 + timedelta(seconds=6))
    assert [v.choice for v in evals.votes_by_comparison(db, comparison.round_id)[cid]] == ["B"]
    # A late delivery of an older reaction does not overwrite the newer choice.
    assert evals.cast_vote(db, cid, "U1", "tie", reaction="handshake", at=T0 + timedelta(seconds=1)).action == "stale"
    assert [v.choice for v in evals.votes_by_comparison(db, comparison.round_id)[cid]] == ["B"]
    # Removing the reaction that cast the vote deletes it.
    assert evals.retract_vote(db, cid, "U1", reaction="b", at=T0 + timedelta(seconds=7))
    assert evals.votes_by_comparison(db, comparison.round_id)[cid] == []
    # Another voter is independent.
    evals.cast_vote(db, cid, "U2", "bad", reaction="-1", at=T0)
    assert evals.count_votes(db, comparison.round_id) == 1


def test_removal_falls_back_to_a_vote_reaction_still_there(db):
    cid = evals.round_comparisons(db, _round(db).id)[0].id
    evals.cast_vote(db, cid, "U1", "A", reaction="a", at=T0)
    evals.cast_vote(db, cid, "U1", "B", reaction="b", at=T0 + timedelta(seconds=1))
    # :b: removed while :a: is still there: the vote goes back to A, as of the removal.
    assert evals.retract_vote(db, cid, "U1", reaction="b", at=T0 + timedelta(seconds=2), fallback=("A", "a"))
    vote = evals.get_vote(db, cid, "U1")
    assert (vote.choice, vote.reaction) == ("A", "a")
    # Slack retries the removal: the vote is no longer cast by :b:, nothing changes.
    assert not evals.retract_vote(db, cid, "U1", reaction="b", at=T0 + timedelta(seconds=2), fallback=("A", "a"))
    assert not evals.retract_vote(db, cid, "U1", reaction="b", at=T0 + timedelta(seconds=2))
    assert evals.get_vote(db, cid, "U1").choice == "A"
    # A newer reaction is not undone by an older removal's fallback.
    evals.cast_vote(db, cid, "U1", "tie", reaction="handshake", at=T0 + timedelta(seconds=10))
    assert not evals.retract_vote(db, cid, "U1", reaction="handshake", at=T0 + timedelta(seconds=3), fallback=("A", "a"))
    assert evals.get_vote(db, cid, "U1").choice == "tie"
    # Removing the last one deletes the vote.
    assert evals.retract_vote(db, cid, "U1", reaction="handshake", at=T0 + timedelta(seconds=11))
    assert evals.get_vote(db, cid, "U1") is None


def test_concurrent_votes_from_one_voter_leave_one_row(db):
    cid = evals.round_comparisons(db, _round(db).id)[0].id
    errors = []

    def vote(i: int) -> None:
        try:
            choice = ["A", "B", "tie"][i % 3]
            evals.cast_vote(db, cid, "U1", choice, reaction=choice.lower(), at=T0 + timedelta(seconds=i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=vote, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    votes = evals.votes_by_comparison(db, _round_id_of(db, cid))[cid]
    # Whatever order the threads ran in, the newest reaction (i = 11 → "tie") wins.
    assert [(v.voter, v.choice) for v in votes] == [("U1", "tie")]


def _round_id_of(db, comparison_id):
    with db.session() as session:
        return session.get(Comparison, comparison_id).round_id


def test_comparison_lookup_by_message_and_round_transitions(db):
    round_ = _round(db, n=2)
    first, second = evals.round_comparisons(db, round_.id)
    evals.set_comparison_message(db, first.id, channel="C1", message_ts="111.000100")
    assert evals.comparison_for_message(db, "C1", "111.000100").id == first.id
    assert evals.comparison_for_message(db, "C2", "111.000100") is None
    assert evals.comparison_for_message(db, "C1", "999.1") is None

    assert evals.move_round(db, round_.id, RoundStatus.POSTING, from_status=RoundStatus.GENERATING)
    assert not evals.move_round(db, round_.id, RoundStatus.POSTING, from_status=RoundStatus.GENERATING)
    assert evals.move_round(db, round_.id, RoundStatus.OPEN, from_status=RoundStatus.POSTING, closes_at=T0)
    assert [r.id for r in evals.due_rounds(db, now=T0 + timedelta(seconds=1))] == [round_.id]
    assert evals.due_rounds(db, now=T0 - timedelta(seconds=1)) == []
    assert evals.close_round(db, round_.id)
    assert not evals.close_round(db, round_.id)  # closing twice is a no-op
    closed = evals.get_round(db, round_.id)
    assert closed.status == RoundStatus.CLOSED and closed.closed_at is not None
    assert evals.latest_round(db).id == round_.id


def test_decided_comparisons_become_dpo_pairs_once(db):
    round_ = _round(db, n=3)
    comparisons = evals.round_comparisons(db, round_.id)
    evals.set_answers(db, round_.id, "cand", {c.id: f"good answer {c.id}" for c in comparisons})
    evals.set_answers(db, round_.id, "base", {c.id: f"weak answer {c.id}" for c in comparisons})
    c0, c1, c2 = comparisons
    # c0: candidate wins 2-1; c1: a tie between sides; c2: mostly "both bad".
    evals.cast_vote(db, c0.id, "U1", c0.candidate_side, reaction="x")
    evals.cast_vote(db, c0.id, "U2", c0.candidate_side, reaction="x")
    evals.cast_vote(db, c0.id, "U3", "B" if c0.candidate_side == "A" else "A", reaction="x")
    evals.cast_vote(db, c1.id, "U1", "A", reaction="a")
    evals.cast_vote(db, c1.id, "U2", "B", reaction="b")
    evals.cast_vote(db, c2.id, "U1", "A", reaction="a")
    evals.cast_vote(db, c2.id, "U2", "bad", reaction="-1")
    evals.cast_vote(db, c2.id, "U3", "bad", reaction="-1")

    results = evals.pairs_from_round(db, round_.id)
    assert len(results) == 1 and results[0].created
    (pair_id, record), = list(pair_records(db))
    assert record["input"]["messages"] == c0.prompt
    assert record["preferred_output"] == [{"role": "assistant", "content": f"good answer {c0.id}"}]
    assert record["non_preferred_output"] == [{"role": "assistant", "content": f"weak answer {c0.id}"}]
    assert list_pairs(db)[0].source_kind == "vote" and list_pairs(db)[0].comparison_id == c0.id
    again = evals.pairs_from_round(db, round_.id)
    assert len(again) == 1 and not again[0].created and len(list_pairs(db)) == 1


def _approve(db, n):
    for i in range(n):
        record = {"messages": [{"role": "user", "content": f"How do I reset password {i}?"},
                               {"role": "assistant", "content": f"Click reset {i}."}]}
        save_capture(db, record=record, source_key=f"k{i}", channel="C", ts=f"{i}.0", thread_ts=None,
                     permalink=None, captured_by="U", status="approved")


def test_eval_items_use_validation_split_and_added_questions_but_never_training_prompts(db):
    _approve(db, 20)
    snapshot = create_snapshot(db, validation_fraction=0.2).snapshot
    model, _ = register_model(db, name="ft-1", backend="openai", base_model="gpt-4o-mini", location="ft:x", snapshot_id=snapshot.id)
    train = snapshot_records(db, snapshot.id, "train")
    # A hand-added question equal to a training prompt must be refused; a new one is used.
    eval_prompts.add_eval_prompt(db, train[0]["messages"][:1], added_by="U1")
    added = eval_prompts.add_eval_prompt(db, [{"role": "user", "content": "Brand new question?"}], added_by="U1")
    assert added.created and not eval_prompts.add_eval_prompt(db, [{"role": "user", "content": "Brand new question?"}]).created

    items = eval_prompts.eval_items(db, model)
    train_prompts = {eval_prompts.prompt_hash(r["messages"][:1]) for r in train}
    assert len(items) == 4 + 1
    assert all(item.prompt_hash not in train_prompts for item in items)
    assert {item.source for item in items} == {"validation", "added"}
    assert all(item.reference for item in items if item.source == "validation")
    sample = eval_prompts.eval_items(db, model, limit=3, seed=5)
    assert len(sample) == 3 and sample == eval_prompts.eval_items(db, model, limit=3, seed=5)

    with pytest.raises(ValidationFailed):
        eval_prompts.add_eval_prompt(db, [{"role": "assistant", "content": "no question"}])


def test_every_trained_turn_of_a_multi_turn_example_is_excluded(db):
    first_turn = [{"role": "user", "content": "Hi, my order is late."}]
    record = {"messages": [*first_turn, {"role": "assistant", "content": "Which order?"},
                           {"role": "user", "content": "Order 7."}, {"role": "assistant", "content": "It ships today."}]}
    for i, r in enumerate([record] + [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                                      for i in range(9)]):
        save_capture(db, record=r, source_key=f"m{i}", channel="C", ts=f"{i}.0", thread_ts=None, permalink=None,
                     captured_by="U", status="approved")
    snapshot = create_snapshot(db, validation_fraction=0.1).snapshot
    # The split is deterministic: with these records the multi-turn example lands in the train split.
    assert record["messages"] in [r["messages"] for r in snapshot_records(db, snapshot.id, "train")]
    hashes = eval_prompts.trained_prompt_hashes(db, snapshot.id)
    assert eval_prompts.prompt_hash(first_turn) in hashes  # the first answer was trained too
    assert eval_prompts.prompt_hash(record["messages"][:3]) in hashes
    model, _ = register_model(db, name="m", backend="openai", base_model="gpt-4o-mini", location="ft:m", snapshot_id=snapshot.id)
    eval_prompts.add_eval_prompt(db, first_turn)
    assert all(item.prompt != first_turn for item in eval_prompts.eval_items(db, model))


def test_a_dpo_model_is_never_asked_what_its_sft_parent_trained_on(db):
    # The DPO child's preference data: two prompts, one of which lands in its validation split.
    for i in range(2):
        add_pair(db, dpo_record([{"role": "user", "content": f"Where is parcel {i}?"}],
                                {"role": "assistant", "content": f"Parcel {i} ships today."},
                                {"role": "assistant", "content": "No idea."}), source_kind="import")
    child_snapshot = create_snapshot(db, kind="dpo", validation_fraction=0.5).snapshot
    (held_out,) = snapshot_records(db, child_snapshot.id, "validation")
    question = held_out["input"]["messages"]  # Q: held out for the child ...
    # ... but its SFT parent trained on Q (the split is deterministic: with these records Q lands in train).
    _approve(db, 9)
    save_capture(db, record={"messages": [*question, {"role": "assistant", "content": "Track it on the site."}]},
                 source_key="q", channel="C", ts="99.0", thread_ts=None, permalink=None, captured_by="U", status="approved")
    parent_snapshot = create_snapshot(db, validation_fraction=0.1).snapshot
    assert question in [r["messages"][:1] for r in snapshot_records(db, parent_snapshot.id, "train")]
    parent, _ = register_model(db, name="ft:sft-parent", backend="openai", base_model="gpt-4o-mini",
                               location="ft:sft-parent", snapshot_id=parent_snapshot.id)
    child, _ = register_model(db, name="ft:dpo-child", backend="openai", base_model="ft:sft-parent", location="ft:dpo-child",
                              snapshot_id=child_snapshot.id, metrics={"parent_model": parent.name})
    # A second DPO round continues the child; its job config names the parent (no metrics): the walk goes on.
    job = create_job(db, backend="openai", method="dpo", base_model="ft:dpo-child", config={"parent_model": child.name}).job
    grandchild, _ = register_model(db, name="ft:dpo-grandchild", backend="openai", base_model="ft:dpo-child",
                                   location="ft:dpo-grandchild", job_id=job.id, snapshot_id=child_snapshot.id)
    eval_prompts.add_eval_prompt(db, question, added_by="U1")  # Q added by hand as well
    fresh = eval_prompts.add_eval_prompt(db, [{"role": "user", "content": "A question nobody trained on?"}]).example

    q_hash = eval_prompts.prompt_hash(question)
    assert q_hash not in eval_prompts.trained_prompt_hashes(db, child_snapshot.id)  # the child's own split does not see it
    for model in (child, grandchild):
        items = eval_prompts.eval_items(db, model)
        assert q_hash not in {item.prompt_hash for item in items}
        assert [item.prompt for item in items] == [fresh.messages]  # the other questions still count
    assert [m.name for m in model_lineage(db, grandchild)] == [
        "ft:dpo-grandchild", "ft:dpo-child", "ft:sft-parent"]
    # The parent itself is evaluated on its own held-out data and the hand-added questions, Q excluded.
    assert q_hash not in {item.prompt_hash for item in eval_prompts.eval_items(db, parent)}


def test_the_same_question_or_pair_stored_at_once_from_many_threads_is_stored_once(db):
    question = [{"role": "user", "content": "Can I change my plan mid-month?"}]
    prompts = at_once(lambda _index: eval_prompts.add_eval_prompt(db, question, added_by="U1"), 6)
    assert sum(r.created for r in prompts) == 1 and len({r.example.id for r in prompts}) == 1
    assert len(eval_prompts.list_eval_prompts(db)) == 1
    record = dpo_record(question, {"role": "assistant", "content": "Yes."}, {"role": "assistant", "content": "No."})
    pairs = at_once(lambda _index: add_pair(db, record, source_kind="import"), 6)
    assert sum(r.created for r in pairs) == 1 and len({r.pair.id for r in pairs}) == 1 and len(list_pairs(db)) == 1


def test_judge_verdicts_upsert(db):
    cid = evals.round_comparisons(db, _round(db).id)[0].id
    evals.save_verdict(db, cid, "gpt-4o", "A", {"orders": ["A", "A"]})
    evals.save_verdict(db, cid, "gpt-4o", "tie", {"orders": ["A", "B"]})
    evals.save_verdict(db, cid, "gpt-4.1", "B")
    verdicts = evals.round_verdicts(db, _round_id_of(db, cid), "gpt-4o")
    assert [(v.comparison_id, v.choice, v.detail) for v in verdicts] == [(cid, "tie", {"orders": ["A", "B"]})]
    assert len(evals.round_verdicts(db, _round_id_of(db, cid))) == 2

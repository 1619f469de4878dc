"""Snapshots: immutable, content-addressed, deterministically split copies of the approved examples or pairs."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage.errors import ValidationFailed
from storage.examples import import_records, set_status, update_example
from storage.models import Example
from storage.pairs import add_pair
from storage.snapshots import (
    create_snapshot,
    prompt_hashes,
    snapshot_members,
    snapshot_records,
    write_jsonl,
)
from trainers.tiny_model import sample_conversations


def _approve(db, n: int, seed: int = 0) -> list[int]:
    import_records(db, enumerate(sample_conversations(n, seed=seed), 1), source_file="t.jsonl", approved_by="U1")
    with db.session() as session:
        return list(session.scalars(select(Example.id).order_by(Example.id)))


def test_split_is_90_10_deterministic_and_the_same_set_gives_the_same_snapshot(db):
    _approve(db, 30)
    first = create_snapshot(db, created_by="U1")
    assert first.created
    assert (first.snapshot.train_count, first.snapshot.validation_count) == (27, 3)
    again = create_snapshot(db)
    assert not again.created and again.snapshot.id == first.snapshot.id
    validation = snapshot_records(db, first.snapshot.id, "validation")
    train = snapshot_records(db, first.snapshot.id, "train")
    assert len(validation) == 3 and len(train) == 27
    assert not {str(r) for r in validation} & {str(r) for r in train}
    # A different fraction or seed is a different split, hence a different snapshot.
    other = create_snapshot(db, validation_fraction=0.2)
    assert other.created and other.snapshot.validation_count == 6
    reseeded = create_snapshot(db, seed=7)
    assert reseeded.snapshot.id != first.snapshot.id
    assert snapshot_records(db, reseeded.snapshot.id, "validation") != validation


def test_small_sets_still_get_one_validation_example_and_too_small_sets_are_refused(db):
    _approve(db, 3)
    snapshot = create_snapshot(db).snapshot
    assert (snapshot.train_count, snapshot.validation_count) == (2, 1)
    with pytest.raises(ValidationFailed, match="between 0 and 1"):
        create_snapshot(db, validation_fraction=1.5)


def test_no_approved_examples_is_a_clear_error(db):
    with pytest.raises(ValidationFailed, match="no approved examples"):
        create_snapshot(db)
    ids = _approve(db, 1)
    with pytest.raises(ValidationFailed, match="at least 2 distinct records"):
        create_snapshot(db)
    set_status(db, ids[0], "rejected", by="U1")
    with pytest.raises(ValidationFailed, match="no approved examples"):
        create_snapshot(db)


def test_pinned_examples_keep_their_split(db):
    ids = _approve(db, 20)
    with db.session() as session:
        for example_id, pin in ((ids[0], "validation"), (ids[1], "validation"), (ids[2], "train")):
            session.get(Example, example_id).split = pin
    snapshot = create_snapshot(db).snapshot
    members = {m.example_id: m.split for m in snapshot_members(db, snapshot.id)}
    assert members[ids[0]] == members[ids[1]] == "validation" and members[ids[2]] == "train"
    assert snapshot.validation_count == 2  # round(20 × 0.1) = 2, both filled by the pins


def test_members_are_frozen_copies(db, tmp_path):
    ids = _approve(db, 10)
    snapshot = create_snapshot(db).snapshot
    before = snapshot_records(db, snapshot.id)
    edited = {"messages": [{"role": "user", "content": "changed"}, {"role": "assistant", "content": "new answer"}]}
    update_example(db, ids[0], record=edited)
    assert snapshot_records(db, snapshot.id) == before
    # The live set changed, so freezing again makes a new snapshot that contains the edit.
    fresh = create_snapshot(db).snapshot
    assert fresh.id != snapshot.id and edited in snapshot_records(db, fresh.id)
    path = write_jsonl(db, snapshot.id, "train", tmp_path / "train.jsonl")
    assert len(path.read_text().splitlines()) == snapshot.train_count


def test_prompt_hashes_cover_the_training_prompts(db):
    _approve(db, 10)
    snapshot = create_snapshot(db).snapshot
    train_prompts = prompt_hashes(db, snapshot.id, "train")
    validation_prompts = prompt_hashes(db, snapshot.id, "validation")
    assert len(train_prompts) == 9 and not train_prompts & validation_prompts


def test_dpo_snapshot_freezes_preference_pairs(db):
    for i in range(12):
        add_pair(db, {"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                      "preferred_output": [{"role": "assistant", "content": "good"}],
                      "non_preferred_output": [{"role": "assistant", "content": "bad"}]}, source_kind="import")
    result = create_snapshot(db, kind="dpo")
    assert result.snapshot.kind == "dpo" and result.snapshot.train_count + result.snapshot.validation_count == 12
    assert all("preferred_output" in r for r in snapshot_records(db, result.snapshot.id))
    assert create_snapshot(db, kind="dpo").snapshot.id == result.snapshot.id

"""Quoted local jobs on the tiny offline model, for the tests that run the training worker (as a child process or
on Ray): a few fast optimizer steps on 12 approved one-turn conversations."""

from __future__ import annotations

from pathlib import Path

from storage.examples import import_records
from trainers.tiny_model import sample_conversations
from trainers.training.jobs import quote_job

# A large step on the tiny model shows a loss drop within a handful of steps.
FAST = dict(max_steps=10, learning_rate=3e-2, batch_size=4, max_length=256, lora_dropout=0.0, lora_r=8, lora_alpha=16)


def quoted_local_job(db, base_model: Path, **options):
    import_records(db, enumerate(sample_conversations(12, max_turns=1), 1), source_file="t.jsonl", approved_by="U1")
    return quote_job(db, backend="local", model=str(base_model), local_options={**FAST, **options}).job

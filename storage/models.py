"""The database schema: every table ftbot keeps.

Schema changes need a migration in ``storage/migrations/versions``; ``tests/test_migrations.py``
fails when the models and the migrations disagree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage.types import UTCDateTime


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _json(nullable: bool = True) -> Any:
    # none_as_null: a missing value is SQL NULL (so "IS NULL" finds it), not the JSON text 'null'.
    return Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=nullable))


class ExampleStatus:
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    ALL = (PENDING, APPROVED, REJECTED)


class Example(SQLModel, table=True):
    """One chat-format training example (an OpenAI SFT line) and where it came from."""

    __tablename__ = "examples"

    id: Optional[int] = Field(default=None, primary_key=True)
    # sha256 of the canonical JSON of (messages, tools, parallel_tool_calls): exact duplicates are impossible.
    content_hash: str = Field(max_length=64, unique=True, index=True)
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    tools: Optional[list[dict[str, Any]]] = _json()
    parallel_tool_calls: Optional[bool] = None
    status: str = Field(default=ExampleStatus.PENDING, max_length=16, index=True)
    # "slack", "import" or "console"
    source_kind: str = Field(max_length=16)
    # Unique where set: a Slack message ("slack:<channel>:<ts>") captured twice updates one example.
    source_key: Optional[str] = Field(default=None, max_length=200, unique=True)
    source_channel: Optional[str] = Field(default=None, max_length=64)
    source_ts: Optional[str] = Field(default=None, max_length=32)
    source_thread_ts: Optional[str] = Field(default=None, max_length=32)
    source_permalink: Optional[str] = Field(default=None, sa_column=Column(Text))
    source_file: Optional[str] = Field(default=None, sa_column=Column(Text))
    source_line: Optional[int] = None
    captured_by: Optional[str] = Field(default=None, max_length=64)
    approved_by: Optional[str] = Field(default=None, max_length=64)
    approved_at: Optional[datetime] = Field(default=None, sa_column=Column(UTCDateTime()))
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # "train", "validation" or None: a pin the user set; snapshots split the rest deterministically.
    split: Optional[str] = Field(default=None, max_length=16)
    # PII findings the reviewer chose to keep (e.g. a public support address), so they do not block uploads.
    pii_allowed: bool = False
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Snapshot(SQLModel, table=True):
    """An immutable, content-addressed copy of the approved examples that a job trains on."""

    __tablename__ = "snapshots"

    id: Optional[int] = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, index=True)
    # "sft" (examples) or "dpo" (preference pairs)
    kind: str = Field(default="sft", max_length=8)
    train_count: int = 0
    validation_count: int = 0
    validation_fraction: float = 0.1
    seed: int = 0
    created_by: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime = _created()


class SnapshotMember(SQLModel, table=True):
    """A frozen copy of one record in a snapshot; later edits of the example do not touch it."""

    __tablename__ = "snapshot_members"
    __table_args__ = (UniqueConstraint("snapshot_id", "position"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="snapshots.id", index=True)
    example_id: Optional[int] = Field(default=None, foreign_key="examples.id")
    pair_id: Optional[int] = Field(default=None, foreign_key="preference_pairs.id")
    split: str = Field(max_length=16)
    position: int
    content_hash: str = Field(max_length=64)
    # The OpenAI line (SFT or DPO format) exactly as it is uploaded or trained on.
    record: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class JobStatus:
    QUOTED = "quoted"
    PENDING = "pending"
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class Job(SQLModel, table=True):
    """A training run on OpenAI or on-prem, from quote to result."""

    __tablename__ = "jobs"

    id: Optional[int] = Field(default=None, primary_key=True)
    # Makes a double-clicked Start button or a retried request create one job.
    idempotency_key: Optional[str] = Field(default=None, max_length=200, unique=True)
    backend: str = Field(max_length=16)  # "openai" | "local"
    method: str = Field(default="sft", max_length=8)  # "sft" | "dpo"
    status: str = Field(default=JobStatus.QUOTED, max_length=24, index=True)
    snapshot_id: Optional[int] = Field(default=None, foreign_key="snapshots.id")
    base_model: str = Field(max_length=200)
    result_model: Optional[str] = Field(default=None, sa_column=Column(Text))
    external_id: Optional[str] = Field(default=None, max_length=128, index=True)
    training_file_id: Optional[str] = Field(default=None, max_length=128)
    validation_file_id: Optional[str] = Field(default=None, max_length=128)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    quote: Optional[dict[str, Any]] = _json()
    estimated_tokens: Optional[int] = None
    trained_tokens: Optional[int] = None
    estimated_cost_usd: Optional[float] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    log_tail: Optional[str] = Field(default=None, sa_column=Column(Text))
    worker_pid: Optional[int] = None
    progress: Optional[dict[str, Any]] = _json()
    created_by: Optional[str] = Field(default=None, max_length=64)
    slack_channel: Optional[str] = Field(default=None, max_length=64)
    slack_ts: Optional[str] = Field(default=None, max_length=32)
    created_at: datetime = _created()
    updated_at: datetime = _created()
    started_at: Optional[datetime] = Field(default=None, sa_column=Column(UTCDateTime()))
    finished_at: Optional[datetime] = Field(default=None, sa_column=Column(UTCDateTime()))


class JobMetric(SQLModel, table=True):
    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    step: int
    train_loss: Optional[float] = None
    valid_loss: Optional[float] = None
    extra: Optional[dict[str, Any]] = _json()
    created_at: datetime = _created()


class RegisteredModel(SQLModel, table=True):
    """A model a finished job produced (or a baseline the team registered)."""

    __tablename__ = "models"

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    backend: str = Field(max_length=16)  # "openai" | "local"
    base_model: str = Field(max_length=200)
    # OpenAI model id ("ft:gpt-4o-mini:...") or the adapter directory of a local run.
    location: str = Field(sa_column=Column(Text, nullable=False))
    job_id: Optional[int] = Field(default=None, foreign_key="jobs.id")
    snapshot_id: Optional[int] = Field(default=None, foreign_key="snapshots.id")
    metrics: Optional[dict[str, Any]] = _json()
    cost_usd: Optional[float] = None
    active: bool = False
    created_at: datetime = _created()


class EvalRound(SQLModel, table=True):
    __tablename__ = "eval_rounds"

    id: Optional[int] = Field(default=None, primary_key=True)
    idempotency_key: Optional[str] = Field(default=None, max_length=200, unique=True)
    candidate_model: str = Field(max_length=200)
    baseline_model: str = Field(max_length=200)
    channel: Optional[str] = Field(default=None, max_length=64)
    status: str = Field(default="open", max_length=16)  # "generating" | "open" | "closed"
    created_by: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime = _created()
    closes_at: Optional[datetime] = Field(default=None, sa_column=Column(UTCDateTime()))
    closed_at: Optional[datetime] = Field(default=None, sa_column=Column(UTCDateTime()))


class EvalPrompt(SQLModel, table=True):
    """A held-out question added with ``/ft eval add`` (the snapshot's validation split is the other source)."""

    __tablename__ = "eval_prompts"

    id: Optional[int] = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True)
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    source_key: Optional[str] = Field(default=None, max_length=200)
    added_by: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime = _created()


class Comparison(SQLModel, table=True):
    """One blind side-by-side question: which model is A and which is B is stored, never shown."""

    __tablename__ = "comparisons"

    id: Optional[int] = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="eval_rounds.id", index=True)
    # Hash of the prompt messages; checked against the candidate's training split.
    prompt_hash: str = Field(max_length=64)
    prompt: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    model_a: str = Field(max_length=200)
    model_b: str = Field(max_length=200)
    answer_a: str = Field(sa_column=Column(Text, nullable=False))
    answer_b: str = Field(sa_column=Column(Text, nullable=False))
    candidate_side: str = Field(max_length=1)  # "A" | "B"
    channel: Optional[str] = Field(default=None, max_length=64)
    message_ts: Optional[str] = Field(default=None, max_length=32, index=True)
    created_at: datetime = _created()


class Vote(SQLModel, table=True):
    """One voter's current choice on one comparison; a new reaction moves it."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("comparison_id", "voter"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    voter: str = Field(max_length=64)
    choice: str = Field(max_length=8)  # "A" | "B" | "tie" | "bad"
    # The reaction that cast this vote, so removing that reaction removes the vote.
    reaction: str = Field(max_length=64)
    created_at: datetime = _created()
    updated_at: datetime = _created()


class JudgeVerdict(SQLModel, table=True):
    __tablename__ = "judge_verdicts"
    __table_args__ = (UniqueConstraint("comparison_id", "judge_model"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    judge_model: str = Field(max_length=200)
    choice: str = Field(max_length=8)  # "A" | "B" | "tie"
    detail: Optional[dict[str, Any]] = _json()
    created_at: datetime = _created()


class PreferencePair(SQLModel, table=True):
    """A DPO pair: from a decided comparison or an imported preference JSONL line."""

    __tablename__ = "preference_pairs"

    id: Optional[int] = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, index=True)
    # The OpenAI preference line: {"input": {"messages": ...}, "preferred_output": [...], "non_preferred_output": [...]}
    record: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    source_kind: str = Field(max_length=16)  # "vote" | "import"
    comparison_id: Optional[int] = Field(default=None, foreign_key="comparisons.id")
    source_file: Optional[str] = Field(default=None, sa_column=Column(Text))
    source_line: Optional[int] = None
    created_at: datetime = _created()


class ProcessedEvent(SQLModel, table=True):
    """Slack delivers events at least once: the first delivery of an event_id claims it here."""

    __tablename__ = "processed_events"

    event_id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = _created()


class Setting(SQLModel, table=True):
    """Small key/value state: onboarding seen, per-channel system prompts set from Slack."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, max_length=200)
    value: Any = Field(default=None, sa_column=Column(JSON))
    updated_at: datetime = _created()

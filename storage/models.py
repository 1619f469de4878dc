"""The database schema: every table ftbot keeps (the values its status columns hold are in ``storage.vocabulary``).

Schema changes need a migration in ``storage/migrations/versions``; ``tests/storage/test_migrations.py``
fails when the models and the migrations disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage.types import UTCDateTime
from storage.vocabulary import (
    DeploymentStatus,
    ExampleStatus,
    InboxStatus,
    JobStatus,
    TrainingMethod,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Stored(Protocol):
    @property
    def id(self) -> int | None: ...


def stored_id(row: _Stored) -> int:
    """The primary key of a row read from (or flushed to) the database.

    The models type ``id`` as ``int | None`` because a row built in Python has none until it is flushed; every row
    a query returns has one. Raises ``ValueError`` for a row that was never stored.
    """
    if row.id is None:
        raise ValueError(f"this {type(row).__name__} has no id: it was never stored")
    return row.id


def _created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _json(nullable: bool = True) -> Any:
    # none_as_null: a missing value is SQL NULL (so "IS NULL" finds it), not the JSON text 'null'.
    return Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=nullable))


class Example(SQLModel, table=True):
    """One chat-format training example (an OpenAI SFT line) and where it came from."""

    __tablename__ = "examples"

    id: int | None = Field(default=None, primary_key=True)
    # sha256 of the canonical JSON of (messages, tools, parallel_tool_calls): exact duplicates are impossible.
    content_hash: str = Field(max_length=64, unique=True, index=True)
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    tools: list[dict[str, Any]] | None = _json()
    parallel_tool_calls: bool | None = None
    status: str = Field(default=ExampleStatus.PENDING, max_length=16, index=True)
    # An ExampleSource value.
    source_kind: str = Field(max_length=16)
    # Unique where set: a Slack message ("slack:<channel>:<ts>") captured twice updates one example.
    source_key: str | None = Field(default=None, max_length=200, unique=True)
    source_channel: str | None = Field(default=None, max_length=64)
    source_ts: str | None = Field(default=None, max_length=32)
    source_thread_ts: str | None = Field(default=None, max_length=32)
    source_permalink: str | None = Field(default=None, sa_column=Column(Text))
    source_file: str | None = Field(default=None, sa_column=Column(Text))
    source_line: int | None = None
    captured_by: str | None = Field(default=None, max_length=64)
    approved_by: str | None = Field(default=None, max_length=64)
    approved_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # A Split value or None: a pin the user set; snapshots split the rest deterministically.
    split: str | None = Field(default=None, max_length=16)
    # PII findings the reviewer chose to keep (e.g. a public support address), so they do not block uploads.
    pii_allowed: bool = False
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Snapshot(SQLModel, table=True):
    """An immutable, content-addressed copy of the approved examples that a job trains on."""

    __tablename__ = "snapshots"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, index=True)
    # A TrainingMethod value: SFT examples or DPO preference pairs.
    kind: str = Field(default=TrainingMethod.SFT, max_length=8)
    train_count: int = 0
    validation_count: int = 0
    validation_fraction: float = 0.1
    seed: int = 0
    created_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = _created()


class SnapshotMember(SQLModel, table=True):
    """A frozen copy of one record in a snapshot; later edits of the example do not touch it."""

    __tablename__ = "snapshot_members"
    __table_args__ = (UniqueConstraint("snapshot_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    snapshot_id: int = Field(foreign_key="snapshots.id", index=True)
    example_id: int | None = Field(default=None, foreign_key="examples.id")
    pair_id: int | None = Field(default=None, foreign_key="preference_pairs.id")
    split: str = Field(max_length=16)  # a Split value
    position: int
    content_hash: str = Field(max_length=64)
    # The OpenAI line (SFT or DPO format) exactly as it is uploaded or trained on.
    record: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class Job(SQLModel, table=True):
    """A training run on OpenAI or on-prem, from quote to result."""

    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    # Makes a double-clicked Start button or a retried request create one job.
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    backend: str = Field(max_length=16)  # a TrainingBackend value
    method: str = Field(default=TrainingMethod.SFT, max_length=8)
    status: str = Field(default=JobStatus.QUOTED, max_length=24, index=True)
    snapshot_id: int | None = Field(default=None, foreign_key="snapshots.id")
    base_model: str = Field(max_length=200)
    result_model: str | None = Field(default=None, sa_column=Column(Text))
    external_id: str | None = Field(default=None, max_length=128, index=True)
    training_file_id: str | None = Field(default=None, max_length=128)
    validation_file_id: str | None = Field(default=None, max_length=128)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    quote: dict[str, Any] | None = _json()
    estimated_tokens: int | None = None
    trained_tokens: int | None = None
    estimated_cost_usd: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    log_tail: str | None = Field(default=None, sa_column=Column(Text))
    worker_pid: int | None = None
    progress: dict[str, Any] | None = _json()
    created_by: str | None = Field(default=None, max_length=64)
    slack_channel: str | None = Field(default=None, max_length=64)
    slack_ts: str | None = Field(default=None, max_length=32)
    created_at: datetime = _created()
    updated_at: datetime = _created()
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    # When the bot posted the job's final state to Slack (NULL: a bot still has to relay it, even after a crash).
    announced_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class JobMetric(SQLModel, table=True):
    __tablename__ = "job_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None
    extra: dict[str, Any] | None = _json()
    created_at: datetime = _created()


class RegisteredModel(SQLModel, table=True):
    """A model a finished job produced (or a baseline the team registered)."""

    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    backend: str = Field(max_length=16)  # a TrainingBackend value
    base_model: str = Field(max_length=200)
    # OpenAI model id ("ft:gpt-4o-mini:...") or the adapter directory of a local run.
    location: str = Field(sa_column=Column(Text, nullable=False))
    job_id: int | None = Field(default=None, foreign_key="jobs.id")
    snapshot_id: int | None = Field(default=None, foreign_key="snapshots.id")
    metrics: dict[str, Any] | None = _json()
    cost_usd: float | None = None
    active: bool = False
    created_at: datetime = _created()


class EvalRound(SQLModel, table=True):
    __tablename__ = "eval_rounds"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    candidate_model: str = Field(max_length=200)
    baseline_model: str = Field(max_length=200)
    channel: str | None = Field(default=None, max_length=64)
    status: str = Field(default="open", max_length=16)  # "generating" | "open" | "closed"
    created_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = _created()
    closes_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    closed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class EvalPrompt(SQLModel, table=True):
    """A held-out question added with ``/ft eval add`` (the snapshot's validation split is the other source)."""

    __tablename__ = "eval_prompts"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True)
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    # The team's reply to the question, when it was added with one (a link to a team reply, an SFT line): the
    # held-out loss (``ftbot eval score``) measures how likely a model finds it.
    reference: str | None = Field(default=None, sa_column=Column(Text))
    source_key: str | None = Field(default=None, max_length=200)
    added_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = _created()


class Comparison(SQLModel, table=True):
    """One blind side-by-side question: which model is A and which is B is stored, never shown."""

    __tablename__ = "comparisons"

    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="eval_rounds.id", index=True)
    # Hash of the prompt messages; checked against the candidate's training split.
    prompt_hash: str = Field(max_length=64)
    prompt: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    model_a: str = Field(max_length=200)
    model_b: str = Field(max_length=200)
    answer_a: str = Field(sa_column=Column(Text, nullable=False))
    answer_b: str = Field(sa_column=Column(Text, nullable=False))
    candidate_side: str = Field(max_length=1)  # "A" | "B"
    channel: str | None = Field(default=None, max_length=64)
    message_ts: str | None = Field(default=None, max_length=32, index=True)
    created_at: datetime = _created()


class Vote(SQLModel, table=True):
    """One voter's current choice on one comparison; a new reaction moves it."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("comparison_id", "voter"),)

    id: int | None = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    voter: str = Field(max_length=64)
    choice: str = Field(max_length=8)  # "A" | "B" | "tie" | "bad"
    # The reaction that cast this vote, so removing that reaction removes the vote.
    reaction: str = Field(max_length=64)
    created_at: datetime = _created()
    updated_at: datetime = _created()


class VoteTombstone(SQLModel, table=True):
    """A vote reaction a voter removed, and the time of that removal.

    Slack does not order its deliveries: the ``reaction_added`` of a reaction removed later may arrive after the
    ``reaction_removed``. An add older than the newest removal of the same reaction casts nothing.
    """

    __tablename__ = "vote_tombstones"
    __table_args__ = (UniqueConstraint("comparison_id", "voter", "reaction"),)

    id: int | None = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    voter: str = Field(max_length=64)
    reaction: str = Field(max_length=64)
    removed_at: datetime = _created()


class JudgeVerdict(SQLModel, table=True):
    __tablename__ = "judge_verdicts"
    __table_args__ = (UniqueConstraint("comparison_id", "judge_model"),)

    id: int | None = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    judge_model: str = Field(max_length=200)
    choice: str = Field(max_length=8)  # "A" | "B" | "tie"
    detail: dict[str, Any] | None = _json()
    created_at: datetime = _created()


class PreferencePair(SQLModel, table=True):
    """A DPO pair: from a decided comparison or an imported preference JSONL line."""

    __tablename__ = "preference_pairs"

    id: int | None = Field(default=None, primary_key=True)
    content_hash: str = Field(max_length=64, unique=True, index=True)
    # The OpenAI preference line: {"input": {"messages": ...}, "preferred_output": [...], "non_preferred_output": [...]}
    record: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    source_kind: str = Field(max_length=16)  # a PairSource value
    comparison_id: int | None = Field(default=None, foreign_key="comparisons.id")
    source_file: str | None = Field(default=None, sa_column=Column(Text))
    source_line: int | None = None
    created_at: datetime = _created()


class ProcessedEvent(SQLModel, table=True):
    """Slack delivers events at least once: the first delivery of an event_id claims it here."""

    __tablename__ = "processed_events"

    event_id: str = Field(primary_key=True, max_length=128)
    created_at: datetime = _created()


class ScheduledRun(SQLModel, table=True):
    """The latest run time of each scheduled job (bot.scheduler) that a bot process claimed: two bots on one database
    (a rolling deploy) both find a job due, and only the one whose claim moves ``run_time`` forward runs it."""

    __tablename__ = "scheduled_runs"

    job_id: str = Field(primary_key=True, max_length=191)  # APScheduler's job id (its own table's key length)
    run_time: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    owner: str = Field(max_length=200)  # "host:pid" of the process that claimed it
    claimed_at: datetime = _created()


class Deployment(SQLModel, table=True):
    """A model served on a Together AI dedicated endpoint, quoted, started and stopped by an admin."""

    __tablename__ = "deployments"

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=200, index=True)  # the registered model (Together's model_output_name)
    status: str = Field(default=DeploymentStatus.QUOTED, max_length=16, index=True)  # a DeploymentStatus value
    together_model: str = Field(sa_column=Column(Text, nullable=False))  # projects/{project}/models/{id}
    config: str = Field(sa_column=Column(Text, nullable=False))  # projects/{project}/configs/{id}: the hardware
    hardware: str = Field(max_length=128)  # the instance type, e.g. 1xnvidia-h100-80gb
    price_cents_per_hour: int  # Together's on-demand price of one replica
    idle_minutes: int  # the inactive timeout sent to Together
    endpoint_id: str | None = Field(default=None, max_length=128)
    endpoint_name: str | None = Field(default=None, max_length=256)  # what inference requests pass as ``model``
    deployment_id: str | None = Field(default=None, max_length=128)
    error: str | None = Field(default=None, sa_column=Column(Text))
    requested_by: str | None = Field(default=None, max_length=64)
    started_by: str | None = Field(default=None, max_length=64)
    stopped_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = _created()
    started_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    stopped_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class SlackEvent(SQLModel, table=True):
    """The inbox: every Slack event is stored here before it is acknowledged, and processed from here.

    A process that dies after the ack leaves the row pending; the next process (or Slack's retry) processes it.
    While one process works on an event it holds a lease (``owner`` until ``leased_until``).
    """

    __tablename__ = "slack_events"

    event_id: str = Field(primary_key=True, max_length=128)
    body: str = Field(sa_column=Column(Text, nullable=False))  # the request body as Slack sent it
    status: str = Field(default=InboxStatus.PENDING, max_length=16, index=True)
    attempts: int = 0
    owner: str | None = Field(default=None, max_length=200)  # "host:pid:token" of the process working on it
    leased_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    received_at: datetime = _created()
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class Setting(SQLModel, table=True):
    """Small key/value state: onboarding seen, per-channel system prompts set from Slack."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, max_length=200)
    value: Any = Field(default=None, sa_column=Column(JSON))
    updated_at: datetime = _created()


class CaptureDraft(SQLModel, table=True):
    """A capture form being edited in Slack: the modal's ``private_metadata`` carries only the key.

    Kept here rather than in the view because a long thread would exceed Slack's 3000-character metadata limit.
    """

    __tablename__ = "capture_drafts"

    # "capture_draft:<source key>:<user>", the key drafts had in the settings table before revision 0002,
    # so forms opened before an upgrade still find theirs.
    key: str = Field(primary_key=True, max_length=200)
    draft: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()
    updated_at: datetime = _created()


class ReplyDraft(SQLModel, table=True):
    """A reply the model in use drafted for an agent in a customer thread, and what the agent did with it.

    Every decided draft is evidence about the model: sent as is, edited (the edit becomes an example and a
    preference pair) or discarded (the agent's own reply in the thread becomes a preference pair).
    """

    __tablename__ = "drafts"
    # record_agent_reply looks a thread's drafts up on every agent reply.
    __table_args__ = (Index("ix_drafts_channel_thread_ts", "channel", "thread_ts"),)

    id: int | None = Field(default=None, primary_key=True)
    # What makes a request idempotent ("mention:C1:1700.1"): Slack's retries of one request find one draft.
    request_key: str = Field(max_length=200, unique=True)
    channel: str = Field(max_length=64)
    thread_ts: str = Field(max_length=32)
    source_ts: str = Field(max_length=32)  # the customer message the draft answers
    requested_by: str = Field(max_length=64)  # the agent it was offered to
    model: str = Field(max_length=200)  # the registered model's name
    backend: str = Field(max_length=16)  # a TrainingBackend value
    # The messages as sent to the model (personal data redacted when they went to OpenAI).
    prompt: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    prompt_hash: str = Field(max_length=64)  # storage.eval_prompts.prompt_hash of ``prompt``
    draft: str = Field(sa_column=Column(Text, nullable=False))
    final_text: str | None = Field(default=None, sa_column=Column(Text))  # what was posted (Send or Edit)
    # A DraftOutcome value; None while the agent has not decided.
    outcome: str | None = Field(default=None, max_length=16, index=True)
    discard_reason: str | None = Field(default=None, sa_column=Column(Text))
    decided_by: str | None = Field(default=None, max_length=64)
    decided_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    latency_ms: int | None = None  # from the request to the draft shown to the agent
    generation_ms: int | None = None  # the model's own time
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    posted_ts: str | None = Field(default=None, max_length=32)  # the thread message Send or Edit posted
    example_id: int | None = Field(default=None, foreign_key="examples.id")
    pair_id: int | None = Field(default=None, foreign_key="preference_pairs.id")
    created_at: datetime = _created()

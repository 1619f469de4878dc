"""The shared vocabulary: ftbot's domain values, as StrEnums.

Their values are the strings stored in the database (``storage.models`` declares the columns as plain strings, so a
value read back compares equal to its member) and printed in JSON output.
"""

from __future__ import annotations

from enum import StrEnum, nonmember


class ExampleStatus(StrEnum):
    """Where an example stands in review; only approved examples are trained on."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ExampleSource(StrEnum):
    """Where an example came from (``Example.source_kind``)."""

    SLACK = "slack"
    IMPORT = "import"
    # The local console's fake workspace (``ftbot console``).
    CONSOLE = "console"
    # A model's draft that an agent edited (or sent as is, with ``FTBOT_DRAFTS_SENT_AS_EXAMPLES``).
    DRAFT = "draft"


class Split(StrEnum):
    """The part of a snapshot a record belongs to (also a pin on an example)."""

    TRAIN = "train"
    VALIDATION = "validation"


class TrainingMethod(StrEnum):
    """What a job trains with, and so what a snapshot holds: SFT examples or DPO preference pairs."""

    SFT = "sft"
    DPO = "dpo"


class TrainingBackend(StrEnum):
    """Where a job trains: OpenAI's API, on-prem, or Together AI (whose LoRA adapter is then brought home and runs
    like an on-prem one)."""

    OPENAI = "openai"
    LOCAL = "local"
    TOGETHER = "together"


class PairSource(StrEnum):
    """Where a preference pair came from (``PreferencePair.source_kind``)."""

    VOTE = "vote"
    IMPORT = "import"
    DRAFT_EDIT = "draft_edit"  # an agent's edit of a draft, preferred over the draft
    DRAFT_REPLY = "draft_reply"  # an agent's own reply after discarding a draft, preferred over the draft


class DraftOutcome(StrEnum):
    """What became of a reply draft (``ReplyDraft.outcome``; None while its agent has not decided)."""

    SENT = "sent"  # posted as the model wrote it
    EDITED = "edited"  # posted after the agent changed it
    DISCARDED = "discarded"
    EXPIRED = "expired"  # nobody decided within ``FTBOT_DRAFT_EXPIRE_HOURS``


class JobStatus(StrEnum):
    """A training job's progress, from the quote shown before starting to its end."""

    QUOTED = "quoted"
    PENDING = "pending"
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The statuses a job never leaves (a group, not a status of its own).
    FINISHED = nonmember((SUCCEEDED, FAILED, CANCELLED))


class DeploymentStatus(StrEnum):
    """A Together AI dedicated endpoint for a model, from the quote shown before the Deploy click to its stop."""

    QUOTED = "quoted"  # shown with Deploy / Cancel: nothing exists on Together
    CREATING = "creating"  # the Deploy click claimed it; Together is creating the endpoint
    RUNNING = "running"  # created on Together: billed per minute until it is stopped (or stops itself when idle)
    STOPPING = "stopping"  # an undeploy claimed it; Together is deleting it
    STOPPED = "stopped"
    FAILED = "failed"  # Together refused: nothing bills
    DISCARDED = "discarded"  # the quote's Cancel
    # The statuses in which an endpoint exists (or is being created) on Together: one per model at a time.
    ACTIVE = nonmember((CREATING, RUNNING, STOPPING))


class InboxStatus(StrEnum):
    """Where a stored Slack event stands."""

    PENDING = "pending"  # stored and acknowledged; its listener has not finished yet
    DONE = "done"
    FAILED = "failed"  # its listener failed on every attempt: kept for inspection, never retried again

"""Every error ftbot reports to a user: one line, without a traceback, that says what to do next.

The one exceptions module for all layers (storage, trainers, bot), so each layer raises and catches the same types."""

from __future__ import annotations


class FtbotError(Exception):
    """Base of every error ftbot reports to a user without a traceback."""


class DataFileError(FtbotError):
    """A data file cannot be read at all (missing, a directory, not UTF-8, a line too large)."""


class ValidationFailed(FtbotError):
    """Input has errors that must be fixed before it can be stored or uploaded."""


class ConfigError(FtbotError):
    """Required configuration is missing or wrong."""


class TrainingError(FtbotError):
    """A training back end refused or failed a job."""


class ExampleNotFound(FtbotError):
    """No example has the requested id."""

    def __init__(self, example_id: int):
        self.example_id = example_id
        super().__init__(f"example #{example_id} does not exist: list examples with `ftbot examples list`")


class DuplicateExample(FtbotError):
    """Saving would make an example identical (same content hash) to another stored example."""

    def __init__(self, existing_id: int, *, action: str = "this change"):
        self.existing_id = existing_id
        super().__init__(
            f"{action} would duplicate example #{existing_id} (same messages and tools): "
            f"edit that example instead, or change the text so it differs"
        )


class StaleAction(FtbotError):
    """A button value or modal metadata that the bot did not write (an old message, or a hand-made request)."""


class MigrationError(FtbotError):
    """The database schema cannot be brought up to date."""


class DraftNotFound(FtbotError):
    """No reply draft has the requested id."""

    def __init__(self, draft_id: int):
        self.draft_id = draft_id
        super().__init__(f"draft #{draft_id} does not exist: list drafts with `ftbot drafts list`")


class ArtifactError(FtbotError):
    """Artifact storage (``FTBOT_ARTIFACTS_URL``) cannot be read or written: a missing bucket or location, refused
    credentials, an unreachable endpoint, or the ``cluster`` extra (fsspec, s3fs) not installed."""


class ClusterError(FtbotError):
    """The Ray cluster (``FTBOT_RAY_ADDRESS``) cannot be reached or refused a request; nothing was started."""


class OverBudget(TrainingError):
    """A price learned only at Start (Together AI's) is above ``FTBOT_BUDGET_USD``: nothing was created, and the job is
    a quote again that carries the price, for an admin to start anyway."""

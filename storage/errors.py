"""Errors the storage layer raises; each is an ``FtbotError`` so the CLI and the bot show one clear line."""

from __future__ import annotations

from trainers.errors import FtbotError


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


class MigrationError(FtbotError):
    """The database schema cannot be brought up to date."""

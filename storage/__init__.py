"""ftbot's database: the SQLModel schema and its data access. Knows nothing of Slack."""

from storage.db import Database, default_database_url, ftbot_home

__all__ = ["Database", "default_database_url", "ftbot_home"]

"""ftbot's database: the SQLModel schema and its data access. Knows nothing of Slack."""

from storage.config import default_database_url, ftbot_home
from storage.db import Database

__all__ = ["Database", "default_database_url", "ftbot_home"]

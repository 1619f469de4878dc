"""Alembic migrations for ftbot's schema, run programmatically by ``storage.migrate.upgrade``."""

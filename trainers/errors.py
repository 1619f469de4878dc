"""Named errors shared by ftbot's packages; each message says what to do next."""


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

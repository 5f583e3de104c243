"""Errors that both processes raise and translate (API: 4xx; worker: failed job or failed trial)."""


class ThresherError(Exception):
    """Base of the project's own errors."""


class InvalidInput(ThresherError):
    """User input that cannot be used; the message names the problem."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class SchemaBehind(ThresherError):
    """The database schema is older than the code; the message says what to run."""


class DatasetUnavailable(ThresherError):
    """A built-in dataset's files are missing or fail their checksums."""

"""Bad-input errors of the data stage; the CLI prints them as one line (exit 2)."""


class DataError(ValueError):
    """Inputs or a prepared dataset that cannot be used; the message says which and the fix."""

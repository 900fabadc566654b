"""Errors that describe a user mistake; the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (a file, an option, an artifact), not a bug in mor-edge."""
